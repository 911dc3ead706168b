package ratelimit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/elevacare/eleva-redis/internal/clock"
)

// mwT0 is one minute past a whole hour, so a one-hour fixed window has 3540s
// left.
var mwT0 = time.Unix(1_700_000_000-1_700_000_000%3600+60, 0)

// mwSetup returns a memory limiter and middleware options on one fake clock
// starting at mwT0. The logger discards, so expected errors stay quiet.
func mwSetup(opts MiddlewareOptions) (Limiter, MiddlewareOptions, *clock.Fake) {
	clk := clock.NewFake(mwT0) // shared by the memory backend and the middleware, so header values are exact
	opts.Now = clk.Now
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return NewMemory(Config{Now: clk.Now}), opts, clk
}

// mwNext is the protected handler: it counts calls and answers 200 "ok".
type mwNext struct {
	mu    sync.Mutex
	calls int
}

func (n *mwNext) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	n.mu.Lock()
	n.calls++
	n.mu.Unlock()
	_, _ = io.WriteString(w, "ok")
}

func (n *mwNext) Calls() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.calls
}

// mwRequest is one request of a scenario.
type mwRequest struct {
	remote string // RemoteAddr; "" means 203.0.113.9:1234
	xff    string // X-Forwarded-For, if any
	user   string // X-User, read by the test's UserID
}

