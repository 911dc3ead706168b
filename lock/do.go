package lock

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// errLostCause is the cancellation cause of fn's ctx when Do's lock is lost.
var errLostCause = fmt.Errorf("%w: the lock expired or was taken over while fn ran", ErrLost)

// Do acquires name for ttl (with opts, such as Wait), runs fn while holding
// it, and releases it when fn returns, also when fn panics (the panic then
// continues). fn gets the lease's fence: pass it to the resource so that it
// can reject a stale holder (docs/locks.md).
//
// While fn runs, a watchdog refreshes the lease every ttl/3. When the lock is
// lost (a refresh finds it expired or taken over, or its expiry passes with
// no successful refresh, say while Redis is unreachable), fn's ctx is
// cancelled with cause ErrLost (see context.Cause), and Do returns an error
// wrapping ErrLost, joined with fn's error if fn returned one. fn must stop
// writing when its ctx is done.
//
// Errors: those of Acquire when the lock was not taken (fn did not run);
// otherwise fn's error, wrapped with ErrLost when the lock was lost while fn
// ran or was found expired at release. A release that fails with a backend
// error after fn succeeded is not returned: fn's work is done and was
// protected throughout, and the lock expires by itself within ttl.
//
// The watchdog's timers run on the real clock, whatever Config.Now is.
func Do(ctx context.Context, l Locker, name string, ttl time.Duration, fn func(ctx context.Context, fence uint64) error, opts ...AcquireOption) error {
	if l == nil {
		return errors.New("lock: Do: nil Locker")
	}
	if fn == nil {
		return errors.New("lock: Do: nil fn")
	}
	lease, err := l.Acquire(ctx, name, ttl, opts...)
	if err != nil {
		return err
	}
	fctx, cancel := context.WithCancelCause(ctx)
	stop := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		watchdog(ctx, lease, ttl, stop, cancel)
	}()

	var fnErr, relErr error
	func() {
		defer func() {
			close(stop)
			<-stopped
			cancel(nil)
			relErr = lease.Release(ctx) // runs even when ctx is done
		}()
		fnErr = fn(fctx, lease.Fence)
	}()

	if lease.isLost() || errors.Is(relErr, ErrLost) {
		switch {
		case fnErr == nil:
			return errLostCause
		case errors.Is(fnErr, ErrLost):
			return fnErr
		default:
			return fmt.Errorf("%w; fn: %w", errLostCause, fnErr)
		}
	}
	return fnErr
}

// watchdog refreshes lease every ttl/3 until stop is closed. It cancels fn's
// ctx (with cause ErrLost) when a refresh finds the lock lost or when the
// lease's expiry passes before a refresh succeeded. Refreshes ignore the
// cancellation of ctx: the lock stays held until fn returns.
func watchdog(ctx context.Context, lease *Lease, ttl time.Duration, stop <-chan struct{}, cancel context.CancelCauseFunc) {
	every := max(ttl/3, time.Millisecond/2)
	tick := time.NewTicker(every)
	defer tick.Stop()
	expiry := time.NewTimer(time.Until(lease.expiresAt()))
	defer expiry.Stop()
	base := context.WithoutCancel(ctx)
	for {
		select {
		case <-stop:
			return
		case <-expiry.C:
			lease.markLost()
			cancel(errLostCause)
			return
		case <-tick.C:
			// A refresh that cannot finish before the lease expires is of no
			// use: bound it by the expiry.
			rctx, rcancel := context.WithDeadline(base, lease.expiresAt())
			err := lease.Refresh(rctx, ttl)
			rcancel()
			switch {
			case err == nil:
				expiry.Reset(time.Until(lease.expiresAt()))
			case errors.Is(err, ErrLost):
				cancel(errLostCause)
				return
			}
			// Any other error (Redis unreachable): try again on the next
			// tick; the expiry timer decides when to give up.
		}
	}
}
