package cache

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/elevacare/eleva-redis/internal/promreg"
)

// Metric names: part of the operations contract (docs/operations.md).
const (
	metricOps     = "eleva_cache_ops_total"
	metricHits    = "eleva_cache_hits_total"
	metricLoads   = "eleva_cache_loads_total"
	metricBackend = "eleva_cache_backend_errors_total"
)

// metrics holds the package's collectors. A nil *metrics records nothing.
type metrics struct {
	ops     *prometheus.CounterVec
	hits    *prometheus.CounterVec
	loads   *prometheus.CounterVec
	backend *prometheus.CounterVec
	// hitLocal is the pre-bound local-hit counter: the hot path must not
	// look labels up.
	hitLocal prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		return nil
	}
	m := &metrics{
		ops: promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricOps,
			Help: "Cache operations by op (set, fill, invalidate, invalidate_tags, refresh, get, get_or_load, decode) and outcome.",
		}, []string{"op", "outcome"})),
		hits: promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricHits,
			Help: "Values served from a cache level, by source (local, redis).",
		}, []string{"source"})),
		loads: promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricLoads,
			Help: "Loader calls by outcome (ok, not_found, error).",
		}, []string{"outcome"})),
		backend: promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricBackend,
			Help: "Failed or timed-out calls to the shared level, by op; each starts a short back-off.",
		}, []string{"op"})),
	}
	m.hitLocal = m.hits.WithLabelValues(string(SourceLocal))
	return m
}

func (m *metrics) op(op, outcome string) {
	if m != nil {
		m.ops.WithLabelValues(op, outcome).Inc()
	}
}

func (m *metrics) hit(s Source) {
	if m == nil {
		return
	}
	if s == SourceLocal {
		m.hitLocal.Inc()
		return
	}
	m.hits.WithLabelValues(string(s)).Inc()
}

func (m *metrics) load(err error) {
	if m == nil {
		return
	}
	switch {
	case err == nil:
		m.loads.WithLabelValues("ok").Inc()
	case errors.Is(err, ErrNotFound):
		m.loads.WithLabelValues("not_found").Inc()
	default:
		m.loads.WithLabelValues("error").Inc()
	}
}

func (m *metrics) backendError(op string) {
	if m != nil {
		m.backend.WithLabelValues(op).Inc()
	}
}
