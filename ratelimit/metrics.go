package ratelimit

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/elevacare/eleva-redis/internal/promreg"
)

// Metric names. They are part of the operations contract (dashboards and
// alerts use them): rename only with a note in the changelog.
const (
	metricDecisions      = "eleva_ratelimit_decisions_total"
	metricDegraded       = "eleva_ratelimit_degraded_total"
	metricBackendErrors  = "eleva_ratelimit_backend_errors_total"
	metricBackendSeconds = "eleva_ratelimit_backend_seconds"
)

// Outcome labels of eleva_ratelimit_decisions_total.
const (
	outcomeAllowed = "allowed"
	outcomeDenied  = "denied"
)

// metrics holds the package's collectors. A nil *metrics records nothing, so
// a limiter built without a Registerer pays one nil check per call.
type metrics struct {
	decisions      *prometheus.CounterVec
	degraded       [3]prometheus.Counter // indexed by policyIndex
	backendErrors  prometheus.Counter
	backendSeconds prometheus.Observer
}

// newMetrics registers the collectors on reg and returns them; nil when reg
// is nil. When a collector of the same name is already registered (several
// limiters on one registry, or the memory and Redis backends side by side),
// the existing one is reused, so their counts add up in one series.
func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		return nil
	}
	decisions := promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: metricDecisions,
		Help: "Rate-limit decisions by backend (redis, memory), algorithm and outcome (allowed, denied). AllowAll counts each check with the call's outcome; Peek is not counted; degraded decisions are included (and also counted in " + metricDegraded + ").",
	}, []string{"backend", "algorithm", "outcome"}))
	degraded := promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: metricDegraded,
		Help: "Rate-limit calls decided by the failure policy (closed, local, open) because the backend failed, timed out or its circuit breaker was open.",
	}, []string{"policy"}))
	errs := promreg.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: metricBackendErrors,
		Help: "Failed rate-limit backend calls (timeouts, connection errors, error replies).",
	}))
	secs := promreg.Register(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: metricBackendSeconds,
		Help: "Latency of rate-limit backend calls (one script call or one pipelined AllowAll), successful or not.",
		// 100µs .. ~0.8s: a healthy call is well under a millisecond, the
		// default timeout is 50ms.
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14),
	}))
	m := &metrics{decisions: decisions, backendErrors: errs, backendSeconds: secs}
	for _, p := range []FailurePolicy{FailClosed, FailLocal, FailOpen} {
		m.degraded[policyIndex(p)] = degraded.WithLabelValues(string(p))
	}
	return m
}

// algIndex maps an algorithm to a dense index for pre-resolved counters.
func algIndex(a Algorithm) int {
	switch a {
	case SlidingWindow:
		return 1
	case GCRA:
		return 2
	case FixedWindow:
		return 3
	default:
		return 0
	}
}

func policyIndex(p FailurePolicy) int {
	switch p {
	case FailClosed:
		return 0
	case FailOpen:
		return 2
	default:
		return 1
	}
}

// decisionCounters are the decision counters of one backend, resolved once so
// that counting a decision is an array lookup and an atomic add.
type decisionCounters struct {
	c [4][2]prometheus.Counter // [algIndex][allowed]
}

// decisionCounters resolves the counters of backend ("redis", "memory").
// It returns nil (which counts nothing) when m is nil.
func (m *metrics) decisionCounters(backend string) *decisionCounters {
	if m == nil {
		return nil
	}
	d := &decisionCounters{}
	for _, a := range Algorithms {
		d.c[algIndex(a)][0] = m.decisions.WithLabelValues(backend, string(a), outcomeDenied)
		d.c[algIndex(a)][1] = m.decisions.WithLabelValues(backend, string(a), outcomeAllowed)
	}
	return d
}

// inc counts one decision.
func (d *decisionCounters) inc(a Algorithm, allowed bool) {
	if d == nil {
		return
	}
	i := 0
	if allowed {
		i = 1
	}
	d.c[algIndex(a)][i].Inc()
}

func (m *metrics) degradedCall(p FailurePolicy) {
	if m == nil {
		return
	}
	m.degraded[policyIndex(p)].Inc()
}

func (m *metrics) backendError() {
	if m == nil {
		return
	}
	m.backendErrors.Inc()
}

func (m *metrics) observeBackend(d time.Duration) {
	if m == nil {
		return
	}
	m.backendSeconds.Observe(d.Seconds())
}
