package lock

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	fakeclock "github.com/elevacare/eleva-redis/internal/clock"
)

// startWaiter starts Acquire(name, Wait 5s) on l with ctx and returns once it
// blocks waiting (l.testWaiting must send on blocked).
func startWaiter(t *testing.T, ctx context.Context, l Locker, name string, blocked chan struct{}) chan acquireResult {
	t.Helper()
	res := make(chan acquireResult, 1)
	go func() {
		le, err := l.Acquire(ctx, name, longTTL, Wait(5*time.Second))
		res <- acquireResult{le, err}
	}()
	select {
	case <-blocked:
	case <-time.After(5 * time.Second):
		t.Fatal("waiter did not start waiting within 5s")
	}
	return res
}

type acquireResult struct {
	le  *Lease
	err error
}

// TestLocalHandOff proves the local direct hand-off: when a holder releases
// while a waiter of the same Locker waits, the waiter gets the lock without
// any acquire of its own having taken it (testAcquired never fires for it):
// the holder's one release call moved the lock, with a fence above the
// holder's that Inspect confirms. Then, with nobody waiting, a release frees
// the lock.
func TestLocalHandOff(t *testing.T) {
	t.Parallel()
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			l := tg.open(t, 1, Config{})[0].(*locker)
			blocked := make(chan struct{}, 1)
			l.testWaiting = func(string) {
				select {
				case blocked <- struct{}{}:
				default:
				}
			}
			var acquired, handedOff atomic.Int64
			l.testAcquired = func(string) { acquired.Add(1) }
			l.testHandedOff = func(string) { handedOff.Add(1) }

			holder := mustAcquire(t, l, "ho", longTTL)
			if acquired.Load() != 1 {
				t.Fatalf("acquired counter %d after the holder's acquire, want 1", acquired.Load())
			}
			res := startWaiter(t, ctx, l, "ho", blocked)
			if err := holder.Release(ctx); err != nil {
				t.Fatal(err)
			}
			r := <-res
			if r.err != nil {
				t.Fatalf("waiter: %v", r.err)
			}
			if n := acquired.Load(); n != 1 {
				t.Errorf("%d acquires took the lock, want 1 (the holder's): the waiter's lock was not handed off", n)
			}
			if n := handedOff.Load(); n != 1 {
				t.Errorf("%d hand-offs, want 1", n)
			}
			if r.le.Fence <= holder.Fence {
				t.Errorf("handed-off fence %d not above the holder's %d", r.le.Fence, holder.Fence)
			}
			if info := mustInspect(t, l, "ho"); !info.Held || info.Fence != r.le.Fence || info.ExpiresAt.IsZero() {
				t.Errorf("after the hand-off Inspect = %+v, want held with fence %d and an expiry", info, r.le.Fence)
			}
			if err := holder.Release(ctx); err != nil {
				t.Errorf("second Release of the old lease: %v, want nil (already released)", err)
			}
			if err := l.Release(ctx, "ho", holder.Token); !errors.Is(err, ErrLost) {
				t.Errorf("Release with the old token after the hand-off: %v, want ErrLost", err)
			}
			if err := r.le.Refresh(ctx, longTTL); err != nil {
				t.Errorf("Refresh of the handed-off lease: %v", err)
			}
			if err := r.le.Release(ctx); err != nil {
				t.Fatal(err)
			}
			if info := mustInspect(t, l, "ho"); info.Held {
				t.Errorf("after the last release with nobody waiting, Inspect = %+v, want free", info)
			}
		})
	}
}

