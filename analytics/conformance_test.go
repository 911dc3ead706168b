package analytics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/internal/testutil"
)

// The conformance suite: the Store and Buffer contracts, run unchanged on
// the memory backend, a real redis-server and a real 3-node Redis Cluster.
// Several Stores over one backend play several application instances; on
// Redis each has its own client.

var ctxb = context.Background()

type env struct {
	name string
	// store returns a new instance (its own client on Redis) over the
	// test's data; every call must get the same cfg apart from Registerer.
	store func(cfg Config) Store
	// client is an extra client on Redis (nil on memory).
	client rueidis.Client
	prefix string
}

func quiet(cfg Config) Config {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg
}

func targets() []struct {
	name string
	env  func(t *testing.T) env
} {
	return []struct {
		name string
		env  func(t *testing.T) env
	}{
		{"memory", memoryEnv},
		{"redis", func(t *testing.T) env { return redisEnv(t, "redis", redistest.URL(t)) }},
		{"cluster", func(t *testing.T) env { return redisEnv(t, "cluster", redistest.ClusterURL(t)) }},
	}
}

func memoryEnv(t *testing.T) env {
	var once sync.Once
	var s Store
	return env{name: "memory", store: func(cfg Config) Store {
		once.Do(func() { s = NewMemory(quiet(cfg)) })
		return s
	}}
}

func redisEnv(t *testing.T, name, url string) env {
	prefix := redistest.Prefix(t)
	return env{name: name, prefix: prefix, client: redistest.Client(t, url), store: func(cfg Config) Store {
		cfg.Prefix = prefix
		return NewRedis(redistest.Client(t, url), quiet(cfg))
	}}
}

// forEach runs f on every target, in parallel.
func forEach(t *testing.T, f func(t *testing.T, e env)) {
	t.Helper()
	for _, tg := range targets() {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			f(t, tg.env(t))
		})
	}
}

func today() time.Time { return dayOf(time.Now()) }

// redisKeys lists the keys under prefix on every node (test helper).
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
	return out
}

// TestIncrConcurrentExact (acceptance 1): 4 instances × 100 goroutines
// increment one metric (half of them for a user too): the day's total and
// the users' totals are exact, and a SCAN finds no key without a TTL.
func TestIncrConcurrentExact(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, e env) {
		const instances, goroutines, each = 4, 100, 5
		stores := make([]Store, instances)
		for i := range stores {
			stores[i] = e.store(Config{Timeout: 10 * time.Second})
		}
		at := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, instances*goroutines)
		for i := range instances {
			for g := range goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var opts []Option
					if g%2 == 0 {
						opts = append(opts, ForUser(fmt.Sprintf("user-%d", g%4)))
					}
					for range each {
						if _, err := stores[i].Incr(ctxb, "bookings", 1, at, opts...); err != nil {
							errs <- err
							return
						}
						if err := stores[i].AddUnique(ctxb, "visitors", fmt.Sprintf("v%d", g), at); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		s := stores[0]
		if got := testutil.Must[int64](t, "Total")(s.Total(ctxb, "bookings", at, at)); got != instances*goroutines*each {
			t.Fatalf("total %d, want %d", got, instances*goroutines*each)
		}
		// Users 0 and 2 get the even goroutines g%4==0 and g%4==2: 25 each
		// per instance.
		for _, u := range []string{"user-0", "user-2"} {
			if got := testutil.Must[int64](t, "Total")(s.Total(ctxb, "bookings", at, at, ForUser(u))); got != instances*25*each {
				t.Errorf("%s: %d, want %d", u, got, instances*25*each)
			}
		}
		if got := testutil.Must[int64](t, "Total")(s.Total(ctxb, "bookings", at, at, ForUser("user-1"))); got != 0 {
			t.Errorf("user-1: %d, want 0", got)
		}
		if n := testutil.Must[int64](t, "CountUnique")(s.CountUnique(ctxb, "visitors", at, at)); n != goroutines {
			t.Errorf("unique %d, want %d (small sets are exact in a HyperLogLog)", n, goroutines)
		}
		if e.client == nil {
			return
		}
		ks := redisKeys(t, e.client, e.prefix)
		if len(ks) != 3 {
			t.Errorf("keys %v, want the day total, the user counts and the sketch", ks)
		}
		want := dayOf(at).Add(day + DefaultRetention).UnixMilli()
		for _, k := range ks {
			exp, err := e.client.Do(ctxb, e.client.B().Pexpiretime().Key(k).Build()).AsInt64()
			if err != nil || exp != want {
				t.Errorf("%s expires at %d (%v), want %d (end of day + retention)", k, exp, err, want)
			}
		}
	})
}

