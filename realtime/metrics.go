package realtime

import (
	"context"
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/elevacare/eleva-redis/internal/promreg"
)

// Metric names. They are part of the operations contract (dashboards and
// alerts use them): rename only with a note in the changelog.
const (
	metricOps            = "eleva_realtime_ops_total"
	metricEvents         = "eleva_realtime_events_total"
	metricSSEConnections = "eleva_realtime_sse_connections"
	metricSSEClosed      = "eleva_realtime_sse_disconnects_total"
)

// metrics holds the package's collectors. A nil *metrics records nothing.
type metrics struct {
	ops     *prometheus.CounterVec
	events  *prometheus.CounterVec
	sseConn prometheus.Gauge
	sseEnd  *prometheus.CounterVec
}

// newMetrics registers the collectors on reg; nil when reg is nil. A
// collector already registered under the same name (several brokers on one
// registry) is reused, so their counts add up.
func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		return nil
	}
	return &metrics{
		ops: promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricOps,
			Help: "Real-time calls by backend (memory, redis), op (publish, history, subscribe, set_presence, presence) " +
				"and outcome (ok, invalid, backend_error, canceled, closed, error).",
		}, []string{"backend", "op", "outcome"})),
		events: promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricEvents,
			Help: "Subscription events by backend and event: delivered (live, in order), recovered (read from history to fill a gap), " +
				"duplicate (dropped, already delivered), reset (gap beyond history or new epoch), overflow (a subscriber queue was full), " +
				"resubscribed (a lost Pub/Sub subscription was restored and repaired).",
		}, []string{"backend", "event"})),
		sseConn: promreg.Register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
			Name: metricSSEConnections,
			Help: "Open SSE connections.",
		})),
		sseEnd: promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricSSEClosed,
			Help: "SSE streams ended by reason: client (the client went away), overflow (the client did not read fast enough), " +
				"write_error, token_expired, backend_error, shutdown.",
		}, []string{"reason"})),
	}
}

func outcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrInvalidArgument):
		return "invalid"
	case errors.Is(err, ErrClosed):
		return "closed"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	case errors.Is(err, ErrBackend):
		return "backend_error"
	}
	return "error"
}

func (m *metrics) op(kind, op string, err error) {
	if m == nil {
		return
	}
	m.ops.WithLabelValues(kind, op, outcome(err)).Inc()
}

func (m *metrics) event(kind, event string, n int) {
	if m == nil || n <= 0 {
		return
	}
	m.events.WithLabelValues(kind, event).Add(float64(n))
}

func (m *metrics) sseOpen(d int) {
	if m == nil {
		return
	}
	m.sseConn.Add(float64(d))
}

func (m *metrics) sseClosed(reason string) {
	if m == nil {
		return
	}
	m.sseEnd.WithLabelValues(reason).Inc()
}
