package notify

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/internal/testutil"
)

// chaosKind is what the chaos run expects of a notification at the end.
type chaosKind int

const (
	chaosNormal chaosKind = iota // delivered at the first request
	chaosFlaky                   // the fake answers 503 once, then delivered
	chaosSoon                    // scheduled 0.2–2 s ahead, then delivered
	chaosBad                     // the fake answers 400: dead
	chaosFar                     // scheduled an hour ahead: still scheduled
)

// TestChaos (acceptance 6): worker processes on a Redis with the
// append-only file on are killed with SIGKILL at random and replaced while
// notifications are enqueued, some scheduled, some failing once, some
// failing for good; in the middle, redis-server itself is killed and
// restarted (reloading the AOF). Afterwards every id is in exactly one
// state, checked in Redis's own data structures (checkInvariants), the
// states are the expected ones (nothing lost: every deliverable id was
// accepted by the fake Novu exactly once, the same Idempotency-Key on
// every resend), and Stats agrees.
func TestChaos(t *testing.T) {
	t.Parallel()
	const (
		users   = 150
		perUser = 12 // 1800 notifications
		lease   = time.Second
		workers = 3
	)
	srv := redistest.NewAOFServer(t)
	url, prefix := srv.URL(), redistest.Prefix(t)
	fake := newFakeNovu(t, func(key string, n int) fakeReply {
		switch {
		case strings.HasSuffix(key, "-bad"):
			return fakeReply{status: 400}
		case strings.HasSuffix(key, "-flaky") && n == 1:
			return fakeReply{status: 503, retryAfter: "1"}
		}
		// Latency, so that kills land between a send and its ack.
		return fakeReply{accept: true, delay: time.Duration(1+rand.IntN(15)) * time.Millisecond}
	})
	q := NewRedis(redistest.Client(t, url), quiet(Config{Prefix: prefix, Lease: lease, Timeout: 2 * time.Second}))

	kinds := map[string]chaosKind{}
	var ns []Notification
	for u := range users {
		for i := range perUser {
			k := chaosKind(rand.IntN(20)) // 1 in 20 of each special kind
			if k > chaosFar {
				k = chaosNormal
			}
			id := fmt.Sprintf("c%d-%d-%s", u, i, [...]string{"ok", "flaky", "soon", "bad", "far"}[k])
			n := Notification{ID: id, UserID: "patient-" + strconv.Itoa(u), Type: "reminder",
				Priority: Priority(rand.IntN(3)), Title: "Your session", Message: "starts soon"}
			switch k {
			case chaosSoon:
				n.ScheduledFor = time.Now().Add(time.Duration(200+rand.IntN(1800)) * time.Millisecond)
			case chaosFar:
				n.ScheduledFor = time.Now().Add(time.Hour)
			}
			kinds[id] = k
			ns = append(ns, n)
		}
	}
	rand.Shuffle(len(ns), func(i, j int) { ns[i], ns[j] = ns[j], ns[i] })

	// The pool of worker processes; chaos replaces one at random.
	var poolMu sync.Mutex
	pool := make([]*testutil.Process, workers)
	for i := range pool {
		pool[i] = startWorkerProcess(t, url, prefix, fake.srv.URL, lease)
	}

	// Enqueuers: 4 goroutines, each retrying an item until Redis takes
	// it (Redis is down for a while in the middle).
	var enqueued, retries atomic.Int64
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := g; i < len(ns); i += 4 {
				for {
					_, err := q.Enqueue(ctxb, ns[i])
					if err == nil {
						break
					}
					retries.Add(1)
					time.Sleep(20 * time.Millisecond) // Redis is restarting: try again
				}
				if enqueued.Add(1)%50 == 0 {
					time.Sleep(time.Millisecond) // spread the enqueues over the chaos
				}
			}
		})
	}

	// Chaos: kill and replace a random worker every 50–300 ms while the
	// items are enqueued and then for a second more; restart Redis once,
	// a third of the way through the enqueues.
	var kills int
	restarted := false
	chaosEnd := time.Time{}
	for {
		time.Sleep(time.Duration(50+rand.IntN(250)) * time.Millisecond)
		if !restarted && enqueued.Load() >= int64(len(ns)/3) {
			srv.Stop(t) // SIGKILL
			time.Sleep(300 * time.Millisecond)
			srv.Start(t) // reloads the AOF
			restarted = true
		}
		i := rand.IntN(workers)
		poolMu.Lock()
		pool[i].Kill(t)
		pool[i] = startWorkerProcess(t, url, prefix, fake.srv.URL, lease)
		poolMu.Unlock()
		kills++
		if enqueued.Load() == int64(len(ns)) {
			if chaosEnd.IsZero() {
				chaosEnd = time.Now().Add(time.Second)
			}
			if time.Now().After(chaosEnd) {
				break
			}
		}
	}
	wg.Wait()
	if !restarted {
		t.Fatal("redis-server was never restarted")
	}

	// The surviving workers finish the queue: everything but the hour-ahead
	// and the dead ones is delivered.
	var want [5]int
	for _, k := range kinds {
		want[k]++
	}
	until(t, "the queue to drain", 60*time.Second, func() bool {
		s, err := q.Stats(ctxb)
		return err == nil && s.Pending+s.Inflight+s.Retrying == 0 && s.Dead == int64(want[chaosBad]) &&
			s.Scheduled == int64(want[chaosFar])
	})
	for _, p := range pool {
		p.Kill(t)
	}
	t.Logf("%d notifications (%d flaky, %d soon, %d bad, %d an hour ahead), %d worker kills, 1 Redis restart, %d enqueue retries",
		len(ns), want[chaosFlaky], want[chaosSoon], want[chaosBad], want[chaosFar], kills, retries.Load())

	states := checkInvariants(t, q)
	if len(states) != len(ns) {
		t.Errorf("Redis holds %d notifications, want the %d enqueued", len(states), len(ns))
	}
	wantState := map[chaosKind]State{chaosNormal: StateDelivered, chaosFlaky: StateDelivered, chaosSoon: StateDelivered,
		chaosBad: StateDead, chaosFar: StateScheduled}
	resent := 0
	for id, k := range kinds {
		if got := states[id]; got != wantState[k] {
			t.Errorf("%s: state %q, want %q", id, got, wantState[k])
		}
		acc, req := fake.acceptedCount(id), fake.requestCount(id)
		switch {
		case wantState[k] == StateDelivered && acc != 1:
			t.Errorf("%s: accepted %d times by the fake Novu (of %d requests), want exactly once", id, acc, req)
		case wantState[k] != StateDelivered && acc != 0:
			t.Errorf("%s (%s): accepted %d times", id, wantState[k], acc)
		case k == chaosFar && req != 0:
			t.Errorf("%s: scheduled an hour ahead but sent %d times", id, req)
		}
		if k != chaosFlaky && req > 1 {
			resent++
		}
	}
	t.Logf("%d notifications were sent again after a kill (the same Idempotency-Key; the fake counted each once)", resent)
	s, err := q.Stats(ctxb)
	if err != nil {
		t.Fatal(err)
	}
	if delivered := want[chaosNormal] + want[chaosFlaky] + want[chaosSoon]; s.Delivered != int64(delivered) {
		t.Errorf("Stats.Delivered %d, want %d", s.Delivered, delivered)
	}
}

