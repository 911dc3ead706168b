package cache

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestStaleWhileRevalidate: past its TTL, inside StaleFor, a read gets the
// old value at once with Meta.Stale while one background refresh replaces
// it; past StaleFor it is a miss.
func TestStaleWhileRevalidate(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e env) {
		ctx := context.Background()
		a := New[int64](e.instance(t), Config[int64]{Namespace: "n", Jitter: -1})
		b := New[int64](e.instance(t), Config[int64]{Namespace: "n", Jitter: -1})
		var src source
		src.version.Store(1)
		gate := make(chan struct{})
		var gated atomic.Bool
		load := func(ctx context.Context) (int64, error) {
			if gated.Load() {
				<-gate
			}
			return src.load(ctx)
		}
		opts := []Option{TTL(50 * time.Millisecond), StaleFor(time.Minute)}
		if v, _, err := a.GetOrLoad(ctx, "k", load, opts...); err != nil || v != 1 {
			t.Fatal(v, err)
		}
		time.Sleep(80 * time.Millisecond) // past the TTL: the window under test
		src.version.Store(2)
		gated.Store(true)
		// Every instance serves the stale value without waiting for the
		// (blocked) refresh, and the fleet runs one refresh.
		for _, c := range []*Cache[int64]{a, b, a, b} {
			v, m, err := c.GetOrLoad(ctx, "k", load, opts...)
			if err != nil || v != 1 || !m.Stale {
				t.Fatalf("stale read: %d %+v %v", v, m, err)
			}
		}
		close(gate)
		eventually(t, func() bool {
			v, m, err := b.GetOrLoad(ctx, "k", load, opts...)
			return err == nil && v == 2 && !m.Stale
		})
		if n := src.loads.Load(); n != 2 {
			t.Fatalf("%d loads, want 2 (the first, one refresh)", n)
		}
		// Past TTL + StaleFor the value is gone.
		short := []Option{TTL(20 * time.Millisecond), StaleFor(20 * time.Millisecond)}
		gated.Store(false)
		if _, _, err := a.GetOrLoad(ctx, "k2", load, short...); err != nil {
			t.Fatal(err)
		}
		time.Sleep(60 * time.Millisecond)
		if _, _, err := b.Get(ctx, "k2", short...); !errors.Is(err, ErrNotFound) {
			t.Fatalf("after TTL+StaleFor: %v", err)
		}
	})
}

// TestEarlyRefresh: with a large beta relative to the TTL, XFetch refreshes
// before expiry, so readers never see a stale or missing value.
func TestEarlyRefresh(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e env) {
		ctx := context.Background()
		c := New[int64](e.instance(t), Config[int64]{Namespace: "n", Jitter: -1})
		var src source
		load := func(ctx context.Context) (int64, error) {
			time.Sleep(20 * time.Millisecond) // δ, the load time XFetch weighs
			return src.load(ctx)
		}
		opts := []Option{TTL(300 * time.Millisecond), EarlyRefresh(20)}
		if _, _, err := c.GetOrLoad(ctx, "k", load, opts...); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for src.loads.Load() < 2 {
			_, m, err := c.GetOrLoad(ctx, "k", load, opts...)
			if err != nil || m.Stale || m.Source == SourceLoader {
				t.Fatalf("read while an early refresh is due: %+v %v", m, err)
			}
			if time.Now().After(deadline) {
				t.Fatal("no early refresh within 5s")
			}
			time.Sleep(time.Millisecond)
		}
	})
}

