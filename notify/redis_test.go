package notify

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/internal/testutil"
)

// workflow exercises every script: enqueue (one and many, scheduled a week
// ahead), pending, claim, ack, nack (retry and dead), extend, cancel,
// requeue, remove, stats, list dead.
func workflow(t *testing.T, q Queue) {
	t.Helper()
	for u := range 20 {
		user := fmt.Sprintf("patient:%d {x}*", u) // separators, braces, globs
		testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, note(user, "a")))
		week := note(user, "week")
		week.ScheduledFor = time.Now().Add(7 * 24 * time.Hour)
		week.ExpiresAt = week.ScheduledFor.Add(time.Hour)
		testutil.Must[Result](t, "Enqueue week")(q.Enqueue(ctxb, week))
		testutil.Must[[]Result](t, "EnqueueMany")(q.EnqueueMany(ctxb, []Notification{note(user, "b"), note(user, "c"), note(user, "d")}))
		testutil.Must[[]Notification](t, "Pending")(q.Pending(ctxb, user, 10))
	}
	for {
		bs := testutil.Must[[]Batch](t, "Claim")(q.Claim(ctxb, 7, 3))
		if len(bs) == 0 {
			break
		}
		for _, b := range bs {
			testutil.Must[struct{}](t, "Extend")(struct{}{}, q.Extend(ctxb, &b))
			for _, it := range b.Items {
				switch it.ID {
				case "a":
					testutil.Must[int](t, "Ack")(q.Ack(ctxb, b, it.ID))
				case "b":
					testutil.Must[int](t, "Nack")(q.Nack(ctxb, b, Failure{ID: it.ID, Err: errors.New("later"), RetryAfter: time.Hour}))
				default:
					testutil.Must[int](t, "Nack")(q.Nack(ctxb, b, Failure{ID: it.ID, Err: errors.New("bad"), Permanent: true}))
				}
			}
		}
	}
	for u := range 20 {
		user := fmt.Sprintf("patient:%d {x}*", u)
		testutil.Must[struct{}](t, "RequeueDead")(struct{}{}, q.RequeueDead(ctxb, user, "c"))
		testutil.Must[int](t, "Remove")(q.Remove(ctxb, user, "c"))
		if u%2 == 0 {
			testutil.Must[struct{}](t, "Cancel")(struct{}{}, q.Cancel(ctxb, user, "d"))
		}
	}
	testutil.Must[Stats](t, "Stats")(q.Stats(ctxb))
	testutil.Must[[]Notification](t, "ListDead")(q.ListDead(ctxb, 100))
}

// redisTopologies are the Redis deployments the Redis-only tests run on.
var redisTopologies = []struct {
	name string
	url  func(testing.TB) string
}{{"redis", redistest.URL}, {"cluster", redistest.ClusterURL}}

// TestRedisKeysOneSlotNoTTL: on the Cluster, every script's keys are in one
// slot, and every key that exists afterwards was passed in some script's
// KEYS (nothing is built from ARGV inside a script); on both servers no
// notify key has a TTL (a week-ahead notification cannot vanish), and the
// records and the indexes agree (no orphans). With KeyHashSecret no key
// name holds a user id.
func TestRedisKeysOneSlotNoTTL(t *testing.T) {
	t.Parallel()
	for _, tc := range redisTopologies {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			url := tc.url(t)
			client := redistest.Client(t, url)
			prefix := redistest.Prefix(t)
			cfg := Config{Prefix: prefix, Timeout: 10 * time.Second, Shards: 16}
			if tc.name == "cluster" {
				// Escaping of user ids is checked on the standalone
				// server, their HMAC here.
				cfg.KeyHashSecret = []byte("test secret")
			}
			q := NewRedis(client, quiet(cfg))
			rb := q.(*queue).b.(*redisBackend)
			var mu sync.Mutex
			var calls [][]string
			declared := map[string]bool{}
			rb.onScript = func(_ string, ks []string) {
				mu.Lock()
				calls = append(calls, ks)
				for _, k := range ks {
					declared[k] = true
				}
				mu.Unlock()
			}
			workflow(t, q)

			all := redisKeys(t, client, prefix)
			if len(all) < 20 {
				t.Fatalf("only %d keys: the workflow wrote less than expected", len(all))
			}
			for _, k := range all {
				if cfg.KeyHashSecret != nil && strings.Contains(k, "patient") {
					t.Errorf("key %q holds a user id despite KeyHashSecret", k)
				}
				if !declared[k] {
					t.Errorf("key %q exists but no script declared it in KEYS", k)
				}
				pttl, err := client.Do(ctxb, client.B().Pttl().Key(k).Build()).AsInt64()
				if err != nil || pttl != -1 {
					t.Errorf("key %q: PTTL %d, %v; want -1 (no TTL)", k, pttl, err)
				}
			}
			if tc.name == "cluster" {
				slot := map[string]int64{}
				slotOf := func(k string) int64 {
					if s, ok := slot[k]; ok {
						return s
					}
					s, err := client.Do(ctxb, client.B().ClusterKeyslot().Key(k).Build()).AsInt64()
					if err != nil {
						t.Fatalf("CLUSTER KEYSLOT: %v", err)
					}
					slot[k] = s
					return s
				}
				slots := map[int64]bool{}
				for _, ks := range calls {
					s := slotOf(ks[0])
					slots[s] = true
					for _, k := range ks[1:] {
						if slotOf(k) != s {
							t.Fatalf("one script's keys in slots %d and %d: %q", s, slotOf(k), ks)
						}
					}
				}
				if len(slots) < 3 {
					t.Fatalf("scripts touched only %d slots: the test does not spread over the cluster", len(slots))
				}
			}
			checkNoOrphans(t, client, all)
		})
	}
}

