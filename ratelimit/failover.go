package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/lograte"
)

// This file holds what a remote backend needs to keep deciding when it fails:
// a per-call deadline, a circuit breaker, the failure policies and the
// in-process fallback limiter, with their metrics and logs.

// errBreakerOpen reports that a call was not sent because the breaker is open.
var errBreakerOpen = errors.New("ratelimit: circuit breaker open")

// failover runs backend calls under Config.Timeout and the circuit breaker,
// and decides by failure policy when they fail.
type failover struct {
	backend  string // "redis": for logs
	timeout  time.Duration
	policy   FailurePolicy // the default, already resolved
	cooldown time.Duration // < 0: breaker disabled
	divisor  int           // Config.LocalInstances
	metrics  *metrics
	log      *slog.Logger
	now      func() time.Time

	// local is the FailLocal limiter, built on first use: most processes
	// never need it.
	local func() Limiter

	// openUntil is 0 while the breaker is closed, else the monotonic time
	// (nanoseconds since epoch0) until which calls skip the backend.
	openUntil atomic.Int64
	// probing is set while one call tests the backend after the cooldown.
	probing atomic.Bool
	epoch0  time.Time

	// failLog rate-limits failure logs: at most one per
	// lograte.DefaultEvery, with the number of failures in between.
	failLog *lograte.Limiter
}

func newFailover(backend string, cfg Config, m *metrics) *failover {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	f := &failover{
		backend:  backend,
		timeout:  cfg.timeout(),
		policy:   cfg.onBackendError(),
		cooldown: cfg.breakerCooldown(),
		divisor:  cfg.localInstances(),
		metrics:  m,
		log:      log,
		failLog:  lograte.New(log, 0),
		now:      cfg.now,
		epoch0:   time.Now(),
	}
	// The fallback gets the caller's clock and logger but no registerer: its
	// decisions are counted by the backend that degraded to it.
	localCfg := Config{Now: cfg.Now, Logger: cfg.Logger}
	f.local = sync.OnceValue(func() Limiter { return NewMemory(localCfg) })
	return f
}

func (f *failover) mono() int64 { return int64(time.Since(f.epoch0)) }

// callOutcome says how a backend call ended.
type callOutcome int

const (
	callOK      callOutcome = iota // the backend answered
	callDegrade                    // decide by failure policy
	callAbort                      // the caller's ctx is done: return its error
)

// run calls fn with a deadline of Config.Timeout derived from ctx, unless the
// breaker is open. On callDegrade the returned error is the cause (for logs
// and ErrBackend wrapping); on callAbort it is the caller's ctx error, wrapped.
func (f *failover) run(ctx context.Context, op string, fn func(context.Context) error) (callOutcome, error) {
	probe, ok := f.acquire()
	if !ok {
		return callDegrade, errBreakerOpen
	}
	cctx, cancel := context.WithTimeout(ctx, f.timeout)
	start := time.Now()
	err := fn(cctx)
	elapsed := time.Since(start)
	cancel()
	f.metrics.observeBackend(elapsed)
	if err == nil {
		f.succeeded(probe)
		return callOK, nil
	}
	if ctx.Err() != nil {
		// The caller gave up (its own deadline or cancellation), which says
		// nothing about the backend.
		if probe {
			f.probing.Store(false)
		}
		return callAbort, fmt.Errorf("ratelimit: %s: %w", op, ctx.Err())
	}
	f.failed(probe, op, err)
	return callDegrade, err
}

// acquire reports whether a call may go to the backend, and whether it is the
// single probe allowed after a cooldown.
func (f *failover) acquire() (probe, ok bool) {
	if f.cooldown < 0 {
		return false, true
	}
	until := f.openUntil.Load()
	if until == 0 {
		return false, true
	}
	if f.mono() < until {
		return false, false
	}
	if f.probing.CompareAndSwap(false, true) {
		return true, true
	}
	return false, false
}

func (f *failover) succeeded(probe bool) {
	if f.openUntil.Load() != 0 {
		if f.openUntil.Swap(0) != 0 {
			f.log.Info("ratelimit: backend recovered; normal decisions resume", "backend", f.backend)
		}
	}
	if probe {
		f.probing.Store(false)
	}
}

func (f *failover) failed(probe bool, op string, err error) {
	f.metrics.backendError()
	trip := tripsBreaker(err)
	f.logFailure(op, err, trip)
	if !trip {
		// An error reply about one key still proves the backend answers.
		f.succeeded(probe)
		return
	}
	if f.cooldown >= 0 {
		f.openUntil.Store(max(1, f.mono()+int64(f.cooldown)))
	}
	if probe {
		f.probing.Store(false)
	}
}

// logFailure logs a backend failure, at most once per lograte.DefaultEvery. The key is
// never logged: it may hold PHI (an email, a patient id).
func (f *failover) logFailure(op string, err error, trip bool) {
	f.failLog.Log(slog.LevelWarn, "ratelimit: backend call failed; deciding by failure policy",
		"backend", f.backend, "op", op, "err", err.Error(), "breaker_opened", trip && f.cooldown >= 0)
}