// TestLeaseProtocol is the HTTP API's protocol: one lease per cold key; a
// second caller waits for the holder's Fill; a Fill after an invalidation is
// rejected with ErrLeaseLost and writes nothing.
func TestLeaseProtocol(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e env) {
		ctx := context.Background()
		a := New[string](e.instance(t), Config[string]{Namespace: "n"})
		b := New[string](e.instance(t), Config[string]{Namespace: "n"})
		_, _, lease, err := a.Lease(ctx, "k", 0)
		if !errors.Is(err, ErrNotFound) || lease == "" {
			t.Fatalf("cold key: lease %q, %v", lease, err)
		}
		// Without waiting: no second lease while the first holds.
		if _, _, l2, err := b.Lease(ctx, "k", 0); !errors.Is(err, ErrNotFound) || l2 != "" {
			t.Fatalf("second caller: lease %q, %v", l2, err)
		}
		got := make(chan string, 1)
		go func() {
			v, _, _, err := b.Lease(ctx, "k", 5*time.Second)
			if err != nil {
				v = err.Error()
			}
			got <- v
		}()
		if err := a.Fill(ctx, "k", lease, "loaded"); err != nil {
			t.Fatal(err)
		}
		if v := <-got; v != "loaded" {
			t.Fatalf("the waiting caller got %q", v)
		}
		// Invalidate during a load: the Fill is refused.
		if err := a.Invalidate(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		_, _, lease, _ = a.Lease(ctx, "k", 0)
		if err := b.Invalidate(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		if err := a.Fill(ctx, "k", lease, "stale"); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("Fill after Invalidate: %v", err)
		}
		if _, _, err := b.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("the refused Fill wrote: %v", err)
		}
		if err := a.Fill(ctx, "k", "", "x"); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("empty lease: %v", err)
		}
		// A lease given with tags is lost when one of them moves before
		// the Fill: the value was loaded before that change.
		_, _, lease, _ = a.Lease(ctx, "t", 0, Tags("expert:1"))
		if err := a.InvalidateTags(ctx, "expert:1"); err != nil {
			t.Fatal(err)
		}
		if err := a.Fill(ctx, "t", lease, "stale", Tags("expert:1")); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("Fill after its tag moved: %v", err)
		}
		_, _, lease, _ = b.Lease(ctx, "t", time.Second, Tags("expert:1"))
		if lease == "" {
			t.Fatal("no lease after the lost one was released")
		}
		if err := b.Fill(ctx, "t", lease, "fresh", Tags("expert:1")); err != nil {
			t.Fatal(err)
		}
		if err := b.InvalidateTags(ctx, "expert:1"); err != nil {
			t.Fatal(err)
		}
		if _, _, err := b.Get(ctx, "t"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("a tagged Fill outlived its tag: %v", err)
		}
	})
}

// TestLeaseHolderDies: a holder that never fills holds the key only for the
// load timeout; then another caller loads.
func TestLeaseHolderDies(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e env) {
		ctx := context.Background()
		a := New[string](e.instance(t), Config[string]{Namespace: "n", LoadTimeout: 100 * time.Millisecond})
		b := New[string](e.instance(t), Config[string]{Namespace: "n", LoadTimeout: 100 * time.Millisecond})
		if _, _, lease, _ := a.Lease(ctx, "k", 0); lease == "" {
			t.Fatal("no lease")
		}
		t0 := time.Now()
		v, m, err := b.GetOrLoad(ctx, "k", func(context.Context) (string, error) { return "b", nil })
		if err != nil || v != "b" || m.Source != SourceLoader {
			t.Fatalf("%q %+v %v", v, m, err)
		}
		if took := time.Since(t0); took > 3*time.Second {
			t.Fatalf("took %v after a 100ms lease", took)
		}
	})
}

// TestArguments: bad input is ErrInvalidArgument and writes nothing.
func TestArguments(t *testing.T) {
	c := New[string](NewMemoryStore(StoreConfig{}), Config[string]{})
	ctx := context.Background()
	load := func(context.Context) (string, error) { return "v", nil }
	long := string(make([]byte, MaxKeyLen+1))
	tests := []struct {
		name string
		call func() error
	}{
		{"empty key", func() error { _, _, err := c.GetOrLoad(ctx, "", load); return err }},
		{"long key", func() error { _, _, err := c.GetOrLoad(ctx, long, load); return err }},
		{"nil loader", func() error { _, _, err := c.GetOrLoad(ctx, "k", nil); return err }},
		{"zero ttl", func() error { return c.Set(ctx, "k", "v", TTL(-1)) }},
		{"ttl too long", func() error { return c.Set(ctx, "k", "v", TTL(MaxTTL), StaleFor(time.Hour)) }},
		{"negative beta", func() error { _, _, err := c.GetOrLoad(ctx, "k", load, EarlyRefresh(-1)); return err }},
		{"jitter 1", func() error { return c.Set(ctx, "k", "v", Jitter(1)) }},
		{"empty tag", func() error { return c.Set(ctx, "k", "v", Tags("")) }},
		{"invalidate empty key", func() error { return c.Invalidate(ctx, "a", "") }},
		{"empty tag invalidation", func() error { return c.InvalidateTags(ctx, "") }},
	}
	for _, tt := range tests {
		if err := tt.call(); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: %v, want ErrInvalidArgument", tt.name, err)
		}
	}
	if _, _, err := c.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a bad call wrote: %v", err)
	}
}