func (q mwRequest) do(h http.Handler) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, "/verify", nil)
	r.RemoteAddr = q.remote
	if r.RemoteAddr == "" {
		r.RemoteAddr = "203.0.113.9:1234"
	}
	if q.xff != "" {
		r.Header.Set("X-Forwarded-For", q.xff)
	}
	if q.user != "" {
		r.Header.Set("X-User", q.user)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// mwUser stands in for the application's session lookup.
func mwUser(r *http.Request) string { return r.Header.Get("X-User") }

func mwPolicy(alg Algorithm, rules ...Rule) Policy {
	for i := range rules {
		rules[i].Algorithm = alg
	}
	return Policy{Name: "verify", Rules: rules}
}

func TestMiddlewareAllowedSetsHeaders(t *testing.T) {
	p := mwPolicy(FixedWindow,
		Rule{Name: "user", Subject: "user", Limit: 3, WindowMs: 3_600_000},
		Rule{Name: "ip", Subject: "ip", Limit: 10, WindowMs: 3_600_000})
	l, opts, _ := mwSetup(MiddlewareOptions{UserID: mwUser})
	next := &mwNext{}
	h := Middleware(l, p, opts)(next)

	w := mwRequest{user: "user-42"}.do(h)
	if w.Code != http.StatusOK || w.Body.String() != "ok" || next.Calls() != 1 {
		t.Fatalf("got %d %q after %d calls of next, want 200 \"ok\" after 1", w.Code, w.Body, next.Calls())
	}
	want := map[string]string{
		"RateLimit-Policy": `"user";q=3;w=3600, "ip";q=10;w=3600`,
		"RateLimit":        `"user";r=2;t=3540`,
		"Retry-After":      "",
	}
	for k, v := range want {
		if got := w.Header().Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	// No identifier may leak into a header.
	for k, vs := range w.Header() {
		for _, v := range vs {
			if strings.Contains(v, "user-42") || strings.Contains(v, "203.0.113.9") {
				t.Errorf("header %s: %q leaks an identifier", k, v)
			}
		}
	}
}

type mwDenyBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	RetryAfterMs *int64 `json:"retryAfterMs"`
}

func TestMiddlewareDeniesOverLimit(t *testing.T) {
	p := mwPolicy(SlidingLog, Rule{Name: "ip", Subject: "ip", Limit: 3, WindowMs: 60_000})
	l, opts, clk := mwSetup(MiddlewareOptions{})
	next := &mwNext{}
	h := Middleware(l, p, opts)(next)

	// Three requests one second apart pass, with r counting down.
	for i := range 3 {
		w := mwRequest{}.do(h)
		if want := fmt.Sprintf(`"ip";r=%d;t=60`, 2-i); w.Code != http.StatusOK || w.Header().Get("RateLimit") != want {
			t.Fatalf("request %d: %d RateLimit %q, want 200 %q", i+1, w.Code, w.Header().Get("RateLimit"), want)
		}
		clk.Advance(time.Second)
	}

	// The fourth, at T0+3s: the oldest unit (T0) leaves the window at T0+60s,
	// so retryAfterMs = 57000, and t and Retry-After say the same in seconds.
	w := mwRequest{}.do(h)
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("4th request: %d, want 429", w.Code)
	}
	if next.Calls() != 3 {
		t.Fatalf("next called %d times, want 3", next.Calls())
	}
	for k, v := range map[string]string{
		"Content-Type":     "application/json",
		"Retry-After":      "57",
		"RateLimit-Policy": `"ip";q=3;w=60`,
		"RateLimit":        `"ip";r=0;t=57`,
	} {
		if got := w.Header().Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	var body mwDenyBody
	dec := json.NewDecoder(bytes.NewReader(w.Body.Bytes()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		t.Fatalf("body %q: %v", w.Body, err)
	}
	if body.Error.Code != "rate_limited" || body.Error.Message == "" || body.RetryAfterMs == nil || *body.RetryAfterMs != 57_000 {
		t.Errorf("body %q: want code rate_limited, a message and retryAfterMs 57000", w.Body)
	}

	// The denial consumed nothing: once the first unit leaves, exactly one
	// more request fits.
	clk.Advance(57 * time.Second) // T0+60s
	if w := (mwRequest{}).do(h); w.Code != http.StatusOK || w.Header().Get("RateLimit") != `"ip";r=0;t=60` {
		t.Fatalf("at T0+60s: %d RateLimit %q, want 200 \"ip\";r=0;t=60", w.Code, w.Header().Get("RateLimit"))
	}
	if w := (mwRequest{}).do(h); w.Code != http.StatusTooManyRequests {
		t.Fatalf("second request at T0+60s: %d, want 429", w.Code)
	}
}

// The user and ip rules are decided together: a request denied by one rule
// consumes nothing from the other.
func TestMiddlewareUserAndIPAllOrNothing(t *testing.T) {
	p := mwPolicy(SlidingLog,
		Rule{Name: "user", Subject: "user", Limit: 2, WindowMs: 60_000},
		Rule{Name: "ip", Subject: "ip", Limit: 3, WindowMs: 60_000})
	l, opts, clk := mwSetup(MiddlewareOptions{UserID: mwUser})
	h := Middleware(l, p, opts)(&mwNext{})

	// One step per second: a rule that just took a unit shows t=60 (back to
	// full capacity when that unit leaves), a rule that denied shows when its
	// oldest unit leaves (the request's RetryAfter).
	const a, b, c = "198.51.100.1:1", "198.51.100.2:1", "198.51.100.3:1"
	steps := []struct {
		req       mwRequest
		want      int
		rateLimit string
	}{
		{mwRequest{remote: a, user: "u1"}, 200, `"user";r=1;t=60`},
		{mwRequest{remote: a, user: "u1"}, 200, `"user";r=0;t=60`},
		// Denied by the user rule; ip A keeps its third unit.
		{mwRequest{remote: a, user: "u1"}, 429, `"user";r=0;t=58`},
		{mwRequest{remote: a, user: "u2"}, 200, `"ip";r=0;t=60`},
		// Denied by the ip rule; u2 keeps its second unit.
		{mwRequest{remote: a, user: "u2"}, 429, `"ip";r=0;t=56`},
		{mwRequest{remote: b, user: "u2"}, 200, `"user";r=0;t=60`},
		{mwRequest{remote: c, user: "u2"}, 429, `"user";r=0;t=57`},
	}
	for i, s := range steps {
		w := s.req.do(h)
		if w.Code != s.want || w.Header().Get("RateLimit") != s.rateLimit {
			t.Fatalf("step %d (%+v): %d RateLimit %q, want %d %q", i+1, s.req, w.Code, w.Header().Get("RateLimit"), s.want, s.rateLimit)
		}
		if got, want := w.Header().Get("RateLimit-Policy"), `"user";q=2;w=60, "ip";q=3;w=60`; got != want {
			t.Fatalf("step %d: RateLimit-Policy %q, want %q", i+1, got, want)
		}
		clk.Advance(time.Second)
	}
}

// A rule whose subject the request lacks is skipped for that request.
func TestMiddlewareSkipsRulesWithoutSubject(t *testing.T) {
	userAndIP := mwPolicy(SlidingLog,
		Rule{Name: "user", Subject: "user", Limit: 1, WindowMs: 60_000},
		Rule{Name: "ip", Subject: "ip", Limit: 5, WindowMs: 60_000})
	tenantOnly := mwPolicy(SlidingLog, Rule{Name: "tenant", Subject: "tenant", Limit: 1, WindowMs: 60_000})
	tenant := func(r *http.Request) map[string]string {
		return map[string]string{"tenant": r.Header.Get("X-Tenant")}
	}
	tests := []struct {
		name   string
		p      Policy
		opts   MiddlewareOptions
		header string // X-Tenant or X-User value
		// wantPolicy is RateLimit-Policy for each of two identical requests
		// and wantCodes their statuses.
		wantPolicy string
		wantCodes  [2]int
	}{
		{"anonymous: ip rule only", userAndIP, MiddlewareOptions{UserID: mwUser}, "", `"ip";q=5;w=60`, [2]int{200, 200}},
		{"no UserID func: ip rule only", userAndIP, MiddlewareOptions{}, "u1", `"ip";q=5;w=60`, [2]int{200, 200}},
		{"with a user both rules", userAndIP, MiddlewareOptions{UserID: mwUser}, "u1", `"user";q=1;w=60, "ip";q=5;w=60`, [2]int{200, 429}},
		{"extra subject present", tenantOnly, MiddlewareOptions{Subjects: tenant}, "acme", `"tenant";q=1;w=60`, [2]int{200, 429}},
		{"no rule applies: passes without headers", tenantOnly, MiddlewareOptions{Subjects: tenant}, "", "", [2]int{200, 200}},
		{"no Subjects func: passes without headers", tenantOnly, MiddlewareOptions{}, "acme", "", [2]int{200, 200}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, opts, _ := mwSetup(tt.opts)
			next := &mwNext{}
			h := Middleware(l, tt.p, opts)(next)
			for i, want := range tt.wantCodes {
				r := httptest.NewRequest(http.MethodGet, "/", nil)
				r.RemoteAddr = "203.0.113.9:1"
				if tt.header != "" {
					r.Header.Set("X-User", tt.header)
					r.Header.Set("X-Tenant", tt.header)
				}
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				if w.Code != want || w.Header().Get("RateLimit-Policy") != tt.wantPolicy {
					t.Fatalf("request %d: %d RateLimit-Policy %q, want %d %q", i+1, w.Code, w.Header().Get("RateLimit-Policy"), want, tt.wantPolicy)
				}
				if (tt.wantPolicy == "") != (w.Header().Get("RateLimit") == "") {
					t.Fatalf("request %d: RateLimit %q with RateLimit-Policy %q", i+1, w.Header().Get("RateLimit"), tt.wantPolicy)
				}
			}
		})
	}
}

// Subjects may replace the built-in "ip" subject.
func TestMiddlewareSubjectsOverrideIP(t *testing.T) {
	p := mwPolicy(SlidingLog, Rule{Name: "ip", Subject: "ip", Limit: 1, WindowMs: 60_000})
	l, opts, _ := mwSetup(MiddlewareOptions{Subjects: func(*http.Request) map[string]string {
		return map[string]string{"ip": "everyone"}
	}})
	h := Middleware(l, p, opts)(&mwNext{})
	if w := (mwRequest{remote: "198.51.100.1:1"}).do(h); w.Code != 200 {
		t.Fatalf("first: %d, want 200", w.Code)
	}
	if w := (mwRequest{remote: "198.51.100.2:1"}).do(h); w.Code != 429 {
		t.Fatalf("second from another address sharing the replaced subject: %d, want 429", w.Code)
	}
}

// Which requests share the "ip" counter, through the middleware. Each case
// sends two requests to a fresh limiter with a 1-per-minute ip rule: the
// second is denied exactly when both resolve to the same client.
func TestMiddlewareClientIP(t *testing.T) {
	trusted := mustProxies(t, "10.0.0.0/8, 2001:db8:ffff::/48")
	tests := []struct {
		name     string
		trusted  bool
		v6bits   int
		first    mwRequest
		second   mwRequest
		sameCntr bool
	}{
		{"spoofed xff from an untrusted peer is ignored", true, 0,
			mwRequest{remote: "198.51.100.7:1", xff: "1.1.1.1"}, mwRequest{remote: "198.51.100.7:2", xff: "2.2.2.2"}, true},
		{"xff ignored without trusted proxies", false, 0,
			mwRequest{remote: "10.0.0.1:1", xff: "1.1.1.1"}, mwRequest{remote: "10.0.0.1:2", xff: "2.2.2.2"}, true},
		{"xff honoured via a trusted proxy", true, 0,
			mwRequest{remote: "10.0.0.1:1", xff: "1.1.1.1"}, mwRequest{remote: "10.0.0.1:2", xff: "2.2.2.2"}, false},
		{"same client via different trusted proxies and hops", true, 0,
			mwRequest{remote: "10.0.0.1:1", xff: "9.9.9.9, 1.1.1.1, 10.0.0.2"}, mwRequest{remote: "10.0.0.3:2", xff: "1.1.1.1, 10.0.0.4, 10.0.0.5"}, true},
		{"client cannot escape by prepending entries", true, 0,
			mwRequest{remote: "10.0.0.1:1", xff: "5.5.5.5, 1.1.1.1"}, mwRequest{remote: "10.0.0.1:2", xff: "6.6.6.6, 1.1.1.1"}, true},
		{"malformed xff falls back to the proxy", true, 0,
			mwRequest{remote: "10.0.0.1:1", xff: "1.1.1.1, junk"}, mwRequest{remote: "10.0.0.1:2", xff: "2.2.2.2, ???"}, true},
		{"ipv4-mapped and plain ipv4 are one client", false, 0,
			mwRequest{remote: "[::ffff:198.51.100.7]:1"}, mwRequest{remote: "198.51.100.7:2"}, true},
		{"ipv6 grouped by /64 by default", false, 0,
			mwRequest{remote: "[2001:db8:1:2::1]:1"}, mwRequest{remote: "[2001:db8:1:2:ffff::9]:1"}, true},
		{"ipv6 in another /64", false, 0,
			mwRequest{remote: "[2001:db8:1:2::1]:1"}, mwRequest{remote: "[2001:db8:1:3::1]:1"}, false},
		{"ipv6 per address with 128", false, 128,
			mwRequest{remote: "[2001:db8:1:2::1]:1"}, mwRequest{remote: "[2001:db8:1:2::2]:1"}, false},
		{"ipv6 grouped by /48", false, 48,
			mwRequest{remote: "[2001:db8:1:2::1]:1"}, mwRequest{remote: "[2001:db8:1:3::1]:1"}, true},
		{"ipv6 client behind a trusted ipv6 proxy", true, 0,
			mwRequest{remote: "[2001:db8:ffff::1]:1", xff: "2001:db8:1:2::1"}, mwRequest{remote: "[2001:db8:ffff::2]:1", xff: "2001:db8:1:2::2, 2001:db8:ffff::3"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mwPolicy(SlidingLog, Rule{Name: "ip", Subject: "ip", Limit: 1, WindowMs: 60_000})
			o := MiddlewareOptions{IPv6PrefixLen: tt.v6bits}
			if tt.trusted {
				o.TrustedProxies = trusted
			}
			l, opts, _ := mwSetup(o)
			h := Middleware(l, p, opts)(&mwNext{})
			if w := tt.first.do(h); w.Code != http.StatusOK {
				t.Fatalf("first request: %d, want 200", w.Code)
			}
			want := http.StatusOK
			if tt.sameCntr {
				want = http.StatusTooManyRequests
			}
			if w := tt.second.do(h); w.Code != want {
				t.Fatalf("second request: %d, want %d", w.Code, want)
			}
		})
	}
}

func TestMiddlewareCost(t *testing.T) {
	// Fixed window: mwT0 starts a minute, so t is 60 throughout.
	p := mwPolicy(FixedWindow, Rule{Name: "ip", Subject: "ip", Limit: 3, WindowMs: 60_000})
	l, opts, _ := mwSetup(MiddlewareOptions{Cost: func(r *http.Request) int {
		if r.Method == http.MethodPost {
			return 2
		}
		return 0 // means 1
	}})
	h := Middleware(l, p, opts)(&mwNext{})
	steps := []struct {
		method    string
		want      int
		rateLimit string
	}{
		{http.MethodPost, 200, `"ip";r=1;t=60`},
		{http.MethodPost, 429, `"ip";r=1;t=60`}, // 2 do not fit in 1; nothing taken
		{http.MethodGet, 200, `"ip";r=0;t=60`},
	}
	for i, s := range steps {
		r := httptest.NewRequest(s.method, "/", nil)
		r.RemoteAddr = "203.0.113.9:1"
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != s.want || w.Header().Get("RateLimit") != s.rateLimit {
			t.Fatalf("step %d: %d RateLimit %q, want %d %q", i+1, w.Code, w.Header().Get("RateLimit"), s.want, s.rateLimit)
		}
	}
}

// mwErrLimiter is a Limiter whose AllowAll fails with err, standing in for a
// backend that can produce no decision at all.
type mwErrLimiter struct {
	Limiter
	err error
}

func (e mwErrLimiter) AllowAll(context.Context, ...Check) (Result, error) {
	return Result{}, e.err
}

func TestMiddlewareErrors(t *testing.T) {
	valid := mwPolicy(SlidingLog, Rule{Name: "ip", Subject: "ip", Limit: 3, WindowMs: 60_000})
	tests := []struct {
		name     string
		p        Policy
		limiter  func(Limiter) Limiter
		cost     int
		wantCode int
		wantErr  string
	}{
		{"backend unavailable", valid, func(l Limiter) Limiter { return mwErrLimiter{l, fmt.Errorf("redis: %w", ErrBackend)} }, 0, 503, "unavailable"},
		{"unexpected limiter error", valid, func(l Limiter) Limiter { return mwErrLimiter{l, errors.New("boom")} }, 0, 500, "internal"},
		{"invalid policy", mwPolicy(SlidingLog, Rule{Name: "ip", Subject: "ip", Limit: 0, WindowMs: 60_000}), nil, 0, 500, "internal"},
		{"duplicate rule names", mwPolicy(SlidingLog, Rule{Name: "a", Subject: "ip", Limit: 1, WindowMs: 1000}, Rule{Name: "a", Subject: "ip", Limit: 1, WindowMs: 1000}), nil, 0, 500, "internal"},
		{"negative cost", valid, nil, -1, 500, "internal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			l, opts, _ := mwSetup(MiddlewareOptions{
				Cost:   func(*http.Request) int { return tt.cost },
				Logger: slog.New(slog.NewTextHandler(&logs, nil)),
			})
			if tt.limiter != nil {
				l = tt.limiter(l)
			}
			next := &mwNext{}
			w := mwRequest{}.do(Middleware(l, tt.p, opts)(next))
			if w.Code != tt.wantCode || next.Calls() != 0 {
				t.Fatalf("got %d with %d calls of next, want %d and none", w.Code, next.Calls(), tt.wantCode)
			}
			var body struct {
				Error struct{ Code, Message string } `json:"error"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Error.Code != tt.wantErr || body.Error.Message == "" {
				t.Fatalf("body %q (%v), want error code %q with a message", w.Body, err, tt.wantErr)
			}
			if ct := w.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if w.Header().Get("RateLimit") != "" || w.Header().Get("Retry-After") != "" {
				t.Errorf("rate-limit headers without a decision: %v", w.Header())
			}
			if strings.Contains(w.Body.String(), "boom") || strings.Contains(w.Body.String(), "limit must be") {
				t.Errorf("body %q exposes the internal error", w.Body)
			}
			if logs.Len() == 0 {
				t.Errorf("error not logged")
			}
			if strings.Contains(logs.String(), "203.0.113.9") {
				t.Errorf("log exposes the client IP: %s", logs.String())
			}
		})
	}
}

func TestSetHeaders(t *testing.T) {
	now := mwT0
	at := func(d time.Duration) time.Time { return now.Add(d) }
	hour := Limit{Limit: 3, Window: time.Hour}
	tests := []struct {
		name       string
		names      []string
		limits     []Limit
		decisions  []Decision
		wantPolicy string
		wantRL     string
		wantT      int64
	}{
		{"single rule", []string{"user"}, []Limit{hour},
			[]Decision{{Allowed: true, Remaining: 2, ResetAt: at(3540 * time.Second)}},
			`"user";q=3;w=3600`, `"user";r=2;t=3540`, 3540},
		{"lowest remaining wins", []string{"user", "ip"}, []Limit{hour, {Limit: 10, Window: time.Hour}},
			[]Decision{{Allowed: true, Remaining: 2, ResetAt: at(3540 * time.Second)}, {Allowed: true, Remaining: 9, ResetAt: at(3599 * time.Second)}},
			`"user";q=3;w=3600, "ip";q=10;w=3600`, `"user";r=2;t=3540`, 3540},
		{"lowest remaining wins, second", []string{"user", "ip"}, []Limit{hour, {Limit: 10, Window: time.Hour}},
			[]Decision{{Allowed: true, Remaining: 2}, {Allowed: true, Remaining: 1, ResetAt: at(10 * time.Second)}},
			`"user";q=3;w=3600, "ip";q=10;w=3600`, `"ip";r=1;t=10`, 10},
		{"tie on remaining: longest t", []string{"a", "b", "c"}, []Limit{hour, hour, hour},
			[]Decision{{Allowed: true, ResetAt: at(5 * time.Second)}, {Allowed: true, ResetAt: at(50 * time.Second)}, {Allowed: true, ResetAt: at(7 * time.Second)}},
			`"a";q=3;w=3600, "b";q=3;w=3600, "c";q=3;w=3600`, `"b";r=0;t=50`, 50},
		{"a denying rule beats an allowing one", []string{"a", "b"}, []Limit{hour, hour},
			[]Decision{{Allowed: true, Remaining: 0, ResetAt: at(5 * time.Second)}, {Allowed: false, Remaining: 1, ResetAt: at(9 * time.Second), RetryAfter: 3 * time.Second}},
			`"a";q=3;w=3600, "b";q=3;w=3600`, `"b";r=1;t=3`, 3},
		{"t rounds up", []string{"a"}, []Limit{hour},
			[]Decision{{Allowed: true, Remaining: 1, ResetAt: at(1200 * time.Millisecond)}},
			`"a";q=3;w=3600`, `"a";r=1;t=2`, 2},
		{"sub-second t is 1", []string{"a"}, []Limit{hour},
			[]Decision{{Allowed: true, Remaining: 1, ResetAt: at(time.Microsecond)}},
			`"a";q=3;w=3600`, `"a";r=1;t=1`, 1},
		{"reset in the past is 0", []string{"a"}, []Limit{hour},
			[]Decision{{Allowed: true, Remaining: 3, ResetAt: at(-time.Minute)}},
			`"a";q=3;w=3600`, `"a";r=3;t=0`, 0},
		{"window rounds up, at least 1", []string{"a", "b"}, []Limit{{Limit: 5, Window: 1500 * time.Millisecond}, {Limit: 5, Window: time.Millisecond}},
			[]Decision{{Allowed: true, Remaining: 4, ResetAt: at(time.Second)}, {Allowed: true, Remaining: 4, ResetAt: at(time.Second)}},
			`"a";q=5;w=2, "b";q=5;w=1`, `"a";r=4;t=1`, 1},
		{"names are escaped sf-strings", []string{`a"b\c`, "é\n"}, []Limit{hour, hour},
			[]Decision{{Allowed: true, Remaining: 1}, {Allowed: true, Remaining: 0}},
			`"a\"b\\c";q=3;w=3600, "???";q=3;w=3600`, `"???";r=0;t=0`, 0},
		{"negative remaining is 0", []string{"a"}, []Limit{hour},
			[]Decision{{Remaining: -4, ResetAt: at(time.Hour), RetryAfter: 300 * time.Millisecond}},
			`"a";q=3;w=3600`, `"a";r=0;t=1`, 1},
		{"mismatched lengths set nothing", []string{"a", "b"}, []Limit{hour},
			[]Decision{{Remaining: 1}}, "", "", 0},
		{"no rules set nothing", nil, nil, nil, "", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			gotT := SetHeaders(h, now, tt.names, tt.limits, tt.decisions)
			if gotT != tt.wantT || h.Get("RateLimit-Policy") != tt.wantPolicy || h.Get("RateLimit") != tt.wantRL {
				t.Fatalf("got t=%d\n RateLimit-Policy: %s\n RateLimit: %s\nwant t=%d\n RateLimit-Policy: %s\n RateLimit: %s",
					gotT, h.Get("RateLimit-Policy"), h.Get("RateLimit"), tt.wantT, tt.wantPolicy, tt.wantRL)
			}
		})
	}
}

func TestSetHeaderReplaces(t *testing.T) {
	h := http.Header{}
	h.Set("RateLimit", `"old";r=9;t=9`)
	h.Add("RateLimit-Policy", `"old";q=9;w=9`)
	h.Add("RateLimit-Policy", `"older";q=9;w=9`)
	got := SetHeader(h, mwT0, "ip", Limit{Limit: 10, Window: time.Minute}, Decision{Allowed: true, Remaining: 7, ResetAt: mwT0.Add(42 * time.Second)})
	if got != 42 || len(h.Values("RateLimit-Policy")) != 1 || h.Get("RateLimit-Policy") != `"ip";q=10;w=60` || h.Get("RateLimit") != `"ip";r=7;t=42` {
		t.Fatalf("t=%d headers %v", got, h)
	}
}
