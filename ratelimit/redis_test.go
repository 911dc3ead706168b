package ratelimit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/keys"
	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/internal/testlog"
)

// redisTargets are the two deployments every Redis acceptance test runs on.
var redisTargets = []struct {
	name string
	url  func(testing.TB) string
}{{"redis", redistest.URL}, {"cluster", redistest.ClusterURL}}

// redisTime is the server's clock in µs (one node of a cluster: all run on
// this machine's clock).
func redisTime(t *testing.T, c rueidis.Client) int64 {
	t.Helper()
	v, err := c.Do(context.Background(), c.B().Time().Build()).AsStrSlice()
	if err != nil || len(v) != 2 {
		t.Fatalf("TIME: %v %v", v, err)
	}
	s, _ := strconv.ParseInt(v[0], 10, 64)
	u, _ := strconv.ParseInt(v[1], 10, 64)
	return s*1_000_000 + u
}

// zcard is the number of sliding-log entries in a state key: the units it
// holds, read straight from Redis.
func zcard(t *testing.T, c rueidis.Client, key string) int64 {
	t.Helper()
	n, err := c.Do(context.Background(), c.B().Zcard().Key(key).Build()).AsInt64()
	if err != nil {
		t.Fatalf("ZCARD: %v", err)
	}
	return n
}

// TestRedisConcurrentInstancesExact is acceptance item (a): 4 independent
// clients (4 "instances") x 200 goroutines on one key with a limit of 50 per
// hour admit exactly 50 with sliding-log, gcra (burst 50) and fixed-window,
// and at most 50 with sliding-window, on Redis and on Cluster.
func TestRedisConcurrentInstancesExact(t *testing.T) {
	t.Parallel()
	for _, target := range redisTargets {
		t.Run(target.name, func(t *testing.T) {
			t.Parallel()
			url := target.url(t)
			clients := make([]rueidis.Client, 4)
			for i := range clients {
				clients[i] = redistest.Client(t, url)
			}
			for _, a := range Algorithms {
				t.Run(string(a), func(t *testing.T) {
					l := Limit{Limit: 50, Window: time.Hour, Algorithm: a}
					if a == GCRA {
						l.Burst = 50
					}
					// A round that straddles an hour boundary legitimately
					// admits more with the window algorithms: run it again
					// (once is enough: boundaries are an hour apart).
					for attempt := 0; ; attempt++ {
						prefix := redistest.Prefix(t)
						t0 := redisTime(t, clients[0])
						allowed := concurrentRound(t, clients, prefix, l)
						t1 := redisTime(t, clients[0])
						w := l.Window.Microseconds()
						if (a == FixedWindow || a == SlidingWindow) && t0/w != t1/w && attempt == 0 {
							t.Logf("round crossed a window boundary; running it again")
							continue
						}
						if a == SlidingWindow {
							if allowed > 50 || allowed < 1 {
								t.Fatalf("800 requests from 4 instances: %d allowed, want 1..50", allowed)
							}
						} else if allowed != 50 {
							t.Fatalf("800 requests from 4 instances: %d allowed, want exactly 50", allowed)
						}
						// The state holds exactly what was admitted.
						r := NewRedis(clients[0], Config{Prefix: prefix}).(*redisLimiter)
						_, k := r.stateKey("", "hot", a)
						switch a {
						case SlidingLog:
							if n := zcard(t, clients[0], k); n != allowed {
								t.Fatalf("ZCARD %d after %d admissions", n, allowed)
							}
						case FixedWindow, SlidingWindow:
							c, err := clients[0].Do(context.Background(), clients[0].B().Hget().Key(k).Field("c").Build()).AsInt64()
							if err != nil || c != allowed {
								t.Fatalf("stored count %d (%v) after %d admissions", c, err, allowed)
							}
						}
						break
					}
				})
			}
		})
	}
}

