package lock

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/redis/rueidis"
)

// This file holds what both backends share: input validation, tokens, the
// waiting loop of Acquire, metrics. A backend only implements the four atomic
// operations and, for Redis, release notifications.

// backend is one storage of locks. Its operations are atomic. Errors are
// ErrLost, ErrBackend or a wrapped ctx error, never anything else.
type backend interface {
	// kind is the metrics label: "memory" or "redis".
	kind() string
	// now is the clock of leases' ExpiresAt.
	now() time.Time
	// acquire takes name for token when it is free, returning its fence; when
	// held, it reports acquired false and how long the holder's lease has left.
	acquire(ctx context.Context, name, token string, ttl time.Duration) (fence uint64, acquired bool, heldFor time.Duration, err error)
	refresh(ctx context.Context, name, token string, ttl time.Duration) error
	release(ctx context.Context, name, token string) error
	inspect(ctx context.Context, name string) (Info, error)
	// watch makes releases of name (by any instance) wake this locker's
	// waiters of name, until unwatch is called. It returns once
	// notifications flow, or when that takes longer than ctx allows or the
	// backend's timeout (the waiter then polls). notifies reports whether
	// releases are notified at all; when false, the locker wakes its own
	// waiters on its own releases.
	watch(ctx context.Context, name string) (unwatch func())
	// watchIfReady is watch when notifications of name already flow to
	// this locker, without waiting: ok false (and nothing to undo) otherwise.
	watchIfReady(name string) (unwatch func(), ok bool)
	// notifyReady reports whether releases of name are being notified to
	// this locker now.
	notifyReady(name string) bool
	notifies() bool
	// handoff releases the lock held with token and, in the same atomic
	// step, takes it for newToken with ttl and a new fence (as acquire
	// would), without notifying anyone. It returns ErrLost, changing
	// nothing, when token does not hold the lock. On a backend error it
	// releases newToken's lock in the background, should the step have run.
	handoff(ctx context.Context, name, token, newToken string, ttl time.Duration) (fence uint64, err error)
}

// locker implements Locker on top of a backend.
type locker struct {
	b backend
	m *metrics
	// cfgErr, when set, is returned by every call: the constructors have no
	// error result, and a bad configuration must neither panic nor silently
	// use another key space.
	cfgErr error
	queue  *waitQueue
	// retryFor is how long a waiting Acquire retries backend errors.
	retryFor time.Duration
	// handoffCap is the number of consecutive local direct hand-offs of a
	// name, after which a release frees the lock for every instance's
	// waiters; 0 disables hand-offs.
	handoffCap int
	// testWaiting, when set by a test, is called each time a waiter is about
	// to block.
	testWaiting func(name string)
	// testAcquired, when set by a test, is called after each acquire that
	// took the lock (not after a hand-off).
	testAcquired func(name string)
	// testHandedOff, when set by a test, is called after a hand-off script
	// succeeded and before the lease is delivered to the waiter.
	testHandedOff func(name string)
}

// defaultHandoffCap is the default of locker.handoffCap: at most 8 local
// hand-offs in a row, then one release open to all (docs/locks.md).
const defaultHandoffCap = 8

var _ Locker = (*locker)(nil)

func newLocker(b backend, m *metrics, cfgErr error, retryFor time.Duration) *locker {
	return &locker{b: b, m: m, cfgErr: cfgErr, queue: newWaitQueue(), retryFor: retryFor, handoffCap: defaultHandoffCap}
}

// Poll schedule of a waiter: the first poll after pollMin, doubling up to
// pollMax, each delay drawn uniformly from [d/2, d) so that waiters of many
// instances do not poll in step. With notifications the poll only covers a
// lost notification; without, it is how a waiter finds the lock free.
// While the Locker's subscription to the lock's release notifications is up,
// the poll starts at pollNotified instead.
const (
	pollMin      = 10 * time.Millisecond
	pollNotified = 100 * time.Millisecond
	pollMax      = 500 * time.Millisecond
)

