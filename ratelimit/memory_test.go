package ratelimit

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elevacare/eleva-redis/internal/clock"
	"github.com/prometheus/client_golang/prometheus"
)

// memBase is the fake clock's start: a whole hour since the epoch, so windows
// of 1ms..1h start exactly at it, and in [2^50, 2^51) µs, where float64 µs
// have a resolution of 0.25µs (the GCRA rounding cases below rely on that).
var memBase = time.Unix(1_699_999_200, 0)

// memClock is a fake clock for Config.Now whose Set is relative to memBase.
type memClock struct{ *clock.Fake }

func newMemClock() *memClock { return &memClock{clock.NewFake(memBase)} }

// Set moves the clock to memBase + d.
func (c *memClock) Set(d time.Duration) { c.Fake.Set(memBase.Add(d)) }

func newTestMemory(t *testing.T) (*memoryLimiter, *memClock) {
	t.Helper()
	clk := newMemClock()
	return NewMemory(Config{Now: clk.Now}).(*memoryLimiter), clk
}

// memStep is one call of a scripted sequence and the decision it must get.
type memStep struct {
	at      time.Duration // clock = memBase + at
	op      string        // allow, peek, record
	n       int
	allowed bool
	rem     int
	retry   time.Duration
	reset   time.Duration // want ResetAt = memBase + reset
}

const us = time.Microsecond

