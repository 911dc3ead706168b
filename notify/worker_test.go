package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/internal/testutil"
)

// Worker tests run on memory (on the real clock: the worker's timers are
// real), a real redis-server and a real 3-node Cluster. instance returns
// another Queue over the same data; on Redis each has its own client, so
// an enqueue through it reaches the worker only through Redis (Pub/Sub),
// never through the in-process hub.
type wenv struct {
	name     string
	instance func(cfg Config) Queue
}

func workerEnvs(t *testing.T) []func(t *testing.T) wenv {
	t.Helper()
	redisOf := func(name string, url func(testing.TB) string) func(t *testing.T) wenv {
		return func(t *testing.T) wenv {
			u, prefix := url(t), redistest.Prefix(t)
			return wenv{name: name, instance: func(cfg Config) Queue {
				cfg.Prefix = prefix
				cfg.Timeout = orDur(cfg.Timeout, 10*time.Second)
				return NewRedis(redistest.Client(t, u), quiet(cfg))
			}}
		}
	}
	return []func(t *testing.T) wenv{
		func(t *testing.T) wenv {
			var (
				mu sync.Mutex
				q  Queue
			)
			// One process, one memory queue: every instance is the same
			// Queue (NewMemory's data is not shared between values).
			return wenv{name: "memory", instance: func(cfg Config) Queue {
				mu.Lock()
				defer mu.Unlock()
				if q == nil {
					q = NewMemory(quiet(cfg))
				}
				return q
			}}
		},
		redisOf("redis", redistest.URL),
		redisOf("cluster", redistest.ClusterURL),
	}
}

func forEachWorkerEnv(t *testing.T, f func(t *testing.T, e wenv)) {
	t.Parallel()
	for _, mk := range workerEnvs(t) {
		e0 := mk(t) // names only; each subtest makes its own
		t.Run(e0.name, func(t *testing.T) {
			t.Parallel()
			f(t, mk(t))
		})
	}
}

// delivered is one Send of one item, as a recording sender saw it.
type delivered struct {
	n  Notification
	at time.Time
}

// recorder is a Sender that records every item and answers with reply
// (Delivered when nil).
type recorder struct {
	mu    sync.Mutex
	got   []delivered
	ch    chan delivered
	reply func(n Notification) Delivery
}

func newRecorder() *recorder { return &recorder{ch: make(chan delivered, 10000)} }

func (r *recorder) Send(_ context.Context, _ string, items []Notification) []Delivery {
	now := time.Now()
	out := make([]Delivery, len(items))
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, n := range items {
		d := delivered{n, now}
		r.got = append(r.got, d)
		r.ch <- d
		out[i] = Delivered()
		if r.reply != nil {
			out[i] = r.reply(n)
		}
	}
	return out
}

// next returns the next recorded item, failing after timeout.
func (r *recorder) next(t *testing.T, timeout time.Duration) delivered {
	t.Helper()
	select {
	case d := <-r.ch:
		return d
	case <-time.After(timeout):
		t.Fatalf("nothing delivered within %v", timeout)
	}
	return delivered{}
}

// startWorker runs w until the test ends and checks that Run returns.
func startWorker(t *testing.T, w *Worker) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	})
}

func quietWorker(cfg WorkerConfig) WorkerConfig {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg
}

// waitIdle makes w report when it is idle with its wake-up subscription
// up; the returned function waits for the next such moment.
func waitIdle(w *Worker) func(t *testing.T) {
	c := make(chan struct{}, 1)
	w.onIdle = func(sub bool) {
		if sub {
			poke(c)
		}
	}
	return func(t *testing.T) {
		t.Helper()
		select {
		case <-c:
		case <-time.After(10 * time.Second):
			t.Fatal("the worker never went idle with its subscription up")
		}
	}
}

