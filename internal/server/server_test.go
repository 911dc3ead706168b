package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	elevaredis "github.com/elevacare/eleva-redis"
	"github.com/elevacare/eleva-redis/cache"
	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/internal/testlog"
	"github.com/elevacare/eleva-redis/lock"
	"github.com/elevacare/eleva-redis/notify"
	"github.com/elevacare/eleva-redis/ratelimit"
	"github.com/elevacare/eleva-redis/session"
	"github.com/elevacare/eleva-redis/tempdata"
)

func TestMain(m *testing.M) { os.Exit(redistest.Run(m)) }

// testEnv is a server on the memory limiter plus what the tests inspect.
type testEnv struct {
	t        *testing.T
	h        http.Handler
	deps     Deps
	logs     *testlog.Buffer
	registry *prometheus.Registry
}

// newEnv builds a server; deps.Limiter, Locks, Temp, Sessions, Cache and
// Notify default to fresh memory backends.
func newEnv(t *testing.T, deps Deps) *testEnv {
	t.Helper()
	return newEnvLogs(t, deps, &testlog.Buffer{})
}

// newEnvLogs is newEnv with the log sink: deps.Logger, when set, must write
// to logs.
func newEnvLogs(t *testing.T, deps Deps, logs *testlog.Buffer) *testEnv {
	t.Helper()
	if deps.Limiter == nil {
		deps.Limiter = ratelimit.NewMemory(ratelimit.Config{})
	}
	if deps.Locks == nil {
		deps.Locks = lock.NewMemory(lock.Config{})
	}
	if deps.Temp == nil {
		deps.Temp = tempdata.NewMemory(tempdata.Config{})
	}
	if deps.Sessions == nil {
		deps.Sessions = session.NewMemory(session.Config{})
	}
	if deps.Cache == nil {
		store := cache.NewMemoryStore(cache.StoreConfig{})
		t.Cleanup(store.Close)
		deps.Cache = store
	}
	if deps.Notify == nil {
		deps.Notify = notify.NewMemory(notify.Config{})
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if deps.Registry == nil {
		deps.Registry = prometheus.NewRegistry()
	}
	return &testEnv{t: t, h: New(deps), deps: deps, logs: logs, registry: deps.Registry}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// json decodes the body as an object.
func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("body is not a JSON object: %v: %q", err, r.body)
	}
	return m
}

// errorOf returns the error object of an error answer.
func (r response) errorOf(t *testing.T) (code, field string) {
	t.Helper()
	e, ok := r.json(t)["error"].(map[string]any)
	if !ok {
		t.Fatalf("no error object in %s", r.body)
	}
	code, _ = e["code"].(string)
	field, _ = e["field"].(string)
	if msg, _ := e["message"].(string); msg == "" {
		t.Errorf("error without message: %s", r.body)
	}
	return code, field
}