// TestSeries: every day of the range, zeros included; per-user series;
// negative increments; the day total is what Incr returns.
func TestSeries(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, e env) {
		s := e.store(Config{})
		d0 := today().AddDate(0, 0, -5)
		steps := []struct {
			day  int
			by   int64
			user string
			want int64
		}{{0, 3, "", 3}, {0, 2, "u1", 5}, {2, 7, "u1", 7}, {2, -1, "", 6}, {5, 1, "u2", 1}}
		for _, st := range steps {
			var opts []Option
			if st.user != "" {
				opts = append(opts, ForUser(st.user))
			}
			// Any time of the day lands in its bucket.
			at := d0.AddDate(0, 0, st.day).Add(23*time.Hour + 59*time.Minute)
			if v := testutil.Must[int64](t, "Incr")(s.Incr(ctxb, "m", st.by, at, opts...)); v != st.want {
				t.Fatalf("Incr day %d by %d: %d, want %d", st.day, st.by, v, st.want)
			}
		}
		ps := testutil.Must[[]Point](t, "Series")(s.Series(ctxb, "m", d0, d0.AddDate(0, 0, 6)))
		var got []int64
		for i, p := range ps {
			if !p.Date.Equal(d0.AddDate(0, 0, i)) {
				t.Fatalf("point %d dated %v", i, p.Date)
			}
			got = append(got, p.Value)
		}
		if want := []int64{5, 0, 6, 0, 0, 1, 0}; !slices.Equal(got, want) {
			t.Fatalf("series %v, want %v", got, want)
		}
		u1 := testutil.Must[[]Point](t, "Series")(s.Series(ctxb, "m", d0, d0.AddDate(0, 0, 2), ForUser("u1")))
		if len(u1) != 3 || u1[0].Value != 2 || u1[1].Value != 0 || u1[2].Value != 7 {
			t.Fatalf("u1 series %+v", u1)
		}
		if n := testutil.Must[int64](t, "Total")(s.Total(ctxb, "m", d0, d0.AddDate(0, 0, 6))); n != 12 {
			t.Fatalf("total %d, want 12", n)
		}
		if n := testutil.Must[int64](t, "Total")(s.Total(ctxb, "other", d0, d0)); n != 0 {
			t.Fatalf("unknown metric total %d", n)
		}
	})
}

// TestUniqueUnion: the union over a range counts a member seen on several
// days once, within the HyperLogLog's error.
func TestUniqueUnion(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, e env) {
		s := e.store(Config{})
		d0 := today().AddDate(0, 0, -3)
		const n = 3000
		for i := range n {
			// Member i is seen on day i%3 and, for even i, again on day 3.
			if err := s.AddUnique(ctxb, "patients", fmt.Sprintf("p%d", i), d0.AddDate(0, 0, i%3)); err != nil {
				t.Fatal(err)
			}
			if i%2 == 0 {
				if err := s.AddUnique(ctxb, "patients", fmt.Sprintf("p%d", i), d0.AddDate(0, 0, 3)); err != nil {
					t.Fatal(err)
				}
			}
		}
		check := func(from, to, want int) {
			t.Helper()
			got := testutil.Must[int64](t, "CountUnique")(s.CountUnique(ctxb, "patients", d0.AddDate(0, 0, from), d0.AddDate(0, 0, to)))
			if diff := float64(got-int64(want)) / float64(want); diff > 0.03 || diff < -0.03 {
				t.Errorf("days %d..%d: %d, want %d ±3%%", from, to, got, want)
			}
		}
		check(0, 3, n)
		check(3, 3, n/2)
		check(0, 0, n/3)
		if got := testutil.Must[int64](t, "CountUnique")(s.CountUnique(ctxb, "nobody", d0, d0)); got != 0 {
			t.Errorf("empty metric: %d", got)
		}
	})
}