// TestMemoryAlgorithms runs scripted sequences whose expected numbers were
// worked out by hand from docs/ratelimit-algorithms.md (each comment shows
// the arithmetic), so the memory backend is checked against the spec itself.
func TestMemoryAlgorithms(t *testing.T) {
	tests := []struct {
		name  string
		limit Limit
		steps []memStep
	}{
		{"fixed-window", Limit{Limit: 3, Window: time.Second, Algorithm: FixedWindow}, []memStep{
			{0, "allow", 1, true, 2, 0, time.Second},
			{0, "allow", 2, true, 0, 0, time.Second},
			{250 * time.Millisecond, "allow", 1, false, 0, 750 * time.Millisecond, time.Second}, // ResetAt - now
			{250 * time.Millisecond, "peek", 1, false, 0, 750 * time.Millisecond, time.Second},
			{time.Second, "allow", 1, true, 2, 0, 2 * time.Second},             // new window
			{time.Second, "allow", 5, false, 2, time.Second, 2 * time.Second},  // cost > L: RetryAfter = W, nothing taken
			{time.Second, "record", 3, false, 0, time.Second, 2 * time.Second}, // 1+3 > 3: recorded anyway, c = 4
			{1500 * time.Millisecond, "allow", 1, false, 0, 500 * time.Millisecond, 2 * time.Second},
			{2 * time.Second, "peek", 1, true, 3, 0, 3 * time.Second},
			{2 * time.Second, "record", 1, true, 2, 0, 3 * time.Second},
		}},
		{"sliding-window weighting", Limit{Limit: 10, Window: time.Second, Algorithm: SlidingWindow}, []memStep{
			{0, "allow", 8, true, 2, 0, 2 * time.Second}, // expiry and reset (idx+2)*W
			// 25% into the next window: est = 8*750000/1e6 + 0 = 6; c = 0, p > 0: reset (idx+1)*W.
			{1250 * time.Millisecond, "peek", 1, true, 4, 0, 2 * time.Second},
			{1250 * time.Millisecond, "allow", 4, true, 0, 0, 3 * time.Second}, // 6+4 <= 10
			// est = 10; c+n = 5 <= L: ceil(1e6 - (10-4-1)*1e6/8) - 250000 = 125000.
			{1250 * time.Millisecond, "allow", 1, false, 0, 125 * time.Millisecond, 3 * time.Second},
			// 75%: est = 8*250000/1e6 + 4 = 6; floor(10 - 7) = 3.
			{1750 * time.Millisecond, "allow", 1, true, 3, 0, 3 * time.Second},
			// est = 2+5 = 7, 7+5 > 10; c+n = 10 <= L: ceil(1e6 - 0) - 750000.
			{1750 * time.Millisecond, "allow", 5, false, 3, 250 * time.Millisecond, 3 * time.Second},
			// two windows later both counts are gone.
			{3500 * time.Millisecond, "peek", 1, true, 10, 0, 3500 * time.Millisecond},
		}},
		{"sliding-window next-window retry", Limit{Limit: 10, Window: time.Second, Algorithm: SlidingWindow}, []memStep{
			{0, "allow", 10, true, 0, 0, 2 * time.Second},
			// c+n = 11 > L: (idx+1)*W - now + ceil(1e6 - 9*1e6/10) = 500000 + 100000.
			{500 * time.Millisecond, "allow", 1, false, 0, 600 * time.Millisecond, 2 * time.Second},
			{1100 * time.Millisecond, "allow", 1, true, 0, 0, 3 * time.Second}, // est = 10*0.9 = 9
			// est = 10*0.75 + 1 = 8.5: floor(10 - 8.5) = 1.
			{1250 * time.Millisecond, "peek", 1, true, 1, 0, 3 * time.Second},
			{1250 * time.Millisecond, "allow", 1, true, 0, 0, 3 * time.Second}, // floor(10 - 9.5) = 0
			// est = 9.5; c+n = 3 <= L: ceil(1e6 - 7*1e6/10) - 250000 = 50000.
			{1250 * time.Millisecond, "allow", 1, false, 0, 50 * time.Millisecond, 3 * time.Second},
			{1300 * time.Millisecond, "allow", 1, true, 0, 0, 3 * time.Second}, // est = 10*0.7 + 2 = 9
		}},
		{"sliding-window record", Limit{Limit: 10, Window: time.Second, Algorithm: SlidingWindow}, []memStep{
			{0, "record", 12, false, 0, time.Second, 2 * time.Second}, // cost > L: RetryAfter = W, c = 12
			// (idx+1)*W - now + ceil(1e6 - 9*1e6/12) = 1e6 + 250000.
			{0, "allow", 1, false, 0, 1250 * time.Millisecond, 2 * time.Second},
			{1250 * time.Millisecond, "allow", 1, true, 0, 0, 3 * time.Second}, // est = 12*0.75 = 9
			// est = 10; c+n = 3 <= L: ceil(1e6 - 7*1e6/12) - 250000 = 416667 - 250000; c becomes 3.
			{1250 * time.Millisecond, "record", 2, false, 0, 166667 * us, 3 * time.Second},
			{1500 * time.Millisecond, "peek", 1, true, 1, 0, 3 * time.Second}, // est = 12*0.5 + 3 = 9
		}},
		{"gcra", Limit{Limit: 10, Window: time.Second, Algorithm: GCRA}, []memStep{
			// T = 100000µs, tau = 1e6.
			{0, "allow", 10, true, 0, 0, time.Second},
			{0, "allow", 1, false, 0, 100 * time.Millisecond, time.Second},            // ceil(1.1e6 - 1e6 - 0)
			{100 * time.Millisecond, "allow", 1, true, 0, 0, 1100 * time.Millisecond}, // one T refilled one unit
			// floor((1e6 - (1.1e6 - 350000)) / 1e5 + 1e-6) = floor(2.5).
			{350 * time.Millisecond, "peek", 1, true, 2, 0, 1100 * time.Millisecond},
			{350 * time.Millisecond, "allow", 3, false, 2, 50 * time.Millisecond, 1100 * time.Millisecond}, // ceil(1.4e6 - 1e6 - 350000)
			{400 * time.Millisecond, "allow", 3, true, 0, 0, 1400 * time.Millisecond},
			{2400 * time.Millisecond, "peek", 1, true, 10, 0, 2400 * time.Millisecond}, // full: ResetAt = now
			{2400 * time.Millisecond, "allow", 11, false, 10, time.Second, 2400 * time.Millisecond},
		}},
		{"gcra burst", Limit{Limit: 10, Window: time.Second, Burst: 3, Algorithm: GCRA}, []memStep{
			// T = 100000, tau = 3e5.
			{0, "allow", 1, true, 2, 0, 100 * time.Millisecond},
			{0, "allow", 3, false, 2, 100 * time.Millisecond, 100 * time.Millisecond}, // ceil(4e5 - 3e5)
			{0, "allow", 2, true, 0, 0, 300 * time.Millisecond},
			{100 * time.Millisecond, "peek", 1, true, 1, 0, 300 * time.Millisecond},             // refill after T
			{100 * time.Millisecond, "allow", 4, false, 1, time.Second, 300 * time.Millisecond}, // cost > burst
		}},
		{"gcra record", Limit{Limit: 10, Window: time.Second, Algorithm: GCRA}, []memStep{
			{0, "record", 15, false, 0, time.Second, 1500 * time.Millisecond}, // cost > B: RetryAfter = W; tat = now+1.5e6
			{0, "allow", 1, false, 0, 600 * time.Millisecond, 1500 * time.Millisecond},
			{599999 * us, "allow", 1, false, 0, 1 * us, 1500 * time.Millisecond},
			{600 * time.Millisecond, "allow", 1, true, 0, 0, 1600 * time.Millisecond},
			// n <= B but no fit: ceil(1.8e6 - 1e6 - 6e5); recorded: tat = 1.8e6.
			{600 * time.Millisecond, "record", 2, false, 0, 200 * time.Millisecond, 1800 * time.Millisecond},
		}},
		{"gcra fractional interval", Limit{Limit: 3, Window: time.Second, Algorithm: GCRA}, []memStep{
			// T = 333333.33..: 3T rounds to the 0.25µs grid at now+1e6; the
			// half-µs tolerance admits the whole burst.
			{0, "allow", 3, true, 0, 0, time.Second},
			// new - tau - now = 333333.25 after rounding: ceil = 333334.
			{0, "allow", 1, false, 0, 333334 * us, time.Second},
			// new - now = 1333333.25 - 333334 <= tau + 0.5; ResetAt truncates
			// tat = now0 + 1333333.25 to whole µs, as Redis does.
			{333334 * us, "allow", 1, true, 0, 0, 1333333 * us},
		}},
		{"gcra interval under 1µs", Limit{Limit: 1_000_000_000, Window: time.Millisecond, Burst: 5, Algorithm: GCRA}, []memStep{
			// T = 1e-6µs: 6T is within the half-µs tolerance of tau = 5T,
			// but a cost above the burst never fits.
			{0, "allow", 6, false, 5, time.Millisecond, 0},
		}},
		{"sliding-log", Limit{Limit: 3, Window: time.Second}, []memStep{
			{0, "allow", 1, true, 2, 0, time.Second},
			{0, "allow", 1, true, 1, 0, time.Second + 1*us}, // same µs: stamp newest+1
			{0, "allow", 1, true, 0, 0, time.Second + 2*us},
			{0, "allow", 1, false, 0, time.Second, time.Second + 2*us}, // oldest (base) must leave
			// k = 3+2-3 = 2: the 2nd oldest, base+1µs, must leave.
			{500 * time.Millisecond, "allow", 2, false, 0, 500*time.Millisecond + 1*us, time.Second + 2*us},
			{500 * time.Millisecond, "allow", 4, false, 0, time.Second, time.Second + 2*us}, // cost > L
			{time.Second, "peek", 1, true, 1, 0, time.Second + 2*us},                        // base is out (s > now-W fails)
			{time.Second, "allow", 1, true, 0, 0, 2 * time.Second},
			{time.Second, "peek", 1, false, 0, 1 * us, 2 * time.Second}, // base+1µs leaves at 1s+1µs
			{time.Second + 1*us, "allow", 1, true, 0, 0, 2*time.Second + 1*us},
		}},
		{"sliding-log record", Limit{Limit: 3, Window: time.Second}, []memStep{
			// stamps base..base+4, only the newest 3 kept; cost > L: RetryAfter = W.
			{0, "record", 5, false, 0, time.Second, time.Second + 4*us},
			{0, "allow", 1, false, 0, time.Second + 2*us, time.Second + 4*us}, // oldest kept is base+2µs
			{time.Second + 1*us, "allow", 1, false, 0, 1 * us, time.Second + 4*us},
			{time.Second + 2*us, "allow", 1, true, 0, 0, 2*time.Second + 2*us},
			// k = 3+2-3 = 2: 2nd oldest in window is base+4µs; records 2 more.
			{time.Second + 2*us, "record", 2, false, 0, 2 * us, 2*time.Second + 4*us},
			// kept: 1s+2µs, 1s+3µs, 1s+4µs; the oldest leaves at 2s+2µs.
			{time.Second + 5*us, "peek", 1, false, 0, time.Second - 3*us, 2*time.Second + 4*us},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, clk := newTestMemory(t)
			ctx := context.Background()
			capacity := tc.limit.Limit
			if tc.limit.Burst > 0 {
				capacity = tc.limit.Burst
			}
			for i, s := range tc.steps {
				clk.Set(s.at)
				var d Decision
				var err error
				switch s.op {
				case "allow":
					d, err = m.AllowN(ctx, "k", tc.limit, s.n)
				case "peek":
					d, err = m.Peek(ctx, "k", tc.limit)
				case "record":
					d, err = m.Record(ctx, "k", tc.limit, s.n)
				default:
					t.Fatalf("bad op %q", s.op)
				}
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				want := Decision{Allowed: s.allowed, Limit: capacity, Remaining: s.rem, ResetAt: memBase.Add(s.reset), RetryAfter: s.retry}
				if d.Allowed != want.Allowed || d.Limit != want.Limit || d.Remaining != want.Remaining ||
					d.RetryAfter != want.RetryAfter || !d.ResetAt.Equal(want.ResetAt) || d.Degraded {
					t.Errorf("step %d (%s n=%d at %v):\n got allowed=%v limit=%d rem=%d retry=%v reset=+%v\nwant allowed=%v limit=%d rem=%d retry=%v reset=+%v",
						i, s.op, s.n, s.at, d.Allowed, d.Limit, d.Remaining, d.RetryAfter, d.ResetAt.Sub(memBase),
						want.Allowed, want.Limit, want.Remaining, want.RetryAfter, s.reset)
				}
			}
		})
	}
}

