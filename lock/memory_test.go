package lock

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	fakeclock "github.com/elevacare/eleva-redis/internal/clock"
	"github.com/elevacare/eleva-redis/internal/testutil"
)

// TestMemoryFenceRule checks fence = max(previous + 1, now in µs) step by
// step on a fake clock, with the previous fence forgotten ttl + 24h after
// the lock's last acquire or refresh, as the Redis fence key's TTL does.
func TestMemoryFenceRule(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	start := time.Date(2030, 1, 2, 3, 4, 5, 6000, time.UTC)
	clock := fakeclock.NewFake(start)
	l := NewMemory(Config{Now: clock.Now})
	us := func() uint64 { return uint64(clock.Now().UnixMicro()) }

	steps := []struct {
		what    string
		advance time.Duration
		want    func(prev uint64) uint64
	}{
		{"first acquire: the clock", 0, func(uint64) uint64 { return us() }},
		{"same µs: previous + 1", 0, func(p uint64) uint64 { return p + 1 }},
		{"clock moved on: the clock", time.Second, func(uint64) uint64 { return us() }},
		{"clock moved back an hour, fence remembered: previous + 1", -time.Hour, func(p uint64) uint64 { return p + 1 }},
		{"fence record expired (ttl + 24h): the clock, which is past every earlier fence", 3 * 24 * time.Hour, func(uint64) uint64 { return us() }},
	}
	var prev uint64
	for _, s := range steps {
		clock.Advance(s.advance)
		want := s.want(prev)
		le := mustAcquire(t, l, "f", time.Second)
		if le.Fence != want || le.Fence <= prev {
			t.Fatalf("%s: fence %d, want %d (previous %d)", s.what, le.Fence, want, prev)
		}
		if !le.ExpiresAt.Equal(clock.Now().Add(time.Second)) {
			t.Errorf("%s: ExpiresAt %v, want clock + ttl %v", s.what, le.ExpiresAt, clock.Now().Add(time.Second))
		}
		if err := le.Release(ctx); err != nil {
			t.Fatal(err)
		}
		prev = le.Fence
	}
}

// TestMemoryExpiry checks the exact expiry on a fake clock: held until
// ExpiresAt, free from then on (as a Redis key whose PX has passed), and a
// Refresh extends from the clock's now.
func TestMemoryExpiry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clock := fakeclock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	l := NewMemory(Config{Now: clock.Now})
	le := mustAcquire(t, l, "e", time.Second)
	clock.Advance(time.Second - time.Nanosecond)
	if info := mustInspect(t, l, "e"); !info.Held || !info.ExpiresAt.Equal(le.ExpiresAt) {
		t.Fatalf("1ns before expiry: %+v, want held until %v", info, le.ExpiresAt)
	}
	if err := le.Refresh(ctx, 2*time.Second); err != nil {
		t.Fatalf("Refresh before expiry: %v", err)
	}
	if want := clock.Now().Add(2 * time.Second); !le.ExpiresAt.Equal(want) {
		t.Errorf("ExpiresAt after Refresh %v, want %v", le.ExpiresAt, want)
	}
	clock.Advance(2 * time.Second)
	if info := mustInspect(t, l, "e"); info.Held {
		t.Fatalf("at expiry: %+v, want free", info)
	}
	if err := le.Refresh(ctx, time.Second); !errors.Is(err, ErrLost) {
		t.Fatalf("Refresh at expiry: %v, want ErrLost", err)
	}
	if _, err := l.Acquire(ctx, "e", time.Second); err != nil {
		t.Fatalf("Acquire after expiry: %v", err)
	}
}