// concurrentRound runs 4 limiters (one per client) x 200 goroutines, one
// Allow each, released together, and returns how many were allowed.
func concurrentRound(t *testing.T, clients []rueidis.Client, prefix string, l Limit) int64 {
	t.Helper()
	var allowed atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, c := range clients {
		// A long timeout and fail-closed: a slow call under -race must not
		// turn into a (local) admission, which would hide over-admission.
		lm := NewRedis(c, Config{Prefix: prefix, Timeout: 30 * time.Second, OnBackendError: FailClosed})
		for g := 0; g < 200; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				d, err := lm.Allow(context.Background(), "hot", l)
				if err != nil || d.Degraded {
					t.Errorf("Allow: %+v, %v", d, err)
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
	return allowed.Load()
}

// identityPolicy is the example policy of the design: 3 per hour per user and
// 10 per hour per IP, all-or-nothing.
var identityPolicy = Policy{Name: "identity", Rules: []Rule{
	{Name: "user", Subject: "user", Limit: 3, WindowMs: 3_600_000},
	{Name: "ip", Subject: "ip", Limit: 10, WindowMs: 3_600_000},
}}

func identityChecks(t *testing.T, user, ip string) []Check {
	t.Helper()
	cs, err := identityPolicy.Checks(map[string]string{"user": user, "ip": ip}, 1)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// TestRedisAllowAllAcrossSlots is acceptance item (b), on Cluster: the user
// and IP rules live in different hash slots, and a denial by either leaves
// the other untouched, sequentially and under concurrency.
func TestRedisAllowAllAcrossSlots(t *testing.T) {
	t.Parallel()
	url := redistest.ClusterURL(t)
	client := redistest.Client(t, url)
	ctx := context.Background()

	// keysOf returns the state keys of the user and ip checks.
	keysOf := func(r *redisLimiter, cs []Check) (string, string) {
		_, ku := r.stateKey(cs[0].Tag, cs[0].Key, cs[0].Limit.algorithm())
		_, ki := r.stateKey(cs[1].Tag, cs[1].Key, cs[1].Limit.algorithm())
		return ku, ki
	}
	slot := func(k string) int64 {
		s, err := client.Do(ctx, client.B().ClusterKeyslot().Key(k).Build()).AsInt64()
		if err != nil {
			t.Fatalf("CLUSTER KEYSLOT: %v", err)
		}
		return s
	}

	t.Run("UserExhausted", func(t *testing.T) {
		r := newTestRedis(t, client, Config{})
		x := rt{t, r}
		cs := identityChecks(t, "42", "203.0.113.9")
		ku, ki := keysOf(r, cs)
		if su, si := slot(ku), slot(ki); su == si {
			t.Fatalf("user key %q and ip key %q share slot %d: the test would not cross slots", ku, ki, su)
		}
		for i := 0; i < 3; i++ {
			if res := x.allowAll(cs...); !res.Allowed {
				t.Fatalf("AllowAll %d: %+v", i, res)
			}
		}
		for i := 0; i < 5; i++ {
			res := x.allowAll(cs...)
			if res.Allowed || res.Decisions[0].Allowed || res.RetryAfter <= 0 {
				t.Fatalf("AllowAll with the user exhausted: %+v", res)
			}
			if res.Decisions[1].Remaining != 7 {
				t.Fatalf("denied AllowAll reports ip remaining %d, want 7", res.Decisions[1].Remaining)
			}
		}
		if n := zcard(t, client, ki); n != 3 {
			t.Fatalf("ip key holds %d units after 3 allowed and 5 denied calls, want 3", n)
		}
		if rem := x.remainingOf(cs[1]); rem != 7 {
			t.Fatalf("ip remaining %d, want 7", rem)
		}
	})

	t.Run("IPExhausted", func(t *testing.T) {
		r := newTestRedis(t, client, Config{})
		x := rt{t, r}
		for u := 0; u < 10; u++ {
			if res := x.allowAll(identityChecks(t, "other-"+strconv.Itoa(u), "203.0.113.9")...); !res.Allowed {
				t.Fatalf("user %d: %+v", u, res)
			}
		}
		cs := identityChecks(t, "42", "203.0.113.9")
		ku, ki := keysOf(r, cs)
		for i := 0; i < 5; i++ {
			res := x.allowAll(cs...)
			if res.Allowed || res.Decisions[1].Allowed || res.Decisions[0].Remaining != 3 {
				t.Fatalf("AllowAll with the ip exhausted: %+v, want denied by ip, user remaining 3", res)
			}
		}
		if n := zcard(t, client, ku); n != 0 {
			t.Fatalf("user key holds %d units after only denied calls, want 0", n)
		}
		if n := zcard(t, client, ki); n != 10 {
			t.Fatalf("ip key holds %d units, want 10", n)
		}
		if rem := x.remainingOf(cs[0]); rem != 3 {
			t.Fatalf("user remaining %d, want 3", rem)
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		prefix := redistest.Prefix(t)
		var allowed, denied atomic.Int64
		var wg sync.WaitGroup
		start := make(chan struct{})
		var r0 *redisLimiter
		for c := 0; c < 4; c++ {
			r := NewRedis(redistest.Client(t, url), Config{Prefix: prefix, Timeout: 30 * time.Second, OnBackendError: FailClosed}).(*redisLimiter)
			r0 = r
			for g := 0; g < 50; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					res, err := r.AllowAll(ctx, identityChecks(t, "42", "203.0.113.9")...)
					if err != nil || res.Degraded {
						t.Errorf("AllowAll: %+v, %v", res, err)
						return
					}
					if res.Allowed {
						allowed.Add(1)
					} else {
						denied.Add(1)
					}
				}()
			}
		}
		close(start)
		wg.Wait()
		t.Logf("200 concurrent AllowAll from 4 instances: %d allowed, %d denied", allowed.Load(), denied.Load())
		if allowed.Load() > 3 {
			t.Fatalf("%d allowed, more than the user rule's 3", allowed.Load())
		}
		// Denials consumed nothing net: each key holds exactly one unit per
		// allowed call.
		ku, ki := keysOf(r0, identityChecks(t, "42", "203.0.113.9"))
		if nu, ni := zcard(t, client, ku), zcard(t, client, ki); nu != allowed.Load() || ni != allowed.Load() {
			t.Fatalf("after %d allowed calls the user key holds %d and the ip key %d units", allowed.Load(), nu, ni)
		}
	})
}

// registryValue returns the value of a counter (or the sample count of a
// histogram) with the given labels from reg.
func registryValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue metric
				}
			}
			return metricValue(m)
		}
	}
	return 0
}

func metricValue(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetHistogram() != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	return 0
}