// checkInvariants reads every notify key of q (a Redis queue) and checks
// that each notification is in exactly one state, consistently in every
// structure that records it (see common.lua): queued items have their
// payload and meta, are in their user's queue and in exactly one of w and
// r; leased ones are in the user's inflight set only; dead ones in the dead
// set only; delivered ones are only an id in the delivered set. Every user
// with queued or leased items is in the due index. It returns each id's
// state.
func checkInvariants(t *testing.T, q Queue) map[string]State {
	t.Helper()
	rb := q.(*queue).b.(*redisBackend)
	c := rb.client
	type where struct {
		meta                                        string
		payload, w, r, dead, done, queued, inflight bool
	}
	refs := map[string]*where{}
	at := func(ref string) *where {
		if refs[ref] == nil {
			refs[ref] = &where{}
		}
		return refs[ref]
	}
	due := map[string]bool{}     // uid in some shard's due index
	holding := map[string]bool{} // uid with queued or leased items
	zmembers := func(key string) []string {
		m, err := c.Do(ctxb, c.B().Zrange().Key(key).Min("0").Max("-1").Build()).AsStrSlice()
		if err != nil {
			t.Fatalf("ZRANGE %s: %v", key, err)
		}
		return m
	}
	tagEnd := rb.kb.RawKey(keyCapability, "0")
	tagEnd = tagEnd[:strings.LastIndex(tagEnd, "{")] // <prefix>nq:
	var cursor uint64
	for {
		e, err := c.Do(ctxb, c.B().Scan().Cursor(cursor).Match(tagEnd+"*").Count(1000).Build()).AsScanEntry()
		if err != nil {
			t.Fatalf("SCAN: %v", err)
		}
		for _, key := range e.Elements {
			rest := key[strings.Index(key, "}:")+2:]
			switch {
			case rest == "data":
				h, err := c.Do(ctxb, c.B().Hgetall().Key(key).Build()).AsStrMap()
				if err != nil {
					t.Fatal(err)
				}
				for f, v := range h {
					switch f[:2] {
					case "p:":
						at(f[2:]).payload = true
					case "m:":
						at(f[2:]).meta = v
					default:
						t.Errorf("%s: unexpected field %q", key, f)
					}
				}
			case rest == "w", rest == "r", rest == "dead", rest == "done":
				for _, ref := range zmembers(key) {
					w := at(ref)
					switch rest {
					case "w":
						w.w = true
					case "r":
						w.r = true
					case "dead":
						w.dead = true
					case "done":
						w.done = true
					}
				}
			case rest == "due":
				for _, uid := range zmembers(key) {
					due[uid] = true
				}
			case rest == "stats", strings.HasPrefix(rest, "u:") && strings.HasSuffix(rest, ":l"):
			case strings.HasPrefix(rest, "u:"):
				uid, inflight := strings.CutSuffix(rest[2:], ":f")
				holding[uid] = true
				for _, m := range zmembers(key) {
					w := at(uid + ":" + m[16:])
					if inflight {
						w.inflight = true
					} else {
						w.queued = true
					}
				}
			default:
				t.Errorf("unexpected key %s", key)
			}
		}
		if cursor = e.Cursor; cursor == 0 {
			break
		}
	}
	for uid := range holding {
		if !due[uid] {
			t.Errorf("user %s has queued or leased items but is not in the due index: they would never be claimed", uid)
		}
	}
	now := time.Now().UnixMilli()
	states := map[string]State{}
	for ref, w := range refs {
		id := ref[strings.IndexByte(ref, ':')+1:]
		var st State
		r := parseMetaForTest(w.meta)
		switch {
		case w.meta == "" && w.done && !w.payload && !w.w && !w.r && !w.dead && !w.queued && !w.inflight:
			st = StateDelivered
		case r.st == "q" && w.payload && w.queued && w.w != w.r && !w.dead && !w.done && !w.inflight:
			switch {
			case r.due <= now:
				st = StatePending
			case r.att == 0:
				st = StateScheduled
			default:
				st = StateRetrying
			}
		case r.st == "f" && w.payload && w.inflight && !w.queued && !w.w && !w.r && !w.dead && !w.done:
			st = StateInflight
		case r.st == "d" && w.payload && w.dead && !w.queued && !w.inflight && !w.w && !w.r && !w.done:
			st = StateDead
		default:
			t.Errorf("%s is in no single state: %+v", ref, *w)
			continue
		}
		if _, dup := states[id]; dup {
			t.Errorf("id %s stored for two users", id)
		}
		states[id] = st
	}
	return states
}

