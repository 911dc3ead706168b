package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Algorithm names a rate-limiting algorithm. The zero value means SlidingLog.
type Algorithm string

const (
	// SlidingLog is exact: at most Limit units in any window of length Window,
	// measured at microsecond resolution. It stores one entry per admitted unit,
	// so Limit is capped at MaxSlidingLogLimit. The default.
	SlidingLog Algorithm = "sliding-log"
	// SlidingWindow is the approximate sliding-window counter (the previous
	// fixed window's count weighted by its remaining overlap plus the current
	// window's count). O(1) memory; under an adversarial pattern it can admit
	// up to about 2*Limit in one window.
	SlidingWindow Algorithm = "sliding-window"
	// GCRA is the generic cell rate algorithm: a smooth token bucket that
	// refills one unit every Window/Limit and holds at most Burst units
	// (Burst defaults to Limit).
	GCRA Algorithm = "gcra"
	// FixedWindow counts units in windows aligned to multiples of Window since
	// the Unix epoch; the count resets at each boundary (up to 2*Limit can pass
	// around a boundary).
	FixedWindow Algorithm = "fixed-window"
)

// Algorithms lists every supported algorithm.
var Algorithms = []Algorithm{SlidingLog, SlidingWindow, GCRA, FixedWindow}

// MaxSlidingLogLimit is the largest Limit accepted for SlidingLog.
const MaxSlidingLogLimit = 10000

// MaxWindow is the longest accepted Window (one year).
const MaxWindow = 366 * 24 * time.Hour

// FailurePolicy says what a decision is when the backend is slow or down.
type FailurePolicy string

const (
	// FailDefault uses Config.OnBackendError.
	FailDefault FailurePolicy = ""
	// FailLocal decides with an in-process limiter (per instance). The default.
	FailLocal FailurePolicy = "local"
	// FailOpen allows.
	FailOpen FailurePolicy = "open"
	// FailClosed denies: for login, OTP, identity verification, PHI export.
	FailClosed FailurePolicy = "closed"
)

// Limit describes one rule: at most Limit units per Window.
type Limit struct {
	Limit     int
	Window    time.Duration
	Burst     int       // GCRA only: bucket size; 0 means Limit.
	Algorithm Algorithm // "" means SlidingLog.
	// OnBackendError overrides Config.OnBackendError for this rule. In
	// AllowAll the strictest policy among the checks applies
	// (closed, then local, then open).
	OnBackendError FailurePolicy
}

// Decision is the outcome of one rule.
type Decision struct {
	Allowed bool
	// Limit is the rule's capacity: Limit, or Burst for GCRA.
	Limit int
	// Remaining is how many units could still be taken right now (after this
	// call's own consumption), never negative.
	Remaining int
	// ResetAt is when the rule's state is back to full capacity.
	ResetAt time.Time
	// RetryAfter is, for a denial, how long until the same request would be
	// allowed (assuming no other traffic); zero when allowed.
	RetryAfter time.Duration
	// Degraded reports that the backend could not be reached in time and the
	// decision came from the failure policy.
	Degraded bool
}

// Check is one rule of an AllowAll call.
type Check struct {
	// Name labels the check in results and metrics (for example the rule name).
	Name string
	// Key identifies the counter.
	Key string
	// Tag, when set, groups keys into one Redis Cluster hash slot: checks with
	// the same Tag are decided in one round trip. Empty means Key. Keys are
	// distinct per (Tag, Key).
	Tag   string
	Limit Limit
	// Cost is the number of units taken; 0 means 1.
	Cost int
}

// Result is the outcome of AllowAll.
type Result struct {
	// Allowed is true only when every check allowed; then each check's cost
	// was consumed. When false, nothing was consumed by any check.
	Allowed bool
	// RetryAfter is the longest RetryAfter among denying checks.
	RetryAfter time.Duration
	// Degraded reports that at least one decision came from the failure policy.
	Degraded bool
	// Decisions[i] is the decision for checks[i].
	Decisions []Decision
}

// Limiter decides rate limits. Every method is safe for concurrent use, and
// every decision is atomic: concurrent callers on any number of instances
// sharing a backend never over-admit.
//
// The state of a counter is identified by (Key, Algorithm); using one key with
// different Limit or Window values shares that state.
type Limiter interface {
	// Allow is AllowN with n = 1.
	Allow(ctx context.Context, key string, l Limit) (Decision, error)
	// AllowN takes n units when they fit, and takes nothing when they do not
	// (a denial writes nothing).
	AllowN(ctx context.Context, key string, l Limit, n int) (Decision, error)
	// Peek reports the decision a request of one unit would get, consuming
	// nothing.
	Peek(ctx context.Context, key string, l Limit) (Decision, error)
	// Record takes n units even over the limit (to count failed logins, say);
	// Allowed reports whether the units fitted.
	Record(ctx context.Context, key string, l Limit, n int) (Decision, error)
	// Reset forgets the key's state for every algorithm.
	Reset(ctx context.Context, key string) error
	// AllowAll is all-or-nothing across several rules: either every check
	// allows and each takes its cost, or nothing is consumed by any of them.
	AllowAll(ctx context.Context, checks ...Check) (Result, error)
}

