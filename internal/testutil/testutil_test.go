package testutil

import (
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestKeyring(t *testing.T) {
	k := Keyring(t, KeyEntry("k2", 2), KeyEntry("k1", 1))
	if ids := k.KeyIDs(); len(ids) != 2 || ids[0] != "k2" || ids[1] != "k1" {
		t.Fatalf("key ids %v, want [k2 k1]", ids)
	}
	sealed := k.Seal([]byte("x"), []byte("ad"))
	if got, err := Keyring(t, KeyEntry("k1", 9), KeyEntry("k2", 2)).Open(sealed, []byte("ad")); err != nil || string(got) != "x" {
		t.Fatalf("open under the same k2 bytes: %q, %v", got, err)
	}
}

func TestMustAndWantErr(t *testing.T) {
	errX := errors.New("x")
	if v := Must[int](t, "ok")(7, nil); v != 7 {
		t.Fatalf("Must = %d", v)
	}
	WantErr(t, "wrapped", errors.Join(errX, errors.New("y")), errX)
}

func TestSum(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c_total", Help: "h"}, []string{"op", "outcome"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g", Help: "h"})
	reg.MustRegister(c, g)
	c.WithLabelValues("get", "ok").Add(2)
	c.WithLabelValues("get", "error").Add(3)
	c.WithLabelValues("put", "ok").Add(5)
	g.Set(7)
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"c_total", nil, 10},
		{"c_total", []string{"op", "get"}, 5},
		{"c_total", []string{"op", "get", "outcome", "ok"}, 2},
		{"c_total", []string{"outcome", "ok"}, 7},
		{"c_total", []string{"op", "none"}, 0},
		{"g", nil, 7},
		{"missing", nil, 0},
	} {
		if got := Sum(t, reg, tc.name, tc.labels...); got != tc.want {
			t.Errorf("Sum(%s, %q) = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
}
