package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/clock"
	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/internal/testutil"
)

// The conformance suite: the behaviours of the Queue contract (notify.go),
// run unchanged on the memory backend (on a fake clock), a real redis-server
// and a real 3-node Redis Cluster. Several Queue values over one backend play
// several application instances; on Redis each has its own client.

var ctxb = context.Background()

// env is one test's backend: every Queue it makes shares the same data.
type env struct {
	redis bool
	// queue returns a Queue with cfg (Prefix, Timeout, Logger filled in).
	// Every queue of one env must be given the same cfg.
	queue func(cfg Config) Queue
	// instances returns n queues with cfg, each on its own client.
	instances func(cfg Config, n int) []Queue
	// dump returns the whole stored state of this test, canonically.
	dump func() string
	// now is the backend's clock.
	now func() time.Time
	// after makes the backend's clock pass t: the fake clock is set to it;
	// on Redis it waits (polls) until real time has passed it.
	after func(t time.Time)
}

type target struct {
	name   string
	newEnv func(t *testing.T) env
}

func targets() []target {
	return []target{
		{"memory", memoryEnv},
		{"redis", func(t *testing.T) env { return redisEnv(t, redistest.URL(t)) }},
		{"cluster", func(t *testing.T) env { return redisEnv(t, redistest.ClusterURL(t)) }},
	}
}

// forEach runs f as a parallel subtest on every target.
func forEach(t *testing.T, f func(t *testing.T, e env)) {
	t.Parallel()
	for _, tg := range targets() {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			f(t, tg.newEnv(t))
		})
	}
}

func quiet(cfg Config) Config {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg
}

func memoryEnv(t *testing.T) env {
	clk := clock.NewFake(time.Now().Truncate(time.Millisecond))
	var (
		mu sync.Mutex
		b  *memoryBackend
	)
	mk := func(cfg Config) Queue {
		cfg = quiet(cfg)
		cfg.Now = clk.Now
		mu.Lock()
		defer mu.Unlock()
		if b == nil {
			b = newMemoryBackend(cfg)
		}
		return &queue{cfg: cfg, b: b, m: newMetrics(cfg.Registerer), kind: "memory"}
	}
	return env{
		queue: mk,
		instances: func(cfg Config, n int) []Queue {
			out := make([]Queue, n)
			for i := range out {
				out[i] = mk(cfg)
			}
			return out
		},
		dump: func() string {
			mu.Lock()
			bb := b
			mu.Unlock()
			if bb == nil {
				return ""
			}
			return bb.dump()
		},
		now: clk.Now,
		after: func(at time.Time) {
			if d := at.Sub(clk.Now()); d > 0 {
				clk.Advance(d)
			}
		},
	}
}

// dump is the memory backend's whole state, canonically.
func (m *memoryBackend) dump() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var lines []string
	for name, u := range m.users {
		lines = append(lines, fmt.Sprintf("user %q lease %q %d", name, u.token, u.leaseExp))
		for id, it := range u.items {
			lines = append(lines, fmt.Sprintf("item %q %q %c %d %d %d %d %d %d %q %s", name, id, it.st, it.seq, it.band, it.due, it.sched, it.exp, it.att, it.err, it.n.Data))
		}
	}
	for r, at := range m.dead {
		lines = append(lines, fmt.Sprintf("dead %q %q %d", r.user, r.id, at))
	}
	for r, at := range m.done {
		lines = append(lines, fmt.Sprintf("done %q %q %d", r.user, r.id, at))
	}
	lines = append(lines, fmt.Sprintf("counters %d %d %d", m.seq, m.delivered, m.deadDropped))
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func redisEnv(t *testing.T, url string) env {
	prefix := redistest.Prefix(t)
	client := redistest.Client(t, url)
	prep := func(cfg Config) Config {
		cfg.Prefix = prefix
		if cfg.Timeout == 0 {
			// Generous: a conformance result must come from Redis, not
			// from a timeout on a loaded CI machine.
			cfg.Timeout = 10 * time.Second
		}
		return quiet(cfg)
	}
	return env{
		redis: true,
		queue: func(cfg Config) Queue { return NewRedis(client, prep(cfg)) },
		instances: func(cfg Config, n int) []Queue {
			out := make([]Queue, n)
			for i := range out {
				out[i] = NewRedis(redistest.Client(t, url), prep(cfg))
			}
			return out
		},
		dump: func() string { return redisDump(t, client, prefix) },
		now:  time.Now,
		after: func(at time.Time) {
			deadline := time.Now().Add(30 * time.Second)
			for !time.Now().After(at) {
				if time.Now().After(deadline) {
					t.Fatalf("the clock did not pass %v", at)
				}
				time.Sleep(time.Until(at) + time.Millisecond)
			}
		},
	}
}