// TestMemoryGCRATolerance: with L=6, W=1s, six single units taken in one
// µs accumulate float rounding (on the 0.25µs grid of now) to new - now =
// tau + 0.5 on the sixth; the spec's half-µs tolerance admits it, so a full
// burst is exactly L units, and the seventh waits for one interval.
func TestMemoryGCRATolerance(t *testing.T) {
	m, _ := newTestMemory(t)
	ctx := context.Background()
	l := Limit{Limit: 6, Window: time.Second, Algorithm: GCRA}
	for i := 1; i <= 6; i++ {
		d, err := m.Allow(ctx, "k", l)
		if err != nil {
			t.Fatal(err)
		}
		if !d.Allowed {
			t.Fatalf("unit %d of a burst of 6 denied: %+v", i, d)
		}
		if i == 6 && (d.Remaining != 0 || !d.ResetAt.Equal(memBase.Add(time.Second))) {
			t.Fatalf("unit 6: %+v, want remaining 0, reset +1s (tat +1000000.5µs truncated)", d)
		}
	}
	// new = now + 1166667.25 after rounding: ceil(new - tau - now) = 166668.
	d, _ := m.Allow(ctx, "k", l)
	if d.Allowed || d.RetryAfter != 166668*us {
		t.Fatalf("unit 7: %+v, want denied with RetryAfter 166668µs", d)
	}
}