// TestRedisFailurePolicies is acceptance item (c): with redis-server killed
// mid-test, closed denies, open allows and local limits per instance, every
// decision is Degraded and returns within the timeout plus slack, Reset
// reports ErrBackend, and after a restart the same limiters go back to
// normal decisions by themselves.
func TestRedisFailurePolicies(t *testing.T) {
	t.Parallel()
	srv := redistest.NewServer(t)
	client := redistest.Client(t, srv.URL())
	ctx := context.Background()
	const timeout = 50 * time.Millisecond
	const bound = time.Second // generous: the point is "does not hang"
	reg := prometheus.NewRegistry()
	newLim := func(p FailurePolicy, instances int) *redisLimiter {
		return newTestRedis(t, client, Config{Timeout: timeout, OnBackendError: p, LocalInstances: instances, Registerer: reg, BreakerCooldown: 100 * time.Millisecond})
	}
	closed, open, local, local2 := newLim(FailClosed, 0), newLim(FailOpen, 0), newLim(FailLocal, 0), newLim(FailLocal, 2)
	rule := Limit{Limit: 5, Window: time.Hour}

	// Healthy first: real decisions.
	for _, l := range []*redisLimiter{closed, open, local, local2} {
		if d := untilHealthy(t, l, "k", rule); !d.Allowed {
			t.Fatalf("healthy Allow: %+v", d)
		}
	}

	srv.Stop(t)

	var slowest time.Duration
	timed := func(f func()) {
		start := time.Now()
		f()
		if el := time.Since(start); el > slowest {
			slowest = el
		}
	}
	decide := func(l Limiter, key string, r Limit) Decision {
		t.Helper()
		var d Decision
		var err error
		timed(func() { d, err = l.Allow(ctx, key, r) })
		if err != nil {
			t.Fatalf("Allow with Redis down: %v (want a degraded decision, not an error)", err)
		}
		if !d.Degraded {
			t.Fatalf("Allow with Redis down: not degraded: %+v", d)
		}
		return d
	}

	for i := 0; i < 10; i++ {
		if d := decide(closed, "k", rule); d.Allowed || d.RetryAfter <= 0 {
			t.Fatalf("closed with Redis down: %+v, want denied with a RetryAfter", d)
		}
		if d := decide(open, "k", rule); !d.Allowed {
			t.Fatalf("open with Redis down: %+v, want allowed", d)
		}
	}
	// local: the in-process limiter, limit 5 on one instance, ceil(5/2) = 3
	// on each of two.
	for _, c := range []struct {
		l    *redisLimiter
		want int
	}{{local, 5}, {local2, 3}} {
		got := 0
		for i := 0; i < 10; i++ {
			if decide(c.l, "local-key", rule).Allowed {
				got++
			}
		}
		if got != c.want {
			t.Fatalf("local fallback with LocalInstances %d admitted %d of 10, want %d", c.l.fo.divisor, got, c.want)
		}
	}
	// A per-rule policy overrides the limiter's default, and AllowAll takes
	// the strictest among its checks.
	if d := decide(open, "k", Limit{Limit: 5, Window: time.Hour, OnBackendError: FailClosed}); d.Allowed {
		t.Fatalf("rule policy closed on an open limiter: %+v", d)
	}
	var res Result
	var err error
	timed(func() {
		res, err = open.AllowAll(ctx, Check{Key: "a", Limit: rule}, Check{Key: "b", Limit: Limit{Limit: 5, Window: time.Hour, OnBackendError: FailClosed}})
	})
	if err != nil || res.Allowed || !res.Degraded || len(res.Decisions) != 2 || !res.Decisions[0].Degraded {
		t.Fatalf("AllowAll open+closed with Redis down: %+v, %v; want denied (closed is strictest), degraded", res, err)
	}
	timed(func() {
		res, err = closed.AllowAll(ctx, Check{Key: "a", Limit: Limit{Limit: 5, Window: time.Hour, OnBackendError: FailOpen}})
	})
	if err != nil || !res.Allowed || !res.Degraded {
		t.Fatalf("AllowAll with an open rule with Redis down: %+v, %v", res, err)
	}
	var pd Decision
	timed(func() { pd, err = local.Peek(ctx, "local-key", rule) })
	if err != nil || !pd.Degraded || pd.Allowed {
		t.Fatalf("Peek under local with the local limit used up: %+v, %v", pd, err)
	}
	timed(func() { err = closed.Reset(ctx, "k") })
	if !errors.Is(err, ErrBackend) {
		t.Fatalf("Reset with Redis down: %v, want ErrBackend", err)
	}
	t.Logf("slowest call with Redis down: %v (timeout %v)", slowest, timeout)
	if slowest > bound {
		t.Fatalf("a call took %v with Redis down; want within %v", slowest, bound)
	}
	if v := registryValue(t, reg, metricDegraded, map[string]string{"policy": "closed"}); v < 10 {
		t.Errorf("degraded{policy=closed} = %v, want >= 10", v)
	}
	if v := registryValue(t, reg, metricBackendErrors, nil); v < 1 {
		t.Errorf("backend errors = %v, want >= 1", v)
	}

	// Restart: the same limiters recover without being rebuilt, once the
	// breaker lets a probe through and it succeeds.
	srv.Start(t)
	for _, l := range []*redisLimiter{closed, open, local} {
		// (Remaining is not asserted: a poll that timed out on the
		// reconnecting client may still have run on the server.)
		if d := untilHealthy(t, l, "after", rule); !d.Allowed {
			t.Fatalf("first normal decision after restart: %+v", d)
		}
	}
	if err := closed.Reset(ctx, "after"); err != nil {
		t.Fatalf("Reset after recovery: %v", err)
	}
}

// untilHealthy calls Allow until it gets a normal (not degraded) decision,
// for at most 10s, and returns it. With a 50ms timeout the first call on a
// fresh server (NOSCRIPT, then EVAL) can time out on a loaded CI machine;
// the failure tests need a healthy start, not a fast one.
func untilHealthy(t *testing.T, l Limiter, key string, r Limit) Decision {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d, err := l.Allow(context.Background(), key, r)
		if err != nil {
			t.Fatalf("Allow: %v", err)
		}
		if !d.Degraded {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("no normal decision within 10s")
		}
		time.Sleep(20 * time.Millisecond) // poll interval while the breaker cools down
	}
}