// redisKeys returns every key under prefix, on every node.
func redisKeys(t *testing.T, client rueidis.Client, prefix string) []string {
	t.Helper()
	var out []string
	for _, node := range client.Nodes() {
		var cursor uint64
		for {
			e, err := node.Do(ctxb, node.B().Scan().Cursor(cursor).Match(prefix+"*").Count(1000).Build()).AsScanEntry()
			if err != nil {
				t.Fatalf("SCAN: %v", err)
			}
			out = append(out, e.Elements...)
			if cursor = e.Cursor; cursor == 0 {
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// redisDump returns every key under prefix with its contents, canonically.
func redisDump(t *testing.T, client rueidis.Client, prefix string) string {
	t.Helper()
	var lines []string
	for _, k := range redisKeys(t, client, prefix) {
		typ, err := client.Do(ctxb, client.B().Type().Key(k).Build()).ToString()
		if err != nil {
			t.Fatalf("TYPE: %v", err)
		}
		switch typ {
		case "hash":
			m, err := client.Do(ctxb, client.B().Hgetall().Key(k).Build()).AsStrMap()
			if err != nil {
				t.Fatalf("HGETALL: %v", err)
			}
			for f, v := range m {
				lines = append(lines, k+" "+f+"="+v)
			}
		case "zset":
			m, err := client.Do(ctxb, client.B().Zrange().Key(k).Min("0").Max("-1").Withscores().Build()).AsZScores()
			if err != nil {
				t.Fatalf("ZRANGE: %v", err)
			}
			for _, z := range m {
				lines = append(lines, fmt.Sprintf("%s %s=%v", k, z.Member, z.Score))
			}
		case "string":
			v, err := client.Do(ctxb, client.B().Get().Key(k).Build()).ToString()
			if err != nil {
				t.Fatalf("GET: %v", err)
			}
			lines = append(lines, k+" = "+v)
		default:
			lines = append(lines, k+" type "+typ)
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func note(user, id string) Notification {
	return Notification{ID: id, UserID: user, Type: "reminder", Title: "Your session", Message: "starts soon", Data: json.RawMessage(`{"n":1}`)}
}

func ids(ns []Notification) []string {
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = n.ID
	}
	return out
}

// claimUser claims until a batch of user comes back (on Redis, polling with
// a deadline: real leases expire in real time).
func claimUser(t *testing.T, e env, q Queue, user string, perUser int) Batch {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, b := range testutil.Must[[]Batch](t, "Claim")(q.Claim(ctxb, 100, perUser)) {
			if b.UserID == user {
				return b
			}
			t.Fatalf("Claim returned user %q, want only %q", b.UserID, user)
		}
		if !e.redis || time.Now().After(deadline) {
			t.Fatalf("Claim did not return user %q", user)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestConcurrentEnqueue is acceptance item 1: 1000 concurrent enqueues for
// one user from 4 clients, every id sent twice from two different clients:
// all 1000 present, none duplicated, each id created exactly once.
func TestConcurrentEnqueue(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		qs := e.instances(Config{}, 4)
		const n = 1000
		var created atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, 2*n)
		start := time.Now()
		for i := range 2 * n {
			wg.Go(func() {
				id := fmt.Sprintf("n-%04d", i%n)
				r, err := qs[i%4].Enqueue(ctxb, note("patient-1", id))
				if err != nil {
					errs <- err
					return
				}
				if r.ID != id || (r.State != StatePending && r.State != StateInflight) {
					errs <- fmt.Errorf("result %+v for %s", r, id)
				}
				if r.Created {
					created.Add(1)
				}
			})
		}
		wg.Wait()
		el := time.Since(start)
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		t.Logf("%d concurrent enqueues (%d distinct) from 4 clients in %v: %.0f/s", 2*n, n, el, float64(2*n)/el.Seconds())
		if c := created.Load(); c != n {
			t.Fatalf("%d enqueues created, want %d (each id exactly once)", c, n)
		}
		got := testutil.Must[[]Notification](t, "Pending")(qs[0].Pending(ctxb, "patient-1", MaxPendingLimit))
		seen := map[string]bool{}
		for _, x := range got {
			if seen[x.ID] {
				t.Fatalf("id %s twice in Pending", x.ID)
			}
			seen[x.ID] = true
		}
		if len(seen) != n {
			t.Fatalf("Pending returned %d distinct ids, want %d", len(seen), n)
		}
		st := testutil.Must[Stats](t, "Stats")(qs[1].Stats(ctxb))
		if st.Pending != n || st.Scheduled+st.Inflight+st.Retrying+st.Dead != 0 {
			t.Fatalf("Stats %+v, want %d pending and nothing else", st, n)
		}
		// Claiming them all, in batches, gives each id once.
		claimed := map[string]bool{}
		q := qs[2]
		for len(claimed) < n {
			b := claimUser(t, e, q, "patient-1", MaxPerUser)
			for _, it := range b.Items {
				if claimed[it.ID] {
					t.Fatalf("id %s claimed twice", it.ID)
				}
				claimed[it.ID] = true
			}
			if k := testutil.Must[int](t, "Ack")(q.Ack(ctxb, b, ids(b.Items)...)); k != len(b.Items) {
				t.Fatalf("Ack acked %d of %d", k, len(b.Items))
			}
		}
		st = testutil.Must[Stats](t, "Stats")(q.Stats(ctxb))
		if st.Delivered != n || st.Pending != 0 || st.Inflight != 0 {
			t.Fatalf("Stats after acking all %+v, want %d delivered, nothing else", st, n)
		}
	})
}

// TestIdempotentEnqueue: the same id again is stored once, in every state,
// and also after delivery (within the delivered record); another user may
// use the same id.
func TestIdempotentEnqueue(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		q := e.queue(Config{})
		r := testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, note("u", "a")))
		if !r.Created || r.State != StatePending || r.ID != "a" {
			t.Fatalf("first Enqueue %+v", r)
		}
		changed := note("u", "a")
		changed.Title = "something else"
		before := e.dump()
		r = testutil.Must[Result](t, "Enqueue again")(q.Enqueue(ctxb, changed))
		if r.Created || r.State != StatePending {
			t.Fatalf("second Enqueue %+v, want not created, pending", r)
		}
		if after := e.dump(); after != before {
			t.Fatalf("a duplicate enqueue wrote:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		if r := testutil.Must[Result](t, "other user")(q.Enqueue(ctxb, note("v", "a"))); !r.Created {
			t.Fatal("the same id for another user was not created")
		}
		b := claimUser(t, e, q, "u", 5)
		if r := testutil.Must[Result](t, "Enqueue inflight")(q.Enqueue(ctxb, note("u", "a"))); r.Created || r.State != StateInflight {
			t.Fatalf("Enqueue of a leased id %+v, want not created, inflight", r)
		}
		testutil.Must[int](t, "Ack")(q.Ack(ctxb, b, "a"))
		if r := testutil.Must[Result](t, "Enqueue delivered")(q.Enqueue(ctxb, note("u", "a"))); r.Created || r.State != StateDelivered {
			t.Fatalf("Enqueue of a delivered id %+v, want not created, delivered", r)
		}
		// A generated id is random.
		r1 := testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, note("u", "")))
		r2 := testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, note("u", "")))
		if r1.ID == "" || r1.ID == r2.ID || !r1.Created || !r2.Created {
			t.Fatalf("generated ids %+v %+v", r1, r2)
		}
	})
}

