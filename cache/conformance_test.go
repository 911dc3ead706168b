package cache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/redistest"
)

// env is one backend under test: instance() returns a new "instance" — its
// own typed caches and, on Redis, its own client and Store — sharing the
// shared level with every other instance of the env.
type env struct {
	name     string
	instance func(t *testing.T) *Store
}

// envs are every backend and invalidation mode the suite runs on.
func envs(t *testing.T) []env {
	return []env{
		{"memory", func(t *testing.T) *Store { return memoryStore(t) }},
		{"redis-tracking", func(t *testing.T) *Store { return suiteStore(t, redistest.URL(t), "tracking") }},
		{"redis-pubsub", func(t *testing.T) *Store { return suiteStore(t, redistest.URL(t), "pubsub") }},
		{"cluster-tracking", func(t *testing.T) *Store { return suiteStore(t, redistest.ClusterURL(t), "tracking") }},
		{"cluster-pubsub", func(t *testing.T) *Store { return suiteStore(t, redistest.ClusterURL(t), "pubsub") }},
	}
}

// prefixes gives every test its own key space on the shared servers; the
// instances of one test share it.
var prefixes sync.Map // test name -> prefix

func prefixFor(t *testing.T) string {
	p, loaded := prefixes.LoadOrStore(t.Name(), redistest.Prefix(t))
	if !loaded {
		// Forgotten after the test, so that -count=N runs start cold.
		t.Cleanup(func() { prefixes.Delete(t.Name()) })
	}
	return p.(string)
}

// memStores: the instances of one memory test share one Store, as processes
// share Redis; each instance still has its own typed caches.
var memStores sync.Map // test name -> *Store

func memoryStore(t *testing.T) *Store {
	s, loaded := memStores.LoadOrStore(t.Name(), NewMemoryStore(StoreConfig{}))
	if !loaded {
		t.Cleanup(func() { memStores.Delete(t.Name()) })
	}
	return s.(*Store)
}

// redisStore is one instance: its own client (with the tracking hook, or
// without client-side caching for Pub/Sub mode) and Store.
// suiteStore is an instance of the conformance suite: the suite is about
// semantics, not the 200ms default timeout, so its calls may take up to 2s
// (a loaded CI machine must not turn an Invalidate into ErrBackend). The
// failure tests use redisStore, with the default.
func suiteStore(t *testing.T, url, mode string) *Store {
	t.Helper()
	return redisStoreCfg(t, url, mode, StoreConfig{Timeout: 2 * time.Second})
}

func redisStore(t *testing.T, url, mode string) *Store {
	t.Helper()
	return redisStoreCfg(t, url, mode, StoreConfig{})
}

// redisStoreCfg is redisStore with cfg's other fields (its Prefix,
// Invalidation and Tracker are set here).
func redisStoreCfg(t *testing.T, url, mode string, cfg StoreConfig) *Store {
	t.Helper()
	opt, err := rueidis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Prefix, cfg.Invalidation = prefixFor(t), mode
	if mode == "tracking" {
		cfg.Tracker = NewTracker()
		opt.OnInvalidations = cfg.Tracker.OnInvalidations
	} else {
		opt.DisableCache = true
	}
	client, err := rueidis.NewClient(opt)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	s := NewRedisStore(client, cfg)
	t.Cleanup(func() { s.Close(); client.Close() })
	waitSubscribed(t, s)
	return s
}