// TestRedisBreakerSkipsBackend checks that an open breaker decides without
// calling Redis (one backend error for many calls), and that only one probe
// at a time goes out after the cooldown.
func TestRedisBreakerSkipsBackend(t *testing.T) {
	t.Parallel()
	srv := redistest.NewServer(t)
	client := redistest.Client(t, srv.URL())
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	l := newTestRedis(t, client, Config{Timeout: 50 * time.Millisecond, OnBackendError: FailOpen, Registerer: reg, BreakerCooldown: time.Hour})
	srv.Stop(t)
	for i := 0; i < 50; i++ {
		d, err := l.Allow(ctx, "k", Limit{Limit: 1, Window: time.Minute})
		if err != nil || !d.Degraded || !d.Allowed {
			t.Fatalf("call %d: %+v, %v", i, d, err)
		}
	}
	if v := registryValue(t, reg, metricBackendErrors, nil); v != 1 {
		t.Fatalf("50 calls with the breaker open made %v backend calls fail, want 1 (the rest skip Redis)", v)
	}
	if v := registryValue(t, reg, metricDegraded, map[string]string{"policy": "open"}); v != 50 {
		t.Fatalf("degraded{policy=open} = %v, want 50", v)
	}

	// After the cooldown exactly one caller probes; the others keep
	// deciding by policy meanwhile.
	l.fo.openUntil.Store(1) // cooldown over
	probe, ok := l.fo.acquire()
	if !probe || !ok {
		t.Fatalf("first call after the cooldown: probe=%v ok=%v, want the probe", probe, ok)
	}
	if p2, ok2 := l.fo.acquire(); ok2 || p2 {
		t.Fatalf("second call during a probe went to the backend")
	}
	l.fo.failed(true, "test", errors.New("dial tcp: connection refused"))
	if _, ok := l.fo.acquire(); ok {
		t.Fatalf("a failed probe did not reopen the breaker")
	}
}

// TestRedisSlowServerTimesOut hangs redis-server (SIGSTOP: it accepts nothing
// and answers nothing, like a stalled primary) and checks that decisions come
// from the policy within the timeout, then resume after SIGCONT.
func TestRedisSlowServerTimesOut(t *testing.T) {
	t.Parallel()
	srv := redistest.NewServer(t)
	client := redistest.Client(t, srv.URL())
	ctx := context.Background()
	info, err := client.Do(ctx, client.B().Info().Section("server").Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "process_id:"); ok {
			pid, _ = strconv.Atoi(v)
		}
	}
	if pid <= 0 {
		t.Fatalf("no process_id in INFO server")
	}
	l := newTestRedis(t, client, Config{Timeout: 50 * time.Millisecond, OnBackendError: FailClosed, BreakerCooldown: 50 * time.Millisecond})
	// Calls that timed out were already written to the socket and run when
	// the server resumes, so the count afterwards is not asserted; the limit
	// is high enough that they cannot make the recovered decision a denial.
	rule := Limit{Limit: 100, Window: time.Hour}
	untilHealthy(t, l, "k", rule)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	for i := 0; i < 5; i++ {
		start := time.Now()
		d, err := l.Allow(ctx, "k", rule)
		el := time.Since(start)
		if err != nil || !d.Degraded || d.Allowed {
			t.Fatalf("Allow with Redis hung: %+v, %v; want a degraded denial", d, err)
		}
		if el > time.Second {
			t.Fatalf("Allow with Redis hung took %v; timeout is 50ms", el)
		}
	}
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if d := untilHealthy(t, l, "k", rule); !d.Allowed {
		t.Fatalf("after recovery: %+v, want allowed", d)
	}
}

// TestRedisBadStateIsBackendError puts keys of the wrong type or with
// garbage where the limiter keeps its state (as another program sharing the
// prefix might) and checks that the call is a degraded decision by policy,
// not a panic nor an error, that only that key is affected (the breaker does
// not open for the others), and that an AllowAll with one bad group gives
// back what the good groups took.
func TestRedisBadStateIsBackendError(t *testing.T) {
	t.Parallel()
	for _, target := range redisTargets {
		t.Run(target.name, func(t *testing.T) {
			t.Parallel()
			client := redistest.Client(t, target.url(t))
			ctx := context.Background()
			reg := prometheus.NewRegistry()
			prefix := redistest.Prefix(t)
			var logs testlog.Buffer
			logger := slog.New(slog.NewTextHandler(&logs, nil))
			closed := newTestRedis(t, client, Config{Prefix: prefix, OnBackendError: FailClosed, Registerer: reg, Logger: logger})
			open := newTestRedis(t, client, Config{Prefix: prefix, OnBackendError: FailOpen, Registerer: reg})
			do := func(cmd rueidis.Completed) {
				if err := client.Do(ctx, cmd).Error(); err != nil {
					t.Fatal(err)
				}
			}
			bad := map[Algorithm]string{}
			for _, a := range Algorithms {
				_, k := closed.stateKey("", "bad-"+string(a), a)
				bad[a] = "bad-" + string(a)
				switch a {
				case SlidingLog: // a string where a sorted set belongs: WRONGTYPE
					do(client.B().Set().Key(k).Value("x").Build())
				case GCRA: // a string that is not a number: script error
					do(client.B().Set().Key(k).Value("not-a-number").Build())
				case FixedWindow: // a hash with a garbage count
					do(client.B().Hset().Key(k).FieldValue().FieldValue("w", "1").FieldValue("c", "x").Build())
				case SlidingWindow: // a list: WRONGTYPE
					do(client.B().Rpush().Key(k).Element("x").Build())
				}
			}
			for _, a := range Algorithms {
				r := Limit{Limit: 5, Window: time.Hour, Algorithm: a}
				d, err := closed.Allow(ctx, bad[a], r)
				if err != nil || !d.Degraded || d.Allowed {
					t.Fatalf("%s on a bad key, closed: %+v, %v; want a degraded denial", a, d, err)
				}
				d, err = open.Allow(ctx, bad[a], r)
				if err != nil || !d.Degraded || !d.Allowed {
					t.Fatalf("%s on a bad key, open: %+v, %v; want a degraded allow", a, d, err)
				}
				// Other keys are decided normally right away.
				d, err = closed.Allow(ctx, "good", r)
				if err != nil || d.Degraded || !d.Allowed {
					t.Fatalf("%s on a good key after a bad one: %+v, %v", a, d, err)
				}
			}
			if v := registryValue(t, reg, metricBackendErrors, nil); v != 8 {
				t.Errorf("backend errors = %v, want 8", v)
			}
			// Four failures of the closed limiter: logged once (rate-limited),
			// and never with the key.
			if out := logs.String(); strings.Count(out, "backend call failed") != 1 || strings.Contains(out, "bad-") {
				t.Errorf("failure log: want one line without the key, got:\n%s", out)
			}

			// AllowAll: the good group (own tag) consumed, the bad one
			// failed; the good one gets its unit back.
			rule := Limit{Limit: 5, Window: time.Hour}
			res, err := closed.AllowAll(ctx, Check{Key: "fine", Limit: rule}, Check{Key: bad[SlidingLog], Limit: rule})
			if err != nil || res.Allowed || !res.Degraded {
				t.Fatalf("AllowAll with a bad group: %+v, %v", res, err)
			}
			_, kf := closed.stateKey("", "fine", SlidingLog)
			if n := zcard(t, client, kf); n != 0 {
				t.Fatalf("the good group kept %d units of a failed AllowAll", n)
			}
		})
	}
}

