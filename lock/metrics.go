package lock

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/elevacare/eleva-redis/internal/promreg"
)

// Metric names. They are part of the operations contract (dashboards and
// alerts use them): rename only with a note in the changelog.
const (
	metricAcquire       = "eleva_lock_acquire_total"
	metricLost          = "eleva_lock_lost_total"
	metricWait          = "eleva_lock_wait_seconds"
	metricBackendErrors = "eleva_lock_backend_errors_total"
)

// Outcome labels of eleva_lock_acquire_total.
const (
	outcomeAcquired = "acquired"
	outcomeHeld     = "held"
	outcomeError    = "error"
)

// metrics holds the package's collectors. A nil *metrics records nothing.
type metrics struct {
	acquire       *prometheus.CounterVec
	lost          *prometheus.CounterVec
	wait          *prometheus.HistogramVec
	backendErrors prometheus.Counter
}

// newMetrics registers the collectors on reg and returns them; nil when reg
// is nil. Collectors already registered under the same names (several
// Lockers on one registry) are reused, so their counts add up.
func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		return nil
	}
	return &metrics{
		acquire: promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricAcquire,
			Help: "Acquire calls by backend (memory, redis) and outcome: acquired, held (not acquired within the wait), error (backend failure, timeout or cancelled ctx). Invalid input is not counted.",
		}, []string{"backend", "outcome"})),
		lost: promreg.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricLost,
			Help: "Locks found lost by their holder: a Refresh or Release answered lock_lost (expired or taken over), or Do's watchdog saw a lease expire without a successful refresh. Counted once per lease.",
		}, []string{"backend"})),
		wait: promreg.Register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: metricWait,
			Help: "Time spent in Acquire calls with a Wait option, whatever their outcome.",
			// 100µs .. ~26s.
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 19),
		}, []string{"backend"})),
		backendErrors: promreg.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricBackendErrors,
			Help: "Failed lock backend calls (timeouts, connection errors, error replies), including failed Pub/Sub subscriptions.",
		})),
	}
}

func (m *metrics) acquireInc(backend, outcome string) {
	if m == nil {
		return
	}
	m.acquire.WithLabelValues(backend, outcome).Inc()
}

func (m *metrics) lostInc(backend string) {
	if m == nil {
		return
	}
	m.lost.WithLabelValues(backend).Inc()
}

func (m *metrics) observeWait(backend string, d time.Duration) {
	if m == nil {
		return
	}
	m.wait.WithLabelValues(backend).Observe(d.Seconds())
}

func (m *metrics) backendError() {
	if m == nil {
		return
	}
	m.backendErrors.Inc()
}