// TestEnqueueMany: many users in one pipelined call, duplicates within the
// call stored once, an invalid item rejected alone.
func TestEnqueueMany(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		q := e.queue(Config{})
		var ns []Notification
		for u := range 30 {
			for i := range 10 {
				ns = append(ns, note(fmt.Sprintf("user-%d", u), fmt.Sprintf("id-%d", i)))
			}
		}
		ns = append(ns, note("user-0", "id-0"), Notification{UserID: "", Type: "x"})
		start := time.Now()
		res := testutil.Must[[]Result](t, "EnqueueMany")(q.EnqueueMany(ctxb, ns))
		t.Logf("EnqueueMany of %d in %v", len(ns), time.Since(start))
		for i, r := range res[:300] {
			if r.Err != nil || !r.Created || r.ID != ns[i].ID {
				t.Fatalf("result %d: %+v", i, r)
			}
		}
		if r := res[300]; r.Err != nil || r.Created {
			t.Fatalf("duplicate in the call: %+v, want not created", r)
		}
		testutil.WantErr(t, "invalid item", res[301].Err, ErrInvalidArgument)
		for u := range 30 {
			got := testutil.Must[[]Notification](t, "Pending")(q.Pending(ctxb, fmt.Sprintf("user-%d", u), 100))
			if len(got) != 10 {
				t.Fatalf("user-%d has %d pending, want 10", u, len(got))
			}
		}
		if st := testutil.Must[Stats](t, "Stats")(q.Stats(ctxb)); st.Pending != 300 {
			t.Fatalf("Stats %+v, want 300 pending", st)
		}
		// The same id twice in a call of one user (one script call on
		// Redis): stored once, the repeat reads the first's state.
		twice := testutil.Must[[]Result](t, "EnqueueMany twice")(q.EnqueueMany(ctxb, []Notification{note("solo", "x"), note("solo", "y"), note("solo", "x")}))
		if !twice[0].Created || !twice[1].Created || twice[2].Created || twice[2].State != twice[0].State || twice[2].Err != nil {
			t.Fatalf("same id twice in one call: %+v", twice)
		}
		if got := testutil.Must[[]Notification](t, "Pending")(q.Pending(ctxb, "solo", 10)); len(got) != 2 {
			t.Fatalf("solo has %d pending, want 2", len(got))
		}
	})
}

// TestOrder is acceptance item 5: high before normal before low; oldest
// (by due time) first within a priority, for Pending and Claim alike.
func TestOrder(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		q := e.queue(Config{})
		now := e.now()
		add := func(id string, p Priority, sched time.Time) {
			n := note("u", id)
			n.Priority, n.ScheduledFor = p, sched
			testutil.Must[Result](t, "Enqueue "+id)(q.Enqueue(ctxb, n))
		}
		add("low-1", PriorityLow, time.Time{})
		add("normal-1", PriorityNormal, time.Time{})
		add("high-1", PriorityHigh, time.Time{})
		add("low-2", PriorityLow, time.Time{})
		add("normal-2", PriorityNormal, time.Time{})
		add("high-2", PriorityHigh, time.Time{})
		add("normal-0", PriorityNormal, now.Add(-time.Hour)) // older: due an hour ago
		add("high-later", PriorityHigh, now.Add(time.Hour))  // not due
		want := []string{"high-1", "high-2", "normal-0", "normal-1", "normal-2", "low-1", "low-2"}
		got := ids(testutil.Must[[]Notification](t, "Pending")(q.Pending(ctxb, "u", 100)))
		if !slices.Equal(got, want) {
			t.Fatalf("Pending order %v, want %v", got, want)
		}
		if got := ids(testutil.Must[[]Notification](t, "Pending")(q.Pending(ctxb, "u", 3))); !slices.Equal(got, want[:3]) {
			t.Fatalf("Pending limit 3: %v, want %v", got, want[:3])
		}
		var claimed []string
		for len(claimed) < len(want) {
			b := claimUser(t, e, q, "u", 2)
			claimed = append(claimed, ids(b.Items)...)
			testutil.Must[int](t, "Ack")(q.Ack(ctxb, b, ids(b.Items)...))
		}
		if !slices.Equal(claimed, want) {
			t.Fatalf("Claim order %v, want %v", claimed, want)
		}
		for _, b := range testutil.Must[[]Batch](t, "Claim")(q.Claim(ctxb, 10, 10)) {
			t.Fatalf("Claim returned %v; high-later is not due", ids(b.Items))
		}
	})
}

