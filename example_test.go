package elevaredis_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	elevaredis "github.com/elevacare/eleva-redis"
	"github.com/elevacare/eleva-redis/lock"
	"github.com/elevacare/eleva-redis/ratelimit"
	"github.com/elevacare/eleva-redis/tempdata"
)

// Open with no RedisURL runs on the in-process memory backend; set RedisURL
// (for example "rediss://app:secret@redis.internal:6379") to share state
// between instances through Redis.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	eleva, err := elevaredis.Open(ctx, elevaredis.Config{})
	if err != nil {
		panic(err)
	}
	defer eleva.Close()
	fmt.Println(eleva.Describe())

	otp := ratelimit.Limit{Limit: 2, Window: time.Minute}
	for i := 1; i <= 3; i++ {
		d, err := eleva.RateLimit.Allow(ctx, "otp:user-42", otp)
		if err != nil {
			panic(err)
		}
		fmt.Printf("OTP request %d: allowed=%v\n", i, d.Allowed)
	}
	fmt.Println(elevaredis.RedactURL("rediss://app:secret@redis.internal:6379/0"))
	// Output:
	// memory (in-process: not shared between instances, not durable)
	// OTP request 1: allowed=true
	// OTP request 2: allowed=true
	// OTP request 3: allowed=false
	// rediss://app:xxxxx@redis.internal:6379/0
}

// Locks and one-time tokens come from the same Open. On the memory backend
// they are private to the process; with a RedisURL, every instance shares
// them.
func Example_locksAndTokens() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	eleva, err := elevaredis.Open(ctx, elevaredis.Config{
		// Optional: seal temporary values and token data at rest.
		EncryptionKey: "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
	})
	if err != nil {
		panic(err)
	}
	defer eleva.Close()
	fmt.Println("encryption key ids:", eleva.EncryptionKeyIDs())

	// Capture a payment once: a second worker is refused while the first
	// holds the lock, and each holder gets a higher fence.
	first, err := eleva.Locks.Acquire(ctx, "payment:appt-42", 30*time.Second)
	if err != nil {
		panic(err)
	}
	_, err = eleva.Locks.Acquire(ctx, "payment:appt-42", 30*time.Second)
	fmt.Println("second worker:", errors.Is(err, lock.ErrHeld))
	if err := first.Release(ctx); err != nil {
		panic(err)
	}
	next, err := eleva.Locks.Acquire(ctx, "payment:appt-42", 30*time.Second)
	if err != nil {
		panic(err)
	}
	fmt.Println("fence increased:", next.Fence > first.Fence)
	_ = next.Release(ctx)

	// An email verification token is consumed exactly once.
	token, _, err := eleva.Temp.Issue(ctx, "verify-email", []byte(`{"userId":"42"}`), 24*time.Hour)
	if err != nil {
		panic(err)
	}
	data, err := eleva.Temp.Consume(ctx, "verify-email", token)
	fmt.Println("first click:", string(data), err)
	_, err = eleva.Temp.Consume(ctx, "verify-email", token)
	fmt.Println("second click:", errors.Is(err, tempdata.ErrNotFound))
	// Output:
	// encryption key ids: [k1]
	// second worker: true
	// fence increased: true
	// first click: {"userId":"42"} <nil>
	// second click: true
}
