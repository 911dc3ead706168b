package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/redistest"
)

// The conformance suite: the same table of behaviours, straight from
// ratelimit.go and docs/ratelimit-algorithms.md, run unchanged on the memory
// backend, a real redis-server and a real 3-node Redis Cluster. The memory
// backend runs on the real clock here (its fake-clock arithmetic is checked
// in memory_test.go), so both backends see time pass the same way.

// TestConformance runs the suite on every backend.
func TestConformance(t *testing.T) {
	t.Parallel()
	t.Run("memory", func(t *testing.T) {
		t.Parallel()
		runConformance(t, func(t *testing.T) Limiter { return NewMemory(Config{}) })
	})
	for _, target := range []struct {
		name string
		url  func(testing.TB) string
	}{{"redis", redistest.URL}, {"cluster", redistest.ClusterURL}} {
		t.Run(target.name, func(t *testing.T) {
			t.Parallel()
			client := redistest.Client(t, target.url(t))
			runConformance(t, func(t *testing.T) Limiter { return newTestRedis(t, client, Config{}) })
		})
	}
}

// newTestRedis returns a Redis limiter on a key prefix unique to t. The
// timeout is generous and the policy closed: a conformance decision must
// never come from the failure policy (decide() fails the test on Degraded).
func newTestRedis(t *testing.T, client rueidis.Client, cfg Config) *redisLimiter {
	t.Helper()
	if cfg.Prefix == "" {
		cfg.Prefix = redistest.Prefix(t)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.OnBackendError == FailDefault {
		cfg.OnBackendError = FailClosed
	}
	if cfg.Logger == nil {
		// Tests that provoke failures check the logs they care about.
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return NewRedis(client, cfg).(*redisLimiter)
}

// confWindow is the window of the tests that must not see time pass: the
// longest allowed, so no window boundary (fixed, sliding) falls inside a test
// and GCRA refills one unit per 73 days at limit 5.
const confWindow = MaxWindow

// slack absorbs the time between a script's TIME and the test's clock
// readings (same machine, same clock) under -race.
const slack = time.Second

// lim returns a rule of algorithm a.
func lim(a Algorithm, limit int, window time.Duration) Limit {
	return Limit{Limit: limit, Window: window, Algorithm: a}
}

// rt wraps a Limiter with fatal-on-error helpers for the suite.
type rt struct {
	t *testing.T
	l Limiter
}

func (x rt) check(d Decision, err error, what string) Decision {
	x.t.Helper()
	if err != nil {
		x.t.Fatalf("%s: %v", what, err)
	}
	if d.Degraded {
		x.t.Fatalf("%s: degraded decision %+v (backend failed during a conformance test)", what, d)
	}
	return d
}

func (x rt) allowN(key string, l Limit, n int) Decision {
	x.t.Helper()
	d, err := x.l.AllowN(context.Background(), key, l, n)
	return x.check(d, err, fmt.Sprintf("AllowN(%q, %d)", key, n))
}

func (x rt) allow(key string, l Limit) Decision {
	x.t.Helper()
	d, err := x.l.Allow(context.Background(), key, l)
	return x.check(d, err, fmt.Sprintf("Allow(%q)", key))
}

func (x rt) peek(key string, l Limit) Decision {
	x.t.Helper()
	d, err := x.l.Peek(context.Background(), key, l)
	return x.check(d, err, fmt.Sprintf("Peek(%q)", key))
}

func (x rt) record(key string, l Limit, n int) Decision {
	x.t.Helper()
	d, err := x.l.Record(context.Background(), key, l, n)
	return x.check(d, err, fmt.Sprintf("Record(%q, %d)", key, n))
}

func (x rt) allowAll(checks ...Check) Result {
	x.t.Helper()
	r, err := x.l.AllowAll(context.Background(), checks...)
	if err != nil {
		x.t.Fatalf("AllowAll: %v", err)
	}
	if r.Degraded {
		x.t.Fatalf("AllowAll: degraded result %+v", r)
	}
	if len(r.Decisions) != len(checks) {
		x.t.Fatalf("AllowAll: %d decisions for %d checks", len(r.Decisions), len(checks))
	}
	return r
}

// remainingOf reports a check's remaining units without consuming: a check
// whose cost exceeds its capacity is always denied, and a denial writes
// nothing (tested on its own), so it reads the state of tagged checks, which
// Peek cannot address.
func (x rt) remainingOf(c Check) int {
	x.t.Helper()
	c.Cost = c.Limit.capacity() + 1
	r := x.allowAll(c)
	if r.Allowed || r.Decisions[0].Allowed {
		x.t.Fatalf("probe of %q with cost above capacity was allowed", c.Key)
	}
	return r.Decisions[0].Remaining
}

// exhaust takes the whole capacity of a fresh key, one unit at a time,
// checking each decision.
func (x rt) exhaust(key string, l Limit) {
	x.t.Helper()
	capacity := l.capacity()
	for i := 1; i <= capacity; i++ {
		d := x.allow(key, l)
		if !d.Allowed || d.Remaining != capacity-i || d.RetryAfter != 0 || d.Limit != capacity {
			x.t.Fatalf("allow %d/%d: got %+v, want allowed, remaining %d, no retry, limit %d", i, capacity, d, capacity-i, capacity)
		}
	}
}

// maxResetAhead is how far past now ResetAt may lie: two windows for the
// sliding-window counter (the current count weighs into the next window),
// one for the others.
func maxResetAhead(a Algorithm, w time.Duration) time.Duration {
	if a == SlidingWindow {
		return 2 * w
	}
	return w
}

// eachAlgorithm runs f as a parallel subtest per algorithm.
func eachAlgorithm(t *testing.T, f func(t *testing.T, a Algorithm)) {
	for _, a := range Algorithms {
		t.Run(string(a), func(t *testing.T) {
			t.Parallel()
			f(t, a)
		})
	}
}

func runConformance(t *testing.T, newLimiter func(t *testing.T) Limiter) {
	t.Run("CapacityThenDeny", func(t *testing.T) {
		t.Parallel()
		eachAlgorithm(t, func(t *testing.T, a Algorithm) {
			x := rt{t, newLimiter(t)}
			l := lim(a, 5, confWindow)
			before := time.Now()
			x.exhaust("k", l)
			d := x.allow("k", l)
			after := time.Now()
			if d.Allowed || d.Remaining != 0 || d.Limit != 5 {
				t.Fatalf("6th allow: got %+v, want denied with remaining 0, limit 5", d)
			}
			if d.ResetAt.Before(before.Add(-slack)) || d.ResetAt.After(after.Add(maxResetAhead(a, l.Window)+slack)) {
				t.Errorf("ResetAt %v not within [now, now+%v]", d.ResetAt, maxResetAhead(a, l.Window))
			}
			if d.RetryAfter <= 0 || d.RetryAfter > time.Until(d.ResetAt)+slack {
				t.Errorf("RetryAfter %v: want in (0, ResetAt-now=%v]", d.RetryAfter, time.Until(d.ResetAt))
			}
			// Per algorithm, what the spec makes the wait after 5 quick units.
			switch a {
			case SlidingLog: // the oldest stamp, just taken, must leave: W
				if diff := l.Window - d.RetryAfter; diff < 0 || diff > slack {
					t.Errorf("sliding-log RetryAfter %v, want about %v", d.RetryAfter, l.Window)
				}
			case GCRA: // one emission interval, W/L
				if diff := l.Window/5 - d.RetryAfter; diff < -slack || diff > slack {
					t.Errorf("gcra RetryAfter %v, want about %v", d.RetryAfter, l.Window/5)
				}
			case FixedWindow: // until the window ends, which is ResetAt
				if diff := time.Until(d.ResetAt) - d.RetryAfter; diff < -slack || diff > slack {
					t.Errorf("fixed-window RetryAfter %v, want ResetAt-now %v", d.RetryAfter, time.Until(d.ResetAt))
				}
			}
		})
	})

	t.Run("GCRABurst", func(t *testing.T) {
		t.Parallel()
		x := rt{t, newLimiter(t)}
		l := Limit{Limit: 10, Window: confWindow, Burst: 3, Algorithm: GCRA}
		x.exhaust("k", l) // capacity is the burst, 3
		d := x.allow("k", l)
		if d.Allowed || d.Limit != 3 {
			t.Fatalf("4th allow with burst 3: got %+v", d)
		}
		if diff := l.Window/10 - d.RetryAfter; diff < -slack || diff > slack {
			t.Errorf("RetryAfter %v, want one emission interval %v", d.RetryAfter, l.Window/10)
		}
	})

	t.Run("DenialWritesNothing", func(t *testing.T) {
		t.Parallel()
		eachAlgorithm(t, func(t *testing.T, a Algorithm) {
			x := rt{t, newLimiter(t)}
			l := lim(a, 5, confWindow)
			x.exhaust("full", l)
			p1 := x.peek("full", l)
			for _, n := range []int{1, 2, 5, 6, 1_000_000_000} {
				if d := x.allowN("full", l, n); d.Allowed {
					t.Fatalf("AllowN(%d) on a full key allowed: %+v", n, d)
				}
			}
			p2 := x.peek("full", l)
			// A denial that wrote (a stamp, a count, a later TAT) would move
			// ResetAt or Remaining.
			if p1.Allowed || p2.Allowed || p1.Remaining != 0 || p2.Remaining != 0 || !p1.ResetAt.Equal(p2.ResetAt) {
				t.Fatalf("state changed across denials: before %+v, after %+v", p1, p2)
			}

			// A partial fit is a denial too: 4 taken, 2 asked, 1 left.
			for i := 0; i < 4; i++ {
				x.allow("partial", l)
			}
			if d := x.allowN("partial", l, 2); d.Allowed || d.Remaining != 1 {
				t.Fatalf("AllowN(2) with 1 left: got %+v, want denied with remaining 1", d)
			}
			if d := x.allow("partial", l); !d.Allowed || d.Remaining != 0 {
				t.Fatalf("the last unit after a denied AllowN(2): got %+v", d)
			}

			// A cost above capacity on a fresh key creates nothing.
			if d := x.allowN("fresh", l, 6); d.Allowed || d.Remaining != 5 || d.RetryAfter != l.Window {
				t.Fatalf("AllowN(6) on a fresh key of capacity 5: got %+v, want denied, remaining 5, RetryAfter = Window", d)
			}
			if d := x.peek("fresh", l); !d.Allowed || d.Remaining != 5 {
				t.Fatalf("Peek after a denied oversized request: %+v, want remaining 5", d)
			}
		})
	})

	t.Run("Cost", func(t *testing.T) {
		t.Parallel()
		eachAlgorithm(t, func(t *testing.T, a Algorithm) {
			x := rt{t, newLimiter(t)}
			l := lim(a, 5, confWindow)
			if d := x.allowN("k", l, 2); !d.Allowed || d.Remaining != 3 {
				t.Fatalf("AllowN(2): %+v, want remaining 3", d)
			}
			if d := x.allowN("k", l, 3); !d.Allowed || d.Remaining != 0 {
				t.Fatalf("AllowN(3): %+v, want remaining 0", d)
			}
			if d := x.allow("k", l); d.Allowed {
				t.Fatalf("Allow after 2+3 of 5: %+v, want denied", d)
			}
			if d := x.allowN("whole", l, 5); !d.Allowed || d.Remaining != 0 {
				t.Fatalf("AllowN(capacity): %+v", d)
			}
			for _, n := range []int{6, 1_000_000_000} {
				if d := x.allowN("over", l, n); d.Allowed || d.RetryAfter != l.Window || d.Remaining != 5 {
					t.Fatalf("AllowN(%d) above capacity: %+v, want denied, RetryAfter = Window, remaining 5", n, d)
				}
			}
		})
	})

	t.Run("PeekConsumesNothing", func(t *testing.T) {
		t.Parallel()
		eachAlgorithm(t, func(t *testing.T, a Algorithm) {
			x := rt{t, newLimiter(t)}
			l := lim(a, 5, confWindow)
			for i := 0; i < 10; i++ {
				if d := x.peek("k", l); !d.Allowed || d.Remaining != 5 || d.RetryAfter != 0 || d.Limit != 5 {
					t.Fatalf("Peek %d on a fresh key: %+v, want allowed, remaining 5", i, d)
				}
			}
			x.exhaust("k", l) // all 5 still there after 10 peeks
			if d := x.peek("k", l); d.Allowed || d.Remaining != 0 || d.RetryAfter <= 0 {
				t.Fatalf("Peek on a full key: %+v, want denied with a RetryAfter", d)
			}
		})
	})

	t.Run("RecordCountsOverLimit", func(t *testing.T) {
		t.Parallel()
		eachAlgorithm(t, func(t *testing.T, a Algorithm) {
			x := rt{t, newLimiter(t)}
			l := lim(a, 5, confWindow)
			if d := x.record("k", l, 1); !d.Allowed || d.Remaining != 4 {
				t.Fatalf("Record(1) on a fresh key: %+v, want fitted, remaining 4", d)
			}
			if d := x.record("k", l, 5); d.Allowed || d.Remaining != 0 {
				t.Fatalf("Record(5) with 4 left: %+v, want not fitted, remaining 0", d)
			}
			before := x.peek("k", l)
			if before.Allowed {
				t.Fatalf("Peek after recording 6 of 5: %+v, want denied", before)
			}
			if d := x.allow("k", l); d.Allowed {
				t.Fatalf("Allow after recording 6 of 5: %+v, want denied", d)
			}
			// Recording more keeps counting. For the counters and GCRA the
			// wait grows by units' worth of time; a fixed window ends when
			// it ends, and a sliding log keeps only the newest L stamps,
			// which were all taken a moment ago.
			x.record("k", l, 3)
			after := x.peek("k", l)
			if after.Allowed {
				t.Fatalf("Peek after recording 9 of 5: %+v", after)
			}
			switch a {
			case GCRA, SlidingWindow:
				if after.RetryAfter <= before.RetryAfter+slack {
					t.Errorf("RetryAfter did not grow with recorded units: %v, then %v after 3 more", before.RetryAfter, after.RetryAfter)
				}
			default:
				if after.RetryAfter < before.RetryAfter-slack {
					t.Errorf("RetryAfter went from %v down to %v after recording more", before.RetryAfter, after.RetryAfter)
				}
			}
			if d := x.record("big", l, 8); d.Allowed || d.Remaining != 0 {
				t.Fatalf("Record(8) above capacity: %+v, want not fitted, remaining 0", d)
			}
			if d := x.peek("big", l); d.Allowed {
				t.Fatalf("Peek after Record(8) above capacity: %+v, want denied (recorded anyway)", d)
			}
		})
	})

	t.Run("Reset", func(t *testing.T) {
		t.Parallel()
		x := rt{t, newLimiter(t)}
		for _, a := range Algorithms {
			x.exhaust("k", lim(a, 3, confWindow))
		}
		x.exhaust("other", lim(SlidingLog, 3, confWindow))
		if err := x.l.Reset(context.Background(), "k"); err != nil {
			t.Fatalf("Reset: %v", err)
		}
		for _, a := range Algorithms {
			if d := x.peek("k", lim(a, 3, confWindow)); !d.Allowed || d.Remaining != 3 {
				t.Errorf("%s after Reset: %+v, want remaining 3", a, d)
			}
		}
		if d := x.peek("other", lim(SlidingLog, 3, confWindow)); d.Allowed {
			t.Errorf("Reset(k) reset another key: %+v", d)
		}
		if err := x.l.Reset(context.Background(), "never-used"); err != nil {
			t.Errorf("Reset of an unknown key: %v", err)
		}
	})

	t.Run("ShortWindowExpiry", func(t *testing.T) {
		t.Parallel()
		eachAlgorithm(t, func(t *testing.T, a Algorithm) {
			x := rt{t, newLimiter(t)}
			l := lim(a, 2, 200*time.Millisecond)
			var denied Decision
			for i := 0; ; i++ {
				if i == 20 {
					t.Fatalf("20 quick allows of a 2 per 200ms rule were all admitted")
				}
				if d := x.allow("k", l); !d.Allowed {
					denied = d
					break
				}
			}
			if denied.RetryAfter <= 0 || denied.RetryAfter > maxResetAhead(a, l.Window) {
				t.Fatalf("RetryAfter %v of a 200ms window", denied.RetryAfter)
			}
			// RetryAfter is honest: once it has passed, one unit fits.
			time.Sleep(denied.RetryAfter + 30*time.Millisecond)
			d := x.allow("k", l)
			if !d.Allowed {
				t.Fatalf("Allow %v after a denial saying RetryAfter %v: %+v", denied.RetryAfter+30*time.Millisecond, denied.RetryAfter, d)
			}
			// ResetAt is honest: by then the state is back to full capacity.
			time.Sleep(time.Until(d.ResetAt) + 30*time.Millisecond)
			if p := x.peek("k", l); !p.Allowed || p.Remaining != 2 {
				t.Fatalf("Peek after ResetAt %v: %+v, want remaining 2", d.ResetAt, p)
			}
		})
	})

	t.Run("AllowAllAllOrNothing", func(t *testing.T) {
		t.Parallel()
		algs := append([]Algorithm{}, Algorithms...)
		algs = append(algs, "mixed")
		for _, a := range algs {
			t.Run(string(a), func(t *testing.T) {
				t.Parallel()
				x := rt{t, newLimiter(t)}
				ruleA, ruleB, ruleC := lim(a, 2, confWindow), lim(a, 5, confWindow), lim(a, 5, confWindow)
				if a == "mixed" {
					ruleA, ruleB, ruleC = lim(GCRA, 2, confWindow), lim(SlidingLog, 5, confWindow), lim(FixedWindow, 5, confWindow)
				}
				// A and B have their own tags (Peek can read them); C shares
				// A's tag, so A and C are decided by one script call and B
				// by another (another Cluster slot, most likely another node).
				checks := func(suffix string) []Check {
					return []Check{
						{Name: "a", Key: "a" + suffix, Limit: ruleA},
						{Name: "b", Key: "b" + suffix, Limit: ruleB},
						{Name: "c", Key: "c", Tag: "a" + suffix, Limit: ruleC},
					}
				}

				// A denies first: B and C keep what they had.
				cs := checks("1")
				for i := 1; i <= 2; i++ {
					r := x.allowAll(cs...)
					if !r.Allowed || r.RetryAfter != 0 || r.Decisions[0].Remaining != 2-i || r.Decisions[1].Remaining != 5-i || r.Decisions[2].Remaining != 5-i {
						t.Fatalf("AllowAll %d: %+v", i, r)
					}
				}
				for i := 0; i < 3; i++ {
					r := x.allowAll(cs...)
					if r.Allowed || r.Decisions[0].Allowed || r.RetryAfter <= 0 || r.RetryAfter != r.Decisions[0].RetryAfter {
						t.Fatalf("AllowAll with A exhausted: %+v, want denied by A with its RetryAfter", r)
					}
					if r.Decisions[1].Remaining != 3 || r.Decisions[2].Remaining != 3 {
						t.Fatalf("denied AllowAll reports B, C remaining %d, %d; want 3, 3 (nothing taken)", r.Decisions[1].Remaining, r.Decisions[2].Remaining)
					}
				}
				if d := x.peek("b1", ruleB); d.Remaining != 3 {
					t.Errorf("B after denied AllowAlls: remaining %d, want 3", d.Remaining)
				}
				if rem := x.remainingOf(cs[2]); rem != 3 {
					t.Errorf("C (same slot as A) after denied AllowAlls: remaining %d, want 3", rem)
				}

				// B denies (exhausted through Allow on its key: same state):
				// A and C keep everything.
				cs = checks("2")
				x.exhaust("b2", ruleB)
				for i := 0; i < 3; i++ {
					if r := x.allowAll(cs...); r.Allowed || r.Decisions[1].Allowed || r.RetryAfter != r.Decisions[1].RetryAfter {
						t.Fatalf("AllowAll with B exhausted: %+v", r)
					}
				}
				if d := x.peek("a2", ruleA); d.Remaining != 2 {
					t.Errorf("A after denials by B: remaining %d, want 2", d.Remaining)
				}
				if rem := x.remainingOf(cs[2]); rem != 5 {
					t.Errorf("C after denials by B: remaining %d, want 5", rem)
				}

				// A cost no rule can hold denies the call; the others keep.
				cs = checks("3")
				cs[1].Cost = 6
				if r := x.allowAll(cs...); r.Allowed || r.Decisions[1].Allowed || r.Decisions[1].RetryAfter != ruleB.Window {
					t.Fatalf("AllowAll with B's cost above capacity: %+v", r)
				}
				if d := x.peek("a3", ruleA); d.Remaining != 2 {
					t.Errorf("A after a denial by B's cost: remaining %d, want 2", d.Remaining)
				}
			})
		}
	})

	t.Run("AllowAllRetryAfterIsLongest", func(t *testing.T) {
		t.Parallel()
		x := rt{t, newLimiter(t)}
		short, long := lim(SlidingLog, 1, confWindow/4), lim(SlidingLog, 1, confWindow)
		x.exhaust("s", short)
		x.exhaust("l", long)
		r := x.allowAll(Check{Key: "s", Limit: short}, Check{Key: "l", Limit: long}, Check{Key: "free", Limit: long})
		if r.Allowed || r.Decisions[0].Allowed || r.Decisions[1].Allowed {
			t.Fatalf("AllowAll with two exhausted rules: %+v", r)
		}
		if r.RetryAfter != max(r.Decisions[0].RetryAfter, r.Decisions[1].RetryAfter) || r.RetryAfter < confWindow-slack {
			t.Fatalf("RetryAfter %v, want the longest of %v and %v", r.RetryAfter, r.Decisions[0].RetryAfter, r.Decisions[1].RetryAfter)
		}
		if d := x.peek("free", long); !d.Allowed {
			t.Fatalf("the fitting rule of a denied AllowAll consumed: %+v", d)
		}
	})

	t.Run("AllowAllSameStateTwice", func(t *testing.T) {
		t.Parallel()
		eachAlgorithm(t, func(t *testing.T, a Algorithm) {
			x := rt{t, newLimiter(t)}
			l := lim(a, 3, confWindow)
			c := Check{Key: "k", Limit: l}
			// The second check sees the first one's unit as taken.
			if r := x.allowAll(c, c); !r.Allowed || r.Decisions[1].Remaining != 1 {
				t.Fatalf("first AllowAll(c, c) of 3: %+v, want allowed, remaining 1", r)
			}
			if r := x.allowAll(c, c); r.Allowed || !r.Decisions[0].Allowed || r.Decisions[1].Allowed {
				t.Fatalf("second AllowAll(c, c) with 1 left: %+v, want the second check denied", r)
			}
			if d := x.peek("k", l); d.Remaining != 1 {
				t.Fatalf("after a denied AllowAll(c, c): remaining %d, want 1 (nothing consumed net)", d.Remaining)
			}
		})
	})

	t.Run("InvalidInput", func(t *testing.T) {
		t.Parallel()
		x := rt{t, newLimiter(t)}
		ctx := context.Background()
		good := lim(SlidingLog, 5, time.Minute)
		bad := []struct {
			name string
			l    Limit
			want error
		}{
			{"zero limit", Limit{Window: time.Minute}, ErrInvalidLimit},
			{"negative limit", Limit{Limit: -1, Window: time.Minute}, ErrInvalidLimit},
			{"zero window", Limit{Limit: 5}, ErrInvalidLimit},
			{"window below 1ms", Limit{Limit: 5, Window: time.Microsecond}, ErrInvalidLimit},
			{"window above MaxWindow", Limit{Limit: 5, Window: MaxWindow + time.Second}, ErrInvalidLimit},
			{"negative burst", Limit{Limit: 5, Window: time.Minute, Burst: -1, Algorithm: GCRA}, ErrInvalidLimit},
			{"sliding-log above its cap", Limit{Limit: MaxSlidingLogLimit + 1, Window: time.Minute}, ErrInvalidLimit},
			{"limit above 1e9", Limit{Limit: 1_000_000_001, Window: time.Minute, Algorithm: GCRA}, ErrInvalidLimit},
			{"bad failure policy", Limit{Limit: 5, Window: time.Minute, OnBackendError: "maybe"}, ErrInvalidLimit},
			{"unknown algorithm", Limit{Limit: 5, Window: time.Minute, Algorithm: "leaky"}, ErrUnknownAlgorithm},
		}
		for _, b := range bad {
			calls := map[string]func() error{
				"Allow":    func() error { _, err := x.l.Allow(ctx, "k", b.l); return err },
				"AllowN":   func() error { _, err := x.l.AllowN(ctx, "k", b.l, 1); return err },
				"Peek":     func() error { _, err := x.l.Peek(ctx, "k", b.l); return err },
				"Record":   func() error { _, err := x.l.Record(ctx, "k", b.l, 1); return err },
				"AllowAll": func() error { _, err := x.l.AllowAll(ctx, Check{Key: "k", Limit: b.l}); return err },
			}
			for m, call := range calls {
				if err := call(); !errors.Is(err, b.want) {
					t.Errorf("%s with %s: err %v, want %v", m, b.name, err, b.want)
				}
			}
		}
		costs := map[string]func(n int) error{
			"AllowN":   func(n int) error { _, err := x.l.AllowN(ctx, "k", good, n); return err },
			"Record":   func(n int) error { _, err := x.l.Record(ctx, "k", good, n); return err },
			"AllowAll": func(n int) error { _, err := x.l.AllowAll(ctx, Check{Key: "k", Limit: good, Cost: n}); return err },
		}
		for m, call := range costs {
			for _, n := range []int{-1, 1_000_000_001} {
				if err := call(n); !errors.Is(err, ErrInvalidLimit) {
					t.Errorf("%s with cost %d: err %v, want ErrInvalidLimit", m, n, err)
				}
			}
			// A Check's zero Cost means 1; AllowN(0) and Record(0) are bugs.
			if err := call(0); (m == "AllowAll") != (err == nil) {
				t.Errorf("%s with cost 0: err %v", m, err)
			}
		}
		if err := x.l.Reset(ctx, "k"); err != nil { // undo AllowAll's cost-0 unit
			t.Fatal(err)
		}
		keyCalls := map[string]func() error{
			"Allow":    func() error { _, err := x.l.Allow(ctx, "", good); return err },
			"AllowN":   func() error { _, err := x.l.AllowN(ctx, "", good, 1); return err },
			"Peek":     func() error { _, err := x.l.Peek(ctx, "", good); return err },
			"Record":   func() error { _, err := x.l.Record(ctx, "", good, 1); return err },
			"Reset":    func() error { return x.l.Reset(ctx, "") },
			"AllowAll": func() error { _, err := x.l.AllowAll(ctx, Check{Limit: good}); return err },
		}
		for m, call := range keyCalls {
			if err := call(); !errors.Is(err, ErrInvalidKey) {
				t.Errorf("%s with an empty key: err %v, want ErrInvalidKey", m, err)
			}
		}
		// A bad check anywhere in AllowAll rejects the call before anything
		// is written: the valid check keeps its capacity.
		_, err := x.l.AllowAll(ctx, Check{Key: "valid", Limit: good}, Check{Key: "k", Limit: Limit{Limit: 5}})
		if !errors.Is(err, ErrInvalidLimit) {
			t.Fatalf("AllowAll with a bad second check: err %v", err)
		}
		if d := x.peek("valid", good); d.Remaining != 5 {
			t.Fatalf("valid check consumed by a rejected AllowAll: %+v", d)
		}
		// Nothing was written by any rejected call.
		if d := x.peek("k", good); d.Remaining != 5 {
			t.Fatalf("a rejected call consumed: %+v", d)
		}
	})

	t.Run("DistinctKeysAndAlgorithmsIndependent", func(t *testing.T) {
		t.Parallel()
		x := rt{t, newLimiter(t)}
		l := lim(SlidingLog, 3, confWindow)
		x.exhaust("k1", l)
		if d := x.peek("k2", l); d.Remaining != 3 {
			t.Fatalf("k2 after exhausting k1: %+v", d)
		}
		for _, a := range Algorithms[1:] {
			if d := x.peek("k1", lim(a, 3, confWindow)); d.Remaining != 3 {
				t.Fatalf("k1 under %s after exhausting it under sliding-log: %+v", a, d)
			}
		}
	})

	t.Run("KeyEscaping", func(t *testing.T) {
		t.Parallel()
		x := rt{t, newLimiter(t)}
		l := lim(FixedWindow, 1, confWindow)
		// Each key must start fresh (no collision with any earlier one) and
		// then be full (its own state).
		keys := []string{
			"a:b", "a%3Ab", "a_b", "{a}", "{a}:b", "a}", "{", "}", "*", "a*", "?", "[x]",
			"a b", "a\nb", "rl:{a}:fw", "a:fw", "fw", "é", "%", "%25", strings.Repeat("z", 1000),
		}
		for _, k := range keys {
			if d := x.allow(k, l); !d.Allowed {
				t.Fatalf("first Allow(%q): denied, so it shares state with an earlier key", k)
			}
			if d := x.allow(k, l); d.Allowed {
				t.Fatalf("second Allow(%q): allowed, so its state was not kept", k)
			}
		}
		// Tags and keys do not collide either.
		tagged := []Check{
			{Key: "b", Tag: "a"}, {Key: "a", Tag: "b"}, {Key: "a:b"}, {Key: "b", Tag: "a:"},
			{Key: ":b", Tag: "a"}, {Key: "x", Tag: "{a}"}, {Key: "a", Tag: "a:b"}, {Key: "a:b", Tag: "a"},
		}
		for _, c := range tagged {
			c.Limit = lim(SlidingLog, 1, confWindow) // fresh states: the keys above used fixed-window
			if r := x.allowAll(c); !r.Allowed {
				t.Fatalf("first AllowAll(key %q, tag %q): denied, so it shares state", c.Key, c.Tag)
			}
			if r := x.allowAll(c); r.Allowed {
				t.Fatalf("second AllowAll(key %q, tag %q): allowed", c.Key, c.Tag)
			}
		}
		// Tag equal to Key is the untagged state.
		if r := x.allowAll(Check{Key: "same", Tag: "same", Limit: l}); !r.Allowed {
			t.Fatalf("AllowAll(tag = key) on a fresh key: %+v", r)
		}
		if d := x.peek("same", l); d.Allowed {
			t.Fatalf("Check{Key: k, Tag: k} did not use the state of key k: %+v", d)
		}
	})

	t.Run("ConcurrentOneKey", func(t *testing.T) {
		t.Parallel()
		eachAlgorithm(t, func(t *testing.T, a Algorithm) {
			lm := newLimiter(t)
			l := lim(a, 50, confWindow)
			var allowed atomic.Int64
			var wg sync.WaitGroup
			start := make(chan struct{})
			for g := 0; g < 8; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					for i := 0; i < 20; i++ {
						d, err := lm.Allow(context.Background(), "hot", l)
						if err != nil || d.Degraded {
							t.Errorf("Allow: %+v, %v", d, err)
							return
						}
						if d.Allowed {
							allowed.Add(1)
						}
					}
				}()
			}
			close(start)
			wg.Wait()
			if got := allowed.Load(); got != 50 {
				t.Fatalf("160 concurrent requests on a limit of 50: %d allowed, want exactly 50", got)
			}
		})
	})
}
