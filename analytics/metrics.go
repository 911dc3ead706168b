package analytics

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/elevacare/eleva-redis/internal/promreg"
)

// Metric names. They are part of the operations contract (dashboards and
// alerts use them): rename only with a note in the changelog.
const (
	MetricBuffered = "eleva_analytics_events_buffered"
	MetricSent     = "eleva_analytics_events_sent_total"
	MetricRetried  = "eleva_analytics_events_retried_total"
	MetricDropped  = "eleva_analytics_events_dropped_total"
	MetricDead     = "eleva_analytics_events_dead_total"
	MetricErrors   = "eleva_analytics_errors_total"
)

// metrics holds the collectors. A nil *metrics records nothing. Several
// Stores and Forwarders on one registry share the collectors (their counts
// add up).
type metrics struct {
	buffered prometheus.Gauge
	sent     prometheus.Counter
	retried  prometheus.Counter
	dead     prometheus.Counter
	dropped  *prometheus.CounterVec
	errs     *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		return nil
	}
	return &metrics{
		buffered: promreg.Register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
			Name: MetricBuffered,
			Help: "Events in the buffer not yet sent to PostHog, as last seen by a forwarder.",
		})),
		sent: promreg.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: MetricSent,
			Help: "Events PostHog accepted (2xx), sent by this process's forwarders.",
		})),
		retried: promreg.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: MetricRetried,
			Help: "Event sends that failed with a retryable outcome (5xx, 408, 429, network error) and will be retried, counted per event.",
		})),
		dead: promreg.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: MetricDead,
			Help: "Events PostHog refused (4xx other than 408 and 429), moved to the dead-letter buffer.",
		})),
		dropped: promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricDropped,
			Help: "Events lost before PostHog, by reason: buffer_full (memory buffer), trimmed (Redis stream over StreamCap), " +
				"capture_error (Capture failed: Redis down or slow), shutdown (memory buffer not drained before the deadline).",
		}, []string{"reason"})),
		errs: promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricErrors,
			Help: "Failed analytics calls by backend and op (incr, series, unique_add, unique_count, capture, read, ack, dead, stats); " +
				"a failed incr is a counter write that was dropped.",
		}, []string{"backend", "op"})),
	}
}

func (m *metrics) fail(backend, op string, err error) {
	if m == nil || err == nil || errors.Is(err, ErrInvalidArgument) {
		return
	}
	m.errs.WithLabelValues(backend, op).Inc()
}

func (m *metrics) drop(reason string, n int) {
	if m == nil || n <= 0 {
		return
	}
	m.dropped.WithLabelValues(reason).Add(float64(n))
}

func (m *metrics) add(c func(*metrics) prometheus.Counter, n int) {
	if m == nil || n <= 0 {
		return
	}
	c(m).Add(float64(n))
}

func (m *metrics) setBuffered(n int64) {
	if m == nil {
		return
	}
	m.buffered.Set(float64(n))
}