// TestLeaseLost is acceptance item 3: a claim whose lease expired and was
// taken over by another claimer: its Ack, Nack and Extend return
// ErrLeaseLost and write nothing; the new holder's work counts.
func TestLeaseLost(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		cfg := Config{Lease: 300 * time.Millisecond}
		qs := e.instances(cfg, 2)
		a, b := qs[0], qs[1]
		for i := range 3 {
			testutil.Must[Result](t, "Enqueue")(a.Enqueue(ctxb, note("u", fmt.Sprint(i))))
		}
		ba := claimUser(t, e, a, "u", 5)
		if len(ba.Items) != 3 || ba.Items[0].Attempts != 1 || ba.Items[0].State != StateInflight {
			t.Fatalf("first claim %+v", ba)
		}
		// While the lease is live nobody else gets the user.
		var bb Batch
		if bs := testutil.Must[[]Batch](t, "Claim")(b.Claim(ctxb, 10, 5)); len(bs) != 0 {
			if time.Now().Before(ba.ExpiresAt) {
				t.Fatalf("a second claimer got %+v during a live lease", bs)
			}
			bb = bs[0] // a slow machine: the lease had expired already
		} else {
			e.after(ba.ExpiresAt)
			bb = claimUser(t, e, b, "u", 5)
		}
		if bb.Token == ba.Token || len(bb.Items) != 3 || bb.Items[0].Attempts != 2 {
			t.Fatalf("takeover claim %+v", bb)
		}
		before := e.dump()
		_, err := a.Ack(ctxb, ba, ids(ba.Items)...)
		testutil.WantErr(t, "stale Ack", err, ErrLeaseLost)
		_, err = a.Nack(ctxb, ba, Failure{ID: "0", Err: errors.New("boom")}, Failure{ID: "1", Permanent: true})
		testutil.WantErr(t, "stale Nack", err, ErrLeaseLost)
		err = a.Extend(ctxb, &ba)
		testutil.WantErr(t, "stale Extend", err, ErrLeaseLost)
		if after := e.dump(); after != before {
			t.Fatalf("a stale holder wrote:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		if n := testutil.Must[int](t, "Ack")(b.Ack(ctxb, bb, ids(bb.Items)...)); n != 3 {
			t.Fatalf("new holder acked %d, want 3", n)
		}
		if st := testutil.Must[Stats](t, "Stats")(a.Stats(ctxb)); st.Delivered != 3 || st.Inflight != 0 || st.Pending != 0 {
			t.Fatalf("Stats %+v, want 3 delivered", st)
		}
		// The finished lease is gone too.
		_, err = b.Ack(ctxb, bb, "0")
		testutil.WantErr(t, "Ack of a finished batch", err, ErrLeaseLost)
	})
}

// TestOneLeasePerUser: many concurrent claimers on several instances get
// one batch of the user between them; the user's other items wait for the
// lease to end, and are due at once when it does.
func TestOneLeasePerUser(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		qs := e.instances(Config{}, 4)
		for i := range 12 {
			testutil.Must[Result](t, "Enqueue")(qs[0].Enqueue(ctxb, note("u", fmt.Sprintf("%02d", i))))
		}
		var mu sync.Mutex
		var got []Batch
		var wg sync.WaitGroup
		for i := range 16 {
			wg.Go(func() {
				bs, err := qs[i%4].Claim(ctxb, 10, 5)
				if err != nil {
					t.Error(err)
				}
				mu.Lock()
				got = append(got, bs...)
				mu.Unlock()
			})
		}
		wg.Wait()
		if len(got) != 1 || len(got[0].Items) != 5 {
			t.Fatalf("16 concurrent claims got %d batches (%+v), want one of 5 items", len(got), got)
		}
		// Enqueueing for a leased user does not make it due.
		testutil.Must[Result](t, "Enqueue")(qs[1].Enqueue(ctxb, note("u", "new")))
		if bs := testutil.Must[[]Batch](t, "Claim")(qs[2].Claim(ctxb, 10, 5)); len(bs) != 0 {
			t.Fatalf("Claim during a lease got %v", ids(bs[0].Items))
		}
		testutil.Must[int](t, "Ack")(qs[0].Ack(ctxb, got[0], ids(got[0].Items)...))
		b := testutil.Must[[]Batch](t, "Claim")(qs[3].Claim(ctxb, 10, 5))
		if len(b) != 1 || !slices.Equal(ids(b[0].Items), []string{"05", "06", "07", "08", "09"}) {
			t.Fatalf("claim after the ack: %+v", b)
		}
	})
}

