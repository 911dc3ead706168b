package lock

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elevacare/eleva-redis/internal/redistest"
)

// The conformance suite: the same behaviours, straight from lock.go's
// contract, run unchanged on the memory backend, a real redis-server and a
// real 3-node Redis Cluster. The memory backend runs on the real clock here
// (its fake-clock arithmetic is checked in memory_test.go).

// target is one deployment the suite runs on. open returns n Lockers sharing
// one lock space: on Redis each has its own client (n independent
// instances), on memory they are one Locker (one process).
type target struct {
	name string
	open func(t *testing.T, n int, cfg Config) []Locker
}

var targets = []target{
	{"memory", func(t *testing.T, n int, cfg Config) []Locker {
		l := NewMemory(cfg)
		ls := make([]Locker, n)
		for i := range ls {
			ls[i] = l
		}
		return ls
	}},
	{"redis", openRedis(redistest.URL)},
	{"cluster", openRedis(redistest.ClusterURL)},
}

// openRedis returns n Redis Lockers, each on its own client, on a key prefix
// unique to t. The timeout is generous: a conformance call must never fail
// because -race slowed it down.
func openRedis(url func(testing.TB) string) func(t *testing.T, n int, cfg Config) []Locker {
	return func(t *testing.T, n int, cfg Config) []Locker {
		t.Helper()
		if cfg.Prefix == "" {
			cfg.Prefix = redistest.Prefix(t)
		}
		if cfg.Timeout == 0 {
			cfg.Timeout = 5 * time.Second
		}
		if cfg.Logger == nil {
			cfg.Logger = slog.New(slog.DiscardHandler)
		}
		u := url(t)
		ls := make([]Locker, n)
		for i := range ls {
			ls[i] = NewRedis(redistest.Client(t, u), cfg)
		}
		return ls
	}
}

// steal makes name's lock vanish behind its holder's back, as an operator's
// DEL or a failover to a replica that never got the key would.
func steal(t *testing.T, l Locker, name string) {
	t.Helper()
	switch b := l.(*locker).b.(type) {
	case *memBackend:
		b.mu.Lock()
		if e := b.locks[name]; e != nil {
			e.token, e.expires = "", time.Time{}
		}
		b.mu.Unlock()
	case *redisBackend:
		lk, _, _ := b.keysOf(name)
		if err := b.client.Do(context.Background(), b.client.B().Del().Key(lk).Build()).Error(); err != nil {
			t.Fatalf("DEL %s: %v", lk, err)
		}
	default:
		t.Fatalf("steal: unknown backend %T", b)
	}
}

// forgetFence drops name's fence record, as its TTL (the lock's ttl + 24h)
// eventually does.
func forgetFence(t *testing.T, l Locker, name string) {
	t.Helper()
	switch b := l.(*locker).b.(type) {
	case *memBackend:
		b.mu.Lock()
		if e := b.locks[name]; e != nil {
			e.fence, e.fenceExpires = 0, time.Time{}
		}
		b.mu.Unlock()
	case *redisBackend:
		_, fk, _ := b.keysOf(name)
		n, err := b.client.Do(context.Background(), b.client.B().Del().Key(fk).Build()).AsInt64()
		if err != nil || n != 1 {
			t.Fatalf("DEL %s: %d, %v (want 1 key deleted)", fk, n, err)
		}
	default:
		t.Fatalf("forgetFence: unknown backend %T", b)
	}
}

// slack absorbs the time between a server's clock reading and the test's
// (same machine, same clock) under -race.
const slack = time.Second

// longTTL is the ttl of locks that must not expire during a test.
const longTTL = time.Minute

func mustAcquire(t *testing.T, l Locker, name string, ttl time.Duration, opts ...AcquireOption) *Lease {
	t.Helper()
	lease, err := l.Acquire(context.Background(), name, ttl, opts...)
	if err != nil {
		t.Fatalf("Acquire(%q): %v", name, err)
	}
	return lease
}