// TestBadInput: every bad argument is ErrInvalidArgument and writes nothing.
func TestBadInput(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, e env) {
		s := e.store(Config{})
		now := time.Now()
		long := strings.Repeat("x", MaxNameLen+1)
		cases := []struct {
			name string
			call func() error
		}{
			{"empty metric", func() error { _, err := s.Incr(ctxb, "", 1, now); return err }},
			{"long metric", func() error { _, err := s.Incr(ctxb, long, 1, now); return err }},
			{"control char", func() error { _, err := s.Incr(ctxb, "a\nb", 1, now); return err }},
			{"bad utf8", func() error { _, err := s.Incr(ctxb, "a\xffb", 1, now); return err }},
			{"huge increment", func() error { _, err := s.Incr(ctxb, "m", MaxIncrement+1, now); return err }},
			{"huge decrement", func() error { _, err := s.Incr(ctxb, "m", -MaxIncrement-1, now); return err }},
			{"empty user", func() error { _, err := s.Incr(ctxb, "m", 1, now, ForUser("")); return err }},
			{"too old", func() error { _, err := s.Incr(ctxb, "m", 1, now.Add(-DefaultRetention-2*day)); return err }},
			{"future", func() error { _, err := s.Incr(ctxb, "m", 1, now.Add(2*day)); return err }},
			{"reversed range", func() error { _, err := s.Series(ctxb, "m", now, now.Add(-day)); return err }},
			{"zero range", func() error { _, err := s.Series(ctxb, "m", time.Time{}, now); return err }},
			{"long range", func() error { _, err := s.Total(ctxb, "m", now.Add(-MaxRangeDays*day), now); return err }},
			{"empty member", func() error { return s.AddUnique(ctxb, "m", "", now) }},
			{"unique range", func() error { _, err := s.CountUnique(ctxb, "m", now, now.Add(-day)); return err }},
			{"no event name", func() error { return s.Capture(ctxb, Event{DistinctID: "d"}) }},
			{"no distinct id", func() error { return s.Capture(ctxb, Event{Event: "e"}) }},
			{"bad uuid", func() error { return s.Capture(ctxb, Event{Event: "e", DistinctID: "d", UUID: "nope"}) }},
			{"big event", func() error {
				return s.Capture(ctxb, Event{Event: "e", DistinctID: "d", Properties: map[string]any{"x": strings.Repeat("y", DefaultMaxEventBytes)}})
			}},
			{"unencodable", func() error {
				return s.Capture(ctxb, Event{Event: "e", DistinctID: "d", Properties: map[string]any{"f": func() {}}})
			}},
		}
		for _, c := range cases {
			testutil.WantErr(t, c.name, c.call(), ErrInvalidArgument)
		}
		if st := testutil.Must[Stats](t, "Stats")(s.Stats(ctxb)); st.Buffered != 0 {
			t.Errorf("a refused event was buffered: %+v", st)
		}
		if n := testutil.Must[int64](t, "Total")(s.Total(ctxb, "m", now, now)); n != 0 {
			t.Errorf("a refused Incr counted: %d", n)
		}
	})
}

// TestBufferDelivery: entries read and not settled are read again by
// another consumer once claimAfter has passed (not before), with the same
// data; acked and dead entries are not read again.
func TestBufferDelivery(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, e env) {
		s := e.store(Config{})
		b := s.Buffer()
		var uuids []string
		for i := range 5 {
			ev := Event{Event: "e", DistinctID: fmt.Sprintf("d%d", i), UUID: NewUUID()}
			uuids = append(uuids, ev.UUID)
			if err := s.Capture(ctxb, ev); err != nil {
				t.Fatal(err)
			}
		}
		first := testutil.Must[[]Entry](t, "Read")(b.Read(ctxb, "a", 3, time.Hour, 0))
		if len(first) != 3 {
			t.Fatalf("read %d, want 3", len(first))
		}
		for i, en := range first {
			ev := testutil.Must[Event](t, "DecodeEvent")(DecodeEvent(en.Data))
			if ev.UUID != uuids[i] || ev.DistinctID != fmt.Sprintf("d%d", i) || ev.Timestamp.IsZero() {
				t.Fatalf("entry %d: %+v, want uuid %s (oldest first)", i, ev, uuids[i])
			}
		}
		// Not idle for an hour: b gets only the two new ones.
		second := testutil.Must[[]Entry](t, "Read")(b.Read(ctxb, "b", 10, time.Hour, 0))
		if len(second) != 2 {
			t.Fatalf("read %d, want the 2 unread", len(second))
		}
		if st := testutil.Must[Stats](t, "Stats")(s.Stats(ctxb)); st.Buffered != 5 || st.Retrying != 5 {
			t.Fatalf("stats %+v", st)
		}
		testutil.Must[struct{}](t, "Ack")(struct{}{}, b.Ack(ctxb, ids(first[:2])))
		testutil.Must[struct{}](t, "Dead")(struct{}{}, b.Dead(ctxb, second[:1], "400"))
		// claimAfter 0: c takes over everything unsettled, same data.
		taken := testutil.Must[[]Entry](t, "Read")(b.Read(ctxb, "c", 10, 0, 0))
		got := ids(taken)
		slices.Sort(got)
		want := []string{first[2].ID, second[1].ID}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("taken over %v, want %v", got, want)
		}
		for _, en := range taken {
			if en.ID == first[2].ID && string(en.Data) != string(first[2].Data) {
				t.Fatalf("taken-over data differs")
			}
		}
		testutil.Must[struct{}](t, "Ack")(struct{}{}, b.Ack(ctxb, got))
		// A second ack of the same ids is ignored.
		testutil.Must[struct{}](t, "Ack")(struct{}{}, b.Ack(ctxb, got))
		st := testutil.Must[Stats](t, "Stats")(s.Stats(ctxb))
		if st != (Stats{Sent: 4, Dead: 1}) {
			t.Fatalf("stats %+v, want 4 sent, 1 dead", st)
		}
		if rest := testutil.Must[[]Entry](t, "Read")(b.Read(ctxb, "c", 10, 0, 0)); len(rest) != 0 {
			t.Fatalf("read %d after everything was settled", len(rest))
		}
	})
}

