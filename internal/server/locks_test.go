package server

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	elevaredis "github.com/elevacare/eleva-redis"
	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/internal/testlog"
)

// backendCases are the backends the lock and tempdata endpoint tests run on:
// the HTTP layer must answer alike on each.
var backendCases = []struct {
	name string
	url  func(testing.TB) string // nil: memory
}{
	{"memory", nil},
	{"redis", redistest.URL},
	{"cluster", redistest.ClusterURL},
}

// newBackendEnv builds a server on every capability of the backend at url
// ("" for memory) under a prefix of this test, closed when the test ends. The
// capabilities log into the env's logs too, so the tests' "never logged"
// checks cover them.
func newBackendEnv(t *testing.T, url string, cfg elevaredis.Config) *testEnv {
	t.Helper()
	cfg.RedisURL = url
	if url != "" && cfg.KeyPrefix == "" {
		cfg.KeyPrefix = redistest.Prefix(t)
	}
	logs := &testlog.Buffer{}
	cfg.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e, err := elevaredis.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return newEnvLogs(t, Deps{Limiter: e.RateLimit, Locks: e.Locks, Temp: e.Temp, Sessions: e.Sessions, Cache: e.Cache, Notify: e.Notify, Backend: e, Logger: cfg.Logger}, logs)
}

func backendURL(t *testing.T, f func(testing.TB) string) string {
	if f == nil {
		return ""
	}
	return f(t)
}

// lease is the 200 body of acquire.
type lease struct {
	Name      string `json:"name"`
	Token     string `json:"token"`
	Fence     uint64 `json:"fence"`
	ExpiresAt int64  `json:"expiresAt"`
}

func decodeInto[T any](t *testing.T, res response) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(res.body, &v); err != nil {
		t.Fatalf("body %q: %v", res.body, err)
	}
	return v
}

func wantError(t *testing.T, res response, status int, code string) {
	t.Helper()
	if res.status != status {
		t.Fatalf("status %d, want %d %s; body %s", res.status, status, code, res.body)
	}
	if got, _ := res.errorOf(t); got != code {
		t.Fatalf("code %q, want %q; body %s", got, code, res.body)
	}
}