// TestRedisKeysHaveTTL checks that every key the script writes, in every
// mode and algorithm (refunds included), has an expiry.
func TestRedisKeysHaveTTL(t *testing.T) {
	t.Parallel()
	for _, target := range redisTargets {
		t.Run(target.name, func(t *testing.T) {
			t.Parallel()
			client := redistest.Client(t, target.url(t))
			r := newTestRedis(t, client, Config{})
			x := rt{t, r}
			for _, a := range Algorithms {
				l := Limit{Limit: 3, Window: time.Hour, Algorithm: a}
				x.allow("allowed", l)
				x.record("recorded", l, 10)
				x.exhaust("full", l)
				x.allow("full", l)
				// A denied AllowAll across two tags: the fitting group is
				// refunded, rewriting its key.
				x.allowAll(Check{Key: "refunded", Limit: l}, Check{Key: "full", Limit: l})
				x.allowAll(Check{Key: "k1", Tag: "t", Limit: l}, Check{Key: "k2", Tag: "t", Limit: l})
			}
			var found int
			for _, node := range client.Nodes() {
				var cursor uint64
				for {
					e, err := node.Do(context.Background(), node.B().Scan().Cursor(cursor).Match(r.keys.Prefix()+"*").Count(1000).Build()).AsScanEntry()
					if err != nil {
						t.Fatal(err)
					}
					for _, k := range e.Elements {
						found++
						ttl, err := node.Do(context.Background(), node.B().Pttl().Key(k).Build()).AsInt64()
						if err != nil || ttl <= 0 {
							t.Errorf("key %q has PTTL %d (%v): every key must expire", k, ttl, err)
						}
					}
					if cursor = e.Cursor; cursor == 0 {
						break
					}
				}
			}
			// allowed, recorded, full, refunded (sliding-log deletes an
			// emptied log, gcra a drained TAT), k1, k2 per algorithm.
			if found < 4*4 {
				t.Fatalf("found only %d keys under the prefix", found)
			}
		})
	}
}

// TestRedisKeyLayoutAndHashing checks the documented key layout, that a
// KeyHashSecret keeps identifiers out of key names, and that an AllowAll
// group's keys share a slot.
func TestRedisKeyLayoutAndHashing(t *testing.T) {
	t.Parallel()
	client := redistest.Client(t, redistest.ClusterURL(t))
	r := newTestRedis(t, client, Config{Prefix: "p:"})
	for _, c := range []struct {
		tag, key string
		a        Algorithm
		want     string
	}{
		{"", "user:42", SlidingLog, "p:rl:{user%3A42}:sl"},
		{"user:42", "user:42", GCRA, "p:rl:{user%3A42}:gc"},
		{"user:42", "identity:user", FixedWindow, "p:rl:{user%3A42}:identity%253Auser:fw"},
		{"", "a{b}*", SlidingWindow, "p:rl:{a%7Bb%7D%2A}:sw"},
	} {
		if _, got := r.stateKey(c.tag, c.key, c.a); got != c.want {
			t.Errorf("stateKey(%q, %q, %s) = %q, want %q", c.tag, c.key, c.a, got, c.want)
		}
	}

	secret := []byte("test-secret")
	hr := newTestRedis(t, client, Config{KeyHashSecret: secret})
	x := rt{t, hr}
	l := Limit{Limit: 2, Window: time.Hour}
	x.allow("alice@example.com", l)
	x.allowAll(Check{Key: "identity:email", Tag: "email:alice@example.com", Limit: l}, Check{Key: "identity:x", Tag: "email:alice@example.com", Limit: l})
	if d := x.allow("alice@example.com", l); !d.Allowed || d.Remaining != 0 {
		t.Fatalf("hashed keys keep state: %+v", d)
	}
	for _, node := range client.Nodes() {
		ks, err := node.Do(context.Background(), node.B().Keys().Pattern(hr.keys.Prefix()+"*").Build()).AsStrSlice()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range ks {
			if strings.Contains(k, "alice") || strings.Contains(k, "example") || strings.Contains(k, "identity") {
				t.Errorf("key %q shows an identifier despite KeyHashSecret", k)
			}
		}
	}
}