// hundredUsers is a Redis queue of 8 shards at url and one notification
// for each of 100 users (not enqueued), with the shard tags they fall in.
func hundredUsers(t *testing.T, url string) (Queue, *redisBackend, []Notification, map[string]bool) {
	t.Helper()
	client := redistest.Client(t, url)
	q := NewRedis(client, quiet(Config{Prefix: redistest.Prefix(t), Timeout: 10 * time.Second, Shards: 8}))
	rb := q.(*queue).b.(*redisBackend)
	var ns []Notification
	shards := map[string]bool{}
	for u := range 100 {
		n := note(fmt.Sprintf("user-%d", u), "a")
		ns = append(ns, n)
		shards[rb.user(n.UserID).tag] = true
	}
	return q, rb, ns, shards
}

// TestRedisEnqueueBatches: an EnqueueMany of 100 users is 4 script calls
// (at most 32 items each) on a single Redis, and one call per shard (keys
// in one slot, checked by TestRedisKeysOneSlotNoTTL) on Cluster; every item
// is stored either way, and a second call of the same ids stores nothing.
func TestRedisEnqueueBatches(t *testing.T) {
	t.Parallel()
	for _, tc := range redisTopologies {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q, rb, ns, shards := hundredUsers(t, tc.url(t))
			var mu sync.Mutex
			var sizes []int
			rb.onScript = func(name string, ks []string) {
				if name == "enqueue" {
					mu.Lock()
					sizes = append(sizes, len(ks)/7)
					mu.Unlock()
				}
			}
			for round, wantCreated := range []bool{true, false} {
				sizes = nil
				for i, r := range testutil.Must[[]Result](t, "EnqueueMany")(q.EnqueueMany(ctxb, ns)) {
					if r.Err != nil || r.Created != wantCreated || r.ID != "a" || r.State != StatePending {
						t.Fatalf("round %d, item %d: %+v", round, i, r)
					}
				}
				total := 0
				for _, n := range sizes {
					total += n
					if n > maxEnqueueBatch {
						t.Errorf("a call of %d items, want at most %d", n, maxEnqueueBatch)
					}
				}
				want := (len(ns) + maxEnqueueBatch - 1) / maxEnqueueBatch
				if tc.name == "cluster" {
					want = len(shards) // 8 shards, each under 32 items
				}
				if total != len(ns) || len(sizes) != want {
					t.Errorf("round %d: %d calls of %v items, want %d calls of %d in all", round, len(sizes), sizes, want, len(ns))
				}
			}
			if st := testutil.Must[Stats](t, "Stats")(q.Stats(ctxb)); st.Pending != 100 {
				t.Fatalf("Stats %+v, want 100 pending", st)
			}
		})
	}
}