// newToken returns 128 random bits, base64url without padding (22 bytes).
func newToken() string {
	var b [16]byte
	_, _ = crand.Read(b[:]) // never fails (crypto/rand crashes the program instead)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Acquire takes the lock, waiting up to the Wait option for a held one.
func (l *locker) Acquire(ctx context.Context, name string, ttl time.Duration, opts ...AcquireOption) (*Lease, error) {
	if err := validateName(name); err != nil {
		return nil, err
	}
	if err := validateTTL(ttl); err != nil {
		return nil, err
	}
	if l.cfgErr != nil {
		return nil, l.cfgErr
	}
	var o acquireOptions
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	start := time.Now()
	lease, err := l.acquire(ctx, name, ttl, o.wait)
	if o.wait > 0 {
		l.m.observeWait(l.b.kind(), time.Since(start))
	}
	switch {
	case err == nil:
		l.m.acquireInc(l.b.kind(), outcomeAcquired)
	case errors.Is(err, ErrHeld):
		l.m.acquireInc(l.b.kind(), outcomeHeld)
	default:
		l.m.acquireInc(l.b.kind(), outcomeError)
	}
	return lease, err
}

func (l *locker) acquire(ctx context.Context, name string, ttl, wait time.Duration) (*Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("lock: acquire: %w", err)
	}
	token := newToken()
	if wait <= 0 {
		lease, _, err := l.try(ctx, name, token, ttl)
		if lease == nil && err == nil {
			err = ErrHeld
		}
		return lease, err
	}

	// Waiting. Join the queue before the first try, so that a local release
	// from then on hands the lock over or wakes this call. When release
	// notifications of name already flow to this Locker (another of its
	// callers waits for name), join them before the first try too: then no
	// release after that try goes unnoticed, and one try suffices before
	// blocking. Otherwise subscribe only once the first try found the lock
	// held (an uncontended Acquire never subscribes), and try again.
	deadline := time.Now().Add(wait)
	w := l.queue.joinGrant(ctx, name, ttl, deadline)
	defer l.leave(name, w)
	unwatch, watching := l.b.watchIfReady(name)
	var (
		lease   *Lease
		heldFor time.Duration
		err     error
	)
	skipped := false
	if left := l.queue.heldHere(name, l.b.now()); left > 0 && (watching || !l.b.notifies()) {
		// This Locker holds name: its release will hand the lock to this
		// call or wake it, so a try now would only find the lock held.
		// Wait for that, or for the lease's expiry.
		heldFor, skipped = left, true
	} else {
		lease, heldFor, err = l.try(ctx, name, token, ttl)
		if lease != nil || (err != nil && !errors.Is(err, ErrBackend)) {
			if unwatch != nil {
				unwatch()
			}
			return lease, err
		}
	}
	skipTry := err == nil && (watching || skipped)
	if !watching {
		wctx, cancel := context.WithDeadline(ctx, deadline)
		unwatch = l.b.watch(wctx, name)
		cancel()
	}
	defer unwatch()

	backoff := pollMin
	var failingSince time.Time // start of a run of backend errors
	if err != nil {
		failingSince = time.Now()
	}
	for {
		if err != nil {
			// The failed try may have taken the lock with its reply lost;
			// the backend abandons that token, so never reuse it.
			token = newToken()
		}
		if skipTry {
			skipTry = false
		} else {
			lease, heldFor, err = l.try(ctx, name, token, ttl)
		}
		switch {
		case lease != nil:
			return lease, nil
		case err == nil:
			failingSince = time.Time{}
		case !errors.Is(err, ErrBackend):
			// The caller's ctx ended during the try. (Had the script run,
			// the backend abandons the token: the lock is released.)
			return nil, fmt.Errorf("%w: %w", ErrHeld, err)
		case errors.Is(err, rueidis.ErrClosing):
			return nil, err // the client is closed: no retry can succeed
		case failingSince.IsZero():
			failingSince = time.Now()
		}
		// A backend error is retried for up to the backend timeout: a
		// reconnect should not end a wait, an outage must (fail closed).
		if err != nil && time.Since(failingSince) >= l.retryFor {
			return nil, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			if err != nil {
				return nil, err // the lock's state is unknown: not ErrHeld
			}
			return nil, ErrHeld
		}
		if err == nil && backoff < pollNotified && l.b.notifyReady(name) {
			// Releases are being notified: polling only covers a lost
			// message, which a resubscription makes up for by a wake.
			backoff = pollNotified
		}
		d := backoff/2 + rand.N(backoff/2)
		backoff = min(2*backoff, pollMax)
		if err != nil {
			d = pollMin/2 + rand.N(pollMin/2)
		} else if heldFor > 0 && heldFor+time.Millisecond < d {
			// The holder's lease ends first: try right after it.
			d = heldFor + time.Millisecond
		}
		d = min(d, left)
		if l.testWaiting != nil {
			l.testWaiting(name)
		}
		t := time.NewTimer(d)
		select {
		case le := <-w.grant:
			// A local release handed the lock to this waiter.
			t.Stop()
			return le, nil
		case <-w.ch:
			// A release: try now, from the shortest backoff again.
			backoff = pollMin
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			if err != nil {
				return nil, fmt.Errorf("lock: acquire: %w (after: %w)", ctx.Err(), err)
			}
			return nil, fmt.Errorf("%w: %w", ErrHeld, ctx.Err())
		}
		t.Stop()
	}
}