// TestReadWaitsForCapture: a waiting Read returns as soon as an event is
// captured.
func TestReadWaitsForCapture(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, e env) {
		s := e.store(Config{})
		// The group exists before the wait starts (Redis creates it on the
		// first Read).
		testutil.Must[[]Entry](t, "Read")(s.Buffer().Read(ctxb, "a", 1, time.Hour, 0))
		got := make(chan []Entry, 1)
		go func() {
			es, _ := s.Buffer().Read(ctxb, "a", 10, time.Hour, time.Minute)
			got <- es
		}()
		if err := s.Capture(ctxb, Event{Event: "e", DistinctID: "d"}); err != nil {
			t.Fatal(err)
		}
		select {
		case es := <-got:
			if len(es) != 1 {
				t.Fatalf("read %d, want the one captured", len(es))
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the waiting Read did not return after a Capture")
		}
	})
}

// fakePostHog is a real HTTP server playing PostHog's /batch/ endpoint.
type fakePostHog struct {
	srv *httptest.Server
	// respond decides the answer to request n (1-based) with its events;
	// nil means 200. A status 0 means hang until the client goes away.
	respond func(n int, evs []wireEvent) (int, http.Header)

	mu       sync.Mutex
	requests int
	byUUID   map[string][]string // uuid -> raw events received
	accepted map[string]int      // uuid -> times in a 2xx answer
	keys     map[string]bool
	notify   chan struct{} // a value per request received
}

func newFakePostHog(t *testing.T, respond func(n int, evs []wireEvent) (int, http.Header)) *fakePostHog {
	f := &fakePostHog{respond: respond, byUUID: make(map[string][]string), accepted: make(map[string]int),
		keys: make(map[string]bool), notify: make(chan struct{}, 10000)}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakePostHog) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/batch/" || r.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "bad route", http.StatusNotFound)
		return
	}
	body, _ := io.ReadAll(r.Body)
	var req struct {
		APIKey string            `json:"api_key"`
		Batch  []json.RawMessage `json:"batch"`
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	evs := make([]wireEvent, len(req.Batch))
	for i, raw := range req.Batch {
		if err := json.Unmarshal(raw, &evs[i]); err != nil || evs[i].UUID == "" || evs[i].DistinctID == "" {
			http.Error(w, "bad event", http.StatusBadRequest)
			return
		}
	}
	f.mu.Lock()
	f.requests++
	n := f.requests
	f.keys[req.APIKey] = true
	for i, ev := range evs {
		f.byUUID[ev.UUID] = append(f.byUUID[ev.UUID], string(req.Batch[i]))
	}
	f.mu.Unlock()
	f.notify <- struct{}{}
	status, h := http.StatusOK, http.Header(nil)
	if f.respond != nil {
		status, h = f.respond(n, evs)
	}
	if status == 0 {
		<-r.Context().Done()
		return
	}
	for k, v := range h {
		w.Header()[k] = v
	}
	if status/100 == 2 {
		f.mu.Lock()
		for _, ev := range evs {
			f.accepted[ev.UUID]++
		}
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(`{"status":1}`))
		return
	}
	w.WriteHeader(status)
}