// checkNoOrphans: per shard, the data hash holds exactly two fields (payload
// and meta) for every member of the users' queues, the leases and the dead
// set, and nothing else.
func checkNoOrphans(t *testing.T, client rueidis.Client, all []string) {
	t.Helper()
	fields := map[string]int64{}  // shard tag -> HLEN data
	indexed := map[string]int64{} // shard tag -> items in indexes
	for _, k := range all {
		i := strings.Index(k, "}")
		tag, rest := k[:i+1], k[i+1:]
		card := func() int64 {
			n, err := client.Do(ctxb, client.B().Zcard().Key(k).Build()).AsInt64()
			if err != nil {
				t.Fatalf("ZCARD %s: %v", k, err)
			}
			return n
		}
		switch {
		case rest == ":data":
			n, err := client.Do(ctxb, client.B().Hlen().Key(k).Build()).AsInt64()
			if err != nil {
				t.Fatal(err)
			}
			fields[tag] = n
		case rest == ":dead", strings.HasPrefix(rest, ":u:") && !strings.HasSuffix(rest, ":l"):
			indexed[tag] += card()
		}
	}
	total := int64(0)
	for tag, n := range fields {
		total += n
		if n != 2*indexed[tag] {
			t.Errorf("shard %s: %d data fields for %d indexed items", tag, n, indexed[tag])
		}
	}
	if total == 0 {
		t.Fatal("no data left: the orphan check checked nothing")
	}
}