// TestLocalHitAllocs: a local hit allocates nothing (item 7's target; the
// ns/op figure is in bench/).
func TestLocalHitAllocs(t *testing.T) {
	c := New[int64](NewMemoryStore(StoreConfig{}), Config[int64]{})
	ctx := context.Background()
	load := func(context.Context) (int64, error) { return 1, nil }
	if _, _, err := c.GetOrLoad(ctx, "k", load); err != nil {
		t.Fatal(err)
	}
	_, _, _ = c.GetOrLoad(ctx, "k", load) // from the shared level, kept locally
	if _, m, _ := c.GetOrLoad(ctx, "k", load); m.Source != SourceLocal {
		t.Fatalf("source %s", m.Source)
	}
	if n := testing.AllocsPerRun(1000, func() { _, _, _ = c.GetOrLoad(ctx, "k", load) }); n != 0 {
		t.Fatalf("%v allocs per local hit", n)
	}
}

func BenchmarkLocalHit(b *testing.B) {
	c := New[int64](NewMemoryStore(StoreConfig{}), Config[int64]{})
	ctx := context.Background()
	load := func(context.Context) (int64, error) { return 1, nil }
	_, _, _ = c.GetOrLoad(ctx, "k", load)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_, _, _ = c.GetOrLoad(ctx, "k", load)
		}
	})
}

// TestConcurrentInstances hammers one key space from several instances
// with reads, sets and invalidations (run with -race): every read returns a
// value some writer wrote or the loader made, never garbage, and the loader
// never runs for a key whose value is present and valid... it only runs on
// misses, which invalidations cause.
func TestConcurrentInstances(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e env) {
		ctx := context.Background()
		caches := []*Cache[int64]{
			New[int64](e.instance(t), Config[int64]{Namespace: "n"}),
			New[int64](e.instance(t), Config[int64]{Namespace: "n"}),
		}
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				c := caches[g%2]
				for i := range 200 {
					key := []string{"a", "b", "c"}[i%3]
					switch i % 7 {
					case 0:
						_ = c.Set(ctx, key, int64(g*1000+i))
					case 1:
						_ = c.Invalidate(ctx, key)
					default:
						v, _, err := c.GetOrLoad(ctx, key, func(context.Context) (int64, error) { return -1, nil })
						if err != nil || v < -1 || v >= 8000 {
							t.Errorf("got %d, %v", v, err)
							return
						}
					}
				}
			})
		}
		wg.Wait()
	})
}

// TestLeaseOverUndecodable: a stored value this cache cannot decode (another
// type wrote it) is a miss for Lease as for GetOrLoad: the caller gets a
// lease and its Fill replaces the value.
func TestLeaseOverUndecodable(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e env) {
		ctx := context.Background()
		s := e.instance(t)
		text := New[string](s, Config[string]{Namespace: "n"})
		num := New[int64](s, Config[int64]{Namespace: "n"})
		if err := text.Set(ctx, "k", "not a number"); err != nil {
			t.Fatal(err)
		}
		_, _, lease, err := num.Lease(ctx, "k", 0)
		if !errors.Is(err, ErrNotFound) || lease == "" {
			t.Fatalf("Lease over an undecodable value: lease %q, %v; want a lease and ErrNotFound", lease, err)
		}
		if err := num.Fill(ctx, "k", lease, 42); err != nil {
			t.Fatalf("Fill: %v", err)
		}
		if v, _, err := num.Get(ctx, "k"); err != nil || v != 42 {
			t.Fatalf("Get after Fill: %d, %v", v, err)
		}
	})
}