// TestMemorySweep checks that records are reclaimed once their fence memory
// has expired, without a goroutine, and that held locks are never swept.
func TestMemorySweep(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clock := fakeclock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	l := NewMemory(Config{Now: clock.Now})
	b := l.(*locker).b.(*memBackend)
	held := mustAcquire(t, l, "held", MaxTTL)
	for i := range 1000 {
		le := mustAcquire(t, l, "n"+string(rune('A'+i%26))+time.Duration(i).String(), time.Second)
		if err := le.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(b.locks); n != 1001 {
		t.Fatalf("%d records, want 1001", n)
	}
	// Every released record's fence is forgotten; "held" stays held.
	clock.Advance(fenceGrace / 2)
	if err := held.Refresh(ctx, MaxTTL); err != nil {
		t.Fatal(err)
	}
	clock.Advance(fenceGrace/2 + time.Second)
	for i := range memSweepMin {
		mustAcquire(t, l, "new"+time.Duration(i).String(), time.Second)
	}
	if n := len(b.locks); n > 1+2*memSweepMin {
		t.Errorf("%d records after the sweep, want at most %d", n, 1+2*memSweepMin)
	}
	if info := mustInspect(t, l, "held"); !info.Held || info.Fence != held.Fence {
		t.Errorf("held lock after the sweep: %+v", info)
	}
}

// TestMemoryDoLostOnClock: on the memory backend's clock the lease expires
// while fn runs (the watchdog's refreshes do not count: the clock jumps past
// the expiry between them), another owner takes the lock, and Do's next
// refresh finds it lost and cancels fn.
func TestMemoryDoLostOnClock(t *testing.T) {
	t.Parallel()
	clock := fakeclock.NewFake(time.Now())
	l := NewMemory(Config{Now: clock.Now})
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- Do(context.Background(), l, "c", 300*time.Millisecond, func(ctx context.Context, _ uint64) error {
			close(started)
			<-ctx.Done()
			return context.Cause(ctx)
		})
	}()
	<-started
	clock.Advance(time.Second)
	thief := mustAcquire(t, l, "c", time.Hour)
	select {
	case err := <-done:
		if !errors.Is(err, ErrLost) {
			t.Errorf("Do: %v, want ErrLost", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("fn not cancelled 10s after its lock was taken")
	}
	if info := mustInspect(t, l, "c"); !info.Held || info.Fence != thief.Fence {
		t.Errorf("thief's lock after Do: %+v", info)
	}
}

// TestMetrics checks the counters and the histogram on the memory backend,
// including that a lease's loss is counted once however it is found.
func TestMetrics(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	clock := fakeclock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	l := NewMemory(Config{Now: clock.Now, Registerer: reg})
	_ = NewMemory(Config{Registerer: reg}) // a second Locker on the same registry shares the collectors

	le := mustAcquire(t, l, "m", time.Second)
	if _, err := l.Acquire(ctx, "m", time.Second); !errors.Is(err, ErrHeld) {
		t.Fatal(err)
	}
	if _, err := l.Acquire(ctx, "m", time.Second, Wait(time.Millisecond)); !errors.Is(err, ErrHeld) {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := l.Acquire(cctx, "m", time.Second); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if _, err := l.Acquire(ctx, "", time.Second); !errors.Is(err, ErrInvalidName) {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	if err := le.Refresh(ctx, time.Second); !errors.Is(err, ErrLost) {
		t.Fatal(err)
	}
	if err := le.Release(ctx); !errors.Is(err, ErrLost) {
		t.Fatal(err)
	}
	if err := l.Release(ctx, "m", le.Token); !errors.Is(err, ErrLost) {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{metricAcquire, []string{"outcome", outcomeAcquired}, 1},
		{metricAcquire, []string{"outcome", outcomeHeld}, 2},
		{metricAcquire, []string{"outcome", outcomeError}, 1},
		{metricAcquire, []string{"backend", "memory"}, 4},
		// The lease's Refresh and Release count once; the token Release,
		// which knows nothing of the lease, counts once more.
		{metricLost, nil, 2},
		{metricWait, nil, 1},
	} {
		if got := testutil.Sum(t, reg, c.name, c.labels...); got != c.want {
			t.Errorf("%s%q = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// Without a registerer nothing is recorded and nothing breaks.
	nl := NewMemory(Config{})
	if nl.(*locker).m != nil {
		t.Error("metrics allocated without a Registerer")
	}
	if _, err := nl.Acquire(ctx, "m", time.Second, Wait(time.Millisecond)); err != nil {
		t.Fatal(err)
	}
}

// TestWaitQueue checks the wake-one rules: the oldest waiter without a
// pending wake is woken, and a waiter that leaves with a wake pending passes
// it on, so no wake is lost inside the queue.
func TestWaitQueue(t *testing.T) {
	t.Parallel()
	pending := func(w *waiter) bool { return len(w.ch) == 1 }
	q := newWaitQueue()
	q.wake("x") // nobody waiting: a no-op
	a, b, c := q.join("x"), q.join("x"), q.join("x")
	other := q.join("y")
	tests := []struct {
		what string
		do   func()
		want [3]bool // pending wake of a, b, c
	}{
		{"first wake goes to the oldest", func() { q.wake("x") }, [3]bool{true, false, false}},
		{"second wake skips a waiter with one pending", func() { q.wake("x") }, [3]bool{true, true, false}},
		{"a leaves with its wake: passed to c", func() { q.leave("x", a) }, [3]bool{false, true, true}},
		{"b consumes its wake", func() { <-b.ch }, [3]bool{false, false, true}},
		{"wakes go to b, then, with everyone pending, are dropped", func() { q.wake("x"); q.wake("x") }, [3]bool{false, true, true}},
	}
	for _, tc := range tests {
		tc.do()
		got := [3]bool{pending(a), pending(b), pending(c)}
		if got != tc.want {
			t.Fatalf("%s: pending (a, b, c) = %v, want %v", tc.what, got, tc.want)
		}
	}
	if pending(other) {
		t.Error("a wake of x reached a waiter of y")
	}
	q.leave("x", b)
	q.leave("x", c)
	q.leave("y", other)
	if len(q.m) != 0 {
		t.Errorf("queue not empty after everyone left: %v", q.m)
	}
}