// TestRedisFailClosed: with redis-server killed, every call returns an
// error wrapping ErrBackend within a bounded time (nothing is silently
// dropped: an enqueue that was not stored says so); after a restart the
// same Queue works again.
func TestRedisFailClosed(t *testing.T) {
	t.Parallel()
	srv := redistest.NewServer(t)
	const timeout = 200 * time.Millisecond
	const bound = 2 * time.Second // generous: the point is "does not hang"
	q := NewRedis(redistest.Client(t, srv.URL()), quiet(Config{Timeout: timeout, Shards: 8}))
	untilHealthy(t, q)
	setup := NewRedis(redistest.Client(t, srv.URL()), quiet(Config{Timeout: 10 * time.Second, Shards: 8}))
	testutil.Must[Result](t, "Enqueue")(setup.Enqueue(ctxb, note("u", "before")))
	b := testutil.Must[[]Batch](t, "Claim")(setup.Claim(ctxb, 1, 1))
	if len(b) != 1 {
		t.Fatal("no batch")
	}

	srv.Stop(t)

	calls := []testutil.Call{
		testutil.C("Enqueue", func() error { _, err := q.Enqueue(ctxb, note("u", "during")); return err }),
		testutil.C("EnqueueMany", func() error {
			_, err := q.EnqueueMany(ctxb, []Notification{note("u", "m1"), note("v", "m2")})
			return err
		}),
		testutil.C("Pending", func() error { _, err := q.Pending(ctxb, "u", 1); return err }),
		testutil.C("Remove", func() error { _, err := q.Remove(ctxb, "u", "x"); return err }),
		testutil.C("Cancel", func() error { return q.Cancel(ctxb, "u", "x") }),
		testutil.C("Stats", func() error { _, err := q.Stats(ctxb); return err }),
		testutil.C("ListDead", func() error { _, err := q.ListDead(ctxb, 1); return err }),
		testutil.C("RequeueDead", func() error { return q.RequeueDead(ctxb, "u", "x") }),
		testutil.C("Claim", func() error { _, err := q.Claim(ctxb, 1, 1); return err }),
		testutil.C("Ack", func() error { _, err := q.Ack(ctxb, b[0], "before"); return err }),
		testutil.C("Nack", func() error { _, err := q.Nack(ctxb, b[0], Failure{ID: "before"}); return err }),
		testutil.C("Extend", func() error { return q.Extend(ctxb, &b[0]) }),
	}
	slowest := testutil.FailClosed(t, 2, calls, ErrBackend, bound)
	t.Logf("slowest call with Redis down: %v (timeout %v)", slowest, timeout)

	// Restart: the same Queue works again, without being rebuilt. (The
	// test server keeps nothing across a restart; production runs with
	// AOF.)
	srv.Start(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := q.Enqueue(ctxb, note("u", "after"))
		if err == nil {
			break
		}
		if !errors.Is(err, ErrBackend) || time.Now().After(deadline) {
			t.Fatalf("Enqueue after restart: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	got := ids(testutil.Must[[]Notification](t, "Pending")(q.Pending(ctxb, "u", 10)))
	if len(got) != 1 || got[0] != "after" {
		t.Fatalf("Pending after restart %v, want [after]", got)
	}
}

// TestRedisBadConfig: a bad prefix or a nil client fails every call with
// ErrBackend rather than writing somewhere unexpected.
func TestRedisBadConfig(t *testing.T) {
	t.Parallel()
	for name, q := range map[string]Queue{
		"bad prefix": NewRedis(redistest.Client(t, redistest.URL(t)), quiet(Config{Prefix: "{bad}"})),
		"nil client": NewRedis(nil, quiet(Config{})),
	} {
		_, err := q.Enqueue(ctxb, note("u", "a"))
		testutil.WantErr(t, name+": Enqueue", err, ErrBackend)
		_, err = q.Claim(ctxb, 1, 1)
		testutil.WantErr(t, name+": Claim", err, ErrBackend)
	}
}

// TestRedisTimeoutFailsClosed: with the server paused (slow Redis), Enqueue
// and Ack return ErrBackend after about Config.Timeout. The timed-out
// Enqueue may still happen once Redis resumes; retrying it with the same id
// leaves exactly one copy.
func TestRedisTimeoutFailsClosed(t *testing.T) {
	t.Parallel()
	srv := redistest.NewServer(t)
	admin := redistest.Client(t, srv.URL())
	const timeout = 100 * time.Millisecond
	q := NewRedis(redistest.Client(t, srv.URL()), quiet(Config{Timeout: timeout, Shards: 4}))
	untilHealthy(t, q)
	setup := NewRedis(redistest.Client(t, srv.URL()), quiet(Config{Timeout: 10 * time.Second, Shards: 4}))
	testutil.Must[Result](t, "Enqueue")(setup.Enqueue(ctxb, note("u", "a")))
	b := testutil.Must[[]Batch](t, "Claim")(setup.Claim(ctxb, 1, 1))
	if len(b) != 1 {
		t.Fatal("no batch")
	}
	// Paused for writes (scripts count as writes), so that the UNPAUSE
	// below is served at once.
	if err := admin.Do(ctxb, admin.B().ClientPause().Timeout(10000).Write().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	unpaused := false
	unpause := func() {
		if !unpaused {
			unpaused = true
			if err := admin.Do(ctxb, admin.B().ClientUnpause().Build()).Error(); err != nil {
				t.Errorf("CLIENT UNPAUSE: %v", err)
			}
		}
	}
	defer unpause()
	for _, c := range []struct {
		name string
		call func() error
	}{
		{"Enqueue", func() error { _, err := q.Enqueue(ctxb, note("u", "slow")); return err }},
		{"Ack", func() error { _, err := q.Ack(ctxb, b[0], "a"); return err }},
	} {
		start := time.Now()
		err := c.call()
		el := time.Since(start)
		if !errors.Is(err, ErrBackend) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s with Redis paused: %v, want ErrBackend wrapping a deadline", c.name, err)
		}
		if el > 2*time.Second {
			t.Fatalf("%s with Redis paused took %v; timeout is %v", c.name, el, timeout)
		}
	}
	unpause()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := q.Enqueue(ctxb, note("u", "slow")) // the caller's retry
		if err == nil {
			break
		}
		if !errors.Is(err, ErrBackend) || time.Now().After(deadline) {
			t.Fatalf("retried Enqueue: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	got := ids(testutil.Must[[]Notification](t, "Pending")(q.Pending(ctxb, "u", 10)))
	if len(got) != 1 || got[0] != "slow" {
		t.Fatalf("Pending %v, want [slow] once", got)
	}
}

// TestRedisThroughputLog enqueues 20 000 notifications for 2 000 users
// (EnqueueMany, 8 concurrent callers) and drains them with 8 concurrent
// workers (Claim of 50 users × 10, Ack), and logs the rates. It asserts
// only that every notification is delivered exactly once: timings never
// gate tests (with -race they are several times slower).
func TestRedisThroughputLog(t *testing.T) {
	t.Parallel()
	client := redistest.Client(t, redistest.URL(t))
	q := NewRedis(client, quiet(Config{Prefix: redistest.Prefix(t), Timeout: 10 * time.Second}))
	const users, per, callers = 2000, 10, 8
	var ns []Notification
	for i := range per {
		for u := range users {
			ns = append(ns, note(fmt.Sprintf("user-%d", u), fmt.Sprint(i)))
		}
	}
	start := time.Now()
	var wg sync.WaitGroup
	chunk := len(ns) / callers
	for c := range callers {
		wg.Go(func() {
			for i := c * chunk; i < (c+1)*chunk; i += 500 {
				res, err := q.EnqueueMany(ctxb, ns[i:min(i+500, (c+1)*chunk)])
				if err != nil {
					t.Error(err)
					return
				}
				for _, r := range res {
					if !r.Created {
						t.Errorf("not created: %+v", r)
					}
				}
			}
		})
	}
	wg.Wait()
	enq := time.Since(start)

	start = time.Now()
	var mu sync.Mutex
	delivered := 0
	for range callers {
		wg.Go(func() {
			idle := 0
			for idle < 3 {
				bs, err := q.Claim(ctxb, 50, 10)
				if err != nil {
					t.Error(err)
					return
				}
				if len(bs) == 0 {
					idle++
					continue
				}
				idle = 0
				for _, b := range bs {
					n, err := q.Ack(ctxb, b, ids(b.Items)...)
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					delivered += n
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	drain := time.Since(start)
	st := testutil.Must[Stats](t, "Stats")(q.Stats(ctxb))
	if delivered != len(ns) || st != (Stats{Delivered: int64(len(ns))}) {
		t.Fatalf("delivered %d of %d; Stats %+v", delivered, len(ns), st)
	}
	if info, err := client.Do(ctxb, client.B().Info().Section("commandstats").Build()).ToString(); err == nil {
		for _, l := range strings.Split(info, "\n") {
			if strings.Contains(l, "evalsha") {
				t.Log(strings.TrimSpace(l))
			}
		}
	}
	t.Logf("enqueue (EnqueueMany, %d callers): %d in %v = %.0f/s; claim+ack (%d workers, 10 per user): %v = %.0f/s",
		callers, len(ns), enq, float64(len(ns))/enq.Seconds(), callers, drain, float64(len(ns))/drain.Seconds())
}

// untilHealthy polls (at most 10s) until a write and a claim of q succeed
// within its short timeout: on a loaded machine the first calls of a new
// client (connecting, loading the scripts) can take longer than 100ms.
func untilHealthy(t *testing.T, q Queue) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := q.Enqueue(ctxb, note("probe", "probe"))
		if err == nil {
			_, err = q.Claim(ctxb, 1, 1)
		}
		if err == nil {
			return
		}
		if !errors.Is(err, ErrBackend) || time.Now().After(deadline) {
			t.Fatalf("no successful call within 10s: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // poll interval while the client connects
	}
}

// TestRedisClaimBatches: a Claim of 100 due users is one due.lua call (its
// first round: 8 shards) and 4 claim.lua calls (at most 32 users each) on a
// single Redis, and one call of each per shard on Cluster (keys in one slot,
// checked by TestRedisKeysOneSlotNoTTL); every user is claimed once, and one
// Ack per batch delivers everything.
func TestRedisClaimBatches(t *testing.T) {
	t.Parallel()
	for _, tc := range redisTopologies {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q, rb, ns, shards := hundredUsers(t, tc.url(t))
			testutil.Must[[]Result](t, "EnqueueMany")(q.EnqueueMany(ctxb, ns))
			var mu sync.Mutex
			calls := map[string][]int{} // script -> users (claim) or shards (due) per call
			rb.onScript = func(name string, ks []string) {
				mu.Lock()
				defer mu.Unlock()
				switch name {
				case "due":
					calls[name] = append(calls[name], len(ks))
				case "claim":
					calls[name] = append(calls[name], len(ks)/9)
				}
			}
			bs := testutil.Must[[]Batch](t, "Claim")(q.Claim(ctxb, 100, 5))
			rb.onScript = nil
			seen := map[string]bool{}
			for _, b := range bs {
				if len(b.Items) != 1 || seen[b.UserID] {
					t.Fatalf("batch of %s: %d items (want 1), seen before %v", b.UserID, len(b.Items), seen[b.UserID])
				}
				seen[b.UserID] = true
			}
			if len(seen) != 100 {
				t.Fatalf("claimed %d users, want 100", len(seen))
			}
			wantDue, wantClaim := []int{8}, 4
			if tc.name == "cluster" {
				wantDue = []int{1, 1, 1, 1, 1, 1, 1, 1}
				wantClaim = len(shards)
			}
			if !slices.Equal(calls["due"], wantDue) {
				t.Errorf("due calls of %v shards, want %v", calls["due"], wantDue)
			}
			total := 0
			for _, n := range calls["claim"] {
				total += n
				if n > maxClaimBatch {
					t.Errorf("a claim call of %d users, want at most %d", n, maxClaimBatch)
				}
			}
			if total != 100 || len(calls["claim"]) != wantClaim {
				t.Errorf("%d claim calls of %v users, want %d calls of 100 in all", len(calls["claim"]), calls["claim"], wantClaim)
			}
			for _, b := range bs {
				if n := testutil.Must[int](t, "Ack")(q.Ack(ctxb, b, b.Items[0].ID)); n != 1 {
					t.Fatalf("Ack %s: %d, want 1", b.UserID, n)
				}
			}
			if st := testutil.Must[Stats](t, "Stats")(q.Stats(ctxb)); st.Delivered != 100 || st.Inflight != 0 || st.Pending != 0 {
				t.Fatalf("Stats %+v, want 100 delivered, nothing else", st)
			}
		})
	}
}

// TestRedisOldInflightMembers: an inflight set written by a version that
// kept the seq in its members (<seq16hex><id>) is taken over like any
// expired lease: its item is claimed again, then acked, and nothing is left
// behind (an upgrade during delivery loses nothing).
func TestRedisOldInflightMembers(t *testing.T) {
	t.Parallel()
	client := redistest.Client(t, redistest.URL(t))
	const lease = 200 * time.Millisecond
	q := NewRedis(client, quiet(Config{Prefix: redistest.Prefix(t), Timeout: 10 * time.Second, Shards: 4, Lease: lease}))
	rb := q.(*queue).b.(*redisBackend)
	testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, note("patient-1", "r1")))
	bs := testutil.Must[[]Batch](t, "Claim")(q.Claim(ctxb, 1, 5))
	if len(bs) != 1 || len(bs[0].Items) != 1 {
		t.Fatalf("Claim: %+v", bs)
	}
	// Rewrite the inflight member in the old form.
	u := rb.user("patient-1")
	score, err := client.Do(ctxb, client.B().Zscore().Key(u.inflight).Member("r1").Build()).ToString()
	if err != nil {
		t.Fatalf("ZSCORE inflight r1: %v (the inflight member is not the id)", err)
	}
	m, err := client.Do(ctxb, client.B().Hget().Key(u.data).Field("m:"+u.uid+":r1").Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	seq := strings.Split(m, "|")[1]
	for _, c := range []rueidis.Completed{
		client.B().Zrem().Key(u.inflight).Member("r1").Build(),
		client.B().Zadd().Key(u.inflight).ScoreMember().ScoreMember(testutil.Must[float64](t, "score")(strconv.ParseFloat(score, 64)), seq+"r1").Build(),
	} {
		if err := client.Do(ctxb, c).Error(); err != nil {
			t.Fatal(err)
		}
	}
	// Poll until the lease has expired and the item is claimed again.
	var again []Batch
	for deadline := time.Now().Add(10 * time.Second); len(again) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the item of the old-format lease was never claimed again")
		}
		again = testutil.Must[[]Batch](t, "Claim")(q.Claim(ctxb, 1, 5))
	}
	if len(again[0].Items) != 1 || again[0].Items[0].ID != "r1" || again[0].Items[0].Attempts != 2 {
		t.Fatalf("claimed again: %+v", again[0].Items)
	}
	if n := testutil.Must[int](t, "Ack")(q.Ack(ctxb, again[0], "r1")); n != 1 {
		t.Fatalf("Ack: %d, want 1", n)
	}
	if st := testutil.Must[Stats](t, "Stats")(q.Stats(ctxb)); st != (Stats{Delivered: 1}) {
		t.Fatalf("Stats %+v, want exactly 1 delivered", st)
	}
}

// claimAll claims every due user of q, one item each.
func claimAll(t *testing.T, q Queue, users int) []Batch {
	t.Helper()
	var bs []Batch
	for len(bs) < users {
		got := testutil.Must[[]Batch](t, "Claim")(q.Claim(ctxb, users, 1))
		if len(got) == 0 {
			t.Fatalf("claimed %d of %d users", len(bs), users)
		}
		bs = append(bs, got...)
	}
	return bs
}

// sharedRounds runs do(0), ..., do(n-1) concurrently against rb while its
// first roundsInFlight calls of script are held (see holdRounds): the
// others must all wait in the combiner (waiting reports how many do), then
// every call is released. It returns the number of items (or users) of
// each call of script, 7 keys each.
func sharedRounds(t *testing.T, rb *redisBackend, script string, n int, do func(i int), waiting func() int) []int {
	t.Helper()
	var mu sync.Mutex
	var calls []int
	release := holdRounds(t, rb, script, func(ks []string) {
		mu.Lock()
		calls = append(calls, len(ks)/7)
		mu.Unlock()
	}, do)
	var wg sync.WaitGroup
	for i := roundsInFlight; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			do(i)
		}()
	}
	until(t, "the other calls to wait", 10*time.Second, func() bool { return waiting() == n-roundsInFlight })
	release()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	return calls
}

// TestRedisAcksCombined: while roundsInFlight ack rounds are in flight
// (held in the onScript hook), further Acks wait and then share one round:
// on a single Redis one call for all of them; on Cluster one call per
// shard, in one round trip. Every Ack gets its own result, and each user
// is delivered once.
func TestRedisAcksCombined(t *testing.T) {
	t.Parallel()
	for _, tc := range redisTopologies {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q, rb, ns, shards := hundredUsers(t, tc.url(t))
			testutil.Must[[]Result](t, "EnqueueMany")(q.EnqueueMany(ctxb, ns))
			bs := claimAll(t, q, len(ns))
			results := make([]int, len(bs))
			errs := make([]error, len(bs))
			calls := sharedRounds(t, rb, "ack", len(bs), func(i int) {
				results[i], errs[i] = q.Ack(ctxb, bs[i], bs[i].Items[0].ID)
			}, func() int {
				rb.acks.mu.Lock()
				defer rb.acks.mu.Unlock()
				return len(rb.acks.queue)
			})
			for i := range bs {
				if errs[i] != nil || results[i] != 1 {
					t.Fatalf("Ack %d: %d, %v", i, results[i], errs[i])
				}
			}
			waiting := len(bs) - roundsInFlight
			if tc.name == "cluster" {
				// One call per shard of the waiting users, in one round.
				if len(calls) > roundsInFlight+len(shards) {
					t.Errorf("%d ack calls of %v users, want at most %d", len(calls), calls, roundsInFlight+len(shards))
				}
			} else if want := roundsInFlight + (waiting+maxAckBatch-1)/maxAckBatch; len(calls) != want {
				t.Errorf("%d ack calls of %v users, want %d", len(calls), calls, want)
			}
			if st := testutil.Must[Stats](t, "Stats")(q.Stats(ctxb)); st.Delivered != int64(len(ns)) || st.Inflight != 0 {
				t.Fatalf("Stats %+v, want %d delivered", st, len(ns))
			}
		})
	}
}

// TestRedisEnqueuesCombined: while roundsInFlight enqueue rounds are in
// flight (held in the onScript hook), further Enqueues wait and then share
// one round (on Cluster one call per shard, in one round trip). Each
// Enqueue gets its own result; the same id enqueued twice in the shared
// round is created once, and every item is stored once.
func TestRedisEnqueuesCombined(t *testing.T) {
	t.Parallel()
	for _, tc := range redisTopologies {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q, rb, ns, shards := hundredUsers(t, tc.url(t))
			// The last user's item twice: two callers, one notification.
			ns = append(ns, ns[len(ns)-1])
			results := make([]Result, len(ns))
			errs := make([]error, len(ns))
			calls := sharedRounds(t, rb, "enqueue", len(ns), func(i int) {
				results[i], errs[i] = q.Enqueue(ctxb, ns[i])
			}, func() int {
				rb.enqs.mu.Lock()
				defer rb.enqs.mu.Unlock()
				return len(rb.enqs.queue)
			})
			created := 0
			for i, r := range results {
				if errs[i] != nil || r.ID != ns[i].ID || r.State != StatePending {
					t.Fatalf("Enqueue %d: %+v, %v", i, r, errs[i])
				}
				if r.Created {
					created++
				}
			}
			if created != len(ns)-1 {
				t.Errorf("%d created, want %d (one id given twice)", created, len(ns)-1)
			}
			waiting := len(ns) - roundsInFlight
			if tc.name == "cluster" {
				if len(calls) > roundsInFlight+len(shards) {
					t.Errorf("%d enqueue calls of %v items, want at most %d", len(calls), calls, roundsInFlight+len(shards))
				}
			} else if want := roundsInFlight + (waiting+maxEnqueueBatch-1)/maxEnqueueBatch; len(calls) != want {
				t.Errorf("%d enqueue calls of %v items, want %d", len(calls), calls, want)
			}
			if st := testutil.Must[Stats](t, "Stats")(q.Stats(ctxb)); st.Pending != int64(len(ns)-1) {
				t.Fatalf("Stats %+v, want %d pending", st, len(ns)-1)
			}
		})
	}
}