func mustInspect(t *testing.T, l Locker, name string) Info {
	t.Helper()
	info, err := l.Inspect(context.Background(), name)
	if err != nil {
		t.Fatalf("Inspect(%q): %v", name, err)
	}
	return info
}

// waitFree waits (up to 10s) until Inspect reports name free: the way to let
// a lease's TTL pass without guessing how long the server takes.
func waitFree(t *testing.T, l Locker, name string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for mustInspect(t, l, name).Held {
		if time.Now().After(deadline) {
			t.Fatalf("%q still held 10s later", name)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestConformance runs the suite on every backend.
func TestConformance(t *testing.T) {
	t.Parallel()
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			runConformance(t, tg.open)
		})
	}
}

func runConformance(t *testing.T, open func(t *testing.T, n int, cfg Config) []Locker) {
	ctx := context.Background()

	t.Run("AcquireInspectRelease", func(t *testing.T) {
		t.Parallel()
		ls := open(t, 2, Config{})
		a, b := ls[0], ls[1]
		if info := mustInspect(t, a, "job"); info != (Info{Name: "job"}) {
			t.Fatalf("Inspect of a never-taken lock: %+v, want free with no fence", info)
		}
		before := time.Now()
		lease := mustAcquire(t, a, "job", longTTL)
		after := time.Now()
		if lease.Name != "job" {
			t.Errorf("Name %q, want job", lease.Name)
		}
		raw, err := base64.RawURLEncoding.DecodeString(lease.Token)
		if err != nil || len(raw) < 16 {
			t.Errorf("Token %q: want >= 128 bits base64url, got %d bytes (%v)", lease.Token, len(raw), err)
		}
		// A fresh name's fence is the clock in µs (Redis TIME on Redis).
		if f := int64(lease.Fence); f < before.Add(-slack).UnixMicro() || f > after.Add(slack).UnixMicro() {
			t.Errorf("Fence %d: want the clock in µs, within [%d, %d]", f, before.UnixMicro(), after.UnixMicro())
		}
		if lease.ExpiresAt.Before(before.Add(longTTL)) || lease.ExpiresAt.After(after.Add(longTTL)) {
			t.Errorf("ExpiresAt %v: want send time + ttl in [%v, %v]", lease.ExpiresAt, before.Add(longTTL), after.Add(longTTL))
		}
		if closed(lease.Lost()) {
			t.Error("Lost() closed on a fresh lease")
		}

		// Another instance sees it held, with the holder's fence.
		info := mustInspect(t, b, "job")
		if !info.Held || info.Fence != lease.Fence || info.Name != "job" {
			t.Errorf("Inspect while held: %+v, want held with fence %d", info, lease.Fence)
		}
		if info.ExpiresAt.Before(before.Add(longTTL-slack)) || info.ExpiresAt.After(time.Now().Add(longTTL+slack)) {
			t.Errorf("Inspect ExpiresAt %v, want about now+%v", info.ExpiresAt, longTTL)
		}
		_, err = b.Acquire(ctx, "job", longTTL)
		if !errors.Is(err, ErrHeld) || !errors.Is(err, ErrNotAcquired) {
			t.Fatalf("second Acquire: %v, want ErrHeld (and ErrNotAcquired)", err)
		}
		// Other names are independent.
		other := mustAcquire(t, b, "job:other", longTTL)

		if err := lease.Release(ctx); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if err := lease.Release(ctx); err != nil {
			t.Errorf("second Release of a released lease: %v, want nil", err)
		}
		if closed(lease.Lost()) {
			t.Error("Lost() closed by a successful Release")
		}
		if info := mustInspect(t, b, "job"); info.Held || info.Fence != 0 || !info.ExpiresAt.IsZero() {
			t.Errorf("Inspect after release: %+v, want free", info)
		}
		if !mustInspect(t, a, "job:other").Held {
			t.Error("releasing job freed job:other")
		}
		next := mustAcquire(t, b, "job", longTTL)
		if next.Fence <= lease.Fence || next.Token == lease.Token {
			t.Errorf("re-acquire: fence %d after %d, token reused %v; want a higher fence and a new token", next.Fence, lease.Fence, next.Token == lease.Token)
		}
		if err := lease.Refresh(ctx, longTTL); !errors.Is(err, ErrLost) {
			t.Errorf("Refresh of the released lease while another holds it: %v, want ErrLost", err)
		}
		for _, le := range []*Lease{next, other} {
			if err := le.Release(ctx); err != nil {
				t.Errorf("Release(%q): %v", le.Name, err)
			}
		}
	})

	t.Run("BadInput", func(t *testing.T) {
		t.Parallel()
		l := open(t, 1, Config{})[0]
		long := strings.Repeat("n", MaxNameLen+1)
		okName := strings.Repeat("n", MaxNameLen)
		tests := []struct {
			name string
			call func() error
			want error
		}{
			{"acquire empty name", func() error { _, err := l.Acquire(ctx, "", time.Second); return err }, ErrInvalidName},
			{"acquire long name", func() error { _, err := l.Acquire(ctx, long, time.Second); return err }, ErrInvalidName},
			{"acquire ttl 0", func() error { _, err := l.Acquire(ctx, "x", 0); return err }, ErrInvalidTTL},
			{"acquire ttl negative", func() error { _, err := l.Acquire(ctx, "x", -time.Second); return err }, ErrInvalidTTL},
			{"acquire ttl below 1ms", func() error { _, err := l.Acquire(ctx, "x", 999*time.Microsecond); return err }, ErrInvalidTTL},
			{"acquire ttl over 24h", func() error { _, err := l.Acquire(ctx, "x", MaxTTL+time.Millisecond); return err }, ErrInvalidTTL},
			{"inspect empty name", func() error { _, err := l.Inspect(ctx, ""); return err }, ErrInvalidName},
			{"refresh empty name", func() error { _, err := l.Refresh(ctx, "", "tok", time.Second); return err }, ErrInvalidName},
			{"refresh empty token", func() error { _, err := l.Refresh(ctx, "x", "", time.Second); return err }, ErrInvalidToken},
			{"refresh long token", func() error { _, err := l.Refresh(ctx, "x", long, time.Second); return err }, ErrInvalidToken},
			{"refresh ttl 0", func() error { _, err := l.Refresh(ctx, "x", "tok", 0); return err }, ErrInvalidTTL},
			{"release empty name", func() error { return l.Release(ctx, "", "tok") }, ErrInvalidName},
			{"release empty token", func() error { return l.Release(ctx, "x", "") }, ErrInvalidToken},
			{"refresh unknown token", func() error { _, err := l.Refresh(ctx, "x", "tok", time.Second); return err }, ErrLost},
			{"release unknown token", func() error { return l.Release(ctx, "x", "tok") }, ErrLost},
			{"lease not from Acquire", func() error { return (&Lease{Name: "x", Token: "tok"}).Release(ctx) }, ErrLost},
		}
		for _, tc := range tests {
			err := tc.call()
			if !errors.Is(err, tc.want) {
				t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
			}
			if err != nil && !strings.HasPrefix(err.Error(), "lock: ") {
				t.Errorf("%s: error %q lacks the package prefix", tc.name, err)
			}
		}
		if info := mustInspect(t, l, "x"); info.Held || info.Fence != 0 {
			t.Errorf("bad calls left state behind: %+v", info)
		}
		// The bounds themselves are accepted.
		for _, tc := range []struct {
			name string
			ttl  time.Duration
		}{{okName, MinTTL}, {"max", MaxTTL}} {
			lease := mustAcquire(t, l, tc.name, tc.ttl)
			if err := lease.Release(ctx); err != nil && !(tc.ttl == MinTTL && errors.Is(err, ErrLost)) {
				t.Errorf("Release of %s-ttl lease: %v", tc.ttl, err)
			}
		}
		if err := Do(ctx, l, "x", time.Second, nil); err == nil {
			t.Error("Do with nil fn: nil error")
		}
		if err := Do(ctx, nil, "x", time.Second, func(context.Context, uint64) error { return nil }); err == nil {
			t.Error("Do with nil Locker: nil error")
		}
	})

	t.Run("Refresh", func(t *testing.T) {
		t.Parallel()
		ls := open(t, 2, Config{})
		lease := mustAcquire(t, ls[0], "r", 2*time.Second)
		before := time.Now()
		if err := lease.Refresh(ctx, longTTL); err != nil {
			t.Fatalf("Refresh: %v", err)
		}
		if lease.ExpiresAt.Before(before.Add(longTTL)) || lease.ExpiresAt.After(time.Now().Add(longTTL)) {
			t.Errorf("ExpiresAt after Refresh: %v, want about now+%v", lease.ExpiresAt, longTTL)
		}
		if info := mustInspect(t, ls[1], "r"); !info.Held || info.ExpiresAt.Before(before.Add(longTTL-slack)) || info.Fence != lease.Fence {
			t.Errorf("Inspect after Refresh: %+v, want held until about now+%v, same fence %d", info, longTTL, lease.Fence)
		}
		// Token-based, as the HTTP API calls it.
		exp, err := ls[1].Refresh(ctx, "r", lease.Token, 3*time.Second)
		if err != nil {
			t.Fatalf("token Refresh: %v", err)
		}
		if d := time.Until(exp); d <= 0 || d > 3*time.Second {
			t.Errorf("token Refresh expiry in %v, want (0, 3s]", d)
		}
		if info := mustInspect(t, ls[0], "r"); !info.Held || time.Until(info.ExpiresAt) > 3*time.Second+slack {
			t.Errorf("Inspect after shortening Refresh: %+v, want expiry within 3s", info)
		}
		if err := ls[1].Release(ctx, "r", lease.Token); err != nil {
			t.Fatalf("token Release: %v", err)
		}
		if _, err := ls[0].Refresh(ctx, "r", lease.Token, time.Second); !errors.Is(err, ErrLost) {
			t.Errorf("Refresh after release: %v, want ErrLost", err)
		}
		if info := mustInspect(t, ls[0], "r"); info.Held {
			t.Errorf("Refresh after release re-acquired: %+v", info)
		}
	})

	t.Run("WrongTokenChangesNothing", func(t *testing.T) {
		t.Parallel()
		ls := open(t, 2, Config{})
		lease := mustAcquire(t, ls[0], "w", longTTL)
		if _, err := ls[1].Refresh(ctx, "w", lease.Token+"x", time.Millisecond); !errors.Is(err, ErrLost) {
			t.Errorf("Refresh with a wrong token: %v, want ErrLost", err)
		}
		if err := ls[1].Release(ctx, "w", newToken()); !errors.Is(err, ErrLost) {
			t.Errorf("Release with a wrong token: %v, want ErrLost", err)
		}
		if info := mustInspect(t, ls[1], "w"); !info.Held || info.Fence != lease.Fence || time.Until(info.ExpiresAt) < longTTL-slack {
			t.Errorf("after wrong-token calls: %+v, want still held with fence %d for about %v", info, lease.Fence, longTTL)
		}
		if err := lease.Release(ctx); err != nil {
			t.Fatalf("Release: %v", err)
		}
	})

	// Acceptance 2: a holder that stops refreshing loses the lock after its
	// TTL; its Refresh returns ErrLost, and its Release does not delete the
	// next holder's lock.
	t.Run("ExpiryLosesTheLock", func(t *testing.T) {
		t.Parallel()
		ls := open(t, 2, Config{})
		old := mustAcquire(t, ls[0], "e", 200*time.Millisecond)
		if !mustInspect(t, ls[1], "e").Held {
			t.Fatal("not held right after Acquire")
		}
		waitFree(t, ls[1], "e")
		if time.Now().Before(old.ExpiresAt) {
			t.Errorf("lock free at %v, before the lease's ExpiresAt %v", time.Now(), old.ExpiresAt)
		}
		if err := old.Refresh(ctx, time.Minute); !errors.Is(err, ErrLost) {
			t.Fatalf("Refresh after expiry: %v, want ErrLost", err)
		}
		if !closed(old.Lost()) {
			t.Error("Lost() not closed after Refresh found the lock lost")
		}
		if info := mustInspect(t, ls[1], "e"); info.Held {
			t.Fatalf("Refresh after expiry re-acquired the lock: %+v", info)
		}
		next := mustAcquire(t, ls[1], "e", longTTL)
		if next.Fence <= old.Fence {
			t.Errorf("fence after expiry %d, want > %d", next.Fence, old.Fence)
		}
		if err := old.Release(ctx); !errors.Is(err, ErrLost) {
			t.Errorf("old holder's Release: %v, want ErrLost", err)
		}
		if _, err := ls[0].Refresh(ctx, "e", old.Token, longTTL); !errors.Is(err, ErrLost) {
			t.Errorf("old holder's token Refresh: %v, want ErrLost", err)
		}
		info := mustInspect(t, ls[0], "e")
		if !info.Held || info.Fence != next.Fence {
			t.Fatalf("after the old holder's Release: %+v, want held by the new holder with fence %d", info, next.Fence)
		}
		if err := next.Release(ctx); err != nil {
			t.Fatalf("new holder's Release: %v", err)
		}
	})

	t.Run("ReleaseWithCancelledContext", func(t *testing.T) {
		t.Parallel()
		l := open(t, 1, Config{})[0]
		cctx, cancel := context.WithCancel(ctx)
		lease, err := l.Acquire(cctx, "c", longTTL)
		if err != nil {
			t.Fatal(err)
		}
		tokenLease := mustAcquire(t, l, "c2", longTTL)
		cancel()
		if _, err := l.Acquire(cctx, "c3", longTTL); !errors.Is(err, context.Canceled) {
			t.Errorf("Acquire with a cancelled ctx: %v, want context.Canceled", err)
		}
		if err := lease.Release(cctx); err != nil {
			t.Fatalf("Release with a cancelled ctx: %v", err)
		}
		if err := l.Release(cctx, "c2", tokenLease.Token); err != nil {
			t.Fatalf("token Release with a cancelled ctx: %v", err)
		}
		for _, name := range []string{"c", "c2", "c3"} {
			if mustInspect(t, l, name).Held {
				t.Errorf("%s still held", name)
			}
		}
	})

	t.Run("FenceIncreasesAcrossExpiryAndForgetting", func(t *testing.T) {
		t.Parallel()
		ls := open(t, 2, Config{})
		var last uint64
		check := func(what string, le *Lease) {
			t.Helper()
			if le.Fence <= last {
				t.Fatalf("%s: fence %d, want > %d", what, le.Fence, last)
			}
			last = le.Fence
		}
		check("first", mustAcquire(t, ls[0], "f", 50*time.Millisecond))
		waitFree(t, ls[1], "f")
		check("after expiry", mustAcquire(t, ls[1], "f", 50*time.Millisecond))
		waitFree(t, ls[0], "f")
		// The fence record's own TTL (ttl + 24h) passes: the next fence is
		// the clock, still above every earlier one.
		forgetFence(t, ls[0], "f")
		le := mustAcquire(t, ls[0], "f", longTTL)
		check("after the fence record was forgotten", le)
		if err := le.Release(ctx); err != nil {
			t.Fatal(err)
		}
		// Back-to-back acquires within one clock tick still increase.
		for i := range 20 {
			le := mustAcquire(t, ls[i%2], "f", longTTL)
			check(fmt.Sprintf("rapid acquire %d", i), le)
			if err := le.Release(ctx); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("WaitWokenByRelease", func(t *testing.T) {
		t.Parallel()
		ls := open(t, 2, Config{})
		holder := mustAcquire(t, ls[0], "wr", longTTL)
		got := make(chan *Lease, 1)
		errc := make(chan error, 1)
		go func() {
			le, err := ls[1].Acquire(ctx, "wr", longTTL, Wait(10*time.Second))
			got <- le
			errc <- err
		}()
		// The waiter keeps waiting while the lock is held...
		select {
		case le := <-got:
			t.Fatalf("waiter returned while the lock was held: %+v, %v", le, <-errc)
		case <-time.After(100 * time.Millisecond):
		}
		if err := holder.Release(ctx); err != nil {
			t.Fatal(err)
		}
		// ...and gets it after the release.
		le := <-got
		if err := <-errc; err != nil {
			t.Fatalf("waiter: %v", err)
		}
		if le.Fence <= holder.Fence {
			t.Errorf("waiter's fence %d, want > %d", le.Fence, holder.Fence)
		}
		if err := le.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("WaitHandsOffOnExpiry", func(t *testing.T) {
		t.Parallel()
		ls := open(t, 2, Config{})
		holder := mustAcquire(t, ls[0], "we", 300*time.Millisecond) // never released
		le, err := ls[1].Acquire(ctx, "we", longTTL, Wait(10*time.Second))
		if err != nil {
			t.Fatalf("waiter: %v", err)
		}
		if time.Now().Before(holder.ExpiresAt) || le.Fence <= holder.Fence {
			t.Errorf("waiter got the lock at %v (holder's lease ends %v) with fence %d (holder %d)", time.Now(), holder.ExpiresAt, le.Fence, holder.Fence)
		}
		if err := holder.Release(ctx); !errors.Is(err, ErrLost) {
			t.Errorf("expired holder's Release: %v, want ErrLost", err)
		}
		if err := le.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("WaitEnds", func(t *testing.T) {
		t.Parallel()
		ls := open(t, 2, Config{})
		holder := mustAcquire(t, ls[0], "wt", longTTL)
		start := time.Now()
		_, err := ls[1].Acquire(ctx, "wt", longTTL, Wait(150*time.Millisecond))
		took := time.Since(start)
		if !errors.Is(err, ErrHeld) {
			t.Errorf("Acquire with Wait on a held lock: %v, want ErrHeld", err)
		}
		if took < 150*time.Millisecond || took > 5*time.Second {
			t.Errorf("Wait(150ms) returned after %v, want [150ms, 5s]", took)
		}
		// A ctx that ends during the wait: ErrHeld and the ctx's error.
		cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		_, err = ls[1].Acquire(cctx, "wt", longTTL, Wait(time.Minute))
		if !errors.Is(err, ErrHeld) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Acquire whose ctx expired while waiting: %v, want ErrHeld and DeadlineExceeded", err)
		}
		if info := mustInspect(t, ls[1], "wt"); info.Fence != holder.Fence {
			t.Errorf("failed waits changed the lock: %+v", info)
		}
		if err := holder.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("DoKeepsTheLockAlive", func(t *testing.T) {
		t.Parallel()
		ls := open(t, 2, Config{})
		// The watchdog refreshes every ttl/3; a TTL of 500ms leaves 330ms of
		// slack for a refresh delayed by a loaded CI machine under -race.
		const ttl = 500 * time.Millisecond
		var ran bool
		err := Do(ctx, ls[0], "d", ttl, func(fctx context.Context, fence uint64) error {
			ran = true
			// Run for 3 TTLs: without the watchdog the lock would expire.
			time.Sleep(3 * ttl)
			if fctx.Err() != nil {
				return fmt.Errorf("fn's ctx done while the lock is held: %w", context.Cause(fctx))
			}
			info := mustInspect(t, ls[1], "d")
			if !info.Held || info.Fence != fence {
				return fmt.Errorf("after 3 TTLs: %+v, want held with fence %d", info, fence)
			}
			if _, err := ls[1].Acquire(ctx, "d", time.Second); !errors.Is(err, ErrHeld) {
				return fmt.Errorf("another Acquire during Do: %v, want ErrHeld", err)
			}
			return nil
		})
		if err != nil || !ran {
			t.Fatalf("Do: %v (fn ran: %v)", err, ran)
		}
		if mustInspect(t, ls[1], "d").Held {
			t.Error("lock still held after Do returned")
		}
	})

	t.Run("DoCancelsWhenLost", func(t *testing.T) {
		t.Parallel()
		ls := open(t, 2, Config{})
		started := make(chan uint64)
		var cause error
		done := make(chan error, 1)
		go func() {
			done <- Do(ctx, ls[0], "dl", 300*time.Millisecond, func(fctx context.Context, fence uint64) error {
				started <- fence
				<-fctx.Done()
				cause = context.Cause(fctx)
				return fctx.Err()
			})
		}()
		fence := <-started
		steal(t, ls[1], "dl")
		thief := mustAcquire(t, ls[1], "dl", longTTL)
		var err error
		select {
		case err = <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("fn's ctx not cancelled 10s after the lock was taken over")
		}
		if !errors.Is(err, ErrLost) || !errors.Is(cause, ErrLost) {
			t.Errorf("Do: %v (fn's ctx cause %v), want ErrLost for both", err, cause)
		}
		if thief.Fence <= fence {
			t.Errorf("thief's fence %d, want > %d", thief.Fence, fence)
		}
		if info := mustInspect(t, ls[0], "dl"); !info.Held || info.Fence != thief.Fence {
			t.Errorf("Do's release removed the new holder's lock: %+v", info)
		}
		if err := thief.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("DoReleasesOnErrorAndPanic", func(t *testing.T) {
		t.Parallel()
		l := open(t, 1, Config{})[0]
		boom := errors.New("boom")
		if err := Do(ctx, l, "dp", longTTL, func(context.Context, uint64) error { return boom }); !errors.Is(err, boom) || errors.Is(err, ErrLost) {
			t.Errorf("Do with a failing fn: %v, want fn's error alone", err)
		}
		if mustInspect(t, l, "dp").Held {
			t.Error("still held after fn failed")
		}
		func() {
			defer func() {
				if r := recover(); r != "kaboom" {
					t.Errorf("recovered %v, want fn's panic value", r)
				}
			}()
			_ = Do(ctx, l, "dp", longTTL, func(context.Context, uint64) error { panic("kaboom") })
			t.Error("Do returned normally after fn panicked")
		}()
		if mustInspect(t, l, "dp").Held {
			t.Error("still held after fn panicked")
		}
		// A caller's cancellation reaches fn, is not a loss, and the lock
		// is released.
		cctx, cancel := context.WithCancel(ctx)
		err := Do(cctx, l, "dp", longTTL, func(fctx context.Context, _ uint64) error {
			cancel()
			<-fctx.Done()
			return fctx.Err()
		})
		if !errors.Is(err, context.Canceled) || errors.Is(err, ErrLost) {
			t.Errorf("Do whose caller cancelled: %v, want context.Canceled only", err)
		}
		if mustInspect(t, l, "dp").Held {
			t.Error("still held after a cancelled Do")
		}
		// A held lock: fn does not run.
		holder := mustAcquire(t, l, "dp", longTTL)
		ran := false
		if err := Do(ctx, l, "dp", longTTL, func(context.Context, uint64) error { ran = true; return nil }); !errors.Is(err, ErrHeld) || ran {
			t.Errorf("Do on a held lock: %v (fn ran: %v), want ErrHeld without running fn", err, ran)
		}
		if err := holder.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// TestMutualExclusion is acceptance 1: 8 instances x 50 goroutines contend
// for one lock, each acquiring it `rounds` times with Wait. Inside, each does
// a read-increment-write of a plain variable, with a yield in between to
// widen the window, and records its fence in a plain slice: both are
// protected by the lock alone, so a double grant shows up as a lost update,
// a fence out of order, or a report by the race detector. The final count
// must equal the number of acquisitions, and the fences, in the order they
// were recorded, must strictly increase.
func TestMutualExclusion(t *testing.T) {
	t.Parallel()
	const instances, perInstance, rounds = 8, 50, 2
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			ls := tg.open(t, instances, Config{})
			ctx := context.Background()
			var (
				counter  int      // guarded by the lock only
				fences   []uint64 // guarded by the lock only
				acquired atomic.Int64
				wg       sync.WaitGroup
			)
			start := time.Now()
			for i := range instances {
				for range perInstance {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for range rounds {
							le, err := ls[i].Acquire(ctx, "counter", 10*time.Second, Wait(time.Minute))
							if err != nil {
								t.Errorf("Acquire: %v", err)
								return
							}
							v := counter
							runtime.Gosched()
							counter = v + 1
							fences = append(fences, le.Fence)
							acquired.Add(1)
							if err := le.Release(ctx); err != nil {
								t.Errorf("Release: %v", err)
								return
							}
						}
					}()
				}
			}
			wg.Wait()
			n := acquired.Load()
			t.Logf("%s: %d acquisitions by %d goroutines on %d instances in %v", tg.name, n, instances*perInstance, instances, time.Since(start).Round(time.Millisecond))
			if n != instances*perInstance*rounds {
				t.Errorf("%d acquisitions, want %d", n, instances*perInstance*rounds)
			}
			if int64(counter) != n || int64(len(fences)) != n {
				t.Fatalf("counter %d, %d fences recorded, for %d acquisitions: mutual exclusion failed", counter, len(fences), n)
			}
			for i := 1; i < len(fences); i++ {
				if fences[i] <= fences[i-1] {
					t.Fatalf("fence %d at acquisition %d after %d: fences must strictly increase", fences[i], i, fences[i-1])
				}
			}
		})
	}
}

// TestHandOff is acceptance 3: after a release, a waiting Acquire (Wait 5s)
// gets the lock. It reports the hand-off time, from the start of the
// holder's Release to the return of the waiter's Acquire, as p50/p99 over
// 200 hand-offs per backend (a figure, not an assertion), and checks that
// the polling fallback alone (notifications off) hands off too. It is not
// parallel, so the figures are not skewed by the rest of the suite.
func TestHandOff(t *testing.T) {
	for _, tc := range []struct {
		tg     target
		cfg    Config
		rounds int
	}{
		{targets[0], Config{}, 200},
		{targets[1], Config{}, 200},
		{targets[2], Config{}, 200},
		{target{"redis-polling", targets[1].open}, Config{DisableNotifications: true}, 30},
		{target{"cluster-polling", targets[2].open}, Config{DisableNotifications: true}, 30},
	} {
		t.Run(tc.tg.name, func(t *testing.T) {
			ls := tc.tg.open(t, 2, tc.cfg)
			holderL, waiterL := ls[0], ls[1]
			if rb, ok := waiterL.(*locker).b.(*redisBackend); ok && tc.cfg.DisableNotifications && (rb.notify != nil || rb.publish != "") {
				t.Fatalf("notifications off, yet notifier %v and publish %q", rb.notify, rb.publish)
			}
			blocked := make(chan struct{}, 1)
			waiterL.(*locker).testWaiting = func(string) {
				select {
				case blocked <- struct{}{}:
				default:
				}
			}
			type result struct {
				le  *Lease
				err error
				at  time.Time
			}
			ctx := context.Background()
			times := make([]time.Duration, 0, tc.rounds)
			for range tc.rounds {
				holder := mustAcquire(t, holderL, "h", longTTL)
				select {
				case <-blocked: // from an earlier round
				default:
				}
				res := make(chan result, 1)
				go func() {
					le, err := waiterL.Acquire(ctx, "h", longTTL, Wait(5*time.Second))
					res <- result{le, err, time.Now()}
				}()
				select {
				case <-blocked:
				case <-time.After(5 * time.Second):
					t.Fatal("waiter did not start waiting within 5s")
				}
				start := time.Now()
				if err := holder.Release(ctx); err != nil {
					t.Fatal(err)
				}
				r := <-res
				if r.err != nil {
					t.Fatalf("waiter: %v", r.err)
				}
				times = append(times, r.at.Sub(start))
				if err := r.le.Release(ctx); err != nil {
					t.Fatal(err)
				}
			}
			slices.Sort(times)
			t.Logf("%s: hand-off over %d releases: p50 %v, p99 %v, max %v", tc.tg.name, len(times),
				times[len(times)/2], times[(len(times)*99+99)/100-1], times[len(times)-1])
		})
	}
}
