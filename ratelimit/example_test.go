package ratelimit_test

import (
	"context"
	"fmt"
	"time"

	"github.com/elevacare/eleva-redis/ratelimit"
)

// Three identity-verification attempts per hour per user, exact.
func Example() {
	ctx := context.Background()
	limiter := ratelimit.NewMemory(ratelimit.Config{}) // ratelimit.NewRedis(client, cfg) in production
	rule := ratelimit.Limit{Limit: 3, Window: time.Hour, Algorithm: ratelimit.SlidingLog}

	for i := 1; i <= 4; i++ {
		d, err := limiter.Allow(ctx, "identity:user-42", rule)
		if err != nil {
			panic(err)
		}
		fmt.Printf("attempt %d: allowed=%v remaining=%d\n", i, d.Allowed, d.Remaining)
	}
	// Output:
	// attempt 1: allowed=true remaining=2
	// attempt 2: allowed=true remaining=1
	// attempt 3: allowed=true remaining=0
	// attempt 4: allowed=false remaining=0
}
