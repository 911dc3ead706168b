package notify

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/elevacare/eleva-redis/internal/clock"
	"github.com/elevacare/eleva-redis/internal/testutil"
)

// TestMetrics: calls are counted by op and outcome, items by event, and two
// queues on one registry add up.
func TestMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	clk := clock.NewFake(time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC))
	q := NewMemory(Config{Registerer: reg, Now: clk.Now, Lease: time.Second})
	q2 := NewMemory(Config{Registerer: reg})
	for _, id := range []string{"a", "b", "a"} {
		testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, note("u", id)))
	}
	testutil.Must[Result](t, "Enqueue")(q2.Enqueue(ctxb, note("u", "c")))
	_, err := q.Enqueue(ctxb, note("", "x"))
	testutil.WantErr(t, "Enqueue", err, ErrInvalidArgument)
	b := testutil.Must[[]Batch](t, "Claim")(q.Claim(ctxb, 1, 1))[0]
	clk.Advance(time.Second)
	b2 := testutil.Must[[]Batch](t, "Claim")(q.Claim(ctxb, 1, 2))[0]
	_, err = q.Ack(ctxb, b, "a")
	testutil.WantErr(t, "stale Ack", err, ErrLeaseLost)
	testutil.Must[int](t, "Ack")(q.Ack(ctxb, b2, "a"))
	testutil.Must[int](t, "Nack")(q.Nack(ctxb, b2, Failure{ID: "b", Err: errors.New("x")}))

	value := func(c prometheus.Counter) float64 {
		var m dto.Metric
		if err := c.Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetCounter().GetValue()
	}
	ops := func(op, outcome string) float64 {
		return value(q.(*queue).m.ops.WithLabelValues("memory", op, outcome))
	}
	items := func(event string) float64 {
		return value(q.(*queue).m.items.WithLabelValues("memory", event))
	}
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"enqueue ok", ops("enqueue", "ok"), 4},
		{"enqueue invalid", ops("enqueue", "invalid"), 1},
		{"claim ok", ops("claim", "ok"), 2},
		{"ack lease_lost", ops("ack", "lease_lost"), 1},
		{"ack ok", ops("ack", "ok"), 1},
		{"nack ok", ops("nack", "ok"), 1},
		{"enqueued", items("enqueued"), 3},
		{"duplicate", items("duplicate"), 1},
		{"claimed", items("claimed"), 3},
		{"delivered", items("delivered"), 1},
		{"failed", items("failed"), 1},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if _, err := reg.Gather(); err != nil {
		t.Fatalf("Gather: %v", err)
	}
}
