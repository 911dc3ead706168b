package elevaredis_test

import (
	"context"
	"fmt"
	"time"

	elevaredis "github.com/elevacare/eleva-redis"
	"github.com/elevacare/eleva-redis/ratelimit"
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
