package server

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/elevacare/eleva-redis/cache"
	"github.com/elevacare/eleva-redis/lock"
	"github.com/elevacare/eleva-redis/notify"
	"github.com/elevacare/eleva-redis/ratelimit"
	"github.com/elevacare/eleva-redis/session"
	"github.com/elevacare/eleva-redis/tempdata"
)

// fuzzServer builds the server one fuzz input is sent to: a fresh one per
// input, so state (sliding logs of up to 10000 stamps under random keys, a
// lock a previous input took) does not pile up across inputs, closed when
// the input is done; a small body limit keeps inputs short.
func fuzzServer(t testing.TB) http.Handler {
	store := cache.NewMemoryStore(cache.StoreConfig{})
	t.Cleanup(store.Close)
	return New(Deps{
		Limiter:      ratelimit.NewMemory(ratelimit.Config{}),
		Locks:        lock.NewMemory(lock.Config{}),
		Temp:         tempdata.NewMemory(tempdata.Config{}),
		Sessions:     session.NewMemory(session.Config{}),
		Cache:        store,
		Notify:       notify.NewMemory(notify.Config{}),
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		MaxBodyBytes: 4096,
		Policies: ratelimit.Policies{"login": {Name: "login", Rules: []ratelimit.Rule{
			{Name: "user", Subject: "user", Limit: 3, WindowMs: 60000},
			{Name: "ip", Subject: "ip", Limit: 10, WindowMs: 60000, Algorithm: ratelimit.GCRA, Burst: 5},
		}}},
	})
}