// TestNackRetryDead: a Nack retries after the backoff (here RetryAfter),
// a Permanent failure and the last attempt go to the dead set with the
// error, RequeueDead puts one back with its attempts reset.
func TestNackRetryDead(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		q := e.queue(Config{})
		for _, id := range []string{"ok", "retry", "perm"} {
			testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, note("u", id)))
		}
		last := note("u", "last")
		last.MaxAttempts = 1
		testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, last))
		b := claimUser(t, e, q, "u", 10)
		if len(b.Items) != 4 {
			t.Fatalf("claimed %v", ids(b.Items))
		}
		if n := testutil.Must[int](t, "Ack")(q.Ack(ctxb, b, "ok", "unknown")); n != 1 {
			t.Fatalf("Ack of one known id acked %d", n)
		}
		n := testutil.Must[int](t, "Nack")(q.Nack(ctxb, b,
			Failure{ID: "retry", Err: errors.New("novu 503"), RetryAfter: time.Hour},
			Failure{ID: "perm", Err: errors.New("novu 422"), Permanent: true},
			Failure{ID: "last", Err: errors.New("novu 500")},
		))
		if n != 3 {
			t.Fatalf("Nack moved %d, want 3", n)
		}
		st := testutil.Must[Stats](t, "Stats")(q.Stats(ctxb))
		if st != (Stats{Retrying: 1, Dead: 2, Delivered: 1}) {
			t.Fatalf("Stats %+v, want 1 retrying, 2 dead, 1 delivered", st)
		}
		// The batch is finished: the lease ended with its last item.
		_, err := q.Ack(ctxb, b, "ok")
		testutil.WantErr(t, "Ack after the batch ended", err, ErrLeaseLost)
		dead := testutil.Must[[]Notification](t, "ListDead")(q.ListDead(ctxb, 10))
		errOf := map[string]string{}
		for _, d := range dead {
			if d.State != StateDead || d.UserID != "u" || d.Type != "reminder" || string(d.Data) != `{"n":1}` {
				t.Fatalf("dead item %+v", d)
			}
			errOf[d.ID] = d.LastError
		}
		if len(dead) != 2 || errOf["perm"] != "novu 422" || errOf["last"] != "novu 500" {
			t.Fatalf("ListDead %+v", dead)
		}
		if bs := testutil.Must[[]Batch](t, "Claim")(q.Claim(ctxb, 10, 10)); len(bs) != 0 {
			t.Fatalf("Claim got %v before the retry is due", ids(bs[0].Items))
		}
		testutil.WantErr(t, "RequeueDead of a retrying item", q.RequeueDead(ctxb, "u", "retry"), ErrNotFound)
		testutil.Must[struct{}](t, "RequeueDead")(struct{}{}, q.RequeueDead(ctxb, "u", "perm"))
		b = claimUser(t, e, q, "u", 10)
		if len(b.Items) != 1 || b.Items[0].ID != "perm" || b.Items[0].Attempts != 1 {
			t.Fatalf("claim after requeue: %+v", b.Items)
		}
		testutil.Must[int](t, "Ack")(q.Ack(ctxb, b, "perm"))
		if e.redis {
			return // a real hour is too long; memory checks the retry fires
		}
		e.after(e.now().Add(time.Hour + time.Second))
		b = claimUser(t, e, q, "u", 10)
		if len(b.Items) != 1 || b.Items[0].ID != "retry" || b.Items[0].Attempts != 2 || b.Items[0].LastError != "novu 503" {
			t.Fatalf("retry claim %+v", b.Items)
		}
	})
}

// TestRetryBackoff: a Nack without RetryAfter becomes due again within the
// configured backoff (base 100ms: at most 100ms for a first attempt).
func TestRetryBackoff(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		q := e.queue(Config{BackoffBase: 100 * time.Millisecond, BackoffCap: 100 * time.Millisecond})
		testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, note("u", "x")))
		b := claimUser(t, e, q, "u", 1)
		testutil.Must[int](t, "Nack")(q.Nack(ctxb, b, Failure{ID: "x", Err: errors.New("timeout")}))
		e.after(e.now().Add(101 * time.Millisecond))
		b = claimUser(t, e, q, "u", 1)
		if b.Items[0].Attempts != 2 || b.Items[0].LastError != "timeout" {
			t.Fatalf("retried item %+v", b.Items[0])
		}
	})
}

// TestExpired: an item past ExpiresAt goes to the dead set with reason
// "expired" at claim time instead of being delivered; Pending hides it.
func TestExpired(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		q := e.queue(Config{})
		now := e.now()
		n := note("u", "reminder")
		// Far enough ahead that "fresh" is claimed and acked before it is
		// due, even on a loaded machine.
		n.ScheduledFor = now.Add(time.Second)
		n.ExpiresAt = now.Add(1100 * time.Millisecond)
		testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, n))
		testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, note("u", "fresh")))
		b := claimUser(t, e, q, "u", 5)
		if !slices.Equal(ids(b.Items), []string{"fresh"}) {
			t.Fatalf("claimed %v", ids(b.Items))
		}
		testutil.Must[int](t, "Ack")(q.Ack(ctxb, b, "fresh"))
		e.after(n.ExpiresAt)
		if bs := testutil.Must[[]Batch](t, "Claim")(q.Claim(ctxb, 10, 5)); len(bs) != 0 {
			t.Fatalf("Claim got expired %v", ids(bs[0].Items))
		}
		dead := testutil.Must[[]Notification](t, "ListDead")(q.ListDead(ctxb, 10))
		if len(dead) != 1 || dead[0].ID != "reminder" || dead[0].LastError != ReasonExpired || dead[0].Attempts != 0 {
			t.Fatalf("ListDead %+v, want the reminder, expired", dead)
		}
		if st := testutil.Must[Stats](t, "Stats")(q.Stats(ctxb)); st != (Stats{Dead: 1, Delivered: 1}) {
			t.Fatalf("Stats %+v, want 1 dead, 1 delivered", st)
		}
	})
}