// waitSubscribed waits until a Pub/Sub-mode store's subscription is up, so
// the test starts from the steady state (before it, no local copies are
// kept, which is correct but not what the tests measure).
func waitSubscribed(t *testing.T, s *Store) {
	deadline := time.Now().Add(5 * time.Second)
	for !s.subscribed() {
		if time.Now().After(deadline) {
			t.Fatal("Pub/Sub subscription not up after 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

// source is a loader over a versioned value: each load returns the current
// version, and counts.
type source struct {
	version atomic.Int64
	loads   atomic.Int64
}

func (s *source) load(ctx context.Context) (int64, error) {
	s.loads.Add(1)
	return s.version.Load(), nil
}

func forEachEnv(t *testing.T, f func(t *testing.T, e env)) {
	for _, e := range envs(t) {
		t.Run(e.name, func(t *testing.T) { f(t, e) })
	}
}

func TestGetOrLoadLevels(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e env) {
		ctx := context.Background()
		a := New[int64](e.instance(t), Config[int64]{Namespace: "n"})
		b := New[int64](e.instance(t), Config[int64]{Namespace: "n"})
		var src source
		src.version.Store(7)

		tests := []struct {
			c      *Cache[int64]
			want   int64
			source Source
			loads  int64
		}{
			{a, 7, SourceLoader, 1},
			{a, 7, SourceRedis, 1}, // this instance's first tracked read
			{a, 7, SourceLocal, 1},
			{b, 7, SourceRedis, 1},
			{b, 7, SourceLocal, 1},
		}
		for i, tt := range tests {
			v, m, err := tt.c.GetOrLoad(ctx, "k", src.load)
			if err != nil || v != tt.want || src.loads.Load() != tt.loads {
				t.Fatalf("step %d: got %d, %v (loads %d), want %d (loads %d)", i, v, err, src.loads.Load(), tt.want, tt.loads)
			}
			switch {
			case m.Source == tt.source:
			case e.name == "memory" && tt.source == SourceRedis && m.Source == SourceLocal:
				// No tracking registration is needed in memory: the
				// first read may be local already.
			case e.name != "memory" && tt.source == SourceLocal && m.Source == SourceRedis:
				// The instance's own write message (Pub/Sub), or the
				// invalidation push of its own write (tracking: Redis
				// sends it after the write's reply), may arrive during
				// its first read and drop that copy, as any
				// invalidation seen during a read does; a later read is
				// local.
				eventually(t, func() bool { _, m, _ := tt.c.GetOrLoad(ctx, "k", src.load); return m.Source == SourceLocal })
			default:
				t.Fatalf("step %d: source %s, want %s", i, m.Source, tt.source)
			}
			if m.CachedAt.IsZero() || m.Stale || m.Degraded {
				t.Fatalf("step %d: meta %+v", i, m)
			}
		}
	})
}

func TestSetGetInvalidate(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e env) {
		ctx := context.Background()
		a := New[string](e.instance(t), Config[string]{Namespace: "n"})
		b := New[string](e.instance(t), Config[string]{Namespace: "n"})
		if _, _, err := a.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get of a missing key: %v", err)
		}
		if err := a.Set(ctx, "k", "one"); err != nil {
			t.Fatal(err)
		}
		for _, c := range []*Cache[string]{a, b, a, b} {
			if v, _, err := c.Get(ctx, "k"); err != nil || v != "one" {
				t.Fatalf("Get after Set: %q, %v", v, err)
			}
		}
		if err := b.Set(ctx, "k", "two"); err != nil {
			t.Fatal(err)
		}
		eventually(t, func() bool { v, _, err := a.Get(ctx, "k"); return err == nil && v == "two" })
		if v, _, err := b.Get(ctx, "k"); err != nil || v != "two" {
			t.Fatalf("the writer reads its own write: %q, %v", v, err)
		}
		if err := b.Invalidate(ctx, "k", "other"); err != nil {
			t.Fatal(err)
		}
		if _, _, err := b.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("the invalidator reads its own invalidation: %v", err)
		}
		eventually(t, func() bool { _, _, err := a.Get(ctx, "k"); return errors.Is(err, ErrNotFound) })
	})
}

// eventually polls cond (another instance learns of a change through an
// asynchronous push) for up to 5s.
func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func TestNegativeAndErrors(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e env) {
		ctx := context.Background()
		c := New[string](e.instance(t), Config[string]{Namespace: "n"})
		var loads atomic.Int64
		boom := errors.New("database down")
		tests := []struct {
			name      string
			err       error
			wantIs    error
			wantLoads int64 // after two calls
		}{
			{"not found is cached", fmt.Errorf("user 42: %w", ErrNotFound), ErrNotFound, 1},
			{"errors are not cached", boom, boom, 2},
		}
		for _, tt := range tests {
			loads.Store(0)
			key := tt.name
			for range 2 {
				_, _, err := c.GetOrLoad(ctx, key, func(context.Context) (string, error) {
					loads.Add(1)
					return "", tt.err
				})
				if !errors.Is(err, tt.wantIs) {
					t.Fatalf("%s: err %v, want %v", tt.name, err, tt.wantIs)
				}
			}
			if loads.Load() != tt.wantLoads {
				t.Fatalf("%s: %d loads, want %d", tt.name, loads.Load(), tt.wantLoads)
			}
		}
		// A cached not-found ends with its own TTL.
		loads.Store(0)
		nf := func(context.Context) (string, error) { loads.Add(1); return "", ErrNotFound }
		for range 2 {
			_, _, _ = c.GetOrLoad(ctx, "short", nf, NegativeTTL(30*time.Millisecond))
		}
		time.Sleep(60 * time.Millisecond) // the TTL under test
		_, _, _ = c.GetOrLoad(ctx, "short", nf, NegativeTTL(30*time.Millisecond))
		if loads.Load() != 2 {
			t.Fatalf("negative TTL: %d loads, want 2", loads.Load())
		}
	})
}