func until(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func stats(t *testing.T, q Queue) Stats {
	t.Helper()
	s, err := q.Stats(ctxb)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	return s
}

// TestWorkerDeliversOnceInOrder: items of many users, enqueued before two
// workers start, are each delivered exactly once, every user's in the
// order high > normal > low, oldest first, and the queue ends empty.
func TestWorkerDeliversOnceInOrder(t *testing.T) {
	forEachWorkerEnv(t, func(t *testing.T, e wenv) {
		q := e.instance(Config{})
		const users, per = 30, 7
		var ns []Notification
		prios := []Priority{PriorityLow, PriorityNormal, PriorityHigh}
		for u := range users {
			for i := range per {
				ns = append(ns, Notification{ID: fmt.Sprintf("n%d", i), UserID: fmt.Sprintf("user-%d", u), Type: "t", Priority: prios[(i+u)%3]})
			}
		}
		for _, r := range testutil.Must[[]Result](t, "EnqueueMany")(q.EnqueueMany(ctxb, ns)) {
			if r.Err != nil || !r.Created {
				t.Fatalf("enqueue: %+v", r)
			}
		}
		rec := newRecorder()
		for range 2 {
			startWorker(t, NewWorker(e.instance(Config{}), rec, quietWorker(WorkerConfig{Concurrency: 3})))
		}
		for range len(ns) {
			rec.next(t, 20*time.Second)
		}
		until(t, "the queue to drain", 10*time.Second, func() bool { return stats(t, q).Delivered == int64(len(ns)) })
		if s := stats(t, q); s.Pending+s.Inflight+s.Retrying+s.Scheduled+s.Dead != 0 {
			t.Fatalf("stats after draining: %+v", s)
		}
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if len(rec.got) != len(ns) {
			t.Fatalf("%d sends for %d items", len(rec.got), len(ns))
		}
		byUser := map[string][]Notification{}
		seen := map[string]bool{}
		for _, d := range rec.got {
			k := d.n.UserID + "/" + d.n.ID
			if seen[k] {
				t.Fatalf("%s delivered twice", k)
			}
			seen[k] = true
			byUser[d.n.UserID] = append(byUser[d.n.UserID], d.n)
		}
		for u, got := range byUser {
			want := slices.Clone(got)
			slices.SortStableFunc(want, func(a, b Notification) int {
				if a.Priority.band() != b.Priority.band() {
					return a.Priority.band() - b.Priority.band()
				}
				var x, y int
				fmt.Sscanf(a.ID, "n%d", &x)
				fmt.Sscanf(b.ID, "n%d", &y)
				return x - y
			})
			if !slices.Equal(ids(got), ids(want)) {
				t.Fatalf("user %s: order %v, want %v", u, ids(got), ids(want))
			}
		}
	})
}

// p99 of ds (the largest for fewer than 100).
func p99(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*99+99)/100 - 1
	return s[min(max(i, 0), len(s)-1)]
}

// TestWorkerWakesOnEnqueue: an idle worker (IdleWait one minute, so no
// poll can explain it) delivers an item enqueued by another instance
// promptly, each of 20 times.
func TestWorkerWakesOnEnqueue(t *testing.T) {
	forEachWorkerEnv(t, func(t *testing.T, e wenv) {
		rec := newRecorder()
		w := NewWorker(e.instance(Config{}), rec, quietWorker(WorkerConfig{IdleWait: time.Minute}))
		idle := waitIdle(w)
		startWorker(t, w)
		other := e.instance(Config{})
		var lat []time.Duration
		for i := range 20 {
			idle(t)
			start := time.Now()
			testutil.Must[Result](t, "Enqueue")(other.Enqueue(ctxb, Notification{ID: fmt.Sprint(i), UserID: "u", Type: "t"}))
			d := rec.next(t, 2*time.Second)
			if d.n.ID != fmt.Sprint(i) {
				t.Fatalf("delivered %q, want %d", d.n.ID, i)
			}
			lat = append(lat, d.at.Sub(start))
		}
		t.Logf("%s: idle enqueue → send latency over %d: p50 %v, p99 %v", e.name, len(lat), p50(lat), p99(lat))
	})
}