// tripsBreaker reports whether err says the backend as a whole is unwell
// (unreachable, slow, overloaded, failing over), as opposed to an error
// reply about one key (WRONGTYPE, corrupt state), which must not degrade
// every other key's decisions.
func tripsBreaker(err error) bool {
	rerr, ok := rueidis.IsRedisErr(err)
	if !ok {
		return true // timeout, connection refused or reset, protocol error
	}
	msg := rerr.Error()
	for _, p := range []string{"CLUSTERDOWN", "LOADING", "MASTERDOWN", "TRYAGAIN", "BUSY", "OOM", "READONLY", "NOREPLICAS", "MISCONF"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// strictest returns the policy that applies to an AllowAll call: closed, then
// local, then open, each check's FailDefault meaning the limiter's default.
func (f *failover) strictest(checks []Check) FailurePolicy {
	best := FailOpen
	for i := range checks {
		p := f.policyOf(checks[i].Limit)
		if rank(p) > rank(best) {
			best = p
		}
	}
	return best
}

func rank(p FailurePolicy) int {
	switch p {
	case FailClosed:
		return 2
	case FailLocal:
		return 1
	default:
		return 0
	}
}

func (f *failover) policyOf(l Limit) FailurePolicy {
	if l.OnBackendError != FailDefault {
		return l.OnBackendError
	}
	return f.policy
}

// localLimit divides l for the per-instance fallback, rounding up, so that
// LocalInstances instances falling back together admit about l in total.
func (f *failover) localLimit(l Limit) Limit {
	if f.divisor <= 1 {
		return l
	}
	l.Limit = ceilDiv(l.Limit, f.divisor)
	if l.Burst > 0 {
		l.Burst = ceilDiv(l.Burst, f.divisor)
	}
	return l
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// retryWhenClosed is what a FailClosed denial asks callers to wait: until the
// breaker lets a probe through (or one timeout when the breaker is off).
func (f *failover) retryWhenClosed() time.Duration {
	if f.cooldown > 0 {
		return f.cooldown
	}
	return f.timeout
}

// decide returns the failure policy's decision for one rule; mode is
// modeAllow, modePeek or modeRecord and n the cost (1 for peek).
func (f *failover) decide(ctx context.Context, mode, key string, l Limit, n int) (Decision, error) {
	p := f.policyOf(l)
	f.metrics.degradedCall(p)
	switch p {
	case FailClosed:
		retry := f.retryWhenClosed()
		return Decision{Allowed: false, Limit: l.capacity(), ResetAt: f.now().Add(retry), RetryAfter: retry, Degraded: true}, nil
	case FailOpen:
		return f.openDecision(mode, l, n), nil
	}
	ll := f.localLimit(l)
	var d Decision
	var err error
	switch mode {
	case modePeek:
		d, err = f.local().Peek(ctx, key, ll)
	case modeRecord:
		d, err = f.local().Record(ctx, key, ll, n)
	default:
		d, err = f.local().AllowN(ctx, key, ll, n)
	}
	d.Degraded = true
	return d, err
}

// openDecision allows; Remaining is the rule's capacity less this call's
// cost, which is all a caller can plan with while nothing is counted.
func (f *failover) openDecision(mode string, l Limit, n int) Decision {
	rem := l.capacity()
	if mode != modePeek {
		rem = max(0, rem-n)
	}
	return Decision{Allowed: true, Limit: l.capacity(), Remaining: rem, ResetAt: f.now(), Degraded: true}
}

// decideAll is decide for an AllowAll call under policy p (see strictest).
// Under FailLocal the fallback limiter decides the whole call, all-or-nothing.
func (f *failover) decideAll(ctx context.Context, p FailurePolicy, checks []Check) (Result, error) {
	f.metrics.degradedCall(p)
	res := Result{Degraded: true, Decisions: make([]Decision, len(checks))}
	switch p {
	case FailClosed:
		retry := f.retryWhenClosed()
		for i, c := range checks {
			res.Decisions[i] = Decision{Limit: c.Limit.capacity(), ResetAt: f.now().Add(retry), RetryAfter: retry, Degraded: true}
		}
		res.RetryAfter = retry
		return res, nil
	case FailOpen:
		res.Allowed = true
		for i, c := range checks {
			res.Decisions[i] = f.openDecision(modeAllow, c.Limit, c.Cost)
		}
		return res, nil
	}
	local := make([]Check, len(checks))
	for i, c := range checks {
		c.Limit = f.localLimit(c.Limit)
		local[i] = c
	}
	r, err := f.local().AllowAll(ctx, local...)
	if err != nil {
		return Result{}, err
	}
	r.Degraded = true
	for i := range r.Decisions {
		r.Decisions[i].Degraded = true
	}
	return r, nil
}

// resetLocal forgets key in the fallback limiter too (if it was ever used),
// so a reset also clears what was counted during an outage.
func (f *failover) resetLocal(ctx context.Context, key string) {
	// sync.OnceValue has no "was it called" query; building the memory
	// limiter here is cheap, and keeps Reset's meaning simple.
	_ = f.local().Reset(ctx, key)
}
