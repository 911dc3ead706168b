package lock_test

import (
	"context"
	"fmt"
	"time"

	"github.com/elevacare/eleva-redis/lock"
)

// Two workers capture the payment of one appointment under a lock, one
// after the other (with Wait, a worker that finds the lock held waits for
// it); each gets a higher fence than the one before.
func Example() {
	ctx := context.Background()
	locker := lock.NewMemory(lock.Config{}) // lock.NewRedis(client, cfg) in production

	var fences []uint64
	for worker := 1; worker <= 2; worker++ {
		err := lock.Do(ctx, locker, "payment:appointment-42", 30*time.Second,
			func(ctx context.Context, fence uint64) error {
				// In production: UPDATE payments SET status = 'captured',
				// fence = $1 WHERE id = $2 AND fence < $1 (see docs/locks.md).
				fences = append(fences, fence)
				return nil
			}, lock.Wait(5*time.Second))
		if err != nil {
			panic(err)
		}
		fmt.Printf("worker %d held the lock\n", worker)
	}
	fmt.Println("second fence is higher:", fences[1] > fences[0])

	info, _ := locker.Inspect(ctx, "payment:appointment-42")
	fmt.Println("held after Do:", info.Held)
	// Output:
	// worker 1 held the lock
	// worker 2 held the lock
	// second fence is higher: true
	// held after Do: false
}