// TestHandOffToGoneWaiter: when the chosen waiter's ctx ends while the
// hand-off is in flight, the handed-off lock is released at once (not left
// held by nobody until its ttl), the holder's Release still succeeds, and
// the waiter returns ErrHeld wrapping its ctx error.
func TestHandOffToGoneWaiter(t *testing.T) {
	t.Parallel()
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			l := tg.open(t, 1, Config{})[0].(*locker)
			blocked := make(chan struct{}, 1)
			l.testWaiting = func(string) {
				select {
				case blocked <- struct{}{}:
				default:
				}
			}
			wctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			holder := mustAcquire(t, l, "gone", longTTL)
			res := startWaiter(t, wctx, l, "gone", blocked)
			var got acquireResult
			l.testHandedOff = func(string) {
				cancel()
				got = <-res // the waiter has returned before the lease is delivered
			}
			if err := holder.Release(context.Background()); err != nil {
				t.Fatalf("holder's Release: %v", err)
			}
			if got.le != nil || !errors.Is(got.err, ErrHeld) || !errors.Is(got.err, context.Canceled) {
				t.Fatalf("cancelled waiter got (%v, %v), want ErrHeld wrapping context.Canceled", got.le, got.err)
			}
			if info := mustInspect(t, l, "gone"); info.Held {
				t.Errorf("lock handed to a gone waiter is still held: %+v", info)
			}
			if left := l.queue.heldHere("gone", l.b.now()); left != 0 {
				t.Errorf("the Locker still records the gone waiter's lease as held (%v left): its next waiter would not try", left)
			}
		})
	}
}

// TestHandOffCap: local hand-offs do not shut out other instances. Four
// goroutines of Locker A acquire and release one lock in a loop, so A
// always has a waiter to hand the lock to and the lock would never become
// free; a waiter of Locker B (another client) still gets it, because after
// handoffCap consecutive hand-offs A releases for everyone. B only asks once
// A has made two caps' worth of hand-offs. (With an unbounded cap B's wait
// ends with ErrHeld: checked by hand when this test was written.)
func TestHandOffCap(t *testing.T) {
	t.Parallel()
	for _, tg := range targets[1:] {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			ls := tg.open(t, 2, Config{})
			a, b := ls[0].(*locker), ls[1]
			var handedOff atomic.Int64
			warm := make(chan struct{})
			a.testHandedOff = func(string) {
				if handedOff.Add(1) == 2*defaultHandoffCap {
					close(warm)
				}
			}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						le, err := a.Acquire(ctx, "cap", longTTL, Wait(10*time.Second))
						if err != nil {
							t.Errorf("A: %v", err)
							return
						}
						if err := le.Release(ctx); err != nil {
							t.Errorf("A release: %v", err)
							return
						}
					}
				}()
			}
			// Let A's loop reach its hand-off regime before B asks.
			select {
			case <-warm:
			case <-time.After(5 * time.Second):
				t.Fatal("A made fewer than two caps' worth of hand-offs in 5s")
			}
			before := handedOff.Load()
			le, err := b.Acquire(ctx, "cap", longTTL, Wait(5*time.Second))
			close(stop)
			if err != nil {
				t.Errorf("B's waiter did not get the lock past A's hand-offs: %v", err)
			} else if err := le.Release(ctx); err != nil {
				t.Error(err)
			}
			wg.Wait()
			t.Logf("%s: %d hand-offs in A before B asked", tg.name, before)
		})
	}
}

// TestHoldersForgetExpiredLeases: a Locker records each lease it hands out
// (so that its own waiters need not try while it holds a name), and a lease
// whose holder lets it expire instead of releasing it is never removed by a
// release. The record must not grow with every name ever locked: after
// 10,000 leases on distinct names left to expire, it holds only the live
// ones.
func TestHoldersForgetExpiredLeases(t *testing.T) {
	t.Parallel()
	clock := fakeclock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	l := NewMemory(Config{Now: clock.Now}).(*locker)
	for i := range 10_000 {
		mustAcquire(t, l, "n"+strconv.Itoa(i), time.Millisecond)
		clock.Advance(time.Millisecond) // the lease expires unreleased
	}
	live := mustAcquire(t, l, "live", time.Hour)
	l.queue.mu.Lock()
	n := len(l.queue.holders)
	got := l.queue.holders["live"]
	l.queue.mu.Unlock()
	if n > 2*holdersSweepMin {
		t.Errorf("%d leases recorded after 10,000 expired ones and 1 live one, want at most %d", n, 2*holdersSweepMin)
	}
	if got != live {
		t.Errorf("the live lease is not recorded")
	}
}
