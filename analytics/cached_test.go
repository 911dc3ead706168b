package analytics

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elevacare/eleva-redis/cache"
	"github.com/elevacare/eleva-redis/internal/redistest"
)

// TestQueryCache: a dashboard query runs once and its result is served with
// the time it was cached; past its TTL the stale result is served at once
// while one refresh runs, after which the new result (newer cachedAt) is
// served; query errors are returned and not cached. On memory and Redis.
func TestQueryCache(t *testing.T) {
	t.Parallel()
	for _, tg := range []struct {
		name  string
		store func(t *testing.T) *cache.Store
	}{
		{"memory", func(t *testing.T) *cache.Store { return cache.NewMemoryStore(cache.StoreConfig{}) }},
		{"redis", func(t *testing.T) *cache.Store {
			return cache.NewRedisStore(redistest.Client(t, redistest.URL(t)), cache.StoreConfig{Prefix: redistest.Prefix(t)})
		}},
	} {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			st := tg.store(t)
			t.Cleanup(st.Close)
			q := NewQueryCache[int](st, QueryCacheConfig{TTL: 100 * time.Millisecond, StaleFor: time.Minute})
			var runs atomic.Int64
			query := func(context.Context) (int, error) { return int(runs.Add(1)), nil }
			r1, err := q.Get(ctxb, "bookings-by-expert", query)
			if err != nil || r1.Value != 1 || r1.CachedAt.IsZero() || r1.Stale {
				t.Fatalf("first Get: %+v %v", r1, err)
			}
			r2, err := q.Get(ctxb, "bookings-by-expert", query)
			if err != nil || r2.Value != 1 || !r2.CachedAt.Equal(r1.CachedAt) || runs.Load() != 1 {
				t.Fatalf("second Get: %+v %v after %d runs", r2, err, runs.Load())
			}
			sawStale := false
			until(t, "the refreshed result", 20*time.Second, func() bool {
				r, err := q.Get(ctxb, "bookings-by-expert", query)
				if err != nil {
					t.Fatal(err)
				}
				// A stale result is one cached before: the first, or (when
				// this loop runs slower than the 100ms TTL, as under -race on
				// a loaded machine) a refreshed one that has aged too.
				if r.Stale {
					sawStale = true
					first := r.Value == 1 && r.CachedAt.Equal(r1.CachedAt)
					later := r.Value > 1 && r.CachedAt.After(r1.CachedAt)
					if !first && !later {
						t.Fatalf("stale result %+v, want the first one (%+v) or a later refresh", r, r1)
					}
				}
				return r.Value >= 2 && r.CachedAt.After(r1.CachedAt)
			})
			if !sawStale {
				t.Errorf("no Get served the stale result while refreshing")
			}
			boom := errors.New("postgres down")
			if _, err := q.Get(ctxb, "failing", func(context.Context) (int, error) { return 0, boom }); !errors.Is(err, boom) {
				t.Fatalf("failing query: %v", err)
			}
			if r, err := q.Get(ctxb, "failing", query); err != nil || r.Value == 0 {
				t.Fatalf("after a failure: %+v %v (the error was cached?)", r, err)
			}
		})
	}
}