// request options: extra headers as "Name: value", or "remote=ip:port".
func (e *testEnv) do(method, path, body string, opts ...string) response {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, rd)
	req.RemoteAddr = "127.0.0.1:40000"
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for _, o := range opts {
		if addr, ok := strings.CutPrefix(o, "remote="); ok {
			req.RemoteAddr = addr
			continue
		}
		k, v, _ := strings.Cut(o, ":")
		if v = strings.TrimSpace(v); v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	res := response{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
	// Every answer must be what the OpenAPI document says this route answers.
	checkDocumented(e.t, method, path, res)
	return res
}

func (e *testEnv) mustStatus(res response, want int) {
	e.t.Helper()
	if res.status != want {
		e.t.Fatalf("status %d, want %d; body %s", res.status, want, res.body)
	}
}

func num(t *testing.T, m map[string]any, k string) int64 {
	t.Helper()
	n, ok := m[k].(json.Number)
	if !ok {
		t.Fatalf("%s is %T (%v), want a number in %v", k, m[k], m[k], m)
	}
	i, err := n.Int64()
	if err != nil {
		t.Fatalf("%s = %s is not an integer", k, n)
	}
	return i
}

func TestRateLimitEndpoints(t *testing.T) {
	type step struct {
		path, body string
		status     int
		// want: expected values of the response fields (allowed, limit, remaining, retryAfterMs>0).
		allowed   bool
		limit     int64
		remaining int64
		retry     bool // retryAfterMs > 0 and Retry-After present
		// q is the RateLimit-Policy quota when it is not limit: the rule's
		// limit, where limit is a GCRA decision's capacity (burst).
		q int64
	}
	tests := []struct {
		name  string
		steps []step
		// resetWithin bounds resetAt - now: the window, or for GCRA the
		// time to refill the burst; 0 means one hour.
		resetWithin time.Duration
	}{
		{"sliding-log allow then deny", []step{
			{"/v1/ratelimit/allow", `{"key":"user:42","limit":2,"windowMs":60000}`, 200, true, 2, 1, false, 0},
			{"/v1/ratelimit/allow", `{"key":"user:42","limit":2,"windowMs":60000}`, 200, true, 2, 0, false, 0},
			{"/v1/ratelimit/allow", `{"key":"user:42","limit":2,"windowMs":60000}`, 200, false, 2, 0, true, 0},
		}, 0},
		{"cost above what is left is denied and takes nothing", []step{
			{"/v1/ratelimit/allow", `{"key":"k","limit":5,"windowMs":60000,"cost":3}`, 200, true, 5, 2, false, 0},
			{"/v1/ratelimit/allow", `{"key":"k","limit":5,"windowMs":60000,"cost":3}`, 200, false, 5, 2, true, 0},
			{"/v1/ratelimit/allow", `{"key":"k","limit":5,"windowMs":60000,"cost":2}`, 200, true, 5, 0, false, 0},
		}, 0},
		{"peek consumes nothing", []step{
			{"/v1/ratelimit/peek", `{"key":"p","limit":1,"windowMs":60000}`, 200, true, 1, 1, false, 0},
			{"/v1/ratelimit/peek", `{"key":"p","limit":1,"windowMs":60000}`, 200, true, 1, 1, false, 0},
			{"/v1/ratelimit/allow", `{"key":"p","limit":1,"windowMs":60000}`, 200, true, 1, 0, false, 0},
			{"/v1/ratelimit/peek", `{"key":"p","limit":1,"windowMs":60000}`, 200, false, 1, 0, true, 0},
		}, 0},
		{"record counts over the limit", []step{
			{"/v1/ratelimit/record", `{"key":"r","limit":1,"windowMs":60000,"algorithm":"fixed-window"}`, 200, true, 1, 0, false, 0},
			{"/v1/ratelimit/record", `{"key":"r","limit":1,"windowMs":60000,"algorithm":"fixed-window","cost":2}`, 200, false, 1, 0, true, 0},
			{"/v1/ratelimit/allow", `{"key":"r","limit":3,"windowMs":60000,"algorithm":"fixed-window"}`, 200, false, 3, 0, true, 0},
		}, 0},
		{"reset forgets the state", []step{
			{"/v1/ratelimit/allow", `{"key":"x","limit":1,"windowMs":60000,"algorithm":"sliding-window"}`, 200, true, 1, 0, false, 0},
			{"/v1/ratelimit/allow", `{"key":"x","limit":1,"windowMs":60000,"algorithm":"sliding-window"}`, 200, false, 1, 0, true, 0},
			{"/v1/ratelimit/reset", `{"key":"x"}`, 204, false, 0, 0, false, 0},
			{"/v1/ratelimit/allow", `{"key":"x","limit":1,"windowMs":60000,"algorithm":"sliding-window"}`, 200, true, 1, 0, false, 0},
		}, 0},
		{"gcra reports its burst as the limit", []step{
			{"/v1/ratelimit/allow", `{"key":"g","limit":1,"windowMs":3600000,"algorithm":"gcra","burst":3}`, 200, true, 3, 2, false, 1},
			{"/v1/ratelimit/allow", `{"key":"g","limit":1,"windowMs":3600000,"algorithm":"gcra","burst":3,"cost":2}`, 200, true, 3, 0, false, 1},
			{"/v1/ratelimit/peek", `{"key":"g","limit":1,"windowMs":3600000,"algorithm":"gcra","burst":3}`, 200, false, 3, 0, true, 1},
		}, 3 * time.Hour},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, Deps{})
			within := tc.resetWithin
			if within == 0 {
				within = time.Hour
			}
			for i, st := range tc.steps {
				before := time.Now()
				res := e.do(http.MethodPost, st.path, st.body)
				if res.status != st.status {
					t.Fatalf("step %d: status %d, want %d: %s", i, res.status, st.status, res.body)
				}
				if st.status == http.StatusNoContent {
					if len(res.body) != 0 {
						t.Fatalf("step %d: 204 with a body %q", i, res.body)
					}
					continue
				}
				m := res.json(t)
				if got := m["allowed"]; got != st.allowed {
					t.Fatalf("step %d: allowed = %v, want %v (%s)", i, got, st.allowed, res.body)
				}
				if got := num(t, m, "limit"); got != st.limit {
					t.Errorf("step %d: limit = %d, want %d", i, got, st.limit)
				}
				if got := num(t, m, "remaining"); got != st.remaining {
					t.Errorf("step %d: remaining = %d, want %d", i, got, st.remaining)
				}
				if _, ok := m["degraded"]; ok {
					t.Errorf("step %d: degraded present on a healthy backend: %s", i, res.body)
				}
				resetAt := num(t, m, "resetAt")
				if resetAt < before.UnixMilli() || resetAt > time.Now().Add(within+time.Second).UnixMilli() {
					t.Errorf("step %d: resetAt %d not within [now, now+window]", i, resetAt)
				}
				retry := num(t, m, "retryAfterMs")
				if st.retry != (retry > 0) {
					t.Errorf("step %d: retryAfterMs = %d, want >0: %v", i, retry, st.retry)
				}
				q := st.q
				if q == 0 {
					q = st.limit
				}
				checkRateLimitHeaders(t, res, "default", q, st.remaining, retry)
			}
		})
	}
}