// try makes one attempt; it returns a lease, or nil and how long the holder
// has left, or an error.
func (l *locker) try(ctx context.Context, name, token string, ttl time.Duration) (*Lease, time.Duration, error) {
	start := l.b.now()
	fence, ok, heldFor, err := l.b.acquire(ctx, name, token, ttl)
	if err != nil || !ok {
		return nil, heldFor, err
	}
	if l.testAcquired != nil {
		l.testAcquired(name)
	}
	return l.newLease(name, token, fence, start.Add(ttl)), 0, nil
}

func (l *locker) newLease(name, token string, fence uint64, exp time.Time) *Lease {
	le := &Lease{Name: name, Token: token, Fence: fence, ExpiresAt: exp, expires: exp, l: l, lost: make(chan struct{})}
	l.queue.setHolder(le, l.b.now())
	return le
}

// leave takes w out of the wait queue. A lease handed off to w after it
// stopped waiting is released at once: nobody would release it otherwise.
func (l *locker) leave(name string, w *waiter) {
	if le := l.queue.leave(name, w); le != nil {
		_ = l.freeLock(context.Background(), name, le.Token)
	}
}

// Inspect reports the lock's state without its token.
func (l *locker) Inspect(ctx context.Context, name string) (Info, error) {
	if err := validateName(name); err != nil {
		return Info{}, err
	}
	if l.cfgErr != nil {
		return Info{}, l.cfgErr
	}
	if err := ctx.Err(); err != nil {
		return Info{}, fmt.Errorf("lock: inspect: %w", err)
	}
	return l.b.inspect(ctx, name)
}

// Refresh extends the lock held with token.
func (l *locker) Refresh(ctx context.Context, name, token string, ttl time.Duration) (time.Time, error) {
	exp, err := l.refresh(ctx, name, token, ttl)
	if errors.Is(err, ErrLost) {
		l.m.lostInc(l.b.kind())
	}
	return exp, err
}

// refresh is Refresh without counting a loss (a Lease counts its own, once).
func (l *locker) refresh(ctx context.Context, name, token string, ttl time.Duration) (time.Time, error) {
	if err := validateName(name); err != nil {
		return time.Time{}, err
	}
	if err := validateToken(token); err != nil {
		return time.Time{}, err
	}
	if err := validateTTL(ttl); err != nil {
		return time.Time{}, err
	}
	if l.cfgErr != nil {
		return time.Time{}, l.cfgErr
	}
	if err := ctx.Err(); err != nil {
		return time.Time{}, fmt.Errorf("lock: refresh: %w", err)
	}
	start := l.b.now()
	if err := l.b.refresh(ctx, name, token, ttl); err != nil {
		return time.Time{}, err
	}
	return start.Add(ttl), nil
}

// Release frees the lock held with token.
func (l *locker) Release(ctx context.Context, name, token string) error {
	err := l.release(ctx, name, token)
	if errors.Is(err, ErrLost) {
		l.m.lostInc(l.b.kind())
	}
	return err
}

// release is Release without counting a loss.
func (l *locker) release(ctx context.Context, name, token string) error {
	if err := validateName(name); err != nil {
		return err
	}
	if err := validateToken(token); err != nil {
		return err
	}
	if l.cfgErr != nil {
		return l.cfgErr
	}
	// A release is owed whatever the caller's ctx says: without it the next
	// holder waits for the TTL. The backend bounds it with its own timeout.
	ctx = context.WithoutCancel(ctx)
	// Forget the lease as this Locker's holder first: a waiter arriving
	// from now on tries, rather than counting on this release to reach it.
	l.queue.clearHolder(name, token)
	if w := l.queue.claim(name, l.handoffCap); w != nil {
		// Local direct hand-off: one round trip gives the lock to this
		// Locker's oldest waiter (docs/locks.md).
		newTok := newToken()
		start := l.b.now()
		fence, err := l.b.handoff(ctx, name, token, newTok, w.ttl)
		if err != nil {
			l.queue.deliver(name, w, nil)
			return err
		}
		if l.testHandedOff != nil {
			l.testHandedOff(name)
		}
		if !l.queue.deliver(name, w, l.newLease(name, newTok, fence, start.Add(w.ttl))) {
			// The waiter gave up meanwhile: free the lock at once. Our
			// own release succeeded either way.
			_ = l.freeLock(ctx, name, newTok)
		}
		return nil
	}
	return l.freeLock(ctx, name, token)
}

// freeLock releases the lock for everyone: notifies every instance's waiters
// and restarts the name's count of consecutive hand-offs.
func (l *locker) freeLock(ctx context.Context, name, token string) error {
	l.queue.clearHolder(name, token)
	err := l.b.release(ctx, name, token)
	if err != nil && !errors.Is(err, ErrLost) {
		return err
	}
	l.queue.released(name)
	if err != nil {
		return err
	}
	if !l.b.notifies() {
		l.queue.wake(name)
	}
	return nil
}
