package tempdata

import (
	"context"
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metricOps is the name of the operations counter. It is part of the
// operations contract (dashboards and alerts use it): rename only with a note
// in the changelog.
const metricOps = "eleva_tempdata_ops_total"

// Outcome labels of eleva_tempdata_ops_total.
const (
	outcomeOK         = "ok"
	outcomeNotFound   = "not_found"
	outcomeExists     = "exists"
	outcomeInProgress = "in_progress"
	outcomeMismatch   = "fingerprint_mismatch"
	outcomeInvalid    = "invalid"
	outcomeBackend    = "backend_error"
	outcomeCanceled   = "canceled"
	outcomeUnreadable = "unreadable"
	outcomeOther      = "error"
)

// metrics holds the package's collectors. A nil *metrics records nothing.
type metrics struct {
	ops *prometheus.CounterVec
}

// newMetrics registers the collectors on reg; nil when reg is nil. A
// collector already registered under the same name (several stores on one
// registry) is reused, so their counts add up.
func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		return nil
	}
	ops := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: metricOps,
		Help: "Temporary-data operations by op (put, put_if_absent, get, take, delete, issue, consume, begin, complete, fail) " +
			"and outcome (ok, not_found, exists, in_progress, fingerprint_mismatch, invalid, backend_error, canceled, unreadable, error).",
	}, []string{"op", "outcome"})
	if err := reg.Register(ops); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				ops = existing
			}
		}
		// Any other error leaves ops unregistered: metrics must never stop
		// the store.
	}
	return &metrics{ops: ops}
}

func (m *metrics) count(op, outcome string) {
	if m == nil {
		return
	}
	m.ops.WithLabelValues(op, outcome).Inc()
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
	case errors.Is(err, ErrInProgress):
		return outcomeInProgress
	case errors.Is(err, ErrFingerprintMismatch):
		return outcomeMismatch
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