var (
	policyHeaderRE = regexp.MustCompile(`^"([^"]*)";q=(\d+);w=(\d+)$`)
	limitHeaderRE  = regexp.MustCompile(`^"([^"]*)";r=(\d+);t=(\d+)$`)
)

// checkRateLimitHeaders checks the draft RateLimit fields of a single-rule
// answer and Retry-After (present exactly when retryMs > 0).
func checkRateLimitHeaders(t *testing.T, res response, name string, q, remaining, retryMs int64) {
	t.Helper()
	pm := policyHeaderRE.FindStringSubmatch(res.header.Get("RateLimit-Policy"))
	if pm == nil || pm[1] != name || pm[2] != strconv.FormatInt(q, 10) {
		t.Errorf("RateLimit-Policy = %q, want \"%s\";q=%d;w=...", res.header.Get("RateLimit-Policy"), name, q)
	}
	lm := limitHeaderRE.FindStringSubmatch(res.header.Get("RateLimit"))
	if lm == nil || lm[1] != name || lm[2] != strconv.FormatInt(remaining, 10) {
		t.Errorf("RateLimit = %q, want \"%s\";r=%d;t=...", res.header.Get("RateLimit"), name, remaining)
	}
	ra := res.header.Get("Retry-After")
	if retryMs == 0 {
		if ra != "" {
			t.Errorf("Retry-After %q on an allowed answer", ra)
		}
		return
	}
	secs, err := strconv.ParseInt(ra, 10, 64)
	if err != nil || secs*1000 < retryMs {
		t.Errorf("Retry-After = %q, want whole seconds >= retryAfterMs %d rounded up", ra, retryMs)
	}
	if lm != nil {
		if tv, _ := strconv.ParseInt(lm[3], 10, 64); secs < tv {
			t.Errorf("Retry-After %d earlier than RateLimit t=%d", secs, tv)
		}
	}
}

