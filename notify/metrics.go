package notify

import (
	"context"
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/elevacare/eleva-redis/internal/promreg"
)

// Metric names. They are part of the operations contract (dashboards and
// alerts use them): rename only with a note in the changelog.
const (
	metricOps   = "eleva_notify_ops_total"
	metricItems = "eleva_notify_items_total"
)

// metrics holds the package's collectors. A nil *metrics records nothing.
type metrics struct {
	ops   *prometheus.CounterVec
	items *prometheus.CounterVec
}

// newMetrics registers the collectors on reg; nil when reg is nil. A
// collector already registered under the same name (several queues on one
// registry) is reused, so their counts add up.
func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		return nil
	}
	return &metrics{
		ops: promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricOps,
			Help: "Notification queue calls by backend (memory, redis), op (enqueue, enqueue_many, pending, remove, cancel, stats, list_dead, " +
				"requeue_dead, claim, ack, nack, extend) and outcome (ok, invalid, not_found, lease_lost, backend_error, canceled, error).",
		}, []string{"backend", "op", "outcome"})),
		items: promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricItems,
			Help: "Notifications by backend and event: enqueued, duplicate (an id already stored, not queued again), claimed, " +
				"delivered (acked or removed), failed (nacked: retried or dead).",
		}, []string{"backend", "event"})),
	}
}

func outcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrInvalidArgument):
		return "invalid"
	case errors.Is(err, ErrNotFound):
		return "not_found"
	case errors.Is(err, ErrLeaseLost):
		return "lease_lost"
	case errors.Is(err, ErrBackend):
		return "backend_error"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	}
	return "error"
}

func (m *metrics) op(kind, op string, err error) {
	if m == nil {
		return
	}
	m.ops.WithLabelValues(kind, op, outcome(err)).Inc()
}

func (m *metrics) count(kind, event string, n int) {
	if m == nil || n <= 0 {
		return
	}
	m.items.WithLabelValues(kind, event).Add(float64(n))
}

func (m *metrics) enqueued(kind string, created bool) {
	if created {
		m.count(kind, "enqueued", 1)
	} else {
		m.count(kind, "duplicate", 1)
	}
}