// Sentinel errors. Backends wrap them with %w.
var (
	// ErrInvalidLimit reports a Limit that cannot be enforced: Limit or Window
	// not positive, Window over MaxWindow, negative Burst, SlidingLog above
	// MaxSlidingLogLimit, or a cost not positive.
	ErrInvalidLimit = errors.New("ratelimit: invalid limit")
	// ErrUnknownAlgorithm reports an Algorithm not in Algorithms.
	ErrUnknownAlgorithm = errors.New("ratelimit: unknown algorithm")
	// ErrInvalidKey reports an empty key.
	ErrInvalidKey = errors.New("ratelimit: invalid key")
	// ErrBackend reports that the backend failed and the failure policy could
	// not produce a decision (Reset, or a Peek under FailClosed never does).
	ErrBackend = errors.New("ratelimit: backend unavailable")
)

// Config configures a Limiter. The zero value is the documented default.
type Config struct {
	// Prefix of every Redis key; "" means "eleva:".
	Prefix string
	// KeyHashSecret, when set, HMACs keys so identifiers (emails, patient ids)
	// never appear in Redis key names.
	KeyHashSecret []byte
	// Timeout bounds each backend call; 0 means 50ms. A call that does not
	// finish in time is decided by the failure policy.
	Timeout time.Duration
	// OnBackendError is the default failure policy; "" means FailLocal.
	OnBackendError FailurePolicy
	// LocalInstances divides limits for the FailLocal limiter, so that N
	// instances falling back together admit about Limit in total; 0 means 1.
	LocalInstances int
	// BreakerCooldown is how long after a backend failure calls go straight to
	// the failure policy before one call probes the backend again; 0 means
	// 250ms, negative disables the breaker.
	BreakerCooldown time.Duration
	// Registerer receives the Prometheus metrics; nil means none are registered.
	Registerer prometheus.Registerer
	// Logger receives backend failure and recovery logs; nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock of the memory backend; nil means time.Now. The Redis
	// backend always uses Redis TIME.
	Now func() time.Time
}

func (c Config) timeout() time.Duration {
	if c.Timeout <= 0 {
		return 50 * time.Millisecond
	}
	return c.Timeout
}

func (c Config) onBackendError() FailurePolicy {
	if c.OnBackendError == FailDefault {
		return FailLocal
	}
	return c.OnBackendError
}

func (c Config) breakerCooldown() time.Duration {
	if c.BreakerCooldown == 0 {
		return 250 * time.Millisecond
	}
	return c.BreakerCooldown
}

func (c Config) localInstances() int {
	if c.LocalInstances <= 0 {
		return 1
	}
	return c.LocalInstances
}

func (c Config) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// Validate reports whether l can be enforced, returning ErrInvalidLimit or
// ErrUnknownAlgorithm wrapped with the offending field's name.
func (l Limit) Validate() error {
	switch l.Algorithm {
	case "", SlidingLog, SlidingWindow, GCRA, FixedWindow:
	default:
		return fmt.Errorf("%w %q (algorithm: want one of sliding-log, sliding-window, gcra, fixed-window)", ErrUnknownAlgorithm, string(l.Algorithm))
	}
	switch l.OnBackendError {
	case FailDefault, FailLocal, FailOpen, FailClosed:
	default:
		return fmt.Errorf("%w: onBackendError %q: want closed, open or local", ErrInvalidLimit, string(l.OnBackendError))
	}
	if l.Limit <= 0 {
		return fmt.Errorf("%w: limit must be positive, got %d", ErrInvalidLimit, l.Limit)
	}
	if l.Window <= 0 {
		return fmt.Errorf("%w: window must be positive, got %s", ErrInvalidLimit, l.Window)
	}
	if l.Window < time.Millisecond {
		return fmt.Errorf("%w: window must be at least 1ms, got %s", ErrInvalidLimit, l.Window)
	}
	if l.Window > MaxWindow {
		return fmt.Errorf("%w: window must be at most %s, got %s", ErrInvalidLimit, MaxWindow, l.Window)
	}
	if l.Burst < 0 {
		return fmt.Errorf("%w: burst must not be negative, got %d", ErrInvalidLimit, l.Burst)
	}
	if l.algorithm() == SlidingLog && l.Limit > MaxSlidingLogLimit {
		return fmt.Errorf("%w: sliding-log limit must be at most %d, got %d (use sliding-window or gcra for large limits)", ErrInvalidLimit, MaxSlidingLogLimit, l.Limit)
	}
	if l.Limit > 1_000_000_000 || l.Burst > 1_000_000_000 {
		return fmt.Errorf("%w: limit and burst must be at most 1e9", ErrInvalidLimit)
	}
	return nil
}

func (l Limit) algorithm() Algorithm {
	if l.Algorithm == "" {
		return SlidingLog
	}
	return l.Algorithm
}

// capacity is the most units the rule can hold at once.
func (l Limit) capacity() int {
	if l.algorithm() == GCRA && l.Burst > 0 {
		return l.Burst
	}
	return l.Limit
}

func validateCost(n int) error {
	if n <= 0 {
		return fmt.Errorf("%w: cost must be positive, got %d", ErrInvalidLimit, n)
	}
	if n > 1_000_000_000 {
		return fmt.Errorf("%w: cost must be at most 1e9, got %d", ErrInvalidLimit, n)
	}
	return nil
}

func validateKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: key must not be empty", ErrInvalidKey)
	}
	return nil
}
