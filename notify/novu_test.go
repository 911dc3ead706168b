package notify

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/elevacare/eleva-redis/internal/testutil"
)

// fakeReply is what the fake Novu does with one request.
type fakeReply struct {
	// accept counts an accepted delivery for the Idempotency-Key and
	// answers 201.
	accept bool
	// waitFor holds the answer (after accepting) until it is closed or
	// the client gives up.
	waitFor <-chan struct{}
	// hang (after accepting) never answers: the client times out.
	hang bool
	// delay (after accepting) holds the answer for a while: the latency
	// of a real service, in which a worker can be killed after the send
	// and before its ack.
	delay time.Duration
	// status and retryAfter otherwise.
	status     int
	retryAfter string
}

// fakeNovu is an httptest server playing Novu's trigger endpoint. It
// checks every request (method, path, ApiKey, Idempotency-Key equal to
// transactionId, strict body) and honours Idempotency-Key: a key it has
// accepted once is answered 201 again without counting a delivery.
type fakeNovu struct {
	t       *testing.T
	srv     *httptest.Server
	closing chan struct{}
	// script decides each request for a key not accepted yet (n counts
	// the key's requests); it runs under mu and must not block.
	script func(key string, n int) fakeReply
	// bulk, when set, decides each bulk request as a whole (n counts the
	// bulk requests): a reply with a status answers it without looking at
	// its events; the zero reply lets script decide each event.
	bulk     func(n int) fakeReply
	bulkReqs int
	bulkKeys []string
	mu       sync.Mutex
	accepted map[string]int
	requests map[string]int
	times    map[string][]time.Time
	bodies   map[string]NovuEvent
}

const fakeNovuKey = "test-api-key"