// TestPendingExpires: for apps that only use Pending and Remove, an
// expired item is not returned and goes to the dead set ("expired"), so
// nothing expired piles up unseen; the others are returned in order.
func TestPendingExpires(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		q := e.queue(Config{})
		now := e.now()
		for i, id := range []string{"a", "b", "c"} {
			n := note("u", id)
			n.ScheduledFor = now.Add(-time.Duration(3-i) * time.Minute) // a oldest
			if id == "b" {
				n.ExpiresAt = now.Add(300 * time.Millisecond)
			}
			testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, n))
		}
		e.after(now.Add(300 * time.Millisecond))
		if got := ids(testutil.Must[[]Notification](t, "Pending")(q.Pending(ctxb, "u", 2))); !slices.Equal(got, []string{"a", "c"}) {
			t.Fatalf("Pending %v, want [a c]", got)
		}
		if st := testutil.Must[Stats](t, "Stats")(q.Stats(ctxb)); st != (Stats{Pending: 2, Dead: 1}) {
			t.Fatalf("Stats %+v, want 2 pending, 1 dead", st)
		}
		dead := testutil.Must[[]Notification](t, "ListDead")(q.ListDead(ctxb, 10))
		if len(dead) != 1 || dead[0].ID != "b" || dead[0].LastError != ReasonExpired {
			t.Fatalf("ListDead %+v", dead)
		}
		// The user's due score is still right: a claim gets the rest.
		b := claimUser(t, e, q, "u", 5)
		if !slices.Equal(ids(b.Items), []string{"a", "c"}) {
			t.Fatalf("Claim %v", ids(b.Items))
		}
	})
}

// TestScheduledWeekAhead: a notification scheduled 7 days ahead stays
// scheduled (not pending, not claimable) and can be cancelled.
// (memory_test.go checks that it becomes due after 7 days; redis_test.go
// that no key has a TTL.)
func TestScheduledWeekAhead(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		q := e.queue(Config{})
		n := note("u", "in-a-week")
		n.ScheduledFor = e.now().Add(7 * 24 * time.Hour)
		if r := testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, n)); r.State != StateScheduled {
			t.Fatalf("state %s, want scheduled", r.State)
		}
		if st := testutil.Must[Stats](t, "Stats")(q.Stats(ctxb)); st != (Stats{Scheduled: 1}) {
			t.Fatalf("Stats %+v, want 1 scheduled", st)
		}
		if got := testutil.Must[[]Notification](t, "Pending")(q.Pending(ctxb, "u", 10)); len(got) != 0 {
			t.Fatalf("Pending %v", ids(got))
		}
		if bs := testutil.Must[[]Batch](t, "Claim")(q.Claim(ctxb, 10, 5)); len(bs) != 0 {
			t.Fatalf("Claim %v", bs)
		}
		testutil.Must[struct{}](t, "Cancel")(struct{}{}, q.Cancel(ctxb, "u", "in-a-week"))
		testutil.WantErr(t, "second Cancel", q.Cancel(ctxb, "u", "in-a-week"), ErrNotFound)
		if st := testutil.Must[Stats](t, "Stats")(q.Stats(ctxb)); st != (Stats{}) {
			t.Fatalf("Stats after Cancel %+v, want zero", st)
		}
	})
}

// TestCancelStates: Cancel works on queued, leased and dead items; a
// cancelled leased item is not acked.
func TestCancelStates(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		q := e.queue(Config{})
		for _, id := range []string{"a", "b", "c"} {
			testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, note("u", id)))
		}
		b := claimUser(t, e, q, "u", 2) // a, b leased
		testutil.Must[int](t, "Nack")(q.Nack(ctxb, b, Failure{ID: "b", Permanent: true}))
		for _, id := range []string{"a", "b", "c"} {
			testutil.Must[struct{}](t, "Cancel "+id)(struct{}{}, q.Cancel(ctxb, "u", id))
		}
		if n := testutil.Must[int](t, "Ack")(q.Ack(ctxb, b, "a")); n != 0 {
			t.Fatalf("Ack of a cancelled item acked %d", n)
		}
		if st := testutil.Must[Stats](t, "Stats")(q.Stats(ctxb)); st != (Stats{}) {
			t.Fatalf("Stats %+v, want zero", st)
		}
		if d := e.dump(); strings.Contains(d, `"a"`) || strings.Contains(d, "u:a") {
			t.Fatalf("cancelled items left traces:\n%s", d)
		}
	})
}

// TestRemove is the original API: Pending, then Remove what was sent.
func TestRemove(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		q := e.queue(Config{})
		for _, id := range []string{"a", "b", "c"} {
			testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, note("u", id)))
		}
		got := testutil.Must[[]Notification](t, "Pending")(q.Pending(ctxb, "u", 2))
		if n := testutil.Must[int](t, "Remove")(q.Remove(ctxb, "u", append(ids(got), "missing")...)); n != 2 {
			t.Fatalf("Remove removed %d, want 2", n)
		}
		if got := ids(testutil.Must[[]Notification](t, "Pending")(q.Pending(ctxb, "u", 10))); !slices.Equal(got, []string{"c"}) {
			t.Fatalf("Pending after Remove %v", got)
		}
		if st := testutil.Must[Stats](t, "Stats")(q.Stats(ctxb)); st != (Stats{Pending: 1, Delivered: 2}) {
			t.Fatalf("Stats %+v", st)
		}
		if r := testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, note("u", "a"))); r.Created || r.State != StateDelivered {
			t.Fatalf("re-Enqueue of a removed id %+v", r)
		}
	})
}