// fuzzDo sends body to path and checks the invariants every answer keeps:
// no 5xx (a panic would be a 500 from the recover layer), a JSON object body
// unless 204, and an error object with a code and message on every 4xx. It
// returns the status and the decoded body.
func fuzzDo(t *testing.T, h http.Handler, method, path string, body []byte) (int, map[string]json.RawMessage) {
	req := httptest.NewRequest(method, path, strings.NewReader(string(body)))
	req.RemoteAddr = "127.0.0.1:1"
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code >= 500 {
		t.Fatalf("%s %s %q: status %d: %s", method, path, body, rec.Code, rec.Body)
	}
	if rec.Code == http.StatusNoContent {
		return rec.Code, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil {
		t.Fatalf("%s %s %q: status %d, body is not a JSON object: %q", method, path, body, rec.Code, rec.Body)
	}
	if rec.Code >= 400 {
		var e struct {
			Error struct{ Code, Message string }
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
			t.Fatalf("%s %s %q: status %d without an error object: %s", method, path, body, rec.Code, rec.Body)
		}
	}
	return rec.Code, m
}

// fuzzPost is fuzzDo for the rate-limit routes, whose 200 always decides.
func fuzzPost(t *testing.T, h http.Handler, path string, body []byte) {
	status, m := fuzzDo(t, h, http.MethodPost, path, body)
	if status == http.StatusOK {
		if _, ok := m["allowed"]; !ok {
			t.Fatalf("%s %q: 200 without allowed: %v", path, body, m)
		}
	}
}

// wantFields fails unless a 2xx body has every field.
func wantFields(t *testing.T, what string, status int, m map[string]json.RawMessage, fields ...string) {
	t.Helper()
	if status >= 300 || status == http.StatusNoContent {
		return
	}
	for _, f := range fields {
		if _, ok := m[f]; !ok {
			t.Fatalf("%s: %d without %s: %v", what, status, f, m)
		}
	}
}

func FuzzDecodeAllow(f *testing.F) {
	for _, s := range []string{
		`{"key":"k","limit":1,"windowMs":1000}`,
		`{"key":"k","limit":5,"windowMs":60000,"cost":2,"algorithm":"gcra","burst":3}`,
		`{"key":"k","limit":10000,"windowMs":31622400000,"algorithm":"sliding-log"}`,
		`{"key":"k","limit":1000000000,"windowMs":1,"algorithm":"sliding-window","cost":1000000000}`,
		`{"key":"k","limit":3,"windowMs":1000,"algorithm":"fixed-window"}`,
		`{"key":"k","limit":-1,"windowMs":0}`,
		`{"key":"k","limit":1e999}`,
		`{"key":"\u0000{tag}*","limit":1,"windowMs":1000}`,
		`{"key":"k"} trailing`,
		`[]`, `null`, `""`, ``, `{`, `{"key":{"a":[1,2,{}]}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		h := fuzzServer(t)
		for _, path := range []string{"/v1/ratelimit/allow", "/v1/ratelimit/peek", "/v1/ratelimit/record", "/v1/ratelimit/reset"} {
			fuzzPost(t, h, path, body)
		}
	})
}

func FuzzDecodePolicyAllow(f *testing.F) {
	for _, s := range []string{
		`{"subjects":{"user":"42","ip":"203.0.113.9"}}`,
		`{"subjects":{"user":"42","ip":"203.0.113.9"},"cost":3}`,
		`{"subjects":{"user":42}}`,
		`{"subjects":null,"cost":-1}`,
		`{"subjects":{"user":"a","ip":"b","extra":"c"},"cost":1000000000}`,
		`{"subjects":{}}`, `{}`, `[]`, `{"subjects":{"user":"a"}}x`,
	} {
		f.Add([]byte(s), "login")
	}
	f.Add([]byte(`{"subjects":{"user":"a"}}`), "nope")
	f.Fuzz(func(t *testing.T, body []byte, policy string) {
		h := fuzzServer(t)
		fuzzPost(t, h, "/v1/ratelimit/policies/"+url.PathEscape(policy)+"/allow", body)
	})
}

// FuzzLocks sends one body to acquire, then to refresh and release, for a
// fuzzed lock name: one acquire per input, on a fresh server, so a waitMs
// never waits (the lock is free).
func FuzzLocks(f *testing.F) {
	for _, s := range []string{
		`{"ttlMs":1000}`, `{"ttlMs":1000,"waitMs":0}`, `{"ttlMs":86400000,"waitMs":30000}`,
		`{"ttlMs":86400001}`, `{"ttlMs":0}`, `{"ttlMs":-1,"waitMs":-1}`, `{"ttlMs":1e30}`, `{"ttlMs":1.5}`,
		`{"token":"abc","ttlMs":1000}`, `{"token":""}`, `{"token":null,"ttlMs":null}`, `{"token":7}`,
		`{"ttlMs":1000,"extra":true}`, `[]`, `null`, ``, `{`, `{"ttlMs":1000} x`,
	} {
		f.Add([]byte(s), "payment:appt_123")
	}
	f.Add([]byte(`{"ttlMs":1000}`), "a/../b")
	f.Add([]byte(`{"ttlMs":1000}`), strings.Repeat("n", lock.MaxNameLen+1))
	f.Add([]byte(`{"ttlMs":1000}`), "")
	f.Fuzz(func(t *testing.T, body []byte, name string) {
		h := fuzzServer(t)
		base := "/v1/locks/" + url.PathEscape(name)
		status, m := fuzzDo(t, h, http.MethodPost, base+"/acquire", body)
		wantFields(t, "acquire", status, m, "name", "token", "fence", "expiresAt")
		status, m = fuzzDo(t, h, http.MethodPost, base+"/refresh", body)
		wantFields(t, "refresh", status, m, "expiresAt")
		status, m = fuzzDo(t, h, http.MethodPost, base+"/release", body)
		wantFields(t, "release", status, m, "released")
		status, m = fuzzDo(t, h, http.MethodGet, base, nil)
		wantFields(t, "inspect", status, m, "name", "held")
	})
}

// FuzzTemp sends one body to put, then reads, takes and deletes, for fuzzed
// names.
func FuzzTemp(f *testing.F) {
	for _, s := range []string{
		`{"value":{"step":3},"ttlMs":60000}`, `{"value":null,"ttlMs":1}`, `{"value":"x","ttlMs":2592000000,"ifAbsent":true}`,
		`{"value":[1,2,{"a":"\u0000"}],"ttlMs":1000,"ifAbsent":false}`, `{"value":1e400,"ttlMs":1000}`,
		`{"ttlMs":1000}`, `{"value":1}`, `{"value":1,"ttlMs":2592000001}`, `{"value":1,"ttlMs":"1"}`,
		`{"value":1,"ttlMs":1000,"ifAbsent":"yes"}`, `{"value":1,"ttlMs":1000,"x":1}`, `[]`, ``, `{"value":`,
	} {
		f.Add([]byte(s), "setup", "user-42")
	}
	f.Add([]byte(`{"value":1,"ttlMs":1000}`), "{tag}*", "a/../b")
	f.Add([]byte(`{"value":1,"ttlMs":1000}`), "", "k")
	f.Fuzz(func(t *testing.T, body []byte, ns, key string) {
		h := fuzzServer(t)
		base := "/v1/temp/" + url.PathEscape(ns) + "/" + url.PathEscape(key)
		status, m := fuzzDo(t, h, http.MethodPut, base, body)
		wantFields(t, "put", status, m, "expiresAt")
		status, m = fuzzDo(t, h, http.MethodGet, base, nil)
		wantFields(t, "get", status, m, "value", "expiresAt")
		status, m = fuzzDo(t, h, http.MethodPost, base+"/take", body)
		wantFields(t, "take", status, m, "value")
		fuzzDo(t, h, http.MethodDelete, base, nil)
	})
}

// FuzzTokens issues a token with one body, then consumes it (and a fuzzed
// token) with the same body.
func FuzzTokens(f *testing.F) {
	for _, s := range []string{
		`{"purpose":"verify-email","data":{"userId":"42"},"ttlMs":60000}`, `{"purpose":"p","data":null,"ttlMs":1}`,
		`{"purpose":"","data":1,"ttlMs":1000}`, `{"purpose":"p","ttlMs":1000}`, `{"purpose":"p","data":1}`,
		`{"purpose":1,"data":1,"ttlMs":1000}`, `{"purpose":"p"}`, `{"purpose":null}`, `{}`, ``, `{"purpose":"p","data":1,"ttlMs":1000,"x":0}`,
	} {
		f.Add([]byte(s), "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	}
	f.Add([]byte(`{"purpose":"p"}`), "")
	f.Add([]byte(`{"purpose":"p"}`), "../x")
	f.Fuzz(func(t *testing.T, body []byte, token string) {
		h := fuzzServer(t)
		status, m := fuzzDo(t, h, http.MethodPost, "/v1/tokens", body)
		wantFields(t, "issue", status, m, "token", "expiresAt")
		if status == http.StatusCreated {
			var issued string
			if err := json.Unmarshal(m["token"], &issued); err != nil || len(issued) != tempdata.TokenLen {
				t.Fatalf("issued token %s", m["token"])
			}
			status, m = fuzzDo(t, h, http.MethodPost, "/v1/tokens/"+issued+"/consume", body)
			wantFields(t, "consume", status, m, "data")
		}
		status, m = fuzzDo(t, h, http.MethodPost, "/v1/tokens/"+url.PathEscape(token)+"/consume", body)
		wantFields(t, "consume", status, m, "data")
	})
}

// FuzzIdempotency sends one body to begin, complete and fail of a fuzzed key.
func FuzzIdempotency(f *testing.F) {
	for _, s := range []string{
		`{"ttlMs":60000}`, `{"ttlMs":60000,"fingerprint":"sha256:abc"}`, `{"ttlMs":60000,"fingerprint":""}`,
		`{"response":{"bookingId":"b_1"}}`, `{"response":null,"ttlMs":1000}`, `{"response":1,"ttlMs":0}`,
		`{"ttlMs":60000,"response":1}`, `{"fingerprint":7}`, `{}`, ``, `[]`, `{"response":`,
	} {
		f.Add([]byte(s), "booking:42")
	}
	f.Add([]byte(`{"ttlMs":1000}`), "http::k")
	f.Add([]byte(`{"ttlMs":1000}`), strings.Repeat("k", maxIdemKeyLen+1))
	f.Fuzz(func(t *testing.T, body []byte, key string) {
		h := fuzzServer(t)
		base := "/v1/idempotency/" + url.PathEscape(key)
		status, m := fuzzDo(t, h, http.MethodPost, base+"/begin", body)
		wantFields(t, "begin", status, m, "state")
		status, m = fuzzDo(t, h, http.MethodPost, base+"/complete", body)
		wantFields(t, "complete", status, m, "state")
		status, m = fuzzDo(t, h, http.MethodPost, base+"/begin", body)
		wantFields(t, "begin", status, m, "state")
		status, m = fuzzDo(t, h, http.MethodPost, base+"/fail", body)
		wantFields(t, "fail", status, m, "state")
	})
}