// TestRedisConfigErrors checks that NewRedis with an unusable configuration
// returns errors from every call instead of panicking or deciding.
func TestRedisConfigErrors(t *testing.T) {
	t.Parallel()
	client := redistest.Client(t, redistest.URL(t))
	ctx := context.Background()
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	rule := Limit{Limit: 1, Window: time.Minute}
	for _, c := range []struct {
		name string
		l    Limiter
		want error
	}{
		{"bad prefix", NewRedis(client, Config{Prefix: "bad{prefix}", Logger: logger}), keys.ErrInvalidPrefix},
		{"nil client", NewRedis(nil, Config{Logger: logger}), ErrBackend},
	} {
		calls := map[string]func() error{
			"Allow":    func() error { _, err := c.l.Allow(ctx, "k", rule); return err },
			"Peek":     func() error { _, err := c.l.Peek(ctx, "k", rule); return err },
			"Record":   func() error { _, err := c.l.Record(ctx, "k", rule, 1); return err },
			"Reset":    func() error { return c.l.Reset(ctx, "k") },
			"AllowAll": func() error { _, err := c.l.AllowAll(ctx, Check{Key: "k", Limit: rule}); return err },
		}
		for m, call := range calls {
			if err := call(); !errors.Is(err, c.want) {
				t.Errorf("%s: %s: err %v, want %v", c.name, m, err, c.want)
			}
		}
	}
	if !strings.Contains(logs.String(), "unusable") {
		t.Errorf("bad configuration was not logged: %q", logs.String())
	}
}

// TestRedisCallerContext checks that a caller's context that is already done
// gives its error (not a degraded decision), and does not open the breaker.
func TestRedisCallerContext(t *testing.T) {
	t.Parallel()
	client := redistest.Client(t, redistest.URL(t))
	r := newTestRedis(t, client, Config{OnBackendError: FailOpen})
	rule := Limit{Limit: 1, Window: time.Minute}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Allow(ctx, "k", rule); !errors.Is(err, context.Canceled) {
		t.Fatalf("Allow with a cancelled ctx: %v", err)
	}
	if _, err := r.AllowAll(ctx, Check{Key: "k", Limit: rule}); !errors.Is(err, context.Canceled) {
		t.Fatalf("AllowAll with a cancelled ctx: %v", err)
	}
	if err := r.Reset(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Reset with a cancelled ctx: %v", err)
	}
	dctx, dcancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer dcancel()
	if _, err := r.Peek(dctx, "k", rule); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Peek with an expired deadline: %v", err)
	}
	if d, err := r.Allow(context.Background(), "k", rule); err != nil || d.Degraded || !d.Allowed {
		t.Fatalf("Allow after cancelled calls: %+v, %v (the breaker must not have opened)", d, err)
	}
}

// TestRedisMetrics checks the decision counters, the latency histogram, and
// that two limiters on one registry share the collectors.
func TestRedisMetrics(t *testing.T) {
	t.Parallel()
	client := redistest.Client(t, redistest.URL(t))
	reg := prometheus.NewRegistry()
	prefix := redistest.Prefix(t)
	a := newTestRedis(t, client, Config{Prefix: prefix, Registerer: reg})
	b := newTestRedis(t, client, Config{Prefix: prefix, Registerer: reg}) // same registry: reuses the collectors
	x, y := rt{t, a}, rt{t, b}
	rule := Limit{Limit: 2, Window: time.Hour, Algorithm: GCRA}
	x.allow("k", rule)
	y.allow("k", rule)
	x.allow("k", rule)
	x.peek("k", rule) // peeks are not decisions
	x.allowAll(Check{Key: "m", Limit: rule}, Check{Key: "n", Limit: Limit{Limit: 1, Window: time.Hour, Algorithm: FixedWindow}})
	for _, c := range []struct {
		alg, outcome string
		want         float64
	}{
		{"gcra", "allowed", 3}, {"gcra", "denied", 1}, {"fixed-window", "allowed", 1}, {"sliding-log", "allowed", 0},
	} {
		got := registryValue(t, reg, metricDecisions, map[string]string{"backend": "redis", "algorithm": c.alg, "outcome": c.outcome})
		if got != c.want {
			t.Errorf("decisions{redis,%s,%s} = %v, want %v", c.alg, c.outcome, got, c.want)
		}
	}
	if got := registryValue(t, reg, metricBackendSeconds, nil); got != 5 {
		t.Errorf("backend latency samples = %v, want 5 (one per backend call)", got)
	}
	// NewMemory on the same registry shares the decisions counter.
	m := rt{t, NewMemory(Config{Registerer: reg})}
	m.allow("k", rule)
	if got := registryValue(t, reg, metricDecisions, map[string]string{"backend": "memory", "algorithm": "gcra", "outcome": "allowed"}); got != 1 {
		t.Errorf("decisions{memory,gcra,allowed} = %v, want 1", got)
	}
}