// TestBadInput covers every bad-input case of Acceptance 6: the documented
// status, code and field, never a 5xx.
func TestBadInput(t *testing.T) {
	const allow = "/v1/ratelimit/allow"
	big := `{"key":"` + strings.Repeat("a", 2048) + `","limit":1,"windowMs":1000}`
	tests := []struct {
		name, path, body string
		opts             []string
		status           int
		code, field      string
	}{
		{"zero limit", allow, `{"key":"k","limit":0,"windowMs":1000}`, nil, 400, "invalid_argument", "limit"},
		{"negative limit", allow, `{"key":"k","limit":-5,"windowMs":1000}`, nil, 400, "invalid_argument", "limit"},
		{"zero window", allow, `{"key":"k","limit":1,"windowMs":0}`, nil, 400, "invalid_argument", "windowMs"},
		{"negative window", allow, `{"key":"k","limit":1,"windowMs":-1}`, nil, 400, "invalid_argument", "windowMs"},
		{"window over a year", allow, `{"key":"k","limit":1,"windowMs":99999999999999}`, nil, 400, "invalid_argument", "windowMs"},
		{"unknown algorithm", allow, `{"key":"k","limit":1,"windowMs":1000,"algorithm":"leaky"}`, nil, 400, "invalid_argument", "algorithm"},
		{"sliding-log above 10000", allow, `{"key":"k","limit":10001,"windowMs":1000}`, nil, 400, "invalid_argument", "limit"},
		{"explicit sliding-log above 10000", "/v1/ratelimit/peek", `{"key":"k","limit":10001,"windowMs":1000,"algorithm":"sliding-log"}`, nil, 400, "invalid_argument", "limit"},
		{"unknown field", allow, `{"key":"k","limit":1,"windowMs":1000,"limt":2}`, nil, 400, "invalid_argument", "limt"},
		{"cost on peek is unknown", "/v1/ratelimit/peek", `{"key":"k","limit":1,"windowMs":1000,"cost":1}`, nil, 400, "invalid_argument", "cost"},
		{"missing key", allow, `{"limit":1,"windowMs":1000}`, nil, 400, "invalid_argument", "key"},
		{"empty key", allow, `{"key":"","limit":1,"windowMs":1000}`, nil, 400, "invalid_argument", "key"},
		{"null key", allow, `{"key":null,"limit":1,"windowMs":1000}`, nil, 400, "invalid_argument", "key"},
		{"missing limit", allow, `{"key":"k","windowMs":1000}`, nil, 400, "invalid_argument", "limit"},
		{"missing window", allow, `{"key":"k","limit":1}`, nil, 400, "invalid_argument", "windowMs"},
		{"zero cost", allow, `{"key":"k","limit":1,"windowMs":1000,"cost":0}`, nil, 400, "invalid_argument", "cost"},
		{"negative cost", "/v1/ratelimit/record", `{"key":"k","limit":1,"windowMs":1000,"cost":-1}`, nil, 400, "invalid_argument", "cost"},
		{"negative burst", allow, `{"key":"k","limit":1,"windowMs":1000,"algorithm":"gcra","burst":-1}`, nil, 400, "invalid_argument", "burst"},
		{"limit is a string", allow, `{"key":"k","limit":"10","windowMs":1000}`, nil, 400, "invalid_argument", "limit"},
		{"limit is fractional", allow, `{"key":"k","limit":1.5,"windowMs":1000}`, nil, 400, "invalid_argument", "limit"},
		{"limit overflows", allow, `{"key":"k","limit":1e30,"windowMs":1000}`, nil, 400, "invalid_argument", "limit"},
		{"key is a number", allow, `{"key":42,"limit":1,"windowMs":1000}`, nil, 400, "invalid_argument", "key"},
		{"cost is a bool", allow, `{"key":"k","limit":1,"windowMs":1000,"cost":true}`, nil, 400, "invalid_argument", "cost"},
		{"body is an array", allow, `[1,2]`, nil, 400, "invalid_argument", ""},
		{"trailing garbage", allow, `{"key":"k","limit":1,"windowMs":1000} xyz`, nil, 400, "invalid_argument", ""},
		{"two objects", allow, `{"key":"k","limit":1,"windowMs":1000}{}`, nil, 400, "invalid_argument", ""},
		{"malformed", allow, `{"key":"k",`, nil, 400, "invalid_argument", ""},
		{"syntax error", allow, `{"key" "k"}`, nil, 400, "invalid_argument", ""},
		{"empty body", allow, ``, nil, 400, "invalid_argument", ""},
		{"not JSON content type", allow, `{"key":"k","limit":1,"windowMs":1000}`, []string{"Content-Type: text/plain"}, 400, "invalid_argument", ""},
		{"body over the limit", allow, big, nil, 413, "payload_too_large", ""},
		{"trailing data over the limit", allow, `{"key":"k","limit":1,"windowMs":1000}` + strings.Repeat(" ", 1024) + "x", nil, 413, "payload_too_large", ""},
		{"reset without key", "/v1/ratelimit/reset", `{}`, nil, 400, "invalid_argument", "key"},
		{"reset unknown field", "/v1/ratelimit/reset", `{"key":"k","all":true}`, nil, 400, "invalid_argument", "all"},
		{"no API key", allow, `{"key":"k","limit":1,"windowMs":1000}`, []string{"Authorization:"}, 401, "unauthorized", ""},
		{"wrong API key", allow, `{"key":"k","limit":1,"windowMs":1000}`, []string{"Authorization: Bearer nope"}, 401, "unauthorized", ""},
		{"wrong scheme", allow, `{"key":"k","limit":1,"windowMs":1000}`, []string{"Authorization: Basic " + testKey}, 401, "unauthorized", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, Deps{APIKeys: []string{testKey}, MaxBodyBytes: 1024})
			opts := append([]string{"Authorization: Bearer " + testKey}, tc.opts...)
			res := e.do(http.MethodPost, tc.path, tc.body, opts...)
			e.mustStatus(res, tc.status)
			code, field := res.errorOf(t)
			if code != tc.code || field != tc.field {
				t.Fatalf("error code=%q field=%q, want code=%q field=%q (%s)", code, field, tc.code, tc.field, res.body)
			}
			if ct := res.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q", ct)
			}
		})
	}
}

const testKey = "test-key-0123456789abcdef"