func p50(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestWorkerScheduled: 20 items scheduled 2s (and a little more) ahead,
// enqueued while the worker is idle, are delivered at their time: never
// early, and late by little (the p99 is logged; the bound only proves that
// no long poll is involved).
func TestWorkerScheduled(t *testing.T) {
	forEachWorkerEnv(t, func(t *testing.T, e wenv) {
		rec := newRecorder()
		w := NewWorker(e.instance(Config{}), rec, quietWorker(WorkerConfig{IdleWait: time.Minute}))
		idle := waitIdle(w)
		startWorker(t, w)
		idle(t)
		other := e.instance(Config{})
		base := time.Now().Add(2 * time.Second).Truncate(time.Millisecond)
		const n = 20
		want := map[string]time.Time{}
		for i := range n {
			at := base.Add(time.Duration(i) * 37 * time.Millisecond)
			id := fmt.Sprint(i)
			want[id] = at
			testutil.Must[Result](t, "Enqueue")(other.Enqueue(ctxb, Notification{ID: id, UserID: fmt.Sprintf("u%d", i), Type: "t", ScheduledFor: at}))
		}
		var late []time.Duration
		for range n {
			d := rec.next(t, 10*time.Second)
			l := d.at.Sub(want[d.n.ID])
			if l < -2*time.Millisecond { // due times are whole milliseconds
				t.Fatalf("%s delivered %v early", d.n.ID, -l)
			}
			if l > 2*time.Second {
				t.Fatalf("%s delivered %v late", d.n.ID, l)
			}
			late = append(late, l)
		}
		t.Logf("%s: lateness of %d scheduled items: p50 %v, p99 %v", e.name, n, p50(late), p99(late))
	})
}

// TestWorkerLeaseTakenOver: worker A claims, sends (the fake Novu accepts
// and holds its answer), and stalls past its tiny lease (no extension,
// one send slot and no prefetch, so A cannot claim the user again itself);
// worker B claims the user again and sends the same Idempotency-Key, which
// the fake replays. A's ack then gets ErrLeaseLost (counted as lease_lost)
// and changes nothing; the fake counts one accepted delivery.
func TestWorkerLeaseTakenOver(t *testing.T) {
	forEachWorkerEnv(t, func(t *testing.T, e wenv) {
		arrived, release := make(chan struct{}), make(chan struct{})
		var once sync.Once
		fake := newFakeNovu(t, func(key string, n int) fakeReply {
			if n == 1 {
				once.Do(func() { close(arrived) })
				return fakeReply{accept: true, waitFor: release}
			}
			return fakeReply{accept: true}
		})
		cfg := Config{Lease: 300 * time.Millisecond}
		q := e.instance(cfg)
		testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, Notification{ID: "n1", UserID: "u", Type: "t"}))
		regA := prometheus.NewRegistry()
		a := NewWorker(e.instance(cfg), fake.sender(t, 30*time.Second), quietWorker(WorkerConfig{Concurrency: 1, ExtendEvery: -1, Prefetch: -1, Registerer: regA}))
		startWorker(t, a)
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			t.Fatal("worker A never sent")
		}
		regB := prometheus.NewRegistry()
		b := NewWorker(e.instance(cfg), fake.sender(t, 30*time.Second), quietWorker(WorkerConfig{Registerer: regB}))
		startWorker(t, b)
		until(t, "B to deliver", 10*time.Second, func() bool { return stats(t, q).Delivered == 1 })
		close(release)
		ma := a.m
		until(t, "A's lease_lost", 10*time.Second, func() bool { return counterValue(t, ma.WithLabelValues("lease_lost")) == 1 })
		if v := counterValue(t, ma.WithLabelValues("delivered")); v != 0 {
			t.Fatalf("A counted %v delivered", v)
		}
		mb := b.m
		if v := counterValue(t, mb.WithLabelValues("delivered")); v != 1 {
			t.Fatalf("B counted %v delivered", v)
		}
		if got := fake.acceptedCount("n1"); got != 1 {
			t.Fatalf("fake accepted n1 %d times, want 1", got)
		}
		if r := fake.requestCount("n1"); r != 2 {
			t.Fatalf("fake got %d requests for n1, want 2", r)
		}
		if s := stats(t, q); s.Delivered != 1 || s.Inflight+s.Pending+s.Dead != 0 {
			t.Fatalf("stats %+v", s)
		}
	})
}