// testMeta is the part of an item's meta (common.lua's parse) that
// checkInvariants needs.
type testMeta struct {
	st       string
	due, att int64
}

func parseMetaForTest(m string) testMeta {
	f := strings.Split(m, "|")
	if len(f) < 9 {
		return testMeta{}
	}
	due, _ := strconv.ParseInt(f[3], 10, 64)
	att, _ := strconv.ParseInt(f[6], 10, 64)
	return testMeta{st: f[0], due: due, att: att}
}

// TestBytesPerPendingItem (acceptance 6): the memory one pending
// notification costs, on Redis (used_memory) and on the memory backend
// (the Go heap), with a typical reminder (a 40-byte title, a 120-byte
// message, two data fields). It stays under a budget of 1 KiB on Redis and
// 2 KiB in memory for this payload, and on Redis it does not grow with the
// number of items. (The Go heap moves in steps as maps double, so the
// memory backend is held to the budget only.) Not parallel: the heap it
// reads is the whole test process's, so no parallel test may run
// meanwhile; they start after the sequential ones.
func TestBytesPerPendingItem(t *testing.T) {
	note := func(u, i int) Notification {
		return Notification{ID: fmt.Sprintf("n%d-%d", u, i), UserID: "patient-" + strconv.Itoa(u), Type: "appointment-reminder",
			Title: strings.Repeat("t", 40), Message: strings.Repeat("m", 120),
			Data: json.RawMessage(`{"appointmentId":"appt_` + strconv.Itoa(u*100+i) + `","startsAt":"2026-12-05T10:00:00Z"}`)}
	}
	fill := func(t *testing.T, q Queue, from, to int) {
		t.Helper()
		var batch []Notification
		for u := from; u < to; u++ {
			for i := range 10 {
				batch = append(batch, note(u, i))
			}
			if len(batch) >= 500 || u == to-1 {
				res, err := q.EnqueueMany(ctxb, batch)
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range res {
					if r.Err != nil || !r.Created {
						t.Fatalf("EnqueueMany: %+v", r)
					}
				}
				batch = batch[:0]
			}
		}
	}
	for _, tc := range []struct {
		name   string
		budget float64
		open   func(t *testing.T) (Queue, func() int64)
	}{
		{"redis", 1024, func(t *testing.T) (Queue, func() int64) {
			srv := redistest.NewServer(t) // its own server: used_memory is this test's
			c := redistest.Client(t, srv.URL())
			used := func() int64 {
				info, err := c.Do(ctxb, c.B().Info().Section("memory").Build()).ToString()
				if err != nil {
					t.Fatal(err)
				}
				return infoInt(t, info, "used_memory")
			}
			return NewRedis(c, quiet(Config{Prefix: redistest.Prefix(t), Timeout: 10 * time.Second})), used
		}},
		{"memory", 2048, func(t *testing.T) (Queue, func() int64) {
			return NewMemory(quiet(Config{})), func() int64 {
				runtime.GC()
				runtime.GC()
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				return int64(ms.HeapAlloc)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, used := tc.open(t)
			// Warm up the shards' fixed structures, so the deltas are per item.
			fill(t, q, 0, 100)
			base := used()
			fill(t, q, 100, 300) // 2000 items
			small := float64(used()-base) / 2000
			fill(t, q, 300, 1300) // 10 000 more
			large := float64(used()-base) / 12000
			runtime.KeepAlive(q)
			t.Logf("%s: %.0f bytes per pending item over 2000 items, %.0f over 12 000 (%d-byte title+message)", tc.name, small, large, 160)
			if large > tc.budget {
				t.Errorf("%.0f bytes per pending item, over the %.0f-byte budget", large, tc.budget)
			}
			if tc.name == "redis" && large > small*1.25+64 {
				t.Errorf("the cost per item grows with the number of items: %.0f bytes at 2000, %.0f at 12 000", small, large)
			}
		})
	}
}

func infoInt(t *testing.T, info, field string) int64 {
	t.Helper()
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("INFO %s: %v", field, err)
			}
			return n
		}
	}
	t.Fatalf("INFO has no %s", field)
	return 0
}
