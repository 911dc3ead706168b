package session

import (
	"context"
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/elevacare/eleva-redis/internal/promreg"
)

// Metric names. They are part of the operations contract (dashboards and
// alerts use them): rename only with a note in the changelog.
const (
	metricOps     = "eleva_session_ops_total"
	metricTouches = "eleva_session_touches_total"
	metricCache   = "eleva_session_local_cache_total"
)

// Outcome labels of eleva_session_ops_total.
const (
	outcomeOK         = "ok"
	outcomeNotFound   = "not_found"
	outcomeExists     = "exists"
	outcomeConflict   = "conflict"
	outcomeInvalid    = "invalid"
	outcomeBackend    = "backend_error"
	outcomeCanceled   = "canceled"
	outcomeUnreadable = "unreadable"
	outcomeOther      = "error"
)

// Labels of eleva_session_touches_total: what a Touch of a live session did.
const (
	// touchWritten: the activity was written (and every cached copy
	// invalidated).
	touchWritten = "written"
	// touchSkippedLocal: the local cached copy showed a recent activity:
	// nothing written, no round trip.
	touchSkippedLocal = "skipped_local"
	// touchSkipped: the backend found a recent activity: nothing written.
	touchSkipped = "skipped"
)

// metrics holds the package's collectors. A nil *metrics records nothing.
type metrics struct {
	ops     *prometheus.CounterVec
	touches *prometheus.CounterVec
	cache   *prometheus.CounterVec
}

// newMetrics registers the collectors on reg; nil when reg is nil. A
// collector already registered under the same name (several stores on one
// registry) is reused, so their counts add up.
func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		return nil
	}
	return &metrics{
		ops: promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricOps,
			Help: "Session operations by op (create, get, update, touch, has_role, delete, rotate, list, revoke_user, set_user_roles) " +
				"and outcome (ok, not_found, exists, conflict, invalid, backend_error, canceled, unreadable, error).",
		}, []string{"op", "outcome"})),
		touches: promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricTouches,
			Help: "Touches of live sessions by result: written (activity stored), skipped_local (throttled by the local cached copy, " +
				"no round trip), skipped (throttled by the backend).",
		}, []string{"result"})),
		cache: promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricCache,
			Help: "Reads of HasRole and Touch by result: hit (served from this instance's client-side cache), miss (asked Redis). Redis backend only.",
		}, []string{"result"})),
	}
}

func (m *metrics) countOp(op, outcome string) {
	if m != nil {
		m.ops.WithLabelValues(op, outcome).Inc()
	}
}

func (m *metrics) countTouch(result string) {
	if m != nil {
		m.touches.WithLabelValues(result).Inc()
	}
}

func (m *metrics) countCache(hit bool) {
	if m == nil {
		return
	}
	if hit {
		m.cache.WithLabelValues("hit").Inc()
	} else {
		m.cache.WithLabelValues("miss").Inc()
	}
}

// outcomeOf classifies an operation's error.
func outcomeOf(err error) string {
	switch {
	case err == nil:
		return outcomeOK
	case errors.Is(err, ErrNotFound):
		return outcomeNotFound
	case errors.Is(err, ErrExists):
		return outcomeExists
	case errors.Is(err, ErrConflict):
		return outcomeConflict
	case errors.Is(err, ErrInvalidArgument):
		return outcomeInvalid
	case errors.Is(err, ErrBackend):
		return outcomeBackend
	case errors.Is(err, ErrUnreadable):
		return outcomeUnreadable
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return outcomeCanceled
	default:
		return outcomeOther
	}
}
