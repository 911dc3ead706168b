package lock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TTL bounds. A lock protects work in progress: a lease longer than a day is
// a bug (a holder that died keeps everyone out until it expires), and one
// shorter than a millisecond cannot be represented by Redis PX.
const (
	MinTTL = time.Millisecond
	MaxTTL = 24 * time.Hour
)

// MaxNameLen is the longest accepted lock name, in bytes.
const MaxNameLen = 1024

// fenceGrace is how much longer than the lock the fence record of a name
// lives (see docs/locks.md, "Why the fence never goes backwards").
const fenceGrace = 24 * time.Hour

// Locker hands out leases on named locks. Every method is safe for concurrent
// use, and every state change is atomic: on Redis one Lua script per call, so
// any number of instances sharing the backend agree on who holds a lock.
type Locker interface {
	// Acquire takes the lock name for ttl (MinTTL..MaxTTL) and returns its
	// lease. When another owner holds it, Acquire returns ErrHeld at once, or,
	// with Wait(d), waits up to d for a release or expiry. It never returns a
	// lease for a lock it did not take.
	Acquire(ctx context.Context, name string, ttl time.Duration, opts ...AcquireOption) (*Lease, error)
	// Inspect reports whether name is held, until when and under which fence.
	// It never reveals the token.
	Inspect(ctx context.Context, name string) (Info, error)
	// Refresh extends the lock held with token to ttl from now and returns the
	// new expiry. When the lock has expired or is held by another owner it
	// returns ErrLost and changes nothing: it never re-acquires.
	Refresh(ctx context.Context, name, token string, ttl time.Duration) (time.Time, error)
	// Release frees the lock held with token (compare-and-delete), or, when
	// a caller of the same Locker waits for it, hands it straight to that
	// caller in the same step (docs/locks.md, "Local direct hand-off"). It
	// returns ErrLost, changing nothing, when the lock expired or is held by
	// another owner. It runs even when ctx is already cancelled (under its own
	// Config.Timeout), so a deferred release is never skipped.
	Release(ctx context.Context, name, token string) error
}

// Info describes a lock as Inspect sees it.
type Info struct {
	Name string
	// Held reports whether an owner holds the lock now.
	Held bool
	// ExpiresAt is when the current holder's lease ends unless refreshed;
	// zero when not held.
	ExpiresAt time.Time
	// Fence is the current holder's fencing token; 0 when not held.
	Fence uint64
}

// Sentinel errors. Every error a Locker or a Lease returns wraps one of them
// with %w (or is the caller's context error, or keys.ErrInvalidPrefix for a
// bad Config.Prefix), so errors.Is works the same on every backend.
var (
	// ErrHeld reports that another owner holds the lock (HTTP 409 lock_held).
	// With Wait, it is returned when the wait ended without the lock; when
	// the wait ended because ctx was done, the error wraps ctx.Err() too.
	ErrHeld = errors.New("lock: held by another owner")
	// ErrNotAcquired is ErrHeld under the name other lock libraries use.
	ErrNotAcquired = ErrHeld
	// ErrLost reports that the caller no longer holds the lock: it expired,
	// was released, or is now held by another owner (HTTP 409 lock_lost).
	ErrLost = errors.New("lock: lost (expired or held by another owner)")
	// ErrInvalidName reports an empty name or one over MaxNameLen bytes.
	ErrInvalidName = errors.New("lock: invalid name")
	// ErrInvalidTTL reports a ttl outside MinTTL..MaxTTL.
	ErrInvalidTTL = errors.New("lock: invalid ttl")
	// ErrInvalidToken reports an empty token or one over MaxNameLen bytes.
	ErrInvalidToken = errors.New("lock: invalid token")
	// ErrBackend reports that the backend failed or did not answer within
	// Config.Timeout (HTTP 503). The lock fails closed: nothing is granted,
	// refreshed or released on a guess.
	ErrBackend = errors.New("lock: backend unavailable")
)

// Config configures a Locker. The zero value is the documented default.
type Config struct {
	// Prefix of every Redis key; "" means "eleva:".
	Prefix string
	// KeyHashSecret, when set, HMACs lock names so identifiers (appointment
	// or patient ids) never appear in Redis key names.
	KeyHashSecret []byte
	// Timeout bounds each Redis call; 0 means 500ms. A call that does not
	// finish in time fails with ErrBackend.
	Timeout time.Duration
	// DisableNotifications turns off release notifications (Redis Pub/Sub):
	// waiting Acquire calls then find a released lock by polling only, with
	// jittered backoff (10ms doubling to 500ms). For deployments where
	// Pub/Sub is unavailable, such as some proxies.
	DisableNotifications bool
	// Registerer receives the Prometheus metrics; nil means none are registered.
	Registerer prometheus.Registerer
	// Logger receives backend failure logs; nil means slog.Default(). Lock
	// names and tokens are never logged.
	Logger *slog.Logger
	// Now is the clock of the memory backend; nil means time.Now. The Redis
	// backend always uses Redis TIME for fences and the server's expiry.
	Now func() time.Time
}

func (c Config) timeout() time.Duration {
	if c.Timeout <= 0 {
		return 500 * time.Millisecond
	}
	return c.Timeout
}