// TestExtend: Extend renews the lease from now; after a takeover it is lost.
func TestExtend(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		q := e.queue(Config{Lease: 300 * time.Millisecond})
		testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, note("u", "a")))
		b := claimUser(t, e, q, "u", 1)
		first := b.ExpiresAt
		e.after(e.now().Add(100 * time.Millisecond))
		testutil.Must[struct{}](t, "Extend")(struct{}{}, q.Extend(ctxb, &b))
		if !b.ExpiresAt.After(first) {
			t.Fatalf("Extend: expiry %v, was %v", b.ExpiresAt, first)
		}
		if bs := testutil.Must[[]Batch](t, "Claim")(q.Claim(ctxb, 10, 1)); len(bs) != 0 {
			if time.Now().Before(b.ExpiresAt) {
				t.Fatal("claimed during an extended lease")
			}
			return // a slow machine: the extended lease had expired already
		}
		testutil.Must[int](t, "Ack")(q.Ack(ctxb, b, "a"))
	})
}

// TestDeadCap: the dead set keeps the newest DeadCap items; the dropped
// ones leave no record behind.
func TestDeadCap(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		q := e.queue(Config{DeadCap: 3, Shards: 1})
		for i := range 5 {
			testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, note("u", fmt.Sprint(i))))
		}
		b := claimUser(t, e, q, "u", 5)
		for _, it := range b.Items {
			e.after(e.now().Add(2 * time.Millisecond)) // distinct times of death
			testutil.Must[int](t, "Nack")(q.Nack(ctxb, b, Failure{ID: it.ID, Permanent: true, Err: errors.New("bad")}))
		}
		st := testutil.Must[Stats](t, "Stats")(q.Stats(ctxb))
		if st != (Stats{Dead: 3, DeadDropped: 2}) {
			t.Fatalf("Stats %+v, want 3 dead, 2 dropped", st)
		}
		if got := ids(testutil.Must[[]Notification](t, "ListDead")(q.ListDead(ctxb, 10))); !slices.Equal(got, []string{"4", "3", "2"}) {
			t.Fatalf("ListDead %v, want the newest three", got)
		}
		d := e.dump()
		for _, gone := range []string{`u:0`, `u:1`, `"0"`, `"1"`} {
			if strings.Contains(d, gone) {
				t.Fatalf("a dropped dead item left %s behind:\n%s", gone, d)
			}
		}
	})
}