// TestRedisScriptCacheFlushed checks the NOSCRIPT fallback of every script
// (the single-check script of each algorithm and mode, and the pipelined
// AllowAll) after the server forgot them, as after a restart or a failover
// to a fresh replica.
func TestRedisScriptCacheFlushed(t *testing.T) {
	t.Parallel()
	srv := redistest.NewServer(t)
	client := redistest.Client(t, srv.URL())
	ctx := context.Background()
	x := rt{t, newTestRedis(t, client, Config{})}
	flush := func() {
		t.Helper()
		if err := client.Do(ctx, client.B().ScriptFlush().Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range Algorithms {
		rule := Limit{Limit: 5, Window: time.Hour, Algorithm: a}
		k := "k-" + string(a)
		x.allow(k, rule) // loads the allow script
		flush()
		if d := x.allow(k, rule); !d.Allowed || d.Remaining != 3 {
			t.Fatalf("%s: Allow after SCRIPT FLUSH: %+v", a, d)
		}
		flush()
		if d := x.peek(k, rule); !d.Allowed || d.Remaining != 3 {
			t.Fatalf("%s: Peek after SCRIPT FLUSH: %+v", a, d)
		}
		flush()
		if d := x.record(k, rule, 4); d.Allowed || d.Remaining != 0 {
			t.Fatalf("%s: Record(4) of 3 left after SCRIPT FLUSH: %+v", a, d)
		}
	}
	rule := Limit{Limit: 5, Window: time.Hour}
	x.allow("k", rule)
	flush()
	r := x.allowAll(Check{Key: "k", Limit: rule}, Check{Key: "other", Limit: rule}, Check{Key: "third", Tag: "t", Limit: rule})
	if !r.Allowed || r.Decisions[0].Remaining != 3 || r.Decisions[1].Remaining != 4 || r.Decisions[2].Remaining != 4 {
		t.Fatalf("AllowAll after SCRIPT FLUSH: %+v", r)
	}
	// A denied AllowAll across two tags refunds with the same script, also
	// after a flush: the fitting check keeps all it had.
	x.exhaust("full", rule)
	flush()
	if r := x.allowAll(Check{Key: "fresh", Limit: rule}, Check{Key: "full", Limit: rule}); r.Allowed || r.Decisions[1].Allowed {
		t.Fatalf("AllowAll with an exhausted check after SCRIPT FLUSH: %+v", r)
	}
	if d := x.peek("fresh", rule); d.Remaining != 5 {
		t.Fatalf("the fitting check of a denied AllowAll keeps %d of 5 after the refund", d.Remaining)
	}
}

// TestRedisScriptAssembly checks the scripts assembled from the Lua files:
// every algorithm file has its three blocks, every placeholder was
// replaced, the single-check scripts (the hot path) define no function
// (closures would be rebuilt on every call), and Redis compiles every
// script (SCRIPT LOAD), including combinations the other tests may not run.
func TestRedisScriptAssembly(t *testing.T) {
	t.Parallel()
	client := redistest.Client(t, redistest.URL(t))
	ctx := context.Background()
	// code strips Lua comments ("--" to the end of the line; the scripts
	// hold no "--" inside strings).
	code := func(src string) string {
		var sb strings.Builder
		for _, line := range strings.Split(src, "\n") {
			if i := strings.Index(line, "--"); i >= 0 {
				line = line[:i]
			}
			sb.WriteString(line + "\n")
		}
		return sb.String()
	}
	load := func(name, src string) {
		t.Helper()
		if strings.Contains(src, "--{") {
			t.Errorf("%s: a placeholder line was not replaced", name)
		}
		if err := client.Do(ctx, client.B().ScriptLoad().Script(src).Build()).Error(); err != nil {
			t.Errorf("%s: SCRIPT LOAD: %v", name, err)
		}
	}
	for i, a := range Algorithms {
		b := blocks(algSources[i])
		for _, name := range []string{"eval", "write", "refund"} {
			if strings.TrimSpace(b[name]) == "" {
				t.Errorf("%s: no %s block", a, name)
			}
		}
		for _, mode := range singleModes {
			src := assembleSingle(algSources[i], mode)
			name := string(a) + "/" + mode
			if !strings.Contains(src, "local mode = '"+mode+"'\n") {
				t.Errorf("%s: the mode line is missing", name)
			}
			if strings.Contains(code(src), "function") {
				t.Errorf("%s: the single-check script defines a function", name)
			}
			load(name, src)
		}
		for _, fn := range []string{"_eval(", "_write(", "_refund("} {
			if !strings.Contains(allowAllSource, "local function "+algCode(a)+fn) {
				t.Errorf("allowall: no %s%s", algCode(a), fn)
			}
		}
	}
	if strings.Contains(code(allowAllSource), "X_") {
		t.Errorf("allowall: a function name X_... was not replaced")
	}
	load("allowall", allowAllSource)
}

// TestRedisSingleMatchesAllowAll runs the same requests through the
// single-check scripts (AllowN, Peek, Record) on one key and through the
// AllowAll script on another: both pastes of an algorithm's blocks must
// decide alike, on Redis and on Cluster. Exact on allowed and remaining;
// times within slack (a few µs apart in practice).
func TestRedisSingleMatchesAllowAll(t *testing.T) {
	t.Parallel()
	for _, target := range redisTargets {
		t.Run(target.name, func(t *testing.T) {
			t.Parallel()
			client := redistest.Client(t, target.url(t))
			eachAlgorithm(t, func(t *testing.T, a Algorithm) {
				x := rt{t, newTestRedis(t, client, Config{})}
				l := lim(a, 5, confWindow)
				if a == GCRA {
					l.Burst = 4 // exercise the optional burst argument
				}
				near := func(what string, single, all time.Duration) {
					t.Helper()
					if d := single - all; d < -slack || d > slack {
						t.Errorf("%s: single %v, AllowAll %v", what, single, all)
					}
				}
				same := func(step string, s, m Decision) {
					t.Helper()
					if s.Allowed != m.Allowed || s.Remaining != m.Remaining || s.Limit != m.Limit {
						t.Fatalf("%s: single %+v, AllowAll %+v", step, s, m)
					}
					near(step+" ResetAt", time.Duration(s.ResetAt.UnixMicro())*time.Microsecond, time.Duration(m.ResetAt.UnixMicro())*time.Microsecond)
					near(step+" RetryAfter", s.RetryAfter, m.RetryAfter)
				}
				for i, n := range []int{2, 1, 3, 6, 1, 1, 2, 1} {
					s := x.allowN("single", l, n)
					m := x.allowAll(Check{Key: "all", Limit: l, Cost: n}).Decisions[0]
					same(fmt.Sprintf("step %d, cost %d", i, n), s, m)
					p := x.peek("single", l)
					if rem := x.remainingOf(Check{Key: "all", Limit: l}); p.Remaining != rem {
						t.Fatalf("step %d: Peek remaining %d, AllowAll probe %d", i, p.Remaining, rem)
					}
				}
				// Record on the single path; the AllowAll path sees the
				// state it left on the same key.
				x.record("single", l, 3)
				s := x.peek("single", l)
				m := x.allowAll(Check{Key: "single", Limit: l}).Decisions[0]
				same("after Record", s, m)
			})
		})
	}
}

// TestRedisExpiryIsWindowEnd checks that a state key expires exactly where
// docs/ratelimit-algorithms.md says, on both paths, including the writes
// within the current window that leave the expiry set by the window's first
// write: fixed-window at (idx+1)*W and sliding-window at (idx+2)*W (both
// ResetAt once a unit is taken), sliding-log at newest stamp + W (ResetAt,
// rounded up to the ms), gcra at most ceil((tat-now)/1000) ms ahead.
func TestRedisExpiryIsWindowEnd(t *testing.T) {
	t.Parallel()
	client := redistest.Client(t, redistest.URL(t))
	ctx := context.Background()
	r := newTestRedis(t, client, Config{})
	x := rt{t, r}
	expireAt := func(k string) time.Time {
		t.Helper()
		ms, err := client.Do(ctx, client.B().Pexpiretime().Key(k).Build()).AsInt64()
		if err != nil || ms <= 0 {
			t.Fatalf("PEXPIRETIME %q: %d, %v", k, ms, err)
		}
		return time.UnixMilli(ms)
	}
	ceilMs := func(at time.Time) time.Time {
		return time.UnixMilli((at.UnixMicro() + 999) / 1000)
	}
	for _, a := range Algorithms {
		l := Limit{Limit: 10, Window: time.Hour, Algorithm: a}
		for _, path := range []string{"single", "allowall"} {
			key := path + "-" + string(a)
			_, k := r.stateKey("", key, a)
			var d Decision
			for i := 0; i < 3; i++ { // the first write of the window, then two more
				if path == "single" {
					d = x.allow(key, l)
				} else {
					d = x.allowAll(Check{Key: key, Limit: l}).Decisions[0]
				}
			}
			got := expireAt(k)
			switch a {
			case GCRA:
				// 3 units of 6 minutes: the bucket is full again at ResetAt.
				// The expiry is relative (PX) to the server's clock at SET,
				// a few µs after TIME: it may land 1ms past ResetAt's ms.
				if want := ceilMs(d.ResetAt); got.Before(want.Add(-slack)) || got.After(want.Add(time.Millisecond)) {
					t.Errorf("%s %s: expires at %v, want about %v", path, a, got, want)
				}
			default:
				if want := ceilMs(d.ResetAt); !got.Equal(want) {
					t.Errorf("%s %s: expires at %v, want %v (ResetAt %v)", path, a, got, want, d.ResetAt)
				}
			}
		}
	}
}

// TestRedisCorruptFieldsWriteNothing puts a garbage field into the hash of
// a fixed-window or sliding-window key: every call on it (each mode of the
// single-check script, and AllowAll) fails as a backend error, decided by
// the failure policy, and leaves the hash exactly as it was.
func TestRedisCorruptFieldsWriteNothing(t *testing.T) {
	t.Parallel()
	client := redistest.Client(t, redistest.URL(t))
	ctx := context.Background()
	r := newTestRedis(t, client, Config{BreakerCooldown: -1})
	now := redisTime(t, client)
	cur := strconv.FormatInt(now/time.Hour.Microseconds(), 10)
	for _, c := range []struct {
		a      Algorithm
		fields []string // field, value, ...
	}{
		{FixedWindow, []string{"w", "x", "c", "1"}},
		{FixedWindow, []string{"w", cur, "c", "1.2.3"}},
		{SlidingWindow, []string{"w", "x", "c", "1", "p", "1"}},
		{SlidingWindow, []string{"w", cur, "c", "x", "p", "1"}},
		{SlidingWindow, []string{"w", cur, "c", "1", "p", "x"}},
	} {
		key := "bad-" + strings.Join(c.fields, "-")
		_, k := r.stateKey("", key, c.a)
		fv := client.B().Hset().Key(k).FieldValue()
		for i := 0; i < len(c.fields); i += 2 {
			fv = fv.FieldValue(c.fields[i], c.fields[i+1])
		}
		if err := client.Do(ctx, fv.Build()).Error(); err != nil {
			t.Fatal(err)
		}
		l := Limit{Limit: 5, Window: time.Hour, Algorithm: c.a}
		calls := map[string]func() (Decision, error){
			"Allow":  func() (Decision, error) { return r.Allow(ctx, key, l) },
			"Peek":   func() (Decision, error) { return r.Peek(ctx, key, l) },
			"Record": func() (Decision, error) { return r.Record(ctx, key, l, 2) },
			"AllowAll": func() (Decision, error) {
				res, err := r.AllowAll(ctx, Check{Key: key, Limit: l})
				if !res.Degraded && err == nil {
					return Decision{Allowed: res.Allowed}, nil
				}
				return Decision{Allowed: res.Allowed, Degraded: res.Degraded}, err
			},
		}
		for name, call := range calls {
			d, err := call()
			if err != nil || !d.Degraded || d.Allowed {
				t.Errorf("%s %v: %s = %+v, %v; want a degraded denial (fail closed)", c.a, c.fields, name, d, err)
			}
		}
		h, err := client.Do(ctx, client.B().Hgetall().Key(k).Build()).AsStrMap()
		if err != nil {
			t.Fatal(err)
		}
		if len(h)*2 != len(c.fields) {
			t.Errorf("%s %v: hash now %v", c.a, c.fields, h)
		}
		for i := 0; i < len(c.fields); i += 2 {
			if h[c.fields[i]] != c.fields[i+1] {
				t.Errorf("%s %v: field %s is now %q", c.a, c.fields, c.fields[i], h[c.fields[i]])
			}
		}
	}
}
