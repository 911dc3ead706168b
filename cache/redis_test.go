package cache

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/redistest"
)

// TestCoherence is acceptance item 3: instance A holds a value locally, B
// changes it; how long A goes on serving the old value (p99), in each mode;
// and that killing A's connections drops A's local copies at once, since
// the invalidations sent meanwhile are lost.
func TestCoherence(t *testing.T) {
	for _, mode := range []string{"tracking", "pubsub"} {
		t.Run(mode, func(t *testing.T) {
			url := redistest.URL(t)
			a := New[int64](redisStore(t, url, mode), Config[int64]{Namespace: "n"})
			b := New[int64](redisStore(t, url, mode), Config[int64]{Namespace: "n"})
			ctx := context.Background()
			const rounds = 300
			lat := make([]time.Duration, 0, rounds)
			for i := range int64(rounds) {
				if err := b.Set(ctx, "k", i); err != nil {
					t.Fatal(err)
				}
				// A reads until it holds i locally.
				eventually(t, func() bool {
					v, m, err := a.Get(ctx, "k")
					return err == nil && v == i && m.Source == SourceLocal
				})
				t0 := time.Now()
				if err := b.Invalidate(ctx, "k"); err != nil {
					t.Fatal(err)
				}
				for {
					v, _, err := a.Get(ctx, "k")
					if errors.Is(err, ErrNotFound) {
						break
					}
					if err != nil || v != i {
						t.Fatalf("A got %d, %v", v, err)
					}
					if time.Since(t0) > 5*time.Second {
						t.Fatal("A still serves the invalidated value after 5s")
					}
				}
				lat = append(lat, time.Since(t0))
			}
			slices.Sort(lat)
			t.Logf("%s: A stops serving B's invalidated value after p50 %v, p99 %v, max %v (from B's call to A's first miss, B's round trip included)",
				mode, lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1])

			// CLIENT KILL: A holds a value locally; every connection but
			// the killer's is killed, and B's write during the outage
			// sends no invalidation A could receive.
			if err := b.Set(ctx, "k", 1000); err != nil {
				t.Fatal(err)
			}
			eventually(t, func() bool {
				v, m, err := a.Get(ctx, "k")
				return err == nil && v == 1000 && m.Source == SourceLocal
			})
			killer := redistest.Client(t, url)
			var flushed atomic.Bool
			a.s.hub.register(func(string) {}, func() { flushed.Store(true) })
			t0 := time.Now()
			if err := killer.Do(ctx, killer.B().ClientKill().TypeNormal().Build()).Error(); err != nil {
				t.Fatal(err)
			}
			if err := killer.Do(ctx, killer.B().ClientKill().TypePubsub().Build()).Error(); err != nil {
				t.Fatal(err)
			}
			eventually(t, flushed.Load)
			t.Logf("%s: A dropped its local copies %v after its connection was killed", mode, time.Since(t0))
			// Change the value behind A's back (no invalidation reaches A
			// for a key it no longer tracks): A must read it anew.
			if err := killer.Do(ctx, killer.B().Del().Key(a.rk("k").value).Build()).Error(); err != nil {
				t.Fatal(err)
			}
			eventually(t, func() bool { _, _, err := a.Get(ctx, "k"); return errors.Is(err, ErrNotFound) })
		})
	}
}

// TestRedisDown is acceptance item 5: with redis-server stopped, GetOrLoad
// falls through to the loader and says so in Meta; no call blocks past the
// timeout; the cache recovers when Redis returns, without a restart.
func TestRedisDown(t *testing.T) {
	for _, mode := range []string{"tracking", "pubsub"} {
		t.Run(mode, func(t *testing.T) {
			srv := redistest.NewServer(t)
			s := redisStore(t, srv.URL(), mode)
			c := New[string](s, Config[string]{Namespace: "n"})
			ctx := context.Background()
			var loads atomic.Int64
			load := func(context.Context) (string, error) { loads.Add(1); return "db", nil }
			if _, m, err := c.GetOrLoad(ctx, "k", load); err != nil || m.Source != SourceLoader {
				t.Fatalf("before: %+v %v", m, err)
			}
			srv.Stop(t)
			for i := range 20 {
				t0 := time.Now()
				v, m, err := c.GetOrLoad(ctx, "other", load)
				if took := time.Since(t0); took > 2*time.Second {
					t.Fatalf("call %d blocked %v", i, took)
				}
				if err != nil || v != "db" || m.Source != SourceLoader || !m.Degraded {
					t.Fatalf("call %d with Redis down: %q %+v %v", i, v, m, err)
				}
			}
			// Writes report the outage.
			if err := c.Set(ctx, "k", "x"); !errors.Is(err, ErrBackend) {
				t.Fatalf("Set with Redis down: %v", err)
			}
			if err := c.Invalidate(ctx, "k"); !errors.Is(err, ErrBackend) {
				t.Fatalf("Invalidate with Redis down: %v", err)
			}
			// The value cached before the outage is not served from the
			// local level meanwhile: its invalidation could be missed.
			if _, m, err := c.GetOrLoad(ctx, "k", load); err != nil || m.Source == SourceLocal {
				t.Fatalf("local copy served during the outage: %+v %v", m, err)
			}
			srv.Start(t)
			eventually(t, func() bool {
				_, m, err := c.GetOrLoad(ctx, "after", load)
				return err == nil && !m.Degraded
			})
			if _, m, err := c.GetOrLoad(ctx, "after", load); err != nil || m.Degraded || m.Source == SourceLoader {
				t.Fatalf("after recovery: %+v %v", m, err)
			}
		})
	}
}

// TestTrackingUnavailable: a server that refuses CLIENT TRACKING (RESP2
// only, as some hosted services) is served in Pub/Sub mode.
func TestStoreModes(t *testing.T) {
	url := redistest.URL(t)
	tests := []struct {
		mode, want string
	}{
		{"", "tracking"},
		{"tracking", "tracking"},
		{"pubsub", "pubsub"},
	}
	for _, tt := range tests {
		if got := redisStore(t, url, tt.mode).Mode(); tt.mode != "" && got != tt.want {
			t.Errorf("Invalidation %q: mode %s, want %s", tt.mode, got, tt.want)
		}
	}
	opt, _ := rueidis.ParseURL(url)
	opt.DisableCache = true
	client, err := rueidis.NewClient(opt)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	s := NewRedisStore(client, StoreConfig{Prefix: redistest.Prefix(t)})
	defer s.Close()
	if s.Mode() != "pubsub" {
		t.Fatalf("no Tracker: mode %s", s.Mode())
	}
	if NewMemoryStore(StoreConfig{}).Mode() != "memory" {
		t.Fatal("memory mode")
	}
}

func TestBadConfig(t *testing.T) {
	ctx := context.Background()
	for name, s := range map[string]*Store{
		"bad prefix": NewMemoryStore(StoreConfig{Prefix: "a{b}"}),
		"nil client": NewRedisStore(nil, StoreConfig{}),
	} {
		c := New[string](s, Config[string]{})
		v, m, err := c.GetOrLoad(ctx, "k", func(context.Context) (string, error) { return "db", nil })
		if err != nil || v != "db" || !m.Degraded {
			t.Errorf("%s: GetOrLoad %q %+v %v", name, v, m, err)
		}
		if err := c.Set(ctx, "k", "v"); !errors.Is(err, ErrBackend) {
			t.Errorf("%s: Set %v", name, err)
		}
		if err := s.InvalidateTags(ctx, "t"); !errors.Is(err, ErrBackend) || !strings.Contains(err.Error(), "cache") {
			t.Errorf("%s: InvalidateTags %v", name, err)
		}
	}
}