// TestMemorySlidingLogSameMicrosecond: 1000 calls in one µs get 1000 unique
// stamps (none overwrites another), so exactly the limit is admitted and the
// stamps leave the window one µs apart.
func TestMemorySlidingLogSameMicrosecond(t *testing.T) {
	m, clk := newTestMemory(t)
	ctx := context.Background()
	l := Limit{Limit: 1000, Window: time.Second}
	for i := 0; i < 1000; i++ {
		d, err := m.Allow(ctx, "k", l)
		if err != nil {
			t.Fatal(err)
		}
		if !d.Allowed || d.Remaining != 999-i || !d.ResetAt.Equal(memBase.Add(time.Second+time.Duration(i)*us)) {
			t.Fatalf("call %d: %+v", i, d)
		}
	}
	d, _ := m.Allow(ctx, "k", l)
	if d.Allowed || d.RetryAfter != time.Second || !d.ResetAt.Equal(memBase.Add(time.Second+999*us)) {
		t.Fatalf("call 1001: %+v", d)
	}
	clk.Set(time.Second) // the stamp at base leaves; base+1µs..base+999µs stay
	if d, _ = m.Peek(ctx, "k", l); !d.Allowed || d.Remaining != 1 {
		t.Fatalf("peek at 1s: %+v", d)
	}
	if d, _ = m.Allow(ctx, "k", l); !d.Allowed || d.Remaining != 0 {
		t.Fatalf("allow at 1s: %+v", d)
	}
	clk.Set(time.Second + 500*us) // in window: base+501..base+999 (499) and base+1s
	if d, _ = m.Peek(ctx, "k", l); !d.Allowed || d.Remaining != 500 {
		t.Fatalf("peek at 1s+500µs: %+v", d)
	}
}

// TestMemoryExpiredStateIsAbsent: a state past its TTL counts as absent even
// when a later call, with a longer window, would still count its stamps.
// This is what Redis does (the key has expired), and what the memory backend
// must match.
func TestMemoryExpiredStateIsAbsent(t *testing.T) {
	m, clk := newTestMemory(t)
	ctx := context.Background()
	short := Limit{Limit: 5, Window: time.Second}
	long := Limit{Limit: 5, Window: time.Hour}
	if _, err := m.AllowN(ctx, "k", short, 2); err != nil {
		t.Fatal(err)
	}
	clk.Set(999 * time.Millisecond) // before the TTL (newest stamp + 1s)
	if d, _ := m.Peek(ctx, "k", long); d.Remaining != 3 {
		t.Fatalf("before expiry: remaining %d, want 3", d.Remaining)
	}
	clk.Set(time.Second + 1*us) // newest stamp is base+1µs: expires at 1s+1µs
	if d, _ := m.Peek(ctx, "k", long); d.Remaining != 5 || !d.ResetAt.Equal(memBase.Add(time.Second+1*us)) {
		t.Fatalf("after expiry: %+v, want the absent state", d)
	}
}

// TestMemorySlidingLogConsumeDropsOld: a consuming call removes the stamps
// that left the window (ZREMRANGEBYSCORE on Redis), which shows when the same
// key is later read with a longer window; a non-consuming call removes
// nothing.
func TestMemorySlidingLogConsumeDropsOld(t *testing.T) {
	m, clk := newTestMemory(t)
	ctx := context.Background()
	l := Limit{Limit: 3, Window: time.Second}
	long := Limit{Limit: 10, Window: time.Hour}
	for _, at := range []time.Duration{0, 900 * time.Millisecond} {
		clk.Set(at)
		if _, err := m.Allow(ctx, "k", l); err != nil {
			t.Fatal(err)
		}
	}
	clk.Set(1500 * time.Millisecond)
	if _, err := m.Peek(ctx, "k", l); err != nil { // reads, removes nothing
		t.Fatal(err)
	}
	if d, _ := m.Peek(ctx, "k", long); d.Remaining != 8 {
		t.Fatalf("after a peek: remaining %d with the long window, want 8 (both stamps kept)", d.Remaining)
	}
	if _, err := m.Allow(ctx, "k", l); err != nil { // drops the stamp at base, adds one
		t.Fatal(err)
	}
	if d, _ := m.Peek(ctx, "k", long); d.Remaining != 8 {
		t.Fatalf("after a consume: remaining %d with the long window, want 8 (base dropped, one added)", d.Remaining)
	}
}