// counterValue is the value of c.
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// blocker is a Sender whose sends block until release is closed (or their
// ctx is done: then it answers Retry with the ctx error).
type blocker struct {
	entered chan struct{}
	release chan struct{}
	calls   atomic.Int32
	ctxErr  atomic.Value // the send ctx's error when released
}

func newBlocker() *blocker {
	return &blocker{entered: make(chan struct{}, 100), release: make(chan struct{})}
}

func (b *blocker) Send(ctx context.Context, _ string, items []Notification) []Delivery {
	b.calls.Add(1)
	b.entered <- struct{}{}
	out := make([]Delivery, len(items))
	select {
	case <-b.release:
		b.ctxErr.Store(fmt.Sprint(ctx.Err()))
		for i := range out {
			out[i] = Delivered()
		}
	case <-ctx.Done():
		for i := range out {
			out[i] = Retry(ctx.Err(), 0)
		}
	}
	return out
}

func (b *blocker) waitEntered(t *testing.T) {
	t.Helper()
	select {
	case <-b.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the sender was never called")
	}
}

// TestWorkerExtendsLease: a send that lasts four leases keeps its lease
// (renewed every third of it): another instance's Claims find nothing to
// take meanwhile, and the item is sent once and acked.
func TestWorkerExtendsLease(t *testing.T) {
	forEachWorkerEnv(t, func(t *testing.T, e wenv) {
		const lease = 500 * time.Millisecond
		q := e.instance(Config{Lease: lease})
		testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, Notification{ID: "n1", UserID: "u", Type: "t"}))
		s := newBlocker()
		startWorker(t, NewWorker(e.instance(Config{Lease: lease}), s, quietWorker(WorkerConfig{})))
		s.waitEntered(t)
		other := e.instance(Config{Lease: lease})
		for start := time.Now(); time.Since(start) < 4*lease; {
			if bs := testutil.Must[[]Batch](t, "Claim")(other.Claim(ctxb, 10, 0)); len(bs) > 0 {
				t.Fatalf("another instance claimed %+v while the send was in flight", bs)
			}
			time.Sleep(10 * time.Millisecond) // pacing the observation, not synchronising
		}
		close(s.release)
		until(t, "the ack", 10*time.Second, func() bool { return stats(t, q).Delivered == 1 })
		if c := s.calls.Load(); c != 1 {
			t.Fatalf("%d sends", c)
		}
	})
}

// TestWorkerStop: on cancel, Run lets a send in flight finish and acks its
// result before returning; a send that outlasts StopTimeout is cancelled
// and its item left leased (not nacked: no retry state, counted
// abandoned), to be delivered by the next worker after the lease.
func TestWorkerStop(t *testing.T) {
	t.Parallel()
	t.Run("in-flight send finishes", func(t *testing.T) {
		t.Parallel()
		q := NewMemory(quiet(Config{}))
		testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, Notification{ID: "n1", UserID: "u", Type: "t"}))
		s := newBlocker()
		ctx, cancel := context.WithCancel(ctxb)
		done := make(chan error, 1)
		go func() { done <- NewWorker(q, s, quietWorker(WorkerConfig{StopTimeout: time.Minute})).Run(ctx) }()
		s.waitEntered(t)
		cancel()
		select {
		case <-done:
			t.Fatal("Run returned with a send in flight")
		default:
		}
		close(s.release)
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return")
		}
		if got := s.ctxErr.Load(); got != "<nil>" {
			t.Fatalf("the send's ctx was %v", got)
		}
		if st := stats(t, q); st.Delivered != 1 || st.Inflight != 0 {
			t.Fatalf("stats after Run returned: %+v", st)
		}
	})
	t.Run("a send past StopTimeout is left leased", func(t *testing.T) {
		t.Parallel()
		q := NewMemory(quiet(Config{Lease: 300 * time.Millisecond}))
		testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, Notification{ID: "n1", UserID: "u", Type: "t"}))
		s := newBlocker()
		ctx, cancel := context.WithCancel(ctxb)
		reg := prometheus.NewRegistry()
		w := NewWorker(q, s, quietWorker(WorkerConfig{StopTimeout: 50 * time.Millisecond, Registerer: reg}))
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		s.waitEntered(t)
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after StopTimeout")
		}
		if st := stats(t, q); st.Inflight != 1 || st.Retrying+st.Dead+st.Delivered != 0 {
			t.Fatalf("stats after Run returned: %+v", st)
		}
		if v := counterValue(t, w.m.WithLabelValues("abandoned")); v != 1 {
			t.Fatalf("abandoned %v", v)
		}
		rec := newRecorder()
		startWorker(t, NewWorker(q, rec, quietWorker(WorkerConfig{})))
		if d := rec.next(t, 10*time.Second); d.n.ID != "n1" || d.n.Attempts != 2 {
			t.Fatalf("redelivered %+v", d.n)
		}
	})
}