func TestTags(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e env) {
		ctx := context.Background()
		sa, sb := e.instance(t), e.instance(t)
		a := New[int64](sa, Config[int64]{Namespace: "profile"})
		b := New[int64](sb, Config[int64]{Namespace: "profile"})
		other := New[int64](sa, Config[int64]{Namespace: "dashboard"})
		var src source
		src.version.Store(1)
		get := func(c *Cache[int64], key string, tags ...string) int64 {
			t.Helper()
			v, _, err := c.GetOrLoad(ctx, key, src.load, Tags(tags...))
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		get(a, "expert:7", "expert:7", "experts")
		get(other, "expert:7", "expert:7")
		get(a, "expert:8", "expert:8", "experts")
		get(b, "expert:7", "experts", "expert:7") // order does not matter
		if v, _, err := b.Get(ctx, "expert:7"); err != nil || v != 1 {
			t.Fatalf("a read without the tags: %d %v", v, err)
		}
		src.version.Store(2)
		if v := get(b, "expert:7", "expert:7", "experts"); v != 1 {
			t.Fatalf("before InvalidateTags: %d", v)
		}
		if err := sb.InvalidateTags(ctx, "expert:7"); err != nil {
			t.Fatal(err)
		}
		// The invalidating instance at once; every namespace; not other tags.
		if v := get(b, "expert:7", "expert:7", "experts"); v != 2 {
			t.Fatalf("after InvalidateTags on the same instance: %d", v)
		}
		eventually(t, func() bool { return get(a, "expert:7") == 2 }) // tags are recorded, not repeated
		eventually(t, func() bool { return get(other, "expert:7", "expert:7") == 2 })
		if v := get(a, "expert:8", "expert:8", "experts"); v != 1 {
			t.Fatalf("an untouched tag was invalidated: %d", v)
		}
		if err := sa.InvalidateTags(ctx, "experts"); err != nil {
			t.Fatal(err)
		}
		if v := get(a, "expert:8", "expert:8", "experts"); v != 2 {
			t.Fatalf("after InvalidateTags(experts): %d", v)
		}
		if _, _, err := a.GetOrLoad(ctx, "k", src.load, Tags(make([]string, MaxTags+1)...)); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("too many tags: %v", err)
		}
	})
}

// TestStampede is acceptance item 1: 3 instances x 1000 goroutines ask for
// one cold key whose loader takes 200ms; the loader runs once.
func TestStampede(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e env) {
		const instances, goroutines, loadTime = 3, 1000, 200 * time.Millisecond
		var loads atomic.Int64
		load := func(ctx context.Context) (string, error) {
			loads.Add(1)
			time.Sleep(loadTime) // the slow query under test
			return "profile", nil
		}
		caches := make([]*Cache[string], instances)
		for i := range caches {
			caches[i] = New[string](e.instance(t), Config[string]{Namespace: "n"})
		}
		lat := make([]time.Duration, instances*goroutines)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range instances * goroutines {
			wg.Go(func() {
				<-start
				t0 := time.Now()
				v, _, err := caches[i%instances].GetOrLoad(context.Background(), "cold", load)
				lat[i] = time.Since(t0)
				if err != nil || v != "profile" {
					t.Errorf("got %q, %v", v, err)
				}
			})
		}
		close(start)
		wg.Wait()
		if n := loads.Load(); n != 1 {
			t.Fatalf("loader ran %d times, want 1", n)
		}
		slices.Sort(lat)
		p50, p99, pmax := lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1]
		t.Logf("%d callers, load %v: p50 %v p99 %v max %v", len(lat), loadTime, p50, p99, pmax)
		// Generous: a waiter is woken when the value lands, not after a
		// poll interval or the lease's 10s timeout.
		if p99 > loadTime+time.Second {
			t.Fatalf("p99 %v: waiters are not woken by the value", p99)
		}
	})
}

// TestLoadDetachedFromCaller: the caller that started the load gives up; the
// load goes on for the others.
func TestLoadDetachedFromCaller(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e env) {
		c := New[string](e.instance(t), Config[string]{Namespace: "n"})
		gate := make(chan struct{})
		var loads atomic.Int64
		load := func(ctx context.Context) (string, error) {
			loads.Add(1)
			<-gate
			return "v", ctx.Err()
		}
		ctx, cancel := context.WithCancel(context.Background())
		first := make(chan error, 1)
		go func() { _, _, err := c.GetOrLoad(ctx, "k", load); first <- err }()
		eventually(t, func() bool { return loads.Load() == 1 })
		second := make(chan string, 1)
		go func() { v, _, _ := c.GetOrLoad(context.Background(), "k", load); second <- v }()
		cancel()
		if err := <-first; !errors.Is(err, context.Canceled) {
			t.Fatalf("the cancelled caller: %v", err)
		}
		close(gate)
		if v := <-second; v != "v" {
			t.Fatalf("the other caller got %q", v)
		}
		if loads.Load() != 1 {
			t.Fatalf("%d loads", loads.Load())
		}
	})
}