func (f *fakePostHog) received() map[string][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string][]string, len(f.byUUID))
	for k, v := range f.byUUID {
		out[k] = slices.Clone(v)
	}
	return out
}

func (f *fakePostHog) acceptedCount(uuid string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.accepted[uuid]
}

func (f *fakePostHog) requestCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests
}

const fakeKey = "phc_test"

func testForwarder(t *testing.T, b Buffer, url string, cfg ForwarderConfig) *Forwarder {
	t.Helper()
	cfg.APIKey, cfg.Host = fakeKey, url
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Wait == 0 {
		cfg.Wait = 50 * time.Millisecond
	}
	if cfg.BackoffBase == 0 {
		cfg.BackoffBase = time.Millisecond
	}
	f, err := NewForwarder(b, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(ctxb, 5*time.Second)
		defer cancel()
		_ = f.Close(ctx)
	})
	return f
}

// until polls cond (a state the test waits for: the fake's counts, the
// buffer's stats) until it holds or timeout passes.
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

func captureN(t *testing.T, s Store, n int, props func(i int) map[string]any) []string {
	t.Helper()
	uuids := make([]string, n)
	evs := make([]Event, n)
	for i := range evs {
		uuids[i] = NewUUID()
		evs[i] = Event{Event: "booked", DistinctID: fmt.Sprintf("patient-%d", i), UUID: uuids[i]}
		if props != nil {
			evs[i].Properties = props(i)
		}
	}
	for len(evs) > 0 {
		k := min(len(evs), 100)
		if _, err := s.CaptureMany(ctxb, evs[:k]); err != nil {
			t.Fatal(err)
		}
		evs = evs[k:]
	}
	return uuids
}

// TestForwarderRetries (acceptance 2): a 503 and then a 429 with
// Retry-After are retried (the same events, same uuids), then accepted
// once; the buffer ends empty and the retries are counted.
func TestForwarderRetries(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, e env) {
		s := e.store(Config{})
		uuids := captureN(t, s, 30, nil)
		var retryAfterSeen time.Time
		fake := newFakePostHog(t, func(n int, evs []wireEvent) (int, http.Header) {
			switch n {
			case 1:
				return http.StatusServiceUnavailable, nil
			case 2:
				retryAfterSeen = time.Now()
				return http.StatusTooManyRequests, http.Header{"Retry-After": {"1"}}
			}
			return http.StatusOK, nil
		})
		reg := newRegistry()
		f := testForwarder(t, s.Buffer(), fake.srv.URL, ForwarderConfig{Registerer: reg})
		f.Start()
		// The sent counter moves just after the ack that Stats sees, so
		// both are waited for; the exact values are checked below.
		until(t, "the buffer to drain", 20*time.Second, func() bool {
			st, err := s.Stats(ctxb)
			return err == nil && st.Buffered == 0 && st.Sent == 30 && testutil.Sum(t, reg, MetricSent) >= 30
		})
		third := time.Now()
		for _, u := range uuids {
			if got := fake.received()[u]; len(got) != 3 || got[0] != got[1] || got[1] != got[2] {
				t.Fatalf("uuid %s received %d times (want 3, identical): %v", u, len(got), got)
			}
			if a := fake.acceptedCount(u); a != 1 {
				t.Fatalf("uuid %s accepted %d times", u, a)
			}
		}
		// The third request waited out the 429's Retry-After (1s): a
		// lower bound on a wait the forwarder must respect, not a timing
		// measurement of our code.
		if fake.requestCount() != 3 || third.Sub(retryAfterSeen) < time.Second {
			t.Fatalf("%d requests; after the 429 the next came %v later, want >= 1s", fake.requestCount(), third.Sub(retryAfterSeen))
		}
		if got := testutil.Sum(t, reg, MetricRetried); got != 60 {
			t.Errorf("%s = %v, want 60 (30 events, 2 retries)", MetricRetried, got)
		}
		if got := testutil.Sum(t, reg, MetricSent); got != 30 {
			t.Errorf("%s = %v, want 30", MetricSent, got)
		}
		if !fake.keys[fakeKey] || len(fake.keys) != 1 {
			t.Errorf("api keys sent: %v", fake.keys)
		}
	})
}

