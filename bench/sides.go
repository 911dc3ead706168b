package main

import (
	"context"
	"fmt"
	"time"

	"github.com/go-redis/redis_rate/v10"
	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"
	"github.com/sethvargo/go-limiter/memorystore"
	ulule "github.com/ulule/limiter/v3"
	ulredis "github.com/ulule/limiter/v3/drivers/store/redis"

	elevaredis "github.com/elevacare/eleva-redis"
	"github.com/elevacare/eleva-redis/ratelimit"
)

// Limits are high enough that nearly every decision is allowed, so both
// sides take the write path of their script on every call.
const (
	redisLimit  = 1_000_000 // per redisWindow, per key
	redisWindow = time.Minute
	memLimit    = 1_000_000_000 // per memWindow, per key (our maximum)
	memWindow   = time.Hour
)

// side is one contender of a cell: make builds a fresh limiter (and client)
// and returns its decision function and a close function.
type side struct {
	name string
	make func(env *env, goroutines int) (decideFunc, func(), error)
}

// env is what every side of a run shares.
type env struct {
	redisURL string
	// poolSize is the go-redis PoolSize of the peers: at least the largest
	// goroutine count, so no peer goroutine ever waits for a connection.
	poolSize int
	// redislockBackoff is bsm/redislock's LinearBackoff while waiting.
	redislockBackoff time.Duration
}

// ourConfig is the default Config except what keeps our figures honest:
// a backend timeout as long as go-redis's default ReadTimeout (3s) instead of
// 50ms, and no circuit breaker, so a slow reply is waited for instead of
// being decided locally (which would be faster and not a Redis decision).
func ourConfig() ratelimit.Config {
	return ratelimit.Config{Timeout: 3 * time.Second, BreakerCooldown: -1}
}

// flushDelay is rueidis's MaxFlushDelay for our clients (-max-flush-delay).
var flushDelay time.Duration

// redisConns is the pipelined connections of our clients
// (-redis-connections), as elevaredis.Config.RedisConnections: 0 is
// elevaredis.DefaultRedisConnections.
var redisConns int

func newRueidis(url string) (rueidis.Client, error) {
	opt, err := rueidis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("bench: parse %q: %w", url, err)
	}
	// The options elevaredis.Open (and so the service) uses: auto-pipelining
	// of concurrent Do calls over elevaredis.DefaultRedisConnections
	// connections, flushed at once. -max-flush-delay measures the
	// throughput/latency trade of rueidis's MaxFlushDelay.
	if err := setOurOptions(&opt); err != nil {
		return nil, err
	}
	return rueidis.NewClient(opt)
}

// setOurOptions sets what the flags change in our clients' options.
func setOurOptions(opt *rueidis.ClientOption) error {
	m, err := elevaredis.PipelineMultiplex(redisConns)
	if err != nil {
		return fmt.Errorf("bench: -redis-connections: %w", err)
	}
	opt.PipelineMultiplex = m
	opt.MaxFlushDelay = flushDelay
	return nil
}

func newGoRedis(e *env) (*goredis.Client, error) {
	opt, err := goredis.ParseURL(e.redisURL)
	if err != nil {
		return nil, fmt.Errorf("bench: parse %q: %w", e.redisURL, err)
	}
	opt.PoolSize = e.poolSize
	return goredis.NewClient(opt), nil
}

func oursRedis(alg ratelimit.Algorithm) side {
	return side{
		name: "eleva " + string(alg),
		make: func(e *env, _ int) (decideFunc, func(), error) {
			c, err := newRueidis(e.redisURL)
			if err != nil {
				return nil, nil, err
			}
			l := ratelimit.NewRedis(c, ourConfig())
			lim := ratelimit.Limit{Limit: redisLimit, Window: redisWindow, Algorithm: alg}
			return func(ctx context.Context, key string) (bool, bool, error) {
				d, err := l.Allow(ctx, key, lim)
				return d.Allowed, d.Degraded, err
			}, c.Close, nil
		},
	}
}

var redisRateSide = side{
	name: "go-redis/redis_rate/v10",
	make: func(e *env, _ int) (decideFunc, func(), error) {
		c, err := newGoRedis(e)
		if err != nil {
			return nil, nil, err
		}
		l := redis_rate.NewLimiter(c)
		lim := redis_rate.Limit{Rate: redisLimit, Burst: redisLimit, Period: redisWindow}
		return func(ctx context.Context, key string) (bool, bool, error) {
			r, err := l.Allow(ctx, key, lim)
			if err != nil {
				return false, false, err
			}
			return r.Allowed > 0, false, nil
		}, func() { c.Close() }, nil
	},
}

var ululeSide = side{
	name: "ulule/limiter/v3 (redis store)",
	make: func(e *env, _ int) (decideFunc, func(), error) {
		c, err := newGoRedis(e)
		if err != nil {
			return nil, nil, err
		}
		store, err := ulredis.NewStore(c)
		if err != nil {
			c.Close()
			return nil, nil, fmt.Errorf("bench: ulule store: %w", err)
		}
		l := ulule.New(store, ulule.Rate{Period: redisWindow, Limit: redisLimit})
		return func(ctx context.Context, key string) (bool, bool, error) {
			r, err := l.Get(ctx, key)
			if err != nil {
				return false, false, err
			}
			return !r.Reached, false, nil
		}, func() { c.Close() }, nil
	},
}

func oursMemory(alg ratelimit.Algorithm) side {
	return side{
		name: "eleva memory " + string(alg),
		make: func(_ *env, _ int) (decideFunc, func(), error) {
			l := ratelimit.NewMemory(ratelimit.Config{})
			lim := ratelimit.Limit{Limit: memLimit, Window: memWindow, Algorithm: alg}
			closeFn := func() {}
			if c, ok := l.(interface{ Close() error }); ok {
				closeFn = func() { _ = c.Close() }
			} else if c, ok := l.(interface{ Close() }); ok {
				closeFn = c.Close
			}
			return func(ctx context.Context, key string) (bool, bool, error) {
				d, err := l.Allow(ctx, key, lim)
				return d.Allowed, d.Degraded, err
			}, closeFn, nil
		},
	}
}

var sethvargoSide = side{
	name: "sethvargo/go-limiter memorystore",
	make: func(_ *env, _ int) (decideFunc, func(), error) {
		s, err := memorystore.New(&memorystore.Config{Tokens: memLimit, Interval: memWindow})
		if err != nil {
			return nil, nil, err
		}
		return func(ctx context.Context, key string) (bool, bool, error) {
				_, _, _, ok, err := s.Take(ctx, key)
				return ok, false, err
			}, func() {
				_ = s.Close(context.Background())
			}, nil
	},
}