// TestInvalidationRace is acceptance item 2: a loader paused after reading
// the old data, an invalidation, the loader resumed — in random
// interleavings, across instances — and no call that starts after the
// invalidation returned ever gets the old value, on any instance.
func TestInvalidationRace(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e env) {
		rounds := 10_000
		if testing.Short() || e.name == "memory" || e.name == "redis-pubsub" || e.name == "cluster-pubsub" {
			rounds = 2_000
		}
		const instances, workers = 3, 16
		caches := make([]*Cache[int64], instances)
		for i := range caches {
			caches[i] = New[int64](e.instance(t), Config[int64]{Namespace: "n", LoadTimeout: 5 * time.Second})
		}
		var violations atomic.Int64
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(w), 42))
				key := fmt.Sprintf("race-%d", w)
				var version atomic.Int64
				for r := range rounds / workers {
					raceRound(t, caches, key, int64(r), &version, rng, &violations)
				}
			})
		}
		wg.Wait()
		if n := violations.Load(); n != 0 {
			t.Fatalf("%d reads returned a value older than an invalidation that preceded them", n)
		}
		t.Logf("%d interleavings, no stale value", rounds)
	})
}

func raceRound(t *testing.T, caches []*Cache[int64], key string, round int64, version *atomic.Int64, rng *rand.Rand, violations *atomic.Int64) {
	ctx := context.Background()
	loader := caches[rng.IntN(len(caches))]
	inv := caches[rng.IntN(len(caches))]
	// Values are version*1e6 + round*2 (+1 when the paused loader made
	// it), so the value a paused load read before this round's
	// invalidation is unique: stale.
	const scale = 1_000_000
	old := version.Load()
	stale := old*scale + round*2 + 1
	// Start cold on the loader's instance, so the paused loader runs.
	if err := loader.Invalidate(ctx, key); err != nil {
		t.Errorf("Invalidate: %v", err)
		return
	}
	read := make(chan struct{})
	gate := make(chan struct{})
	var once sync.Once
	paused := func(ctx context.Context) (int64, error) {
		v := version.Load()
		once.Do(func() { close(read) })
		<-gate
		return v*scale + round*2 + 1, nil
	}
	loaded := make(chan struct{})
	go func() {
		defer close(loaded)
		_, _, _ = loader.GetOrLoad(ctx, key, paused)
	}()
	// Invalidate at a random point: while the load is paused after reading
	// the old data, or racing with its start.
	switch rng.IntN(3) {
	case 0:
	case 1:
		select {
		case <-read:
		case <-loaded:
		}
	case 2:
		for range rng.IntN(50) {
			time.Sleep(0) // yield a random number of times
		}
	}
	newV := old + 1
	version.Store(newV)
	if err := inv.Invalidate(ctx, key); err != nil {
		t.Errorf("Invalidate: %v", err)
	}
	fresh := func(ctx context.Context) (int64, error) { return version.Load()*scale + round*2, nil }
	// check reads key on c: never this round's stale value; on the
	// invalidating instance nothing older than the invalidation at all.
	// (Other instances may still serve an earlier round's value until
	// their push or message arrives; TestCoherence measures that.)
	check := func(c *Cache[int64]) {
		v, m, err := c.GetOrLoad(ctx, key, fresh)
		if err != nil {
			t.Errorf("GetOrLoad: %v", err)
			return
		}
		if v == stale || (c == inv && v/scale < newV) {
			violations.Add(1)
			t.Errorf("got %d (source %s) after invalidating at version %d", v, m.Source, newV)
		}
	}
	// Before the paused loader resumes: a caller on its instance may join
	// its flight; one on another instance may wait on its lease.
	var wg sync.WaitGroup
	if rng.IntN(2) == 0 {
		wg.Go(func() { check(loader) })
	}
	if rng.IntN(2) == 0 {
		wg.Go(func() { check(caches[rng.IntN(len(caches))]) })
	}
	close(gate)
	once.Do(func() { close(read) })
	<-loaded
	wg.Wait()
	check(inv)
	for _, c := range caches {
		check(c)
	}
}