// TestBadInput: invalid arguments return ErrInvalidArgument and write
// nothing.
func TestBadInput(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		q := e.queue(Config{})
		testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, note("u", "seed")))
		now := e.now()
		with := func(f func(n *Notification)) Notification {
			n := note("u", "x")
			f(&n)
			return n
		}
		enq := func(n Notification) func() error {
			return func() error { _, err := q.Enqueue(ctxb, n); return err }
		}
		cases := []struct {
			name string
			call func() error
		}{
			{"empty user", enq(with(func(n *Notification) { n.UserID = "" }))},
			{"long user", enq(with(func(n *Notification) { n.UserID = strings.Repeat("u", MaxUserIDLen+1) }))},
			{"non-UTF-8 user", enq(with(func(n *Notification) { n.UserID = "\xff" }))},
			{"long id", enq(with(func(n *Notification) { n.ID = strings.Repeat("i", MaxIDLen+1) }))},
			{"empty type", enq(with(func(n *Notification) { n.Type = "" }))},
			{"bad priority", enq(with(func(n *Notification) { n.Priority = 7 }))},
			{"negative priority", enq(with(func(n *Notification) { n.Priority = -1 }))},
			{"expires before scheduled", enq(with(func(n *Notification) {
				n.ScheduledFor, n.ExpiresAt = now.Add(time.Hour), now.Add(time.Minute)
			}))},
			{"expires at scheduled", enq(with(func(n *Notification) { n.ScheduledFor, n.ExpiresAt = now.Add(time.Hour), now.Add(time.Hour) }))},
			{"expired already", enq(with(func(n *Notification) { n.ExpiresAt = time.Now().Add(-time.Second) }))},
			{"scheduled too late", enq(with(func(n *Notification) { n.ScheduledFor = time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC) }))},
			{"too large data", enq(with(func(n *Notification) {
				n.Data = json.RawMessage(`"` + strings.Repeat("x", MaxPayloadSize) + `"`)
			}))},
			{"invalid JSON data", enq(with(func(n *Notification) { n.Data = json.RawMessage(`{`) }))},
			{"MaxAttempts negative", enq(with(func(n *Notification) { n.MaxAttempts = -1 }))},
			{"MaxAttempts too large", enq(with(func(n *Notification) { n.MaxAttempts = MaxAttemptsLimit + 1 }))},
			{"EnqueueMany too many", func() error { _, err := q.EnqueueMany(ctxb, make([]Notification, MaxBatch+1)); return err }},
			{"Pending empty user", func() error { _, err := q.Pending(ctxb, "", 1); return err }},
			{"Pending limit", func() error { _, err := q.Pending(ctxb, "u", MaxPendingLimit+1); return err }},
			{"Remove empty id", func() error { _, err := q.Remove(ctxb, "u", "seed", ""); return err }},
			{"Cancel empty user", func() error { return q.Cancel(ctxb, "", "seed") }},
			{"Cancel empty id", func() error { return q.Cancel(ctxb, "u", "") }},
			{"RequeueDead empty id", func() error { return q.RequeueDead(ctxb, "u", "") }},
			{"ListDead limit", func() error { _, err := q.ListDead(ctxb, -1); return err }},
			{"Claim negative", func() error { _, err := q.Claim(ctxb, -1, 1); return err }},
			{"Claim perUser", func() error { _, err := q.Claim(ctxb, 1, MaxPerUser+1); return err }},
			{"Ack no token", func() error { _, err := q.Ack(ctxb, Batch{UserID: "u"}, "seed"); return err }},
			{"Nack negative RetryAfter", func() error {
				_, err := q.Nack(ctxb, Batch{UserID: "u", Token: "t"}, Failure{ID: "seed", RetryAfter: -1})
				return err
			}},
			{"Extend nil", func() error { return q.Extend(ctxb, nil) }},
		}
		before := e.dump()
		for _, c := range cases {
			testutil.WantErr(t, c.name, c.call(), ErrInvalidArgument)
		}
		if after := e.dump(); after != before {
			t.Fatalf("bad input wrote:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	})
}

func TestParsePriority(t *testing.T) {
	for s, want := range map[string]Priority{"high": PriorityHigh, "normal": PriorityNormal, "": PriorityNormal, "low": PriorityLow} {
		if p, err := ParsePriority(s); err != nil || p != want || (s != "" && p.String() != s) {
			t.Errorf("ParsePriority(%q) = %v, %v", s, p, err)
		}
	}
	if _, err := ParsePriority("urgent"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("ParsePriority(urgent): %v", err)
	}
}

func TestBackoff(t *testing.T) {
	base, limit := time.Second, 10*time.Second
	top := func(n int64) int64 { return n - 1 }
	for attempts, want := range map[int]time.Duration{0: time.Second, 1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 5: 10 * time.Second, 60: 10 * time.Second} {
		if got := backoff(base, limit, attempts, top); got != want {
			t.Errorf("backoff ceiling after %d attempts = %v, want %v", attempts, got, want)
		}
	}
	if got := backoff(base, limit, 3, func(int64) int64 { return 0 }); got != 0 {
		t.Errorf("full jitter floor = %v, want 0", got)
	}
}

// TestConcurrentWorkers: 8 workers on 4 instances claim, ack and nack
// concurrently while more is enqueued; no item is in two live batches at
// once, and in the end every item is delivered exactly once.
func TestConcurrentWorkers(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		// A long lease: on memory idle workers move the fake clock on (so
		// that retries become due), and no lease may expire on the way.
		qs := e.instances(Config{BackoffBase: time.Millisecond, BackoffCap: time.Millisecond, Lease: 24 * time.Hour}, 4)
		const users, perUser = 20, 10
		var ns []Notification
		for u := range users {
			for i := range perUser {
				ns = append(ns, note(fmt.Sprintf("user-%d", u), fmt.Sprint(i)))
			}
		}
		testutil.Must[[]Result](t, "EnqueueMany")(qs[0].EnqueueMany(ctxb, ns[:len(ns)/2]))
		var (
			mu      sync.Mutex
			holding = map[string]bool{} // user/id in a live batch
			acked   = map[string]int{}
			wg      sync.WaitGroup
			failed  atomic.Bool
		)
		wg.Go(func() {
			if _, err := qs[1].EnqueueMany(ctxb, ns[len(ns)/2:]); err != nil {
				t.Error(err)
			}
		})
		deadline := time.Now().Add(20 * time.Second)
		for w := range 8 {
			wg.Go(func() {
				q := qs[w%4]
				for !failed.Load() {
					mu.Lock()
					n := len(acked)
					mu.Unlock()
					if n == len(ns) || time.Now().After(deadline) {
						return
					}
					bs, err := q.Claim(ctxb, 3, 3)
					if err != nil {
						t.Error(err)
						failed.Store(true)
						return
					}
					if len(bs) == 0 && !e.redis {
						e.after(e.now().Add(2 * time.Millisecond)) // retries become due
					}
					for _, b := range bs {
						mu.Lock()
						for _, it := range b.Items {
							k := b.UserID + "/" + it.ID
							if holding[k] {
								t.Errorf("%s is in two live batches", k)
								failed.Store(true)
							}
							holding[k] = true
						}
						mu.Unlock()
						// Fail every first attempt of item 3, ack the rest.
						var ok []string
						var fails []Failure
						for _, it := range b.Items {
							if it.ID == "3" && it.Attempts == 1 {
								fails = append(fails, Failure{ID: it.ID, Err: errors.New("flaky")})
							} else {
								ok = append(ok, it.ID)
							}
						}
						mu.Lock()
						for _, it := range b.Items {
							delete(holding, b.UserID+"/"+it.ID)
						}
						mu.Unlock()
						if len(fails) > 0 {
							if _, err := q.Nack(ctxb, b, fails...); err != nil {
								t.Error(err)
							}
						}
						if n, err := q.Ack(ctxb, b, ok...); err != nil || n != len(ok) {
							t.Errorf("Ack: %d of %d, %v", n, len(ok), err)
						}
						mu.Lock()
						for _, id := range ok {
							acked[b.UserID+"/"+id]++
						}
						mu.Unlock()
					}
				}
			})
		}
		wg.Wait()
		if len(acked) != len(ns) {
			t.Fatalf("%d of %d items delivered", len(acked), len(ns))
		}
		for k, n := range acked {
			if n != 1 {
				t.Fatalf("%s delivered %d times", k, n)
			}
		}
		if st := testutil.Must[Stats](t, "Stats")(qs[2].Stats(ctxb)); st != (Stats{Delivered: int64(len(ns))}) {
			t.Fatalf("Stats %+v, want %d delivered and nothing else", st, len(ns))
		}
	})
}