// TestForwarderDeadLetter (acceptance 2): a batch refused with 400 is
// bisected; the one bad event goes to the dead-letter buffer, the others
// are accepted.
func TestForwarderDeadLetter(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, e env) {
		s := e.store(Config{})
		uuids := captureN(t, s, 10, func(i int) map[string]any {
			if i == 6 {
				return map[string]any{"bad": true}
			}
			return nil
		})
		fake := newFakePostHog(t, func(n int, evs []wireEvent) (int, http.Header) {
			for _, ev := range evs {
				if ev.Properties["bad"] == true {
					return http.StatusBadRequest, nil
				}
			}
			return http.StatusOK, nil
		})
		reg := newRegistry()
		testForwarder(t, s.Buffer(), fake.srv.URL, ForwarderConfig{Registerer: reg}).Start()
		until(t, "the batch to settle", 20*time.Second, func() bool {
			st, err := s.Stats(ctxb)
			return err == nil && st.Buffered == 0 && st.Dead == 1 && st.Sent == 9 && testutil.Sum(t, reg, MetricDead) >= 1
		})
		for i, u := range uuids {
			want := 1
			if i == 6 {
				want = 0
			}
			if a := fake.acceptedCount(u); a != want {
				t.Errorf("event %d accepted %d times, want %d", i, a, want)
			}
		}
		if got := testutil.Sum(t, reg, MetricDead); got != 1 {
			t.Errorf("%s = %v, want 1", MetricDead, got)
		}
		if e.client != nil {
			// The dead-letter entry keeps the event and the status.
			xs, err := e.client.Do(ctxb, e.client.B().Xrange().Key(NewRedis(e.client, Config{Prefix: e.prefix}).(*redisStore).dead).
				Start("-").End("+").Build()).AsXRange()
			if err != nil || len(xs) != 1 || xs[0].FieldValues["reason"] != "400" || !strings.Contains(xs[0].FieldValues["e"], uuids[6]) {
				t.Fatalf("dead-letter stream: %v %+v", err, xs)
			}
		}
	})
}

// TestForwarderCloseFlushes (acceptance 2): Close sends everything buffered
// before returning, within its deadline.
func TestForwarderCloseFlushes(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, e env) {
		s := e.store(Config{})
		fake := newFakePostHog(t, nil)
		// A long Wait: only Close's drain can send the events quickly.
		f := testForwarder(t, s.Buffer(), fake.srv.URL, ForwarderConfig{Wait: time.Hour, BatchSize: 20})
		f.Start()
		uuids := captureN(t, s, 250, nil)
		ctx, cancel := context.WithTimeout(ctxb, 20*time.Second)
		defer cancel()
		if err := f.Close(ctx); err != nil {
			t.Fatalf("Close: %v", err)
		}
		for _, u := range uuids {
			if fake.acceptedCount(u) != 1 {
				t.Fatalf("uuid %s accepted %d times after Close", u, fake.acceptedCount(u))
			}
		}
		if st := testutil.Must[Stats](t, "Stats")(s.Stats(ctxb)); st.Buffered != 0 || st.Sent != 250 {
			t.Fatalf("after Close: %+v", st)
		}
	})
}

// TestForwarderCloseDeadline (acceptance 2): with PostHog hanging, Close
// returns at its deadline with the deadline's error; on Redis the events
// stay buffered for the next forwarder.
func TestForwarderCloseDeadline(t *testing.T) {
	t.Parallel()
	forEach(t, func(t *testing.T, e env) {
		s := e.store(Config{})
		fake := newFakePostHog(t, func(int, []wireEvent) (int, http.Header) { return 0, nil })
		f := testForwarder(t, s.Buffer(), fake.srv.URL, ForwarderConfig{})
		captureN(t, s, 5, nil)
		f.Start()
		<-fake.notify // the batch is in flight
		const deadline = 300 * time.Millisecond
		ctx, cancel := context.WithTimeout(ctxb, deadline)
		defer cancel()
		start := time.Now()
		err := f.Close(ctx)
		took := time.Since(start)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Close: %v, want the deadline's error", err)
		}
		// A bound, not a measurement: Close must not outlive its deadline
		// by more than the time to cancel one request.
		if took > deadline+2*time.Second {
			t.Fatalf("Close took %v with a %v deadline", took, deadline)
		}
		if e.client != nil {
			if st := testutil.Must[Stats](t, "Stats")(s.Stats(ctxb)); st.Buffered != 5 || st.Sent != 0 {
				t.Fatalf("after Close: %+v, want the 5 events still buffered", st)
			}
		}
	})
}