func newFakeNovu(t *testing.T, script func(key string, n int) fakeReply) *fakeNovu {
	f := &fakeNovu{t: t, script: script, closing: make(chan struct{}), accepted: map[string]int{},
		requests: map[string]int{}, times: map[string][]time.Time{}, bodies: map[string]NovuEvent{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(func() {
		close(f.closing)
		f.srv.Close()
	})
	return f
}

func (f *fakeNovu) serve(w http.ResponseWriter, r *http.Request) {
	bad := func(format string, args ...any) {
		f.t.Errorf("fake Novu: "+format, args...)
		http.Error(w, `{"message":"bad request"}`, http.StatusBadRequest)
	}
	if r.Method == http.MethodPost && r.URL.Path == "/v1/events/trigger/bulk" && r.Header.Get("Authorization") == "ApiKey "+fakeNovuKey {
		f.serveBulk(w, r)
		return
	}
	if r.Method != http.MethodPost || r.URL.Path != "/v1/events/trigger" {
		bad("%s %s", r.Method, r.URL.Path)
		return
	}
	if got := r.Header.Get("Authorization"); got != "ApiKey "+fakeNovuKey {
		bad("Authorization %q", got)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		bad("Content-Type %q", ct)
		return
	}
	key := r.Header.Get("Idempotency-Key")
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	var ev NovuEvent
	if err := dec.Decode(&ev); err != nil {
		bad("body: %v", err)
		return
	}
	if key == "" || ev.TransactionID != key || ev.Name == "" || ev.To.SubscriberID == "" {
		bad("key %q, event %+v", key, ev)
		return
	}
	f.mu.Lock()
	f.requests[key]++
	n := f.requests[key]
	f.times[key] = append(f.times[key], time.Now())
	f.bodies[key] = ev
	// Deciding and counting are one step: a concurrent request with the
	// same key sees either no acceptance or a counted one.
	replay := f.accepted[key] > 0
	reply := fakeReply{accept: true}
	if !replay {
		reply = f.script(key, n)
		if reply.accept {
			f.accepted[key]++
		}
	}
	f.mu.Unlock()
	if !reply.accept {
		if reply.retryAfter != "" {
			w.Header().Set("Retry-After", reply.retryAfter)
		}
		w.WriteHeader(reply.status)
		fmt.Fprintf(w, `{"statusCode":%d,"message":"from the fake"}`, reply.status)
		return
	}
	switch {
	case reply.delay > 0:
		select {
		case <-time.After(reply.delay):
		case <-r.Context().Done():
			return
		case <-f.closing:
			return
		}
	case reply.hang:
		select {
		case <-r.Context().Done():
		case <-f.closing:
		}
		return
	case reply.waitFor != nil:
		select {
		case <-reply.waitFor:
		case <-r.Context().Done():
			return
		case <-f.closing:
			return
		}
	}
	if replay {
		w.Header().Set("Idempotency-Replay", "true")
	}
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"data":{"acknowledged":true,"status":"processed","transactionId":%q}}`, key)
}

// serveBulk plays the bulk trigger: each event is decided like a single
// trigger of its transactionId (accepted once per id), answered in order
// with acknowledged true ("processed") or false ("error").
func (f *fakeNovu) serveBulk(w http.ResponseWriter, r *http.Request) {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	var req struct {
		Events []NovuEvent `json:"events"`
	}
	if err := dec.Decode(&req); err != nil || len(req.Events) == 0 || len(req.Events) > NovuBulkSize {
		f.t.Errorf("fake Novu bulk: %d events, %v", len(req.Events), err)
		http.Error(w, `{"message":"bad request"}`, http.StatusBadRequest)
		return
	}
	type ack struct {
		Acknowledged  bool   `json:"acknowledged"`
		Status        string `json:"status"`
		TransactionID string `json:"transactionId"`
	}
	var out struct {
		Data []ack `json:"data"`
	}
	f.mu.Lock()
	f.bulkReqs++
	f.bulkKeys = append(f.bulkKeys, r.Header.Get("Idempotency-Key"))
	if f.bulk != nil {
		if reply := f.bulk(f.bulkReqs); reply.status != 0 {
			f.mu.Unlock()
			if reply.retryAfter != "" {
				w.Header().Set("Retry-After", reply.retryAfter)
			}
			w.WriteHeader(reply.status)
			return
		}
	}
	for _, ev := range req.Events {
		key := ev.TransactionID
		f.requests[key]++
		f.times[key] = append(f.times[key], time.Now())
		f.bodies[key] = ev
		ok := f.accepted[key] > 0
		if !ok {
			if ok = f.script(key, f.requests[key]).accept; ok {
				f.accepted[key]++
			}
		}
		a := ack{Acknowledged: ok, Status: "processed", TransactionID: key}
		if !ok {
			a.Status = "error"
		}
		out.Data = append(out.Data, a)
	}
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(out)
}

func (f *fakeNovu) bulkCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bulkReqs
}

func (f *fakeNovu) acceptedCount(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.accepted[key]
}

func (f *fakeNovu) requestCount(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests[key]
}

func (f *fakeNovu) sender(t *testing.T, timeout time.Duration) *NovuSender {
	t.Helper()
	s, err := NewNovuSender(NovuConfig{APIKey: fakeNovuKey, BaseURL: f.srv.URL, Client: &http.Client{Timeout: timeout}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestNovuWorker: a worker on the memory queue (real clock, short backoff)
// sends one notification to the fake Novu, which answers per the case.
// Each case checks the final state, the fake's request and accepted
// counts (per Idempotency-Key) and the worker's delivery metrics.
func TestNovuWorker(t *testing.T) {
	t.Parallel()
	always := func(r fakeReply) func(string, int) fakeReply { return func(string, int) fakeReply { return r } }
	firstThen := func(first fakeReply) func(string, int) fakeReply {
		return func(_ string, n int) fakeReply {
			if n == 1 {
				return first
			}
			return fakeReply{accept: true}
		}
	}
	cases := []struct {
		name        string
		script      func(string, int) fakeReply
		maxAttempts int
		timeout     time.Duration
		wantDead    string // a LastError fragment; "" means delivered
		requests    int
		metrics     map[string]float64
		minGap      time.Duration // between the first two requests
	}{
		{name: "429 pauses without using an attempt", script: firstThen(fakeReply{status: 429, retryAfter: "1"}), maxAttempts: 1,
			requests: 2, metrics: map[string]float64{"paused": 1, "delivered": 1, "retried": 0, "dead": 0}, minGap: 900 * time.Millisecond},
		{name: "429 without Retry-After pauses the default", script: firstThen(fakeReply{status: 429}), maxAttempts: 1,
			requests: 2, metrics: map[string]float64{"paused": 1, "delivered": 1}, minGap: DefaultPause - 100*time.Millisecond},
		{name: "503 is retried", script: firstThen(fakeReply{status: 503}), maxAttempts: 3,
			requests: 2, metrics: map[string]float64{"retried": 1, "delivered": 1, "dead": 0}},
		{name: "a timeout after accepting is retried, delivered once", script: firstThen(fakeReply{accept: true, hang: true}), maxAttempts: 3,
			timeout: 300 * time.Millisecond, requests: 2, metrics: map[string]float64{"retried": 1, "delivered": 1}},
		{name: "422 is dead with the error", script: always(fakeReply{status: 422}), maxAttempts: 5,
			wantDead: "novu: HTTP 422", requests: 1, metrics: map[string]float64{"dead": 1, "retried": 0, "delivered": 0}},
		{name: "400 is dead", script: always(fakeReply{status: 400}), maxAttempts: 5,
			wantDead: "HTTP 400", requests: 1, metrics: map[string]float64{"dead": 1}},
		{name: "413 is dead", script: always(fakeReply{status: 413}), maxAttempts: 5,
			wantDead: "HTTP 413", requests: 1, metrics: map[string]float64{"dead": 1}},
		{name: "500 until MaxAttempts is dead", script: always(fakeReply{status: 500}), maxAttempts: 2,
			wantDead: "HTTP 500", requests: 2, metrics: map[string]float64{"retried": 1, "dead": 1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			fake := newFakeNovu(t, c.script)
			q := NewMemory(quiet(Config{BackoffBase: 20 * time.Millisecond, BackoffCap: 50 * time.Millisecond}))
			testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, Notification{ID: "n1", UserID: "patient-1", Type: "appointment-reminder",
				Title: "secret title", Message: "secret message", Data: json.RawMessage(`{"a":1}`), MaxAttempts: c.maxAttempts}))
			reg := prometheus.NewRegistry()
			timeout := c.timeout
			if timeout == 0 {
				timeout = 10 * time.Second
			}
			var logs bytes.Buffer
			var logMu sync.Mutex
			log := slogTo(&logs, &logMu)
			w := NewWorker(q, fake.sender(t, timeout), WorkerConfig{Registerer: reg, Logger: log})
			startWorker(t, w)
			until(t, "the item to be settled", 15*time.Second, func() bool { s := stats(t, q); return s.Delivered+s.Dead == 1 })
			s := stats(t, q)
			if c.wantDead == "" {
				if s.Delivered != 1 {
					t.Fatalf("stats %+v, want delivered", s)
				}
				if a := fake.acceptedCount("n1"); a != 1 {
					t.Fatalf("fake accepted %d deliveries, want 1", a)
				}
			} else {
				dead := testutil.Must[[]Notification](t, "ListDead")(q.ListDead(ctxb, 0))
				if len(dead) != 1 || !strings.Contains(dead[0].LastError, c.wantDead) {
					t.Fatalf("dead %+v, want one with %q", dead, c.wantDead)
				}
				if a := fake.acceptedCount("n1"); a != 0 {
					t.Fatalf("fake accepted %d deliveries of a dead item", a)
				}
			}
			// The counters are updated after the ack or nack: poll.
			m := w.m
			until(t, "the metrics", 5*time.Second, func() bool {
				for k, v := range c.metrics {
					if counterValue(t, m.WithLabelValues(k)) != v {
						return false
					}
				}
				return true
			})
			if r := fake.requestCount("n1"); r != c.requests {
				t.Fatalf("fake got %d requests, want %d", r, c.requests)
			}
			if c.minGap > 0 {
				fake.mu.Lock()
				ts := fake.times["n1"]
				fake.mu.Unlock()
				if gap := ts[1].Sub(ts[0]); gap < c.minGap {
					t.Fatalf("sent again after %v, want the pause (≥ %v)", gap, c.minGap)
				}
			}
			logMu.Lock()
			defer logMu.Unlock()
			for _, secret := range []string{"secret title", "secret message", `"a":1`} {
				if strings.Contains(logs.String(), secret) {
					t.Fatalf("the logs contain the payload %q:\n%s", secret, logs.String())
				}
			}
		})
	}
}

// TestNovuSenderRequest: the trigger's body and headers, per notification
// of a batch (the fake checks the headers and the key = transactionId).
func TestNovuSenderRequest(t *testing.T) {
	t.Parallel()
	fake := newFakeNovu(t, func(string, int) fakeReply { return fakeReply{accept: true} })
	items := []Notification{
		{ID: "a", Type: "appointment-reminder", Title: "T", Message: "M", Data: json.RawMessage(`{"appointmentId":"x"}`)},
		{ID: "b", Type: "payment-received"},
	}
	res := fake.sender(t, 10*time.Second).Send(ctxb, "patient-7", items)
	for i, d := range res {
		if d.Outcome != OutcomeDelivered {
			t.Fatalf("item %d: %v %v", i, d.Outcome, d.Err)
		}
	}
	want := map[string]string{
		"a": `{"name":"appointment-reminder","to":{"subscriberId":"patient-7"},"payload":{"title":"T","message":"M","data":{"appointmentId":"x"}},"transactionId":"a"}`,
		"b": `{"name":"payment-received","to":{"subscriberId":"patient-7"},"payload":{},"transactionId":"b"}`,
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	for id, w := range want {
		got, _ := json.Marshal(fake.bodies[id])
		if string(got) != w {
			t.Errorf("body of %s:\n got %s\nwant %s", id, got, w)
		}
		if fake.accepted[id] != 1 {
			t.Errorf("%s accepted %d times", id, fake.accepted[id])
		}
	}
}

// TestNovuSenderPauseStopsTheBatch: after a 429 the rest of the batch is
// not sent; every item is paused for the Retry-After.
func TestNovuSenderPauseStopsTheBatch(t *testing.T) {
	t.Parallel()
	fake := newFakeNovu(t, func(key string, _ int) fakeReply {
		if key == "b" {
			return fakeReply{status: 429, retryAfter: "7"}
		}
		return fakeReply{accept: true}
	})
	res := fake.sender(t, 10*time.Second).Send(ctxb, "u", []Notification{{ID: "a", Type: "t"}, {ID: "b", Type: "t"}, {ID: "c", Type: "t"}})
	got := []string{}
	for _, d := range res {
		got = append(got, fmt.Sprintf("%v/%v", d.Outcome, d.After))
	}
	if want := "delivered/0s pause/7s pause/7s"; strings.Join(got, " ") != want {
		t.Fatalf("got %v, want %s", got, want)
	}
	if fake.requestCount("c") != 0 {
		t.Fatal("c was sent after the 429")
	}
}

func TestNewNovuSenderConfig(t *testing.T) {
	t.Parallel()
	for _, c := range []NovuConfig{{}, {APIKey: "k", BaseURL: "ftp://x"}, {APIKey: "k", BaseURL: "/relative"}} {
		if _, err := NewNovuSender(c); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
	if _, err := NewNovuSender(NovuConfig{APIKey: "k"}); err != nil {
		t.Errorf("default base URL: %v", err)
	}
}

// TestNovuWorkerBulk: with NovuConfig.Bulk, a claim of 30 users × 5 items
// sends one full bulk chunk of 100 and the other 50 one by one; each
// event's answer settles that event only; a whole-request 429 pauses the
// chunk without using an attempt, a 503 retries it, and a 400 makes each
// event go alone. Every notification is accepted exactly once.
func TestNovuWorkerBulk(t *testing.T) {
	t.Parallel()
	const users, per = 30, 5
	cases := []struct {
		name      string
		bulk      bool
		first     fakeReply // the first bulk request's whole answer
		bad       string    // an id the fake does not acknowledge
		attempts  int
		bulkReqs  int // at least
		maxBulk   int // at most (0: bulkReqs)
		requests  int // events received, bulk and single (0: no check)
		bulkItems float64
	}{
		{name: "a full chunk in bulk, the rest one by one", bulk: true, attempts: 1, bulkReqs: 1, requests: users * per, bulkItems: 100},
		{name: "bulk off: every event alone", bulk: false, attempts: 1, bulkReqs: 0, requests: users * per},
		{name: "an event not acknowledged is dead, only it", bulk: true, bad: "u3-n2", attempts: 3, bulkReqs: 1, requests: users * per},
		{name: "429 on the chunk pauses it without an attempt", bulk: true, first: fakeReply{status: 429, retryAfter: "1"}, attempts: 1,
			bulkReqs: 1, requests: users * per},
		{name: "503 on the chunk retries it", bulk: true, first: fakeReply{status: 503}, attempts: 3, bulkReqs: 1, maxBulk: 2},
		{name: "400 on the chunk: each event alone", bulk: true, first: fakeReply{status: 400}, attempts: 1, bulkReqs: 1, requests: users * per},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			fake := newFakeNovu(t, func(key string, _ int) fakeReply {
				if key == c.bad {
					return fakeReply{status: 400}
				}
				return fakeReply{accept: true}
			})
			fake.mu.Lock()
			fake.bulk = func(n int) fakeReply {
				if n == 1 {
					return c.first
				}
				return fakeReply{}
			}
			fake.mu.Unlock()
			q := NewMemory(quiet(Config{BackoffBase: 20 * time.Millisecond, BackoffCap: 50 * time.Millisecond, MaxAttempts: c.attempts}))
			var ns []Notification
			for u := range users {
				for i := range per {
					ns = append(ns, Notification{ID: fmt.Sprintf("u%d-n%d", u, i), UserID: fmt.Sprintf("patient-%d", u), Type: "reminder"})
				}
			}
			for _, r := range testutil.Must[[]Result](t, "EnqueueMany")(q.EnqueueMany(ctxb, ns)) {
				if r.Err != nil {
					t.Fatal(r.Err)
				}
			}
			s, err := NewNovuSender(NovuConfig{APIKey: fakeNovuKey, BaseURL: fake.srv.URL, Bulk: c.bulk})
			if err != nil {
				t.Fatal(err)
			}
			reg := prometheus.NewRegistry()
			w := NewWorker(q, s, quietWorker(WorkerConfig{Concurrency: users, Registerer: reg}))
			startWorker(t, w)
			wantDead := 0
			if c.bad != "" {
				wantDead = 1
			}
			until(t, "every item settled", 15*time.Second, func() bool {
				s := stats(t, q)
				return s.Delivered == int64(len(ns)-wantDead) && s.Dead == int64(wantDead)
			})
			for _, n := range ns {
				want := 1
				if n.ID == c.bad {
					want = 0
				}
				if a := fake.acceptedCount(n.ID); a != want {
					t.Errorf("%s accepted %d times, want %d", n.ID, a, want)
				}
			}
			maxBulk := c.maxBulk
			if maxBulk == 0 {
				maxBulk = c.bulkReqs
			}
			if b := fake.bulkCount(); b < c.bulkReqs || b > maxBulk {
				t.Errorf("%d bulk requests, want %d to %d", b, c.bulkReqs, maxBulk)
			}
			if c.requests > 0 {
				total := 0
				for _, n := range ns {
					total += fake.requestCount(n.ID)
				}
				if total != c.requests {
					t.Errorf("the fake received %d events, want %d", total, c.requests)
				}
			}
			if c.bulkItems > 0 {
				if v := counterValue(t, w.m.WithLabelValues("bulk_sent")); v != c.bulkItems {
					t.Errorf("bulk_sent %v, want %v", v, c.bulkItems)
				}
			}
		})
	}
}

// TestNovuSendBulkAnswers: SendBulk reads Novu's per-event answers by
// transactionId, in any order: acknowledged false is permanent for that
// event only, an event without an answer is retried; the request's
// Idempotency-Key is the same for the same chunk and differs for another.
func TestNovuSendBulkAnswers(t *testing.T) {
	t.Parallel()
	var keys []string
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		keys = append(keys, r.Header.Get("Idempotency-Key"))
		mu.Unlock()
		w.WriteHeader(http.StatusCreated)
		// Reversed, "b" not acknowledged, "c" missing.
		fmt.Fprint(w, `{"data":[{"acknowledged":true,"status":"processed","transactionId":"d"},`+
			`{"acknowledged":false,"status":"invalid_recipients","transactionId":"b"},`+
			`{"acknowledged":true,"status":"processed","transactionId":"a"}]}`)
	}))
	t.Cleanup(srv.Close)
	s, err := NewNovuSender(NovuConfig{APIKey: fakeNovuKey, BaseURL: srv.URL, Bulk: true})
	if err != nil {
		t.Fatal(err)
	}
	if s.BulkSize() != NovuBulkSize {
		t.Fatalf("BulkSize %d", s.BulkSize())
	}
	items := func(ids ...string) []BulkItem {
		var out []BulkItem
		for _, id := range ids {
			out = append(out, BulkItem{UserID: "u-" + id, Notification: Notification{ID: id, Type: "t"}})
		}
		return out
	}
	got := s.SendBulk(ctxb, items("a", "b", "c", "d"))
	want := []Outcome{OutcomeDelivered, OutcomePermanent, OutcomeRetry, OutcomeDelivered}
	for i, d := range got {
		if d.Outcome != want[i] {
			t.Errorf("item %d: %v (%v), want %v", i, d.Outcome, d.Err, want[i])
		}
	}
	if !strings.Contains(got[1].Err.Error(), "invalid_recipients") {
		t.Errorf("not acknowledged: %v", got[1].Err)
	}
	s.SendBulk(ctxb, items("a", "b", "c", "d"))
	s.SendBulk(ctxb, items("a", "b", "c", "e"))
	if len(keys) != 3 || keys[0] != keys[1] || keys[0] == keys[2] || !strings.HasPrefix(keys[0], "bulk-") {
		t.Errorf("Idempotency-Keys %q: want the same for the same chunk, another for another", keys)
	}
	if off, _ := NewNovuSender(NovuConfig{APIKey: fakeNovuKey, BaseURL: srv.URL}); off.BulkSize() != 0 {
		t.Errorf("bulk off: BulkSize %d", off.BulkSize())
	}
}