// holdRounds starts do(0), ..., do(roundsInFlight-1), each on its own
// goroutine, and returns once each has sent its call of script, held in
// the onScript hook; release lets them finish and waits for them. each,
// when not nil, sees the keys of every call of script.
func holdRounds(t *testing.T, rb *redisBackend, script string, each func(keys []string), do func(i int)) (release func()) {
	t.Helper()
	hold, free := make(chan struct{}, roundsInFlight), make(chan struct{})
	var held atomic.Int32
	rb.onScript = func(name string, ks []string) {
		if name != script {
			return
		}
		if each != nil {
			each(ks)
		}
		if held.Add(1) <= int32(roundsInFlight) {
			hold <- struct{}{}
			<-free
		}
	}
	var wg sync.WaitGroup
	for i := range roundsInFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			do(i)
		}()
		<-hold
	}
	return func() {
		close(free)
		wg.Wait()
	}
}

// TestRedisEnqueueCanceledWhileWaiting: an Enqueue waiting for a shared
// round (every round held) whose ctx ends returns the ctx's error at once
// and stores nothing; the held Enqueues still land.
func TestRedisEnqueueCanceledWhileWaiting(t *testing.T) {
	t.Parallel()
	q, rb, ns, _ := hundredUsers(t, redistest.URL(t))
	release := holdRounds(t, rb, "enqueue", nil, func(i int) {
		if _, err := q.Enqueue(ctxb, ns[i]); err != nil {
			t.Errorf("held Enqueue %d: %v", i, err)
		}
	})
	ctx, cancel := context.WithCancel(ctxb)
	errc := make(chan error, 1)
	go func() {
		_, err := q.Enqueue(ctx, ns[roundsInFlight])
		errc <- err
	}()
	until(t, "the Enqueue to wait", 10*time.Second, func() bool {
		rb.enqs.mu.Lock()
		defer rb.enqs.mu.Unlock()
		return len(rb.enqs.queue) == 1
	})
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled Enqueue: %v, want context.Canceled", err)
	}
	release()
	if st := testutil.Must[Stats](t, "Stats")(q.Stats(ctxb)); st.Pending != int64(roundsInFlight) {
		t.Fatalf("Stats %+v, want the %d held items only", st, roundsInFlight)
	}
}