func TestAuth(t *testing.T) {
	const body = `{"key":"k","limit":100,"windowMs":1000}`
	keyed := newEnv(t, Deps{APIKeys: []string{"first-key-aaaaaaaaaaaa", testKey}})
	open := newEnv(t, Deps{})
	tests := []struct {
		name   string
		env    *testEnv
		method string
		path   string
		opts   []string
		status int
	}{
		{"first key", keyed, "POST", "/v1/ratelimit/allow", []string{"Authorization: Bearer first-key-aaaaaaaaaaaa", "remote=203.0.113.9:5000"}, 200},
		{"second key", keyed, "POST", "/v1/ratelimit/allow", []string{"Authorization: Bearer " + testKey, "remote=203.0.113.9:5000"}, 200},
		{"scheme is case-insensitive", keyed, "POST", "/v1/ratelimit/allow", []string{"Authorization: bearer " + testKey}, 200},
		{"prefix of a key", keyed, "POST", "/v1/ratelimit/allow", []string{"Authorization: Bearer " + testKey[:10]}, 401},
		{"key plus suffix", keyed, "POST", "/v1/ratelimit/allow", []string{"Authorization: Bearer " + testKey + "x"}, 401},
		{"no header even from loopback", keyed, "POST", "/v1/ratelimit/allow", nil, 401},
		{"GET policies needs a key", keyed, "GET", "/v1/ratelimit/policies", nil, 401},
		{"healthz is open", keyed, "GET", "/healthz", []string{"remote=203.0.113.9:5000"}, 200},
		{"readyz is open", keyed, "GET", "/readyz", []string{"remote=203.0.113.9:5000"}, 200},
		{"metrics is open", keyed, "GET", "/metrics", []string{"remote=203.0.113.9:5000"}, 200},
		{"openapi is open", keyed, "GET", "/openapi.json", []string{"remote=203.0.113.9:5000"}, 200},

		{"no keys: IPv4 loopback", open, "POST", "/v1/ratelimit/allow", []string{"remote=127.0.0.1:5000"}, 200},
		{"no keys: other 127/8 address", open, "POST", "/v1/ratelimit/allow", []string{"remote=127.1.2.3:5000"}, 200},
		{"no keys: IPv6 loopback", open, "POST", "/v1/ratelimit/allow", []string{"remote=[::1]:5000"}, 200},
		{"no keys: remote client", open, "POST", "/v1/ratelimit/allow", []string{"remote=203.0.113.9:5000"}, 401},
		{"no keys: remote client with a bearer", open, "POST", "/v1/ratelimit/allow", []string{"remote=203.0.113.9:5000", "Authorization: Bearer anything"}, 401},
		{"no keys: X-Forwarded-For is not trusted", open, "POST", "/v1/ratelimit/allow", []string{"remote=203.0.113.9:5000", "X-Forwarded-For: 127.0.0.1"}, 401},
		{"no keys: remote healthz", open, "GET", "/healthz", []string{"remote=203.0.113.9:5000"}, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := ""
			if tc.method == http.MethodPost {
				b = body
			}
			res := tc.env.do(tc.method, tc.path, b, tc.opts...)
			tc.env.mustStatus(res, tc.status)
			if tc.status == http.StatusUnauthorized {
				if code, _ := res.errorOf(t); code != "unauthorized" {
					t.Fatalf("code %q", code)
				}
			}
		})
	}
}

