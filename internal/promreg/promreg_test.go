package promreg

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestRegister(t *testing.T) {
	reg := prometheus.NewRegistry()
	opts := prometheus.CounterOpts{Name: "eleva_test_total", Help: "a test counter"}
	a := Register(reg, prometheus.NewCounterVec(opts, []string{"x"}))
	b := Register(reg, prometheus.NewCounterVec(opts, []string{"x"}))
	if a != b {
		t.Fatal("the second registration did not reuse the first collector")
	}
	a.WithLabelValues("1").Inc()
	b.WithLabelValues("1").Inc()
	// Same name, other labels: not registered, but usable.
	c := Register(reg, prometheus.NewCounterVec(opts, []string{"y"}))
	if c == a {
		t.Fatal("a collector with other labels was taken for the registered one")
	}
	c.WithLabelValues("2").Inc()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 1 || len(mfs[0].Metric) != 1 || mfs[0].Metric[0].GetCounter().GetValue() != 2 {
		t.Fatalf("gathered %v, want one series at 2", mfs)
	}
}
