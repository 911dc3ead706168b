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

	"github.com/elevacare/eleva-redis/ratelimit"
)

// fuzzServer builds the server one fuzz input is sent to: a fresh one per
// input, so state (sliding logs of up to 10000 stamps under random keys)
// does not pile up across inputs; a small body limit keeps inputs short.
func fuzzServer() http.Handler {
	return New(Deps{
		Limiter:      ratelimit.NewMemory(ratelimit.Config{}),
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		MaxBodyBytes: 4096,
		Policies: ratelimit.Policies{"login": {Name: "login", Rules: []ratelimit.Rule{
			{Name: "user", Subject: "user", Limit: 3, WindowMs: 60000},
			{Name: "ip", Subject: "ip", Limit: 10, WindowMs: 60000, Algorithm: ratelimit.GCRA, Burst: 5},
		}}},
	})
}

// fuzzPost sends body to path and checks the invariants every answer keeps:
// no 5xx (a panic would be a 500 from the recover layer), a JSON body, and
// an error object with a code on every 4xx.
func fuzzPost(t *testing.T, h http.Handler, path string, body []byte) {
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(string(body)))
	req.RemoteAddr = "127.0.0.1:1"
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code >= 500 {
		t.Fatalf("%s %q: status %d: %s", path, body, rec.Code, rec.Body)
	}
	if rec.Code == http.StatusNoContent {
		return
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil {
		t.Fatalf("%s %q: status %d, body is not a JSON object: %q", path, body, rec.Code, rec.Body)
	}
	if rec.Code >= 400 {
		var e struct {
			Error struct{ Code, Message string }
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
			t.Fatalf("%s %q: status %d without an error object: %s", path, body, rec.Code, rec.Body)
		}
	} else if _, ok := m["allowed"]; !ok {
		t.Fatalf("%s %q: 200 without allowed: %s", path, body, rec.Body)
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
		h := fuzzServer()
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
		h := fuzzServer()
		fuzzPost(t, h, "/v1/ratelimit/policies/"+url.PathEscape(policy)+"/allow", body)
	})
}
