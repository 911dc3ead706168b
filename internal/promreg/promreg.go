// Package promreg registers the capabilities' Prometheus collectors.
package promreg

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Register registers c on reg, or returns the collector already registered
// under the same descriptor, so that several instances of a capability on
// one registry (two queues, two stores) add up in one metric. Any other
// registration error (a collector of the same name with other labels or
// help) leaves c unregistered and returns it: metrics must never stop the
// capability they observe.
func Register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
	}
	return c
}