// TestWorkerMixedOutcomes: one batch whose items get every outcome: the
// delivered one is acked once; the retried one is sent again (second
// attempt); the permanent one is dead with its error; the paused one is
// sent again after the pause with its attempt unchanged; the one the
// sender gave no result for is retried with ErrSenderResults.
func TestWorkerMixedOutcomes(t *testing.T) {
	t.Parallel()
	q := NewMemory(quiet(Config{BackoffBase: 10 * time.Millisecond, BackoffCap: 20 * time.Millisecond}))
	for _, id := range []string{"ok", "retry", "perm", "pause", "missing"} {
		testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, Notification{ID: id, UserID: "u", Type: "t"}))
	}
	var mu sync.Mutex
	sends := map[string][]int{} // id -> attempts seen
	s := SenderFunc(func(_ context.Context, _ string, items []Notification) []Delivery {
		mu.Lock()
		defer mu.Unlock()
		var out []Delivery
		for _, n := range items {
			sends[n.ID] = append(sends[n.ID], n.Attempts)
			first := len(sends[n.ID]) == 1
			switch {
			case !first:
				out = append(out, Delivered())
			case n.ID == "retry":
				out = append(out, Retry(errors.New("flaky"), 0))
			case n.ID == "perm":
				out = append(out, Permanent(errors.New("refused")))
			case n.ID == "pause":
				out = append(out, Pause(errors.New("slow down"), 100*time.Millisecond))
			case n.ID == "missing":
				return out // no result for it (it is last)
			default:
				out = append(out, Delivered())
			}
		}
		return out
	})
	reg := prometheus.NewRegistry()
	w := NewWorker(q, s, quietWorker(WorkerConfig{Registerer: reg}))
	startWorker(t, w)
	until(t, "every item settled", 10*time.Second, func() bool { st := stats(t, q); return st.Delivered == 4 && st.Dead == 1 })
	mu.Lock()
	defer mu.Unlock()
	want := map[string][]int{"ok": {1}, "retry": {1, 2}, "perm": {1}, "pause": {1, 1}, "missing": {1, 2}}
	for id, at := range want {
		if !slices.Equal(sends[id], at) {
			t.Errorf("%s sent with attempts %v, want %v", id, sends[id], at)
		}
	}
	dead := testutil.Must[[]Notification](t, "ListDead")(q.ListDead(ctxb, 0))
	if len(dead) != 1 || dead[0].ID != "perm" || dead[0].LastError != "refused" {
		t.Fatalf("dead %+v", dead)
	}
	until(t, "the metrics", 5*time.Second, func() bool {
		return counterValue(t, w.m.WithLabelValues("delivered")) == 4 && counterValue(t, w.m.WithLabelValues("retried")) == 2 &&
			counterValue(t, w.m.WithLabelValues("dead")) == 1 && counterValue(t, w.m.WithLabelValues("paused")) == 1
	})
}

// TestLogSender: the development sender logs ids and types, never the
// user id, title, message or data.
func TestLogSender(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	var mu sync.Mutex
	res := LogSender{Logger: slogTo(&buf, &mu)}.Send(ctxb, "patient-secret-id", []Notification{
		{ID: "n1", Type: "lab-result", Title: "HIV test result", Message: "positive", Data: json.RawMessage(`{"dx":"B20"}`)},
	})
	if len(res) != 1 || res[0].Outcome != OutcomeDelivered {
		t.Fatalf("%+v", res)
	}
	mu.Lock()
	defer mu.Unlock()
	out := buf.String()
	for _, want := range []string{`"id":"n1"`, `"type":"lab-result"`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s: %s", want, out)
		}
	}
	for _, secret := range []string{"patient-secret-id", "HIV", "positive", "B20"} {
		if strings.Contains(out, secret) {
			t.Errorf("log contains %q: %s", secret, out)
		}
	}
}

