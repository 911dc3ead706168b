package analytics

import (
	"context"
	"time"

	"github.com/elevacare/eleva-redis/cache"
)

// Defaults of QueryCacheConfig.
const (
	DefaultQueryTTL   = time.Minute
	DefaultQueryStale = 10 * time.Minute
)

// QueryCacheConfig configures a QueryCache. The zero value is the default.
type QueryCacheConfig struct {
	// Namespace separates this cache's keys; "" means "analytics".
	Namespace string
	// TTL is how long a result is fresh; 0 means 1 minute.
	TTL time.Duration
	// StaleFor is how long past TTL a result is still served at once while
	// one refresh for the whole fleet runs in the background
	// (stale-while-revalidate); 0 means 10 minutes, negative means none.
	StaleFor time.Duration
}

// Result is a cached query result.
type Result[T any] struct {
	Value T
	// CachedAt is when the value was computed and stored (the old API's
	// cachedAt).
	CachedAt time.Time
	// Stale: past its TTL, served while a refresh runs.
	Stale bool
	// Degraded: the cache was unreachable; the value was computed for this
	// call and not cached.
	Degraded bool
}

// QueryCache caches the results of expensive dashboard queries (in
// PostgreSQL or PostHog) through the cache package: one computation per key
// for the whole fleet, stale-while-revalidate, and a fall-through to the
// query when the cache is down. Safe for concurrent use.
type QueryCache[T any] struct {
	c     *cache.Cache[T]
	ttl   time.Duration
	stale time.Duration
}

// NewQueryCache returns a QueryCache on s (the Store of cache.NewRedisStore
// or cache.NewMemoryStore).
func NewQueryCache[T any](s *cache.Store, cfg QueryCacheConfig) *QueryCache[T] {
	ns := cfg.Namespace
	if ns == "" {
		ns = "analytics"
	}
	stale := cfg.StaleFor
	switch {
	case stale == 0:
		stale = DefaultQueryStale
	case stale < 0:
		stale = 0
	}
	return &QueryCache[T]{
		c:     cache.New(s, cache.Config[T]{Namespace: ns, NegativeTTL: -1}),
		ttl:   orDur(cfg.TTL, DefaultQueryTTL),
		stale: stale,
	}
}

// Get returns key's cached result, or runs query (once per key across the
// fleet) and caches its value. query's errors are returned and never cached.
// Errors from the cache package (cache.ErrInvalidArgument for a bad key)
// are returned as they are.
func (q *QueryCache[T]) Get(ctx context.Context, key string, query func(context.Context) (T, error)) (Result[T], error) {
	v, m, err := q.c.GetOrLoad(ctx, key, query, cache.TTL(q.ttl), cache.StaleFor(q.stale))
	if err != nil {
		return Result[T]{}, err
	}
	return Result[T]{Value: v, CachedAt: m.CachedAt, Stale: m.Stale, Degraded: m.Degraded}, nil
}

// Invalidate drops keys' results: the next Get runs the query.
func (q *QueryCache[T]) Invalidate(ctx context.Context, keys ...string) error {
	return q.c.Invalidate(ctx, keys...)
}