// TestRedisAckGivesUp: an Ack that waits for a turn longer than
// Config.Timeout (every round held) returns an ErrBackend error and sends
// nothing; once the rounds are released, Acks are sent at once again (no
// turn is lost) and the abandoned one can be sent again.
func TestRedisAckGivesUp(t *testing.T) {
	t.Parallel()
	client := redistest.Client(t, redistest.URL(t))
	const timeout = 300 * time.Millisecond
	q := NewRedis(client, quiet(Config{Prefix: redistest.Prefix(t), Timeout: timeout}))
	rb := q.(*queue).b.(*redisBackend)
	var ns []Notification
	for u := range roundsInFlight + 1 {
		ns = append(ns, note(fmt.Sprintf("user-%d", u), "a"))
	}
	testutil.Must[[]Result](t, "EnqueueMany")(q.EnqueueMany(ctxb, ns))
	bs := claimAll(t, q, len(ns))
	release := holdRounds(t, rb, "ack", nil, func(i int) {
		_, _ = q.Ack(ctxb, bs[i], "a") // held past its timeout: fails or not, either is fine
	})
	last := bs[len(bs)-1]
	start := time.Now()
	_, err := q.Ack(ctxb, last, "a")
	if !errors.Is(err, ErrBackend) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Ack waiting past the timeout: %v, want ErrBackend and DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*timeout {
		t.Fatalf("the waiting Ack took %v, timeout %v", d, timeout)
	}
	release()
	// Its lease is still held: nothing of it was sent. Sent again, it lands.
	if n, err := q.Ack(ctxb, last, "a"); err != nil || n != 1 {
		t.Fatalf("Ack after the rounds ended: %d, %v", n, err)
	}
	rb.acks.mu.Lock()
	defer rb.acks.mu.Unlock()
	if rb.acks.inFlight != 0 || len(rb.acks.queue) != 0 {
		t.Fatalf("combiner left with %d turns, %d waiting", rb.acks.inFlight, len(rb.acks.queue))
	}
}
