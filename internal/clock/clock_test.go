package clock

import (
	"testing"
	"time"
)

func TestFake(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	c := NewFake(t0)
	if got := c.Now(); !got.Equal(t0) {
		t.Fatalf("Now = %v, want %v", got, t0)
	}
	c.Advance(time.Second)
	if got := c.Now(); !got.Equal(t0.Add(time.Second)) {
		t.Fatalf("after Advance: %v", got)
	}
	c.Set(t0)
	c.SetStep(time.Millisecond)
	a, b := c.Now(), c.Now()
	if !a.Equal(t0) || b.Sub(a) != time.Millisecond {
		t.Fatalf("step readings %v, %v", a, b)
	}
}