// TestLockEndpoints walks a lock through its life over HTTP: acquire, a
// second acquirer refused with lock_held, inspect without the token,
// refresh and release guarded by the token, a fresh acquire with a higher
// fence, and a waiting acquirer that gets the lock when the holder's lease
// runs out.
func TestLockEndpoints(t *testing.T) {
	for _, bc := range backendCases {
		t.Run(bc.name, func(t *testing.T) {
			t.Parallel()
			e := newBackendEnv(t, backendURL(t, bc.url), elevaredis.Config{})
			// Any characters, escaped by the client: ':' '/' ' ' '..' unicode.
			name := "payment:appt_123/../é x"
			base := "/v1/locks/" + url.PathEscape(name)

			before := time.Now()
			res := e.do(http.MethodPost, base+"/acquire", `{"ttlMs":60000}`)
			e.mustStatus(res, 200)
			l1 := decodeInto[lease](t, res)
			if l1.Name != name || l1.Token == "" || l1.Fence == 0 {
				t.Fatalf("lease %+v", l1)
			}
			if l1.ExpiresAt < before.Add(60*time.Second).UnixMilli()-1 || l1.ExpiresAt > time.Now().Add(60*time.Second).UnixMilli() {
				t.Errorf("expiresAt %d not within [before+ttl, now+ttl]", l1.ExpiresAt)
			}

			// A second acquirer, with or without a short wait, is refused.
			wantError(t, e.do(http.MethodPost, base+"/acquire", `{"ttlMs":60000}`), 409, "lock_held")
			wantError(t, e.do(http.MethodPost, base+"/acquire", `{"ttlMs":60000,"waitMs":20}`), 409, "lock_held")

			// Inspect: held, same fence, never the token.
			res = e.do(http.MethodGet, base, "")
			e.mustStatus(res, 200)
			info := res.json(t)
			if info["held"] != true || num(t, info, "fence") != int64(l1.Fence) || info["name"] != name {
				t.Fatalf("inspect %s", res.body)
			}
			if strings.Contains(string(res.body), l1.Token) {
				t.Fatalf("inspect reveals the token: %s", res.body)
			}
			// HEAD is GET without a body.
			e.mustStatus(e.do(http.MethodHead, base, ""), 200)

			// Refresh and release need the token.
			wantError(t, e.do(http.MethodPost, base+"/refresh", `{"token":"not-the-token","ttlMs":60000}`), 409, "lock_lost")
			wantError(t, e.do(http.MethodPost, base+"/release", `{"token":"not-the-token"}`), 409, "lock_lost")
			res = e.do(http.MethodPost, base+"/refresh", `{"token":"`+l1.Token+`","ttlMs":120000}`)
			e.mustStatus(res, 200)
			if exp := num(t, res.json(t), "expiresAt"); exp < l1.ExpiresAt+59000 {
				t.Errorf("refresh to 120s: expiresAt %d, first lease %d", exp, l1.ExpiresAt)
			}
			res = e.do(http.MethodPost, base+"/release", `{"token":"`+l1.Token+`"}`)
			e.mustStatus(res, 200)
			if string(res.body) != "{\"released\":true}\n" {
				t.Fatalf("release body %s", res.body)
			}
			// Released: a second release and a refresh are lock_lost, and the
			// refresh did not take the lock back.
			wantError(t, e.do(http.MethodPost, base+"/release", `{"token":"`+l1.Token+`"}`), 409, "lock_lost")
			wantError(t, e.do(http.MethodPost, base+"/refresh", `{"token":"`+l1.Token+`","ttlMs":60000}`), 409, "lock_lost")
			res = e.do(http.MethodGet, base, "")
			e.mustStatus(res, 200)
			if string(res.body) != `{"name":`+mustJSON(t, name)+`,"held":false}`+"\n" {
				t.Fatalf("inspect after release: %s", res.body)
			}

			// The next holder gets a higher fence.
			res = e.do(http.MethodPost, base+"/acquire", `{"ttlMs":300}`)
			e.mustStatus(res, 200)
			l2 := decodeInto[lease](t, res)
			if l2.Fence <= l1.Fence || l2.Token == l1.Token {
				t.Fatalf("second lease %+v after %+v: fence must increase", l2, l1)
			}
			// A waiter gets the lock once l2's 300ms lease runs out (l2 never
			// releases); without waitMs it would be refused at once.
			res = e.do(http.MethodPost, base+"/acquire", `{"ttlMs":60000,"waitMs":10000}`)
			e.mustStatus(res, 200)
			l3 := decodeInto[lease](t, res)
			if l3.Fence <= l2.Fence {
				t.Fatalf("third lease fence %d, second %d", l3.Fence, l2.Fence)
			}
			// l2 expired: its refresh is lock_lost and does not touch l3.
			wantError(t, e.do(http.MethodPost, base+"/refresh", `{"token":"`+l2.Token+`","ttlMs":60000}`), 409, "lock_lost")
			wantError(t, e.do(http.MethodPost, base+"/release", `{"token":"`+l2.Token+`"}`), 409, "lock_lost")
			res = e.do(http.MethodGet, base, "")
			if m := res.json(t); m["held"] != true || num(t, m, "fence") != int64(l3.Fence) {
				t.Fatalf("l3 disturbed by l2's calls: %s", res.body)
			}

			// A waiter woken by a release (whichever of release and wait
			// comes first, the waiter must end up with the lock).
			var wg sync.WaitGroup
			var waiter response
			wg.Go(func() {
				waiter = e.do(http.MethodPost, base+"/acquire", `{"ttlMs":60000,"waitMs":10000}`)
			})
			e.mustStatus(e.do(http.MethodPost, base+"/release", `{"token":"`+l3.Token+`"}`), 200)
			wg.Wait()
			e.mustStatus(waiter, 200)
			if l4 := decodeInto[lease](t, waiter); l4.Fence <= l3.Fence {
				t.Fatalf("waiter fence %d, previous %d", l4.Fence, l3.Fence)
			}

			// Neither names nor tokens reach the logs.
			logs := e.logs.String()
			for _, secret := range []string{l1.Token, l2.Token, l3.Token, "appt_123"} {
				if strings.Contains(logs, secret) {
					t.Errorf("logs contain %q", secret)
				}
			}
		})
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// escapeAll percent-encodes every byte of s: the most escaped spelling.
func escapeAll(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, "%%%02X", s[i])
	}
	return b.String()
}

// TestLockPathNames: a name is the unescaped path segment, whatever it
// holds; two spellings of one name are one lock, and names that differ only
// in what path cleaning would remove are different locks.
func TestLockPathNames(t *testing.T) {
	e := newEnv(t, Deps{})
	for _, tc := range []struct{ path, name string }{
		{"a%2F..%2Fb", "a/../b"},
		{"%2E", "."},
		{"%2E%2E", ".."},
		{"a%2F%2Fb", "a//b"},
		{"user@example.com", "user@example.com"},
		{"%7Btag%7D%2A", "{tag}*"},
		{"caf%C3%A9", "café"},
	} {
		res := e.do(http.MethodPost, "/v1/locks/"+tc.path+"/acquire", `{"ttlMs":60000}`)
		e.mustStatus(res, 200)
		if got := decodeInto[lease](t, res).Name; got != tc.name {
			t.Errorf("%s: name %q, want %q", tc.path, got, tc.name)
		}
		// The same name, escaped differently, is the same lock.
		wantError(t, e.do(http.MethodPost, "/v1/locks/"+escapeAll(tc.name)+"/acquire", `{"ttlMs":60000}`), 409, "lock_held")
	}
	// Unescaped dot segments are path steps, not names: 404 as for any
	// path the mux would redirect.
	wantError(t, e.do(http.MethodPost, "/v1/locks/../acquire", `{"ttlMs":60000}`), 404, "not_found")
}