func (c Config) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.Default()
	}
	return c.Logger
}

// AcquireOption varies one Acquire call.
type AcquireOption func(*acquireOptions)

type acquireOptions struct {
	wait time.Duration
}

// Wait makes Acquire wait up to d for a held lock: the waiter is woken when
// the holder releases (Redis Pub/Sub, or in-process on the memory backend),
// tries again when the holder's lease expires, and polls with jittered
// backoff in case a notification was lost. d <= 0 means do not wait.
//
// Backend errors during a wait are retried for up to Config.Timeout, so a
// reconnect does not end it; a longer outage ends it with ErrBackend (fail
// closed: never ErrHeld nor a lease on a guess). A ctx that ends first ends
// the wait with an error wrapping both ErrHeld and ctx.Err().
func Wait(d time.Duration) AcquireOption {
	return func(o *acquireOptions) { o.wait = d }
}

// Lease is a held lock. Name, Token and Fence never change; ExpiresAt is
// updated by Refresh, so read it from the goroutine that refreshes. Refresh,
// Release and Lost are safe for concurrent use.
type Lease struct {
	Name string
	// Token identifies this lease to Refresh and Release: 128 random bits,
	// base64url. Keep it secret: whoever has it can release the lock.
	Token string
	// Fence strictly increases with every successful acquire of Name. Pass it
	// to the resource the lock protects, and have the resource reject writes
	// carrying a fence lower than one it has seen (docs/locks.md).
	Fence uint64
	// ExpiresAt is the local estimate of when the lease ends unless
	// refreshed: the time the request was sent plus the ttl, so it errs early
	// (the server starts its TTL when the request arrives).
	ExpiresAt time.Time

	l *locker

	mu       sync.Mutex
	expires  time.Time // ExpiresAt, for the watchdog
	released bool
	lost     chan struct{}
	lostOnce sync.Once
}

// Refresh extends the lease to ttl from now (compare-and-PEXPIRE) and updates
// ExpiresAt. After expiry or a takeover it returns ErrLost, closes Lost and
// never re-acquires. After the lease's own Release it returns ErrLost.
func (le *Lease) Refresh(ctx context.Context, ttl time.Duration) error {
	if le == nil || le.l == nil {
		return fmt.Errorf("%w: lease was not returned by Acquire", ErrLost)
	}
	le.mu.Lock()
	done := le.released
	le.mu.Unlock()
	if done {
		return fmt.Errorf("%w: the lease was released", ErrLost)
	}
	exp, err := le.l.refresh(ctx, le.Name, le.Token, ttl)
	if err != nil {
		if errors.Is(err, ErrLost) {
			le.markLost()
		}
		return err
	}
	le.mu.Lock()
	le.ExpiresAt, le.expires = exp, exp
	le.mu.Unlock()
	return nil
}

// Release frees the lock (compare-and-delete). It runs even when ctx is
// already cancelled, under its own Config.Timeout. It returns ErrLost (and
// closes Lost) when the lock had expired or was taken over; then it deletes
// nothing. Calling it again after a successful release returns nil.
func (le *Lease) Release(ctx context.Context) error {
	if le == nil || le.l == nil {
		return fmt.Errorf("%w: lease was not returned by Acquire", ErrLost)
	}
	le.mu.Lock()
	done := le.released
	le.mu.Unlock()
	if done {
		return nil
	}
	err := le.l.release(ctx, le.Name, le.Token)
	switch {
	case err == nil:
		le.mu.Lock()
		le.released = true
		le.mu.Unlock()
	case errors.Is(err, ErrLost):
		le.markLost()
	}
	return err
}

// Lost returns a channel that is closed when the lease is known to be lost:
// a Refresh or Release found it expired or taken over, or Do's watchdog saw
// its expiry pass without a successful refresh. It is not closed by a
// successful Release.
func (le *Lease) Lost() <-chan struct{} {
	if le == nil || le.lost == nil {
		return nil
	}
	return le.lost
}

// markLost closes Lost once and counts the loss.
func (le *Lease) markLost() {
	le.lostOnce.Do(func() {
		close(le.lost)
		le.l.queue.clearHolder(le.Name, le.Token)
		le.l.m.lostInc(le.l.b.kind())
	})
}

func (le *Lease) isLost() bool {
	select {
	case <-le.lost:
		return true
	default:
		return false
	}
}

func (le *Lease) expiresAt() time.Time {
	le.mu.Lock()
	defer le.mu.Unlock()
	return le.expires
}

func validateName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: name must not be empty", ErrInvalidName)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("%w: name must be at most %d bytes, got %d", ErrInvalidName, MaxNameLen, len(name))
	}
	return nil
}

func validateTTL(ttl time.Duration) error {
	if ttl < MinTTL || ttl > MaxTTL {
		return fmt.Errorf("%w: ttl must be between %s and %s, got %s", ErrInvalidTTL, MinTTL, MaxTTL, ttl)
	}
	return nil
}

func validateToken(token string) error {
	if token == "" {
		return fmt.Errorf("%w: token must not be empty", ErrInvalidToken)
	}
	if len(token) > MaxNameLen {
		return fmt.Errorf("%w: token must be at most %d bytes, got %d", ErrInvalidToken, MaxNameLen, len(token))
	}
	return nil
}
