package cache

import (
	"fmt"
	"testing"
	"time"
)

// TestTombsBounded: tombstones whose push never comes do not accumulate —
// the set stays proportional to the keys changed within tombstoneFor.
func TestTombsBounded(t *testing.T) {
	ts := newTombs()
	now := time.Unix(1_000_000, 0)
	const perSecond = 1000
	for i := range 100 * perSecond {
		now = now.Add(time.Second / perSecond)
		ts.add(fmt.Sprint("k", i), now.Add(tombstoneFor), now)
		if n := ts.len(); n > 4*perSecond+tombsSweepMin {
			t.Fatalf("after %d inserts the set holds %d tombstones; at most %d are live", i+1, n, perSecond)
		}
	}
	tests := []struct {
		name string
		at   time.Time
		want bool
	}{
		{"the newest, now", now, true},
		{"the newest, at its expiry", now.Add(tombstoneFor), false},
	}
	for _, tt := range tests {
		if got := ts.live(fmt.Sprint("k", 100*perSecond-1), tt.at); got != tt.want {
			t.Errorf("%s: live = %v, want %v", tt.name, got, tt.want)
		}
	}
	if ts.live("k0", now) {
		t.Error("a tombstone from 100s ago is live")
	}
}