// TestWakePublisherCoalesces: concurrent requests share sends, and every
// request is followed by a send that starts after it (a wake-up is never
// lost to coalescing).
func TestWakePublisherCoalesces(t *testing.T) {
	t.Parallel()
	var w wakePublisher
	var mu sync.Mutex
	var requested, sentFor int64 // the last request's number; the newest request a send started after
	var sends atomic.Int64
	var seq atomic.Int64
	send := func() {
		mu.Lock()
		sentFor = max(sentFor, requested)
		mu.Unlock()
		sends.Add(1)
		time.Sleep(100 * time.Microsecond) // a PUBLISH's round trip
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 500 {
				mu.Lock()
				requested = seq.Add(1)
				mu.Unlock()
				w.request(send)
			}
		})
	}
	wg.Wait()
	until(t, "the sender to finish", 10*time.Second, func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return !w.running
	})
	mu.Lock()
	defer mu.Unlock()
	if sentFor != requested {
		t.Fatalf("the last request (%d) was not followed by a send (the last send followed request %d)", requested, sentFor)
	}
	if n := sends.Load(); n >= 4000 {
		t.Errorf("%d sends for 4000 requests: nothing was coalesced", n)
	}
	t.Logf("4000 requests, %d sends", sends.Load())
}

// TestWorkerPrefetch: while its only sender is busy, a worker keeps
// Prefetch more users claimed, their leases renewed while they wait (for
// two leases here: another instance's Claims find nothing to take), and
// sends them once the sender is free; with Prefetch negative it claims no
// more users than it has free senders, so the other instance can take the
// second user.
func TestWorkerPrefetch(t *testing.T) {
	forEachWorkerEnv(t, func(t *testing.T, e wenv) {
		const lease = 500 * time.Millisecond
		for _, tc := range []struct {
			name     string
			prefetch int
		}{{"default", 0}, {"none", -1}} {
			t.Run(tc.name, func(t *testing.T) {
				q := e.instance(Config{Lease: lease})
				base := stats(t, q) // the subtests share the queue
				testutil.Must[[]Result](t, "EnqueueMany")(q.EnqueueMany(ctxb, []Notification{
					{ID: "n1", UserID: "u1-" + tc.name, Type: "t"}, {ID: "n2", UserID: "u2-" + tc.name, Type: "t"}}))
				s := newBlocker()
				startWorker(t, NewWorker(e.instance(Config{Lease: lease}), s, quietWorker(WorkerConfig{Concurrency: 1, Prefetch: tc.prefetch})))
				s.waitEntered(t)
				other := e.instance(Config{Lease: lease})
				if tc.prefetch < 0 {
					bs := testutil.Must[[]Batch](t, "Claim")(other.Claim(ctxb, 10, 0))
					if len(bs) != 1 {
						t.Fatalf("the other instance claimed %+v, want the second user", bs)
					}
					testutil.Must[int](t, "Ack")(other.Ack(ctxb, bs[0], bs[0].Items[0].ID))
				} else {
					until(t, "the second user claimed", 10*time.Second, func() bool { return stats(t, q).Inflight == base.Inflight+2 })
					for start := time.Now(); time.Since(start) < 2*lease; {
						if bs := testutil.Must[[]Batch](t, "Claim")(other.Claim(ctxb, 10, 0)); len(bs) > 0 {
							t.Fatalf("another instance claimed %+v while it waited for the sender", bs)
						}
						time.Sleep(10 * time.Millisecond) // pacing the observation, not synchronising
					}
				}
				close(s.release)
				until(t, "the acks", 10*time.Second, func() bool { return stats(t, q).Delivered == base.Delivered+2 })
				want := int32(2)
				if tc.prefetch < 0 {
					want = 1
				}
				if c := s.calls.Load(); c != want {
					t.Fatalf("%d sends, want %d", c, want)
				}
			})
		}
	})
}