// TestMemoryMetrics: with a Registerer, every decision but Peek is counted
// under backend="memory".
func TestMemoryMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	clk := newMemClock()
	m := NewMemory(Config{Now: clk.Now, Registerer: reg})
	ctx := context.Background()
	l := Limit{Limit: 1, Window: time.Minute, Algorithm: GCRA}
	for i := 0; i < 3; i++ {
		if _, err := m.Allow(ctx, "k", l); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Peek(ctx, "k", l); err != nil {
		t.Fatal(err)
	}
	if _, err := m.AllowAll(ctx, Check{Key: "j", Limit: l}, Check{Key: "k", Limit: l}); err != nil {
		t.Fatal(err)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range fams {
		if f.GetName() != metricDecisions {
			continue
		}
		for _, mt := range f.GetMetric() {
			lbl := map[string]string{}
			for _, p := range mt.GetLabel() {
				lbl[p.GetName()] = p.GetValue()
			}
			if lbl["backend"] == "memory" && lbl["algorithm"] == "gcra" {
				got[lbl["outcome"]] = mt.GetCounter().GetValue()
			}
		}
	}
	// Allow: 1 allowed, 2 denied; AllowAll denied as a whole: both checks denied.
	if got["allowed"] != 1 || got["denied"] != 4 {
		t.Fatalf("gcra decisions %v, want allowed 1, denied 4", got)
	}
}

// memKeysInShard returns n keys whose state lives in shard s.
func memKeysInShard(m *memoryLimiter, s *memShard, prefix string, n int) []string {
	var keys []string
	for i := 0; len(keys) < n; i++ {
		k := prefix + strconv.Itoa(i)
		if m.shardFor(k) == s {
			keys = append(keys, k)
		}
	}
	return keys
}

// TestMemoryExpiredEntriesAreReclaimed: expired states disappear from the
// shard's map once inserts have made it grow past its sweep threshold; live
// states stay.
func TestMemoryExpiredEntriesAreReclaimed(t *testing.T) {
	m, clk := newTestMemory(t)
	ctx := context.Background()
	s := &m.shards[7]
	short := Limit{Limit: 5, Window: 10 * time.Millisecond, Algorithm: FixedWindow}
	long := Limit{Limit: 5, Window: time.Minute, Algorithm: GCRA}
	stale := memKeysInShard(m, s, "stale-", 100)
	fresh := memKeysInShard(m, s, "fresh-", 100)
	kept := memKeysInShard(m, s, "kept-", 10)
	for _, k := range append(stale, kept...) {
		l := short
		if k[0] == 'k' {
			l = long
		}
		if _, err := m.Allow(ctx, k, l); err != nil {
			t.Fatal(err)
		}
	}
	if got := s.size(); got != 110 {
		t.Fatalf("shard holds %d states, want 110", got)
	}
	clk.Set(10 * time.Millisecond) // the fixed windows' TTL: (idx+1)*W
	// Inserting more new states than the shard has stale ones must have
	// triggered a sweep (the threshold is at most twice the live size).
	for _, k := range fresh {
		if _, err := m.Allow(ctx, k, long); err != nil {
			t.Fatal(err)
		}
	}
	if got := s.size(); got != 110 {
		t.Errorf("shard holds %d states, want 110 (100 fresh + 10 kept)", got)
	}
	for _, k := range stale {
		if _, ok := s.plain[memFixedWindow][k]; ok {
			t.Fatalf("expired state %q still in the map", k)
		}
	}
	for _, k := range kept {
		if _, ok := s.plain[memGCRA][k]; !ok {
			t.Fatalf("live state %q was swept", k)
		}
	}
}

// TestMemoryBounded: keys that are used once and expire do not accumulate.
func TestMemoryBounded(t *testing.T) {
	m, clk := newTestMemory(t)
	ctx := context.Background()
	l := Limit{Limit: 5, Window: 10 * time.Millisecond, Algorithm: SlidingWindow}
	const rounds, perRound = 30, 2000
	for r := 0; r < rounds; r++ {
		clk.Set(time.Duration(r) * 100 * time.Millisecond) // the previous round has expired
		for i := 0; i < perRound; i++ {
			if _, err := m.Allow(ctx, "r"+strconv.Itoa(r)+"-"+strconv.Itoa(i), l); err != nil {
				t.Fatal(err)
			}
		}
	}
	total := 0
	for i := range m.shards {
		total += m.shards[i].size()
	}
	// Each shard holds at most max(memSweepMin, 2*live) states.
	if bound := memShards*memSweepMin + 2*perRound; total > bound {
		t.Fatalf("%d states after %d inserts, want at most %d", total, rounds*perRound, bound)
	}
}

func TestMemoryReset(t *testing.T) {
	m, _ := newTestMemory(t)
	ctx := context.Background()
	for _, a := range Algorithms {
		l := Limit{Limit: 2, Window: time.Minute, Algorithm: a}
		if _, err := m.AllowN(ctx, "k", l, 2); err != nil {
			t.Fatal(err)
		}
		if _, err := m.AllowN(ctx, "other", l, 2); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Reset(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	for _, a := range Algorithms {
		l := Limit{Limit: 2, Window: time.Minute, Algorithm: a}
		if d, _ := m.Peek(ctx, "k", l); d.Remaining != 2 {
			t.Errorf("%s: after Reset remaining %d, want 2", a, d.Remaining)
		}
		if d, _ := m.Peek(ctx, "other", l); d.Remaining != 0 {
			t.Errorf("%s: Reset of k touched other: remaining %d", a, d.Remaining)
		}
		if m.shardFor("k").get(memKey{key: "k", alg: algOf(a)}) != nil {
			t.Errorf("%s: state still stored after Reset", a)
		}
	}
}

// TestMemoryStateIdentity: state is per (tag, key, algorithm).
func TestMemoryStateIdentity(t *testing.T) {
	m, _ := newTestMemory(t)
	ctx := context.Background()
	l := Limit{Limit: 5, Window: time.Minute}
	if _, err := m.AllowN(ctx, "k", l, 2); err != nil {
		t.Fatal(err)
	}
	// Another algorithm on the same key starts empty.
	if d, _ := m.Peek(ctx, "k", Limit{Limit: 5, Window: time.Minute, Algorithm: FixedWindow}); d.Remaining != 5 {
		t.Errorf("fixed-window shares sliding-log state: remaining %d", d.Remaining)
	}
	// A check without Tag, or tagged with its own key, is the key's state.
	for _, tag := range []string{"", "k"} {
		res, err := m.AllowAll(ctx, Check{Key: "k", Tag: tag, Limit: l})
		if err != nil {
			t.Fatal(err)
		}
		// 5 - 2 - 1 after the first check, then one less.
		if !res.Allowed || res.Decisions[0].Remaining != 2-len(tag) {
			t.Errorf("tag %q: %+v", tag, res)
		}
	}
	// Another tag is another state.
	res, err := m.AllowAll(ctx, Check{Key: "k", Tag: "user:1", Limit: l})
	if err != nil {
		t.Fatal(err)
	}
	if res.Decisions[0].Remaining != 4 {
		t.Errorf("tag user:1 shares the key's state: %+v", res.Decisions[0])
	}
	// And the key itself with that tag's name is yet another.
	if d, _ := m.Peek(ctx, "user:1", l); d.Remaining != 5 {
		t.Errorf("key user:1 shares tag user:1's state: %+v", d)
	}
}

func TestMemoryInvalidInput(t *testing.T) {
	m, _ := newTestMemory(t)
	ctx := context.Background()
	ok := Limit{Limit: 5, Window: time.Minute}
	tests := []struct {
		name string
		call func() error
		want error
	}{
		{"empty key", func() error { _, err := m.Allow(ctx, "", ok); return err }, ErrInvalidKey},
		{"zero limit", func() error { _, err := m.Allow(ctx, "k", Limit{Window: time.Second}); return err }, ErrInvalidLimit},
		{"short window", func() error { _, err := m.Peek(ctx, "k", Limit{Limit: 1, Window: time.Microsecond}); return err }, ErrInvalidLimit},
		{"unknown algorithm", func() error {
			_, err := m.Allow(ctx, "k", Limit{Limit: 1, Window: time.Second, Algorithm: "leaky"})
			return err
		}, ErrUnknownAlgorithm},
		{"sliding-log too big", func() error {
			_, err := m.Allow(ctx, "k", Limit{Limit: MaxSlidingLogLimit + 1, Window: time.Second})
			return err
		}, ErrInvalidLimit},
		{"cost 0", func() error { _, err := m.AllowN(ctx, "k", ok, 0); return err }, ErrInvalidLimit},
		{"negative record", func() error { _, err := m.Record(ctx, "k", ok, -1); return err }, ErrInvalidLimit},
		{"reset empty key", func() error { return m.Reset(ctx, "") }, ErrInvalidKey},
		{"check with empty key", func() error {
			_, err := m.AllowAll(ctx, Check{Key: "k", Limit: ok}, Check{Limit: ok})
			return err
		}, ErrInvalidKey},
		{"check with negative cost", func() error {
			_, err := m.AllowAll(ctx, Check{Key: "k", Limit: ok}, Check{Key: "j", Limit: ok, Cost: -2})
			return err
		}, ErrInvalidLimit},
		{"check with bad limit", func() error {
			_, err := m.AllowAll(ctx, Check{Key: "k", Limit: ok}, Check{Key: "j", Limit: Limit{Limit: 1}})
			return err
		}, ErrInvalidLimit},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	// None of the failed calls wrote anything.
	if d, _ := m.Peek(ctx, "k", ok); d.Remaining != 5 {
		t.Fatalf("a rejected call consumed: %+v", d)
	}
}

// TestMemoryStaleClockReading: the clock is read before taking the shard
// lock; when another decision got the lock in between with a later time, the
// reading is stale and must be replaced (as if read under the lock, like the
// Redis script's TIME). Otherwise a call from the previous fixed window would
// overwrite the current window's count and admit a second unit in it.
func TestMemoryStaleClockReading(t *testing.T) {
	l := Limit{Limit: 1, Window: time.Second, Algorithm: FixedWindow}
	ctx := context.Background()
	for _, other := range []string{"allow", "allowall"} {
		t.Run(other, func(t *testing.T) {
			m, clk := newTestMemory(t)
			s := m.shardFor("k")
			clk.Set(999 * time.Millisecond)
			interleave := true
			m.now = func() time.Time {
				now := clk.Now()
				if interleave {
					interleave = false
					if !s.mu.TryLock() {
						return now // read under the lock: cannot be stale
					}
					s.mu.Unlock()
					// Between this reading and the lock, another caller
					// decides at 1s and fills window 1.
					clk.Set(time.Second)
					var allowed bool
					if other == "allow" {
						d, err := m.Allow(ctx, "k", l)
						allowed = err == nil && d.Allowed
					} else {
						res, err := m.AllowAll(ctx, Check{Key: "k", Limit: l})
						allowed = err == nil && res.Allowed
					}
					if !allowed {
						t.Errorf("the interleaved %s was not admitted", other)
					}
				}
				return now
			}
			d, err := m.Allow(ctx, "k", l)
			if err != nil {
				t.Fatal(err)
			}
			if d.Allowed || !d.ResetAt.Equal(memBase.Add(2*time.Second)) {
				t.Fatalf("the call with the stale reading got %+v, want a denial in window 1", d)
			}
			if d, _ := m.Allow(ctx, "k", l); d.Allowed {
				t.Fatalf("window 1 admitted a second unit: %+v", d)
			}
		})
	}
}

// TestMemoryExtremeInputs: the largest accepted costs and windows neither
// panic nor wrap times around to the past.
func TestMemoryExtremeInputs(t *testing.T) {
	m, _ := newTestMemory(t)
	ctx := context.Background()
	for _, a := range Algorithms {
		l := Limit{Limit: 1, Window: MaxWindow, Algorithm: a}
		d, err := m.Record(ctx, "k", l, 1_000_000_000)
		if err != nil {
			t.Fatal(err)
		}
		if d.Allowed || d.RetryAfter != MaxWindow || d.Remaining != 0 {
			t.Errorf("%s: record 1e9 of 1: %+v", a, d)
		}
		d, err = m.Peek(ctx, "k", l)
		if err != nil {
			t.Fatal(err)
		}
		if d.Allowed || d.RetryAfter <= 0 || !d.ResetAt.After(memBase) {
			t.Errorf("%s: after record 1e9 of 1, peek got %+v: want a denial with a future reset", a, d)
		}
	}
}

// TestMemoryCancelledContext: the memory backend never blocks, and it must
// decide even on a cancelled context: it is the FailLocal fallback, used
// precisely when the caller's context ran out on Redis.
func TestMemoryCancelledContext(t *testing.T) {
	m, _ := newTestMemory(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d, err := m.Allow(ctx, "k", Limit{Limit: 1, Window: time.Second})
	if err != nil || !d.Allowed {
		t.Fatalf("got %+v, %v", d, err)
	}
}

func TestMemoryAllowAll(t *testing.T) {
	ctx := context.Background()
	user := Limit{Limit: 3, Window: time.Minute, Algorithm: FixedWindow}
	ip := Limit{Limit: 10, Window: time.Minute, Algorithm: GCRA}

	t.Run("all fit: each consumes", func(t *testing.T) {
		m, _ := newTestMemory(t)
		res, err := m.AllowAll(ctx,
			Check{Name: "user", Key: "p:user", Tag: "user:1", Limit: user, Cost: 2},
			Check{Name: "ip", Key: "p:ip", Tag: "ip:1", Limit: ip})
		if err != nil {
			t.Fatal(err)
		}
		if !res.Allowed || res.RetryAfter != 0 || len(res.Decisions) != 2 ||
			res.Decisions[0].Remaining != 1 || res.Decisions[1].Remaining != 9 {
			t.Fatalf("%+v", res)
		}
	})

	t.Run("one denies: nothing consumed", func(t *testing.T) {
		m, _ := newTestMemory(t)
		if _, err := m.AllowAll(ctx, Check{Key: "p:user", Tag: "user:1", Limit: user, Cost: 3}); err != nil {
			t.Fatal(err)
		}
		res, err := m.AllowAll(ctx,
			Check{Key: "p:ip", Tag: "ip:1", Limit: ip, Cost: 4},
			Check{Key: "p:user", Tag: "user:1", Limit: user},
			Check{Key: "p:other", Tag: "ip:1", Limit: ip, Cost: 11}) // cost > burst
		if err != nil {
			t.Fatal(err)
		}
		if res.Allowed {
			t.Fatalf("allowed: %+v", res)
		}
		d := res.Decisions
		// The fitting check reports its Remaining without consuming.
		if !d[0].Allowed || d[0].Remaining != 10 || d[0].RetryAfter != 0 {
			t.Errorf("check 0: %+v", d[0])
		}
		if d[1].Allowed || d[1].RetryAfter != 60*time.Second {
			t.Errorf("check 1: %+v", d[1]) // fixed window at base: ResetAt - now = W
		}
		if d[2].Allowed || d[2].RetryAfter != time.Minute {
			t.Errorf("check 2: %+v", d[2])
		}
		if res.RetryAfter != time.Minute {
			t.Errorf("RetryAfter %v, want the longest, 1m", res.RetryAfter)
		}
		if got := peekCheck(t, m, Check{Key: "p:ip", Tag: "ip:1", Limit: ip}); got != 10 {
			t.Errorf("ip consumed by a denied AllowAll: remaining %d", got)
		}
		if m.shardFor("ip:1").get(memKey{tag: "ip:1", key: "p:ip", alg: memGCRA}) != nil {
			t.Errorf("denied AllowAll created a state")
		}
	})

	t.Run("checks sharing a state add up", func(t *testing.T) {
		m, _ := newTestMemory(t)
		l := Limit{Limit: 3, Window: time.Minute}
		res, err := m.AllowAll(ctx, Check{Key: "k", Limit: l, Cost: 2}, Check{Key: "k", Limit: l, Cost: 2})
		if err != nil {
			t.Fatal(err)
		}
		if res.Allowed || !res.Decisions[0].Allowed || res.Decisions[1].Allowed {
			t.Fatalf("2+2 of 3 in one call: %+v", res)
		}
		if d, _ := m.Peek(ctx, "k", l); d.Remaining != 3 {
			t.Fatalf("denied call consumed: %+v", d)
		}
		res, err = m.AllowAll(ctx, Check{Key: "k", Limit: l}, Check{Key: "k", Tag: "k", Limit: l, Cost: 2})
		if err != nil {
			t.Fatal(err)
		}
		if !res.Allowed || res.Decisions[0].Remaining != 2 || res.Decisions[1].Remaining != 0 {
			t.Fatalf("1+2 of 3 in one call: %+v", res)
		}
		if d, _ := m.Peek(ctx, "k", l); d.Remaining != 0 || d.Allowed {
			t.Fatalf("after 1+2 of 3: %+v", d)
		}
	})

	t.Run("no checks", func(t *testing.T) {
		m, _ := newTestMemory(t)
		res, err := m.AllowAll(ctx)
		if err != nil || !res.Allowed || len(res.Decisions) != 0 {
			t.Fatalf("%+v %v", res, err)
		}
	})
}

// peekCheck reports the remaining capacity of a check's state without
// consuming (a cost above capacity is denied and takes nothing).
func peekCheck(t *testing.T, m *memoryLimiter, c Check) int {
	t.Helper()
	c.Cost = 1_000_000_000
	res, err := m.AllowAll(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	return res.Decisions[0].Remaining
}

// TestMemoryConcurrentOneKey: 8 groups of 100 goroutines race for one key of
// limit 50 on a frozen clock: exactly 50 are admitted, never more (atomic
// decisions) and never fewer (no lost updates).
func TestMemoryConcurrentOneKey(t *testing.T) {
	for _, a := range Algorithms {
		t.Run(string(a), func(t *testing.T) {
			m, _ := newTestMemory(t)
			l := Limit{Limit: 50, Window: time.Minute, Algorithm: a}
			var allowed atomic.Int64
			start := make(chan struct{})
			var wg sync.WaitGroup
			for g := 0; g < 8; g++ {
				for i := 0; i < 100; i++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						<-start
						d, err := m.Allow(context.Background(), "hot", l)
						if err != nil {
							t.Error(err)
							return
						}
						if d.Allowed {
							allowed.Add(1)
						}
					}()
				}
			}
			close(start)
			wg.Wait()
			if got := allowed.Load(); got != 50 {
				t.Fatalf("admitted %d, want exactly 50", got)
			}
		})
	}
}

// TestMemoryConcurrentAllowAll: AllowAll(a, b) and AllowAll(b, a) (opposite
// orders: lock ordering must not deadlock) race with plain Allow(b). b runs
// out first; every AllowAll that got b also got a, and no denied AllowAll
// left anything on a.
func TestMemoryConcurrentAllowAll(t *testing.T) {
	m, _ := newTestMemory(t)
	ctx := context.Background()
	la := Limit{Limit: 1000, Window: time.Minute, Algorithm: GCRA}
	lb := Limit{Limit: 60, Window: time.Minute}
	ca := Check{Key: "a", Tag: "tag-a", Limit: la}
	cb := Check{Key: "b", Limit: lb}
	var all, single atomic.Int64
	start := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 300; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := 0; i < 3; i++ {
				switch (g + i) % 3 {
				case 0, 1:
					checks := []Check{ca, cb}
					if g%2 == 1 {
						checks = []Check{cb, ca}
					}
					res, err := m.AllowAll(ctx, checks...)
					if err != nil {
						t.Error(err)
						return
					}
					if res.Allowed {
						all.Add(1)
					}
				default:
					d, err := m.Allow(ctx, "b", lb)
					if err != nil {
						t.Error(err)
						return
					}
					if d.Allowed {
						single.Add(1)
					}
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	if got := all.Load() + single.Load(); got != 60 {
		t.Fatalf("b admitted %d (AllowAll %d + Allow %d), want exactly 60", got, all.Load(), single.Load())
	}
	if got := peekCheck(t, m, ca); got != 1000-int(all.Load()) {
		t.Fatalf("a has %d remaining, want 1000 - %d allowed AllowAll calls", got, all.Load())
	}
}

// TestMemoryAllowNoAllocs: a decision on an existing key allocates nothing,
// for every algorithm, on both the admitting and the denying path.
func TestMemoryAllowNoAllocs(t *testing.T) {
	ctx := context.Background()
	for _, a := range Algorithms {
		// Half the limit's rate admits every call, a frozen clock denies.
		for _, step := range []time.Duration{20 * time.Millisecond, 0} {
			t.Run(string(a)+"/step="+step.String(), func(t *testing.T) {
				clk := newMemClock()
				clk.SetStep(step)
				m := NewMemory(Config{Now: clk.Now})
				l := Limit{Limit: 100, Window: time.Second, Algorithm: a}
				// Warm up past the limit: the sliding-log ring reaches its size.
				for i := 0; i < 300; i++ {
					if _, err := m.Allow(ctx, "k", l); err != nil {
						t.Fatal(err)
					}
				}
				var last Decision
				allocs := testing.AllocsPerRun(1000, func() {
					last, _ = m.Allow(ctx, "k", l)
				})
				if allocs != 0 {
					t.Fatalf("%v allocations per Allow, want 0", allocs)
				}
				if want := step != 0; last.Allowed != want {
					t.Fatalf("last decision allowed=%v, want %v (the path under test)", last.Allowed, want)
				}
				if allocs = testing.AllocsPerRun(100, func() { _, _ = m.Peek(ctx, "k", l) }); allocs != 0 {
					t.Fatalf("%v allocations per Peek, want 0", allocs)
				}
			})
		}
	}
}