func testPolicies(t *testing.T) ratelimit.Policies {
	t.Helper()
	ps, err := ratelimit.ParsePolicies([]byte(`{
		"login": {"rules": [
			{"name": "user", "subject": "user", "limit": 2, "windowMs": 3600000},
			{"name": "ip", "subject": "ip", "limit": 1, "windowMs": 60000, "algorithm": "fixed-window"}],
		 "onBackendError": "closed"},
		"search": {"rules": [{"name": "ip", "subject": "ip", "limit": 100, "windowMs": 1000, "algorithm": "gcra", "burst": 10}]}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

func TestPolicyAllow(t *testing.T) {
	e := newEnv(t, Deps{Policies: testPolicies(t)})
	allow := func(body string) (response, map[string]any) {
		t.Helper()
		res := e.do(http.MethodPost, "/v1/ratelimit/policies/login/allow", body)
		e.mustStatus(res, 200)
		return res, res.json(t)
	}
	decisions := func(m map[string]any) map[string]map[string]any {
		out := map[string]map[string]any{}
		for _, d := range m["decisions"].([]any) {
			dm := d.(map[string]any)
			out[dm["rule"].(string)] = dm
		}
		return out
	}

	// 1: both rules allow.
	res, m := allow(`{"subjects":{"user":"alice","ip":"203.0.113.9"}}`)
	if m["allowed"] != true || num(t, m, "retryAfterMs") != 0 {
		t.Fatalf("first call: %s", res.body)
	}
	if got := res.header.Get("RateLimit-Policy"); got != `"user";q=2;w=3600, "ip";q=1;w=60` {
		t.Errorf("RateLimit-Policy = %q", got)
	}
	if res.header.Get("Retry-After") != "" {
		t.Error("Retry-After on an allowed call")
	}
	// 2: the ip rule denies, so the user rule must not be consumed either.
	res, m = allow(`{"subjects":{"user":"alice","ip":"203.0.113.9"}}`)
	d := decisions(m)
	if m["allowed"] != false || d["ip"]["allowed"] != false || d["user"]["allowed"] != true {
		t.Fatalf("second call: %s", res.body)
	}
	if num(t, m, "retryAfterMs") <= 0 || res.header.Get("Retry-After") == "" {
		t.Errorf("denied without a retry time: %s %v", res.body, res.header)
	}
	if got := res.header.Get("RateLimit"); !strings.HasPrefix(got, `"ip";r=0;t=`) {
		t.Errorf("RateLimit = %q, want the denying ip rule", got)
	}
	// 3: from another ip alice still has one unit: call 2 consumed nothing.
	_, m = allow(`{"subjects":{"user":"alice","ip":"198.51.100.1"},"cost":1}`)
	if m["allowed"] != true || num(t, decisions(m)["user"], "remaining") != 0 {
		t.Fatalf("third call: %v", m)
	}
	// 4: now the user rule denies.
	_, m = allow(`{"subjects":{"user":"alice","ip":"198.51.100.2"}}`)
	if d := decisions(m); m["allowed"] != false || d["user"]["allowed"] != false || d["ip"]["allowed"] != true {
		t.Fatalf("fourth call: %v", m)
	}

	bad := []struct {
		name, path, body string
		status           int
		code, field      string
	}{
		{"unknown policy", "/v1/ratelimit/policies/nope/allow", `{"subjects":{"ip":"x"}}`, 404, "not_found", ""},
		{"escaped unknown policy", "/v1/ratelimit/policies/a%2Fb/allow", `{"subjects":{"ip":"x"}}`, 404, "not_found", ""},
		{"missing subjects", "/v1/ratelimit/policies/login/allow", `{}`, 400, "invalid_argument", "subjects"},
		{"missing subject", "/v1/ratelimit/policies/login/allow", `{"subjects":{"user":"bob"}}`, 400, "invalid_argument", "subjects.ip"},
		{"empty subject", "/v1/ratelimit/policies/login/allow", `{"subjects":{"user":"","ip":"x"}}`, 400, "invalid_argument", "subjects.user"},
		{"subject of the wrong type", "/v1/ratelimit/policies/login/allow", `{"subjects":{"user":42,"ip":"x"}}`, 400, "invalid_argument", "subjects.user"},
		{"subjects not an object", "/v1/ratelimit/policies/login/allow", `{"subjects":["user"]}`, 400, "invalid_argument", "subjects"},
		{"zero cost", "/v1/ratelimit/policies/login/allow", `{"subjects":{"user":"bob","ip":"x"},"cost":0}`, 400, "invalid_argument", "cost"},
		{"unknown field", "/v1/ratelimit/policies/login/allow", `{"subjects":{"user":"bob","ip":"x"},"rules":[]}`, 400, "invalid_argument", "rules"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			res := e.do(http.MethodPost, tc.path, tc.body)
			e.mustStatus(res, tc.status)
			if code, field := res.errorOf(t); code != tc.code || field != tc.field {
				t.Fatalf("code=%q field=%q, want %q %q", code, field, tc.code, tc.field)
			}
		})
	}
}

func TestPolicyList(t *testing.T) {
	e := newEnv(t, Deps{Policies: testPolicies(t), OnBackendError: ratelimit.FailOpen})
	res := e.do(http.MethodGet, "/v1/ratelimit/policies", "")
	e.mustStatus(res, 200)
	var got struct {
		Policies []policyView `json:"policies"`
	}
	if err := json.Unmarshal(res.body, &got); err != nil {
		t.Fatal(err)
	}
	want := []policyView{
		{Name: "login", OnBackendError: "closed", Rules: []ruleView{
			{Name: "user", Subject: "user", Limit: 2, WindowMs: 3600000, Algorithm: "sliding-log"},
			{Name: "ip", Subject: "ip", Limit: 1, WindowMs: 60000, Algorithm: "fixed-window"}}},
		{Name: "search", OnBackendError: "open", Rules: []ruleView{
			{Name: "ip", Subject: "ip", Limit: 100, WindowMs: 1000, Algorithm: "gcra", Burst: 10}}},
	}
	gj, _ := json.Marshal(got.Policies)
	wj, _ := json.Marshal(want)
	if !bytes.Equal(gj, wj) {
		t.Fatalf("policies\n got %s\nwant %s", gj, wj)
	}

	empty := newEnv(t, Deps{})
	res = empty.do(http.MethodGet, "/v1/ratelimit/policies", "")
	if string(bytes.TrimSpace(res.body)) != `{"policies":[]}` {
		t.Fatalf("no policies: %s", res.body)
	}
}

func TestRouting(t *testing.T) {
	e := newEnv(t, Deps{})
	tests := []struct {
		method, path string
		status       int
		code, allow  string
	}{
		{"GET", "/nope", 404, "not_found", ""},
		{"GET", "/", 404, "not_found", ""},
		{"POST", "/v1/ratelimit/allow/extra", 404, "not_found", ""},
		{"GET", "/v1/ratelimit/allow", 405, "method_not_allowed", "POST"},
		{"DELETE", "/v1/ratelimit/policies", 405, "method_not_allowed", "GET, HEAD"},
		{"POST", "/healthz", 405, "method_not_allowed", "GET, HEAD"},
		{"GET", "/v1/ratelimit/policies/login/allow", 405, "method_not_allowed", "POST"},
		{"POST", "/v1/ratelimit/policies/../allow", 404, "not_found", ""},
		{"GET", "//healthz", 404, "not_found", ""},
		{"GET", "/healthz/", 404, "not_found", ""},
		{"DELETE", "/v1/ratelimit/x/../policies", 404, "not_found", ""},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			res := e.do(tc.method, tc.path, "")
			e.mustStatus(res, tc.status)
			if code, _ := res.errorOf(t); code != tc.code {
				t.Fatalf("code %q, want %q", code, tc.code)
			}
			if got := res.header.Get("Allow"); got != tc.allow {
				t.Fatalf("Allow %q, want %q", got, tc.allow)
			}
		})
	}
}

func TestHealthzAndOpenAPI(t *testing.T) {
	e := newEnv(t, Deps{Version: "1.2.3"})
	res := e.do(http.MethodGet, "/healthz", "")
	e.mustStatus(res, 200)
	if res.json(t)["status"] != "ok" {
		t.Fatalf("healthz %s", res.body)
	}
	res = e.do(http.MethodGet, "/openapi.json", "")
	e.mustStatus(res, 200)
	m := res.json(t)
	if m["openapi"] != "3.1.0" || m["info"].(map[string]any)["version"] != "1.2.3" {
		t.Fatalf("openapi.json: openapi=%v info=%v", m["openapi"], m["info"])
	}
}

func TestReadyz(t *testing.T) {
	t.Run("no backend", func(t *testing.T) {
		e := newEnv(t, Deps{})
		res := e.do(http.MethodGet, "/readyz", "")
		e.mustStatus(res, 200)
		if m := res.json(t); m["status"] != "ok" || m["backend"] != "memory" {
			t.Fatalf("readyz %s", res.body)
		}
	})
	t.Run("redis up then down", func(t *testing.T) {
		srv := redistest.NewServer(t)
		eleva, err := elevaredis.Open(context.Background(), elevaredis.Config{RedisURL: srv.URL()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(eleva.Close)
		e := newEnv(t, Deps{Limiter: eleva.RateLimit, Backend: eleva})
		res := e.do(http.MethodGet, "/readyz", "")
		e.mustStatus(res, 200)
		if m := res.json(t); m["status"] != "ok" || m["backend"] != "redis" {
			t.Fatalf("readyz %s", res.body)
		}
		srv.Stop(t)
		start := time.Now()
		res = e.do(http.MethodGet, "/readyz", "")
		e.mustStatus(res, 503)
		if code, _ := res.errorOf(t); code != "unavailable" {
			t.Fatalf("code %q", code)
		}
		if m := res.json(t); m["backend"] != "redis" {
			t.Fatalf("503 without backend: %s", res.body)
		}
		// The ping runs under a 1s timeout; generous bound.
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("readyz took %v with redis down", d)
		}
		if !strings.Contains(e.logs.String(), "readiness check failed") {
			t.Error("failed readiness not logged")
		}
	})
}

func TestRecoverFromPanic(t *testing.T) {
	e := newEnv(t, Deps{Limiter: panicLimiter{ratelimit.NewMemory(ratelimit.Config{})}})
	res := e.do(http.MethodPost, "/v1/ratelimit/allow", `{"key":"k","limit":1,"windowMs":1000}`)
	e.mustStatus(res, 500)
	if code, _ := res.errorOf(t); code != "internal" {
		t.Fatalf("code %q", code)
	}
	if !strings.Contains(e.logs.String(), "panic serving request") {
		t.Fatalf("panic not logged: %s", e.logs.String())
	}
	// The server keeps serving.
	e.mustStatus(e.do(http.MethodPost, "/v1/ratelimit/peek", `{"key":"k","limit":1,"windowMs":1000}`), 200)
}

// panicLimiter is a limiter with a bug in AllowN.
type panicLimiter struct{ ratelimit.Limiter }

func (panicLimiter) AllowN(context.Context, string, ratelimit.Limit, int) (ratelimit.Decision, error) {
	panic("bug")
}

func TestBackendErrorIs503(t *testing.T) {
	e := newEnv(t, Deps{Limiter: errLimiter{ratelimit.NewMemory(ratelimit.Config{})}})
	res := e.do(http.MethodPost, "/v1/ratelimit/reset", `{"key":"k"}`)
	e.mustStatus(res, 503)
	if code, _ := res.errorOf(t); code != "unavailable" {
		t.Fatalf("code %q", code)
	}
	if strings.Contains(string(res.body), "10.0.0.7") {
		t.Fatalf("backend detail leaked to the client: %s", res.body)
	}
}

// errLimiter's Reset fails the way a backend outage does.
type errLimiter struct{ ratelimit.Limiter }

func (errLimiter) Reset(context.Context, string) error {
	return fmt.Errorf("%w: dial tcp 10.0.0.7:6379: connection refused", ratelimit.ErrBackend)
}

func TestLogsAndMetrics(t *testing.T) {
	const secretKey = "patient-jane@example.com"
	e := newEnv(t, Deps{APIKeys: []string{testKey}, Policies: testPolicies(t)})
	auth := "Authorization: Bearer " + testKey
	e.mustStatus(e.do(http.MethodPost, "/v1/ratelimit/allow", `{"key":"`+secretKey+`","limit":5,"windowMs":1000}`, auth, "X-Request-Id: req-123"), 200)
	e.mustStatus(e.do(http.MethodPost, "/v1/ratelimit/allow", `{"key":"`+secretKey+`","limit":5,"windowMs":1000}`, auth), 200)
	e.mustStatus(e.do(http.MethodPost, "/v1/ratelimit/policies/login/allow", `{"subjects":{"user":"`+secretKey+`","ip":"203.0.113.77"}}`, auth), 200)
	e.mustStatus(e.do(http.MethodPost, "/v1/ratelimit/allow", `{}`, "Authorization: Bearer wrong-"+testKey), 401)
	e.mustStatus(e.do(http.MethodGet, "/nope", ""), 404)

	logs := e.logs.String()
	for _, secret := range []string{secretKey, "203.0.113.77", testKey} {
		if strings.Contains(logs, secret) {
			t.Errorf("log contains %q:\n%s", secret, logs)
		}
	}
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(logs), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if m["msg"] == "request" {
			lines = append(lines, m)
		}
	}
	if len(lines) != 5 {
		t.Fatalf("%d request lines, want 5:\n%s", len(lines), logs)
	}
	first := lines[0]
	if first["method"] != "POST" || first["route"] != "/v1/ratelimit/allow" || first["status"] != float64(200) ||
		first["request_id"] != "req-123" || first["duration_ms"] == nil {
		t.Errorf("first request line: %v", first)
	}
	if lines[2]["route"] != "/v1/ratelimit/policies/{name}/allow" || lines[4]["route"] != "unmatched" || lines[4]["status"] != float64(404) {
		t.Errorf("route labels: %v / %v", lines[2], lines[4])
	}
	if id, _ := lines[1]["request_id"].(string); len(id) != 16 {
		t.Errorf("generated request id %q", id)
	}

	res := e.do(http.MethodGet, "/metrics", "")
	e.mustStatus(res, 200)
	body := string(res.body)
	for _, want := range []string{
		`eleva_http_requests_total{code="200",method="POST",route="/v1/ratelimit/allow"} 2`,
		`eleva_http_requests_total{code="401",method="POST",route="/v1/ratelimit/allow"} 1`,
		`eleva_http_requests_total{code="404",method="GET",route="unmatched"} 1`,
		`eleva_http_request_seconds_count{route="/v1/ratelimit/policies/{name}/allow"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(body, secretKey) {
		t.Error("metrics contain a key")
	}
}

// TestConcurrentAllowNeverOverAdmits drives the handler from many goroutines:
// the HTTP layer adds no check-then-act of its own.
func TestConcurrentAllowNeverOverAdmits(t *testing.T) {
	e := newEnv(t, Deps{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := httptest.NewRequest("POST", "/v1/ratelimit/allow", strings.NewReader(`{"key":"c","limit":10,"windowMs":60000}`))
			req.RemoteAddr = "127.0.0.1:1"
			rec := httptest.NewRecorder()
			e.h.ServeHTTP(rec, req)
			if rec.Code != 200 {
				t.Errorf("status %d", rec.Code)
				return
			}
			var m struct{ Allowed bool }
			_ = json.Unmarshal(rec.Body.Bytes(), &m)
			if m.Allowed {
				mu.Lock()
				allowed++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if allowed != 10 {
		t.Fatalf("%d allowed, want 10", allowed)
	}
}

func TestDefaultBodyLimitIsOneMiB(t *testing.T) {
	e := newEnv(t, Deps{})
	pad := strings.Repeat(" ", DefaultMaxBodyBytes-40)
	fits := `{"key":"k","limit":1,"windowMs":1000}` + pad
	if len(fits) > DefaultMaxBodyBytes {
		t.Fatalf("test body %d bytes", len(fits))
	}
	e.mustStatus(e.do(http.MethodPost, "/v1/ratelimit/allow", fits), 200)
	res := e.do(http.MethodPost, "/v1/ratelimit/allow", `{"key":"k","limit":1,"windowMs":1000}`+pad+strings.Repeat(" ", 64))
	e.mustStatus(res, 413)
	if code, _ := res.errorOf(t); code != "payload_too_large" {
		t.Fatalf("code %q", code)
	}
}
