package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	elevaredis "github.com/elevacare/eleva-redis"
	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/tempdata"
)

// jsonValues are values of every JSON type; each must come back as the same
// JSON value. The big number would lose digits through a float64 and the
// escapes would change through a re-encoding of the text: they check that
// the JSON text is stored, not a decoded copy.
var jsonValues = []string{
	`{"step":3,"answers":{"q1":"yes","nested":[1,{"x":null}]}}`,
	`[1,"two",3.5,false]`,
	`"caf\u00e9 \ud83d\ude00 <b>&"`,
	`12345678901234567890123456789`,
	`-0.000001e-7`,
	`true`,
	`null`,
	`""`,
	`{}`,
}

// sameJSON reports whether a and b are the same JSON value (numbers compared
// as text).
func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	dec := func(s []byte) any {
		d := json.NewDecoder(bytes.NewReader(s))
		d.UseNumber()
		var v any
		if err := d.Decode(&v); err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		return v
	}
	return fmt.Sprintf("%#v", dec(a)) == fmt.Sprintf("%#v", dec(b))
}

// field returns the raw JSON of one field of an object body.
func field(t *testing.T, res response, name string) json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(res.body, &m); err != nil {
		t.Fatalf("body %q: %v", res.body, err)
	}
	v, ok := m[name]
	if !ok {
		t.Fatalf("no %s in %s", name, res.body)
	}
	return v
}

func TestTempEndpoints(t *testing.T) {
	for _, bc := range backendCases {
		t.Run(bc.name, func(t *testing.T) {
			t.Parallel()
			e := newBackendEnv(t, backendURL(t, bc.url), elevaredis.Config{})
			for i, v := range jsonValues {
				base := fmt.Sprintf("/v1/temp/%s/%s", url.PathEscape("setup/flow"), url.PathEscape(fmt.Sprintf("user:%d@example.com", i)))
				before := time.Now()
				res := e.do(http.MethodPut, base, `{"value": `+v+` , "ttlMs":60000}`)
				e.mustStatus(res, 200)
				exp := num(t, res.json(t), "expiresAt")
				if exp < before.Add(60*time.Second).UnixMilli()-1000 || exp > time.Now().Add(60*time.Second).UnixMilli() {
					t.Errorf("expiresAt %d not about now+60s", exp)
				}

				res = e.do(http.MethodGet, base, "")
				e.mustStatus(res, 200)
				if got := field(t, res, "value"); !sameJSON(t, got, []byte(v)) {
					t.Errorf("GET value %s, want %s", got, v)
				}
				if got := num(t, res.json(t), "expiresAt"); got < exp-1000 || got > exp+1000 {
					t.Errorf("GET expiresAt %d, PUT said %d", got, exp)
				}

				res = e.do(http.MethodPost, base+"/take", "")
				e.mustStatus(res, 200)
				if got := field(t, res, "value"); !sameJSON(t, got, []byte(v)) {
					t.Errorf("take value %s, want %s", got, v)
				}
				wantError(t, e.do(http.MethodPost, base+"/take", `{}`), 404, "not_found")
				wantError(t, e.do(http.MethodGet, base, ""), 404, "not_found")
			}

			// The digits of a number too long for a float survive.
			base := "/v1/temp/ns/big"
			e.mustStatus(e.do(http.MethodPut, base, `{"value":12345678901234567890123456789,"ttlMs":60000}`), 200)
			if got := string(field(t, e.do(http.MethodGet, base, ""), "value")); got != "12345678901234567890123456789" {
				t.Errorf("big number came back as %s", got)
			}

			// ifAbsent: refused over a live value, which is left unchanged.
			base = "/v1/temp/ns/once"
			e.mustStatus(e.do(http.MethodPut, base, `{"value":"first","ttlMs":60000,"ifAbsent":true}`), 200)
			wantError(t, e.do(http.MethodPut, base, `{"value":"second","ttlMs":60000,"ifAbsent":true}`), 409, "already_exists")
			if got := string(field(t, e.do(http.MethodGet, base, ""), "value")); got != `"first"` {
				t.Errorf("after refused ifAbsent: %s", got)
			}
			// Without ifAbsent (or false) a put replaces.
			e.mustStatus(e.do(http.MethodPut, base, `{"value":"third","ttlMs":60000,"ifAbsent":false}`), 200)
			if got := string(field(t, e.do(http.MethodGet, base, ""), "value")); got != `"third"` {
				t.Errorf("after replacing put: %s", got)
			}
			// DELETE: 204, also when nothing is there.
			for range 2 {
				res := e.do(http.MethodDelete, base, "")
				e.mustStatus(res, 204)
				if len(res.body) != 0 {
					t.Errorf("204 with body %q", res.body)
				}
			}
			wantError(t, e.do(http.MethodGet, base, ""), 404, "not_found")

			// Expiry: a value is gone after its TTL.
			base = "/v1/temp/ns/short"
			e.mustStatus(e.do(http.MethodPut, base, `{"value":1,"ttlMs":30}`), 200)
			time.Sleep(80 * time.Millisecond) // the TTL is what is under test
			wantError(t, e.do(http.MethodGet, base, ""), 404, "not_found")
			wantError(t, e.do(http.MethodPost, base+"/take", ""), 404, "not_found")

			if strings.Contains(e.logs.String(), "example.com") || strings.Contains(e.logs.String(), "first") {
				t.Errorf("logs contain names or values:\n%s", e.logs)
			}
		})
	}
}

func TestTokenEndpoints(t *testing.T) {
	for _, bc := range backendCases {
		t.Run(bc.name, func(t *testing.T) {
			t.Parallel()
			e := newBackendEnv(t, backendURL(t, bc.url), elevaredis.Config{})
			res := e.do(http.MethodPost, "/v1/tokens", `{"purpose":"verify-email","data":{"userId":"42","email":"jane@example.com"},"ttlMs":60000}`)
			e.mustStatus(res, 201)
			tok := res.json(t)["token"].(string)
			if raw, err := base64.RawURLEncoding.Strict().DecodeString(tok); err != nil || len(raw) != 32 {
				t.Fatalf("token %q: want 32 bytes of unpadded base64url (%v)", tok, err)
			}
			consume := "/v1/tokens/" + tok + "/consume"
			// Another purpose: 404, and the token is not spent.
			wantError(t, e.do(http.MethodPost, consume, `{"purpose":"reset-password"}`), 404, "not_found")
			res = e.do(http.MethodPost, consume, `{"purpose":"verify-email"}`)
			e.mustStatus(res, 200)
			if got := field(t, res, "data"); !sameJSON(t, got, []byte(`{"userId":"42","email":"jane@example.com"}`)) {
				t.Fatalf("data %s", got)
			}
			// Used: the same 404 as never issued, malformed or expired.
			wantError(t, e.do(http.MethodPost, consume, `{"purpose":"verify-email"}`), 404, "not_found")
			wantError(t, e.do(http.MethodPost, "/v1/tokens/"+strings.Repeat("A", 43)+"/consume", `{"purpose":"verify-email"}`), 404, "not_found")
			wantError(t, e.do(http.MethodPost, "/v1/tokens/not-a-token/consume", `{"purpose":"verify-email"}`), 404, "not_found")
			wantError(t, e.do(http.MethodPost, "/v1/tokens/"+url.PathEscape(tok+"=")+"/consume", `{"purpose":"verify-email"}`), 404, "not_found")

			// Every JSON value is data.
			for _, v := range jsonValues {
				res := e.do(http.MethodPost, "/v1/tokens", `{"purpose":"p","data":`+v+`,"ttlMs":60000}`)
				e.mustStatus(res, 201)
				res = e.do(http.MethodPost, "/v1/tokens/"+res.json(t)["token"].(string)+"/consume", `{"purpose":"p"}`)
				e.mustStatus(res, 200)
				if got := field(t, res, "data"); !sameJSON(t, got, []byte(v)) {
					t.Errorf("data %s, want %s", got, v)
				}
			}

			// Expired: 404.
			res = e.do(http.MethodPost, "/v1/tokens", `{"purpose":"p","data":1,"ttlMs":30}`)
			e.mustStatus(res, 201)
			time.Sleep(80 * time.Millisecond) // the TTL is what is under test
			wantError(t, e.do(http.MethodPost, "/v1/tokens/"+res.json(t)["token"].(string)+"/consume", `{"purpose":"p"}`), 404, "not_found")

			if strings.Contains(e.logs.String(), tok) || strings.Contains(e.logs.String(), "jane@") {
				t.Errorf("logs contain the token or data:\n%s", e.logs)
			}
		})
	}
}

func TestIdempotencyEndpoints(t *testing.T) {
	for _, bc := range backendCases {
		t.Run(bc.name, func(t *testing.T) {
			t.Parallel()
			e := newBackendEnv(t, backendURL(t, bc.url), elevaredis.Config{})
			base := "/v1/idempotency/" + url.PathEscape("booking:patient-7/slot 9")
			begin := `{"ttlMs":60000,"fingerprint":"sha256:aaa"}`

			res := e.do(http.MethodPost, base+"/begin", begin)
			e.mustStatus(res, 201)
			if string(res.body) != "{\"state\":\"started\"}\n" {
				t.Fatalf("begin: %s", res.body)
			}
			wantError(t, e.do(http.MethodPost, base+"/begin", begin), 409, "in_progress")
			// Another fingerprint is checked first: 422 even while in progress.
			wantError(t, e.do(http.MethodPost, base+"/begin", `{"ttlMs":60000,"fingerprint":"sha256:bbb"}`), 422, "fingerprint_mismatch")
			// No fingerprint: no mismatch check.
			wantError(t, e.do(http.MethodPost, base+"/begin", `{"ttlMs":60000}`), 409, "in_progress")

			res = e.do(http.MethodPost, base+"/complete", `{"response":{"status":201,"bookingId":"b_1"},"ttlMs":3600000}`)
			e.mustStatus(res, 200)
			if string(res.body) != "{\"state\":\"completed\"}\n" {
				t.Fatalf("complete: %s", res.body)
			}
			for _, b := range []string{begin, `{"ttlMs":1}`} {
				res = e.do(http.MethodPost, base+"/begin", b)
				e.mustStatus(res, 200)
				if res.json(t)["state"] != "completed" || !sameJSON(t, field(t, res, "response"), []byte(`{"status":201,"bookingId":"b_1"}`)) {
					t.Fatalf("begin after complete: %s", res.body)
				}
			}
			wantError(t, e.do(http.MethodPost, base+"/begin", `{"ttlMs":60000,"fingerprint":"other"}`), 422, "fingerprint_mismatch")
			// A completed record is kept: complete and fail are refused.
			wantError(t, e.do(http.MethodPost, base+"/complete", `{"response":2}`), 409, "already_exists")
			wantError(t, e.do(http.MethodPost, base+"/fail", ""), 409, "already_exists")

			// fail lets the key begin again; fail without a record is fine.
			other := "/v1/idempotency/other"
			e.mustStatus(e.do(http.MethodPost, other+"/begin", `{"ttlMs":60000}`), 201)
			res = e.do(http.MethodPost, other+"/fail", `{}`)
			e.mustStatus(res, 200)
			if string(res.body) != "{\"state\":\"failed\"}\n" {
				t.Fatalf("fail: %s", res.body)
			}
			e.mustStatus(e.do(http.MethodPost, other+"/fail", ""), 200)
			e.mustStatus(e.do(http.MethodPost, other+"/begin", `{"ttlMs":60000}`), 201)
			// complete without ttlMs keeps begin's TTL; a null response is a
			// response.
			e.mustStatus(e.do(http.MethodPost, other+"/complete", `{"response":null}`), 200)
			res = e.do(http.MethodPost, other+"/begin", `{"ttlMs":60000}`)
			e.mustStatus(res, 200)
			if string(field(t, res, "response")) != "null" {
				t.Fatalf("null response: %s", res.body)
			}

			// complete with no record (never begun, or its lease ran out): 404.
			wantError(t, e.do(http.MethodPost, "/v1/idempotency/never/complete", `{"response":1}`), 404, "not_found")
			e.mustStatus(e.do(http.MethodPost, "/v1/idempotency/lapsed/begin", `{"ttlMs":30}`), 201)
			time.Sleep(80 * time.Millisecond) // the lease's expiry is what is under test
			wantError(t, e.do(http.MethodPost, "/v1/idempotency/lapsed/complete", `{"response":1}`), 404, "not_found")
			e.mustStatus(e.do(http.MethodPost, "/v1/idempotency/lapsed/begin", `{"ttlMs":60000}`), 201)
		})
	}
}

// TestIdempotencyKeysDisjointFromMiddleware: on one store, the API's keys
// and tempdata.IdempotencyMiddleware's keys never meet. The middleware
// stores "http:<scope>:<key>"; an API client naming its key "http::k" must
// neither see the middleware's record for Idempotency-Key k nor block it.
func TestIdempotencyKeysDisjointFromMiddleware(t *testing.T) {
	store := tempdata.NewMemory(tempdata.Config{})
	e := newEnv(t, Deps{Temp: store})
	var runs atomic.Int32
	mw := tempdata.IdempotencyMiddleware(store, tempdata.IdempotencyOptions{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"paymentId":"pay_1"}`)
	}))
	post := func(key string) int {
		req := httptest.NewRequest(http.MethodPost, "/payments", strings.NewReader(`{}`))
		req.Header.Set(tempdata.IdempotencyKeyHeader, key)
		rec := httptest.NewRecorder()
		mw.ServeHTTP(rec, req)
		return rec.Code
	}

	// The middleware completes k; the API's "http::k" is a new key.
	if code := post("k"); code != http.StatusCreated || runs.Load() != 1 {
		t.Fatalf("middleware: %d, runs %d", code, runs.Load())
	}
	res := e.do(http.MethodPost, "/v1/idempotency/"+url.PathEscape("http::k")+"/begin", `{"ttlMs":60000}`)
	e.mustStatus(res, 201)
	// The API's in-progress "http::j" does not block the middleware's j.
	e.mustStatus(e.do(http.MethodPost, "/v1/idempotency/"+url.PathEscape("http::j")+"/begin", `{"ttlMs":60000}`), 201)
	if code := post("j"); code != http.StatusCreated || runs.Load() != 2 {
		t.Fatalf("middleware j: %d, runs %d", code, runs.Load())
	}
	// And the API key "k" is not the middleware's k either.
	e.mustStatus(e.do(http.MethodPost, "/v1/idempotency/k/begin", `{"ttlMs":60000}`), 201)
	// The middleware's records are where it put them: a replay.
	if code := post("k"); code != http.StatusCreated || runs.Load() != 2 {
		t.Fatalf("middleware replay: %d, runs %d", code, runs.Load())
	}
	// The longest API key fits the store with its prefix; one byte more is
	// bad input naming the key, not a store error.
	e.mustStatus(e.do(http.MethodPost, "/v1/idempotency/"+strings.Repeat("k", maxIdemKeyLen)+"/begin", `{"ttlMs":60000}`), 201)
	res = e.do(http.MethodPost, "/v1/idempotency/"+strings.Repeat("k", maxIdemKeyLen+1)+"/begin", `{"ttlMs":60000}`)
	wantError(t, res, 400, "invalid_argument")
	if _, f := res.errorOf(t); f != "key" {
		t.Fatalf("field %q", f)
	}
}

// TestConcurrentTakeAndConsume: of 100 concurrent takes of one value, and of
// 100 concurrent consumes of one token, exactly one gets 200 and the rest
// 404, on every backend.
func TestConcurrentTakeAndConsume(t *testing.T) {
	const callers = 100
	for _, bc := range backendCases {
		t.Run(bc.name, func(t *testing.T) {
			t.Parallel()
			e := newBackendEnv(t, backendURL(t, bc.url), elevaredis.Config{})
			e.mustStatus(e.do(http.MethodPut, "/v1/temp/oauth/state-1", `{"value":{"v":1},"ttlMs":60000}`), 200)
			res := e.do(http.MethodPost, "/v1/tokens", `{"purpose":"p","data":{"v":2},"ttlMs":60000}`)
			e.mustStatus(res, 201)
			tok := res.json(t)["token"].(string)
			for _, c := range []struct{ path, body string }{
				{"/v1/temp/oauth/state-1/take", ""},
				{"/v1/tokens/" + tok + "/consume", `{"purpose":"p"}`},
			} {
				var wg sync.WaitGroup
				counts := make([]atomic.Int32, 600)
				for range callers {
					wg.Go(func() {
						req := httptest.NewRequest(http.MethodPost, c.path, strings.NewReader(c.body))
						req.RemoteAddr = "127.0.0.1:1"
						rec := httptest.NewRecorder()
						e.h.ServeHTTP(rec, req)
						counts[rec.Code].Add(1)
					})
				}
				wg.Wait()
				if counts[200].Load() != 1 || counts[404].Load() != callers-1 {
					t.Fatalf("%s: %d × 200, %d × 404 of %d", c.path, counts[200].Load(), counts[404].Load(), callers)
				}
			}
		})
	}
}

// TestBadInputNewRoutes: every bad input of the lock, temp, token and
// idempotency routes is a 400 naming the field (or 413), never a 5xx, and
// writes nothing.
func TestBadInputNewRoutes(t *testing.T) {
	long := strings.Repeat("n", 1025)
	tests := []struct {
		name, method, path, body string
		status                   int
		field                    string
	}{
		{"acquire: missing ttl", "POST", "/v1/locks/l/acquire", `{}`, 400, "ttlMs"},
		{"acquire: null ttl", "POST", "/v1/locks/l/acquire", `{"ttlMs":null}`, 400, "ttlMs"},
		{"acquire: zero ttl", "POST", "/v1/locks/l/acquire", `{"ttlMs":0}`, 400, "ttlMs"},
		{"acquire: negative ttl", "POST", "/v1/locks/l/acquire", `{"ttlMs":-5}`, 400, "ttlMs"},
		{"acquire: ttl over a day", "POST", "/v1/locks/l/acquire", `{"ttlMs":86400001}`, 400, "ttlMs"},
		{"acquire: ttl a string", "POST", "/v1/locks/l/acquire", `{"ttlMs":"1000"}`, 400, "ttlMs"},
		{"acquire: ttl fractional", "POST", "/v1/locks/l/acquire", `{"ttlMs":1.5}`, 400, "ttlMs"},
		{"acquire: ttl overflows", "POST", "/v1/locks/l/acquire", `{"ttlMs":1e30}`, 400, "ttlMs"},
		{"acquire: negative wait", "POST", "/v1/locks/l/acquire", `{"ttlMs":1000,"waitMs":-1}`, 400, "waitMs"},
		{"acquire: wait over 30s", "POST", "/v1/locks/l/acquire", `{"ttlMs":1000,"waitMs":30001}`, 400, "waitMs"},
		{"acquire: wait a bool", "POST", "/v1/locks/l/acquire", `{"ttlMs":1000,"waitMs":true}`, 400, "waitMs"},
		{"acquire: unknown field", "POST", "/v1/locks/l/acquire", `{"ttlMs":1000,"ttl":5}`, 400, "ttl"},
		{"acquire: name too long", "POST", "/v1/locks/" + long + "/acquire", `{"ttlMs":1000}`, 400, "name"},
		{"acquire: empty body", "POST", "/v1/locks/l/acquire", ``, 400, ""},
		{"acquire: array", "POST", "/v1/locks/l/acquire", `[1]`, 400, ""},
		{"acquire: trailing data", "POST", "/v1/locks/l/acquire", `{"ttlMs":1000} {}`, 400, ""},
		{"acquire: too large", "POST", "/v1/locks/l/acquire", `{"ttlMs":1000}` + strings.Repeat(" ", 2048), 413, ""},
		{"refresh: missing token", "POST", "/v1/locks/l/refresh", `{"ttlMs":1000}`, 400, "token"},
		{"refresh: empty token", "POST", "/v1/locks/l/refresh", `{"token":"","ttlMs":1000}`, 400, "token"},
		{"refresh: token a number", "POST", "/v1/locks/l/refresh", `{"token":5,"ttlMs":1000}`, 400, "token"},
		{"refresh: token too long", "POST", "/v1/locks/l/refresh", `{"token":"` + strings.Repeat("t", 1025) + `","ttlMs":1000}`, 400, "token"},
		{"refresh: missing ttl", "POST", "/v1/locks/l/refresh", `{"token":"t"}`, 400, "ttlMs"},
		{"release: missing token", "POST", "/v1/locks/l/release", `{}`, 400, "token"},
		{"release: unknown field", "POST", "/v1/locks/l/release", `{"token":"t","force":true}`, 400, "force"},
		{"inspect: name too long", "GET", "/v1/locks/" + long, ``, 400, "name"},

		{"put: missing value", "PUT", "/v1/temp/ns/k", `{"ttlMs":1000}`, 400, "value"},
		{"put: missing ttl", "PUT", "/v1/temp/ns/k", `{"value":1}`, 400, "ttlMs"},
		{"put: zero ttl", "PUT", "/v1/temp/ns/k", `{"value":1,"ttlMs":0}`, 400, "ttlMs"},
		{"put: ttl over 30 days", "PUT", "/v1/temp/ns/k", `{"value":1,"ttlMs":2592000001}`, 400, "ttlMs"},
		{"put: ifAbsent a string", "PUT", "/v1/temp/ns/k", `{"value":1,"ttlMs":1000,"ifAbsent":"yes"}`, 400, "ifAbsent"},
		{"put: unknown field", "PUT", "/v1/temp/ns/k", `{"value":1,"ttlMs":1000,"tags":[]}`, 400, "tags"},
		{"put: malformed value", "PUT", "/v1/temp/ns/k", `{"value":{"a":},"ttlMs":1000}`, 400, ""},
		{"put: namespace too long", "PUT", "/v1/temp/" + long + "/k", `{"value":1,"ttlMs":1000}`, 400, "namespace"},
		{"put: key too long", "PUT", "/v1/temp/ns/" + long, `{"value":1,"ttlMs":1000}`, 400, "key"},
		{"get: key too long", "GET", "/v1/temp/ns/" + long, ``, 400, "key"},
		{"delete: namespace too long", "DELETE", "/v1/temp/" + long + "/k", ``, 400, "namespace"},
		{"take: unknown field", "POST", "/v1/temp/ns/k/take", `{"all":true}`, 400, "all"},
		{"take: not an object", "POST", "/v1/temp/ns/k/take", `[]`, 400, ""},
		{"take: key too long", "POST", "/v1/temp/ns/" + long + "/take", ``, 400, "key"},

		{"issue: missing purpose", "POST", "/v1/tokens", `{"data":1,"ttlMs":1000}`, 400, "purpose"},
		{"issue: empty purpose", "POST", "/v1/tokens", `{"purpose":"","data":1,"ttlMs":1000}`, 400, "purpose"},
		{"issue: purpose a number", "POST", "/v1/tokens", `{"purpose":1,"data":1,"ttlMs":1000}`, 400, "purpose"},
		{"issue: purpose too long", "POST", "/v1/tokens", `{"purpose":"` + long + `","data":1,"ttlMs":1000}`, 400, "purpose"},
		{"issue: missing data", "POST", "/v1/tokens", `{"purpose":"p","ttlMs":1000}`, 400, "data"},
		{"issue: missing ttl", "POST", "/v1/tokens", `{"purpose":"p","data":1}`, 400, "ttlMs"},
		{"issue: negative ttl", "POST", "/v1/tokens", `{"purpose":"p","data":1,"ttlMs":-1}`, 400, "ttlMs"},
		{"issue: unknown field", "POST", "/v1/tokens", `{"purpose":"p","data":1,"ttlMs":1000,"token":"x"}`, 400, "token"},
		{"consume: missing purpose", "POST", "/v1/tokens/AAAA/consume", `{}`, 400, "purpose"},
		{"consume: empty purpose", "POST", "/v1/tokens/AAAA/consume", `{"purpose":""}`, 400, "purpose"},
		{"consume: unknown field", "POST", "/v1/tokens/AAAA/consume", `{"purpose":"p","data":1}`, 400, "data"},

		{"begin: missing ttl", "POST", "/v1/idempotency/k/begin", `{}`, 400, "ttlMs"},
		{"begin: ttl over 30 days", "POST", "/v1/idempotency/k/begin", `{"ttlMs":2592000001}`, 400, "ttlMs"},
		{"begin: fingerprint a number", "POST", "/v1/idempotency/k/begin", `{"ttlMs":1000,"fingerprint":7}`, 400, "fingerprint"},
		{"begin: fingerprint too long", "POST", "/v1/idempotency/k/begin", `{"ttlMs":1000,"fingerprint":"` + long + `"}`, 400, "fingerprint"},
		{"begin: key too long", "POST", "/v1/idempotency/" + long + "/begin", `{"ttlMs":1000}`, 400, "key"},
		{"complete: missing response", "POST", "/v1/idempotency/k/complete", `{"ttlMs":1000}`, 400, "response"},
		{"complete: zero ttl", "POST", "/v1/idempotency/k/complete", `{"response":1,"ttlMs":0}`, 400, "ttlMs"},
		{"complete: ttl a string", "POST", "/v1/idempotency/k/complete", `{"response":1,"ttlMs":"1s"}`, 400, "ttlMs"},
		{"fail: unknown field", "POST", "/v1/idempotency/k/fail", `{"reason":"x"}`, 400, "reason"},
		{"fail: malformed", "POST", "/v1/idempotency/k/fail", `{`, 400, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, Deps{APIKeys: []string{testKey}, MaxBodyBytes: 2048})
			auth := "Authorization: Bearer " + testKey
			res := e.do(tc.method, tc.path, tc.body, auth)
			e.mustStatus(res, tc.status)
			code, f := res.errorOf(t)
			want := "invalid_argument"
			if tc.status == 413 {
				want = "payload_too_large"
			}
			if code != want || f != tc.field {
				t.Fatalf("code=%q field=%q, want %q %q (%s)", code, f, want, tc.field, res.body)
			}
			// Nothing was written.
			switch {
			case strings.HasPrefix(tc.path, "/v1/locks/l/"):
				if m := e.do(http.MethodGet, "/v1/locks/l", "", auth).json(t); m["held"] != false {
					t.Fatalf("lock taken by a bad request: %v", m)
				}
			case strings.HasPrefix(tc.path, "/v1/temp/ns/k"):
				wantError(t, e.do(http.MethodGet, "/v1/temp/ns/k", "", auth), 404, "not_found")
			case strings.HasPrefix(tc.path, "/v1/idempotency/k/"):
				e.mustStatus(e.do(http.MethodPost, "/v1/idempotency/k/begin", `{"ttlMs":1000}`, auth), 201)
			}
		})
	}

	// The new routes need the API key like every /v1 route.
	e := newEnv(t, Deps{APIKeys: []string{testKey}})
	for _, r := range [][2]string{{"POST", "/v1/locks/l/acquire"}, {"GET", "/v1/locks/l"}, {"PUT", "/v1/temp/ns/k"}, {"GET", "/v1/temp/ns/k"},
		{"DELETE", "/v1/temp/ns/k"}, {"POST", "/v1/temp/ns/k/take"}, {"POST", "/v1/tokens"}, {"POST", "/v1/tokens/t/consume"},
		{"POST", "/v1/idempotency/k/begin"}, {"POST", "/v1/idempotency/k/complete"}, {"POST", "/v1/idempotency/k/fail"}} {
		wantError(t, e.do(r[0], r[1], `{}`, "Authorization: Bearer wrong"), 401, "unauthorized")
	}
}

// TestEmptyCrossSiteFormPost: the routes without a body still refuse a
// non-JSON Content-Type, so a cross-site form (a "simple" request no
// preflight stops) cannot take a value or fail a record on a keyless
// loopback instance.
func TestEmptyCrossSiteFormPost(t *testing.T) {
	e := newEnv(t, Deps{})
	e.mustStatus(e.do(http.MethodPut, "/v1/temp/ns/k", `{"value":1,"ttlMs":60000}`), 200)
	e.mustStatus(e.do(http.MethodPost, "/v1/idempotency/k/begin", `{"ttlMs":60000}`), 201)
	for _, ct := range []string{"application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"} {
		for _, path := range []string{"/v1/temp/ns/k/take", "/v1/idempotency/k/fail"} {
			wantError(t, e.do(http.MethodPost, path, "", "Content-Type: "+ct), 400, "invalid_argument")
		}
	}
	// Both are untouched; without a Content-Type (fetch with no body) they
	// work.
	wantError(t, e.do(http.MethodPost, "/v1/idempotency/k/begin", `{"ttlMs":60000}`), 409, "in_progress")
	e.mustStatus(e.do(http.MethodPost, "/v1/temp/ns/k/take", ""), 200)
	e.mustStatus(e.do(http.MethodPost, "/v1/idempotency/k/fail", ""), 200)
}

// TestValueSizeLimit: with a body limit above it, a value over
// tempdata.MaxValueSize is bad input naming the field.
func TestValueSizeLimit(t *testing.T) {
	e := newEnv(t, Deps{MaxBodyBytes: 3 << 20})
	big := `"` + strings.Repeat("x", tempdata.MaxValueSize) + `"`
	for _, c := range []struct{ method, path, body, field string }{
		{"PUT", "/v1/temp/ns/k", `{"value":` + big + `,"ttlMs":1000}`, "value"},
		{"POST", "/v1/tokens", `{"purpose":"p","data":` + big + `,"ttlMs":1000}`, "data"},
		{"POST", "/v1/idempotency/k/complete", `{"response":` + big + `}`, "response"},
	} {
		res := e.do(c.method, c.path, c.body)
		wantError(t, res, 400, "invalid_argument")
		if _, f := res.errorOf(t); f != c.field {
			t.Errorf("%s: field %q, want %q", c.path, f, c.field)
		}
	}
	wantError(t, e.do(http.MethodGet, "/v1/temp/ns/k", ""), 404, "not_found")
}

// TestUnavailableWhenRedisIsDown: with redis-server killed, every lock,
// temp, token and idempotency route answers 503 unavailable, never success,
// within a bounded time; the same server works again once Redis is back.
func TestUnavailableWhenRedisIsDown(t *testing.T) {
	srv := redistest.NewServer(t)
	cfg := elevaredis.Config{KeyPrefix: redistest.Prefix(t)}
	cfg.Lock.Timeout = 200 * time.Millisecond
	cfg.Temp.Timeout = 200 * time.Millisecond
	e := newBackendEnv(t, srv.URL(), cfg)

	// State from before the outage, so the calls below have something to
	// find if they (wrongly) answered from anywhere but Redis.
	res := e.do(http.MethodPost, "/v1/locks/l/acquire", `{"ttlMs":60000}`)
	e.mustStatus(res, 200)
	tokenOfLock := decodeInto[lease](t, res).Token
	e.mustStatus(e.do(http.MethodPut, "/v1/temp/ns/k", `{"value":1,"ttlMs":60000}`), 200)
	res = e.do(http.MethodPost, "/v1/tokens", `{"purpose":"p","data":1,"ttlMs":60000}`)
	e.mustStatus(res, 201)
	tok := res.json(t)["token"].(string)
	e.mustStatus(e.do(http.MethodPost, "/v1/idempotency/i/begin", `{"ttlMs":60000}`), 201)

	srv.Stop(t)
	calls := []struct{ method, path, body string }{
		{"POST", "/v1/locks/l/acquire", `{"ttlMs":60000}`},
		{"POST", "/v1/locks/m/acquire", `{"ttlMs":60000,"waitMs":100}`},
		{"POST", "/v1/locks/l/refresh", `{"token":"` + tokenOfLock + `","ttlMs":60000}`},
		{"POST", "/v1/locks/l/release", `{"token":"` + tokenOfLock + `"}`},
		{"GET", "/v1/locks/l", ``},
		{"PUT", "/v1/temp/ns/k", `{"value":2,"ttlMs":60000}`},
		{"GET", "/v1/temp/ns/k", ``},
		{"POST", "/v1/temp/ns/k/take", ``},
		{"DELETE", "/v1/temp/ns/k", ``},
		{"POST", "/v1/tokens", `{"purpose":"p","data":1,"ttlMs":60000}`},
		{"POST", "/v1/tokens/" + tok + "/consume", `{"purpose":"p"}`},
		{"POST", "/v1/idempotency/i/begin", `{"ttlMs":60000}`},
		{"POST", "/v1/idempotency/i/complete", `{"response":1}`},
		{"POST", "/v1/idempotency/i/fail", ``},
	}
	for _, c := range calls {
		start := time.Now()
		res := e.do(c.method, c.path, c.body)
		took := time.Since(start)
		wantError(t, res, 503, "unavailable")
		if strings.Contains(string(res.body), srv.Addr) {
			t.Errorf("%s %s: backend address leaked: %s", c.method, c.path, res.body)
		}
		// Generous: the calls are bounded by their 200ms timeouts (a wait
		// adds its retry of one timeout), not by rueidis' own.
		if took > 3*time.Second {
			t.Errorf("%s %s took %v with Redis down", c.method, c.path, took)
		}
	}

	srv.Start(t) // a fresh server: nothing persisted
	e.mustStatus(e.do(http.MethodPost, "/v1/locks/l/acquire", `{"ttlMs":60000}`), 200)
	e.mustStatus(e.do(http.MethodPut, "/v1/temp/ns/k", `{"value":3,"ttlMs":60000}`), 200)
	e.mustStatus(e.do(http.MethodPost, "/v1/temp/ns/k/take", ``), 200)
	res = e.do(http.MethodPost, "/v1/tokens", `{"purpose":"p","data":1,"ttlMs":60000}`)
	e.mustStatus(res, 201)
	e.mustStatus(e.do(http.MethodPost, "/v1/tokens/"+res.json(t)["token"].(string)+"/consume", `{"purpose":"p"}`), 200)
	e.mustStatus(e.do(http.MethodPost, "/v1/idempotency/i/begin", `{"ttlMs":60000}`), 201)
}

// TestUnreadableStoredValues: values the API cannot return are a 500
// internal with a log line, never a malformed body: one sealed under a key
// that is no longer configured, one that is not JSON (stored by a Go
// program through the library).
func TestUnreadableStoredValues(t *testing.T) {
	const (
		k1 = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
		k2 = "k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="
	)
	u := redistest.URL(t)
	prefix := redistest.Prefix(t)
	old := newBackendEnv(t, u, elevaredis.Config{KeyPrefix: prefix, EncryptionKey: k1})
	rotated := newBackendEnv(t, u, elevaredis.Config{KeyPrefix: prefix, EncryptionKey: k2 + "," + k1})
	dropped := newBackendEnv(t, u, elevaredis.Config{KeyPrefix: prefix, EncryptionKey: k2})

	old.mustStatus(old.do(http.MethodPut, "/v1/temp/ns/sealed", `{"value":{"secret":"s3"},"ttlMs":60000}`), 200)
	// After rotation the old key still opens it.
	res := rotated.do(http.MethodGet, "/v1/temp/ns/sealed", "")
	rotated.mustStatus(res, 200)
	if !sameJSON(t, field(t, res, "value"), []byte(`{"secret":"s3"}`)) {
		t.Fatalf("rotated read %s", res.body)
	}
	// Without the old key it cannot be read: 500, logged, no ciphertext or
	// detail in the answer.
	res = dropped.do(http.MethodGet, "/v1/temp/ns/sealed", "")
	wantError(t, res, 500, "internal")
	if !strings.Contains(dropped.logs.String(), "cannot be decrypted") {
		t.Errorf("unreadable value not logged:\n%s", dropped.logs)
	}

	store := tempdata.NewMemory(tempdata.Config{})
	e := newEnv(t, Deps{Temp: store})
	if _, err := store.Put(context.Background(), "ns", "raw", []byte("not json"), time.Minute); err != nil {
		t.Fatal(err)
	}
	wantError(t, e.do(http.MethodGet, "/v1/temp/ns/raw", ""), 500, "internal")
	if !strings.Contains(e.logs.String(), "stored value is not JSON") {
		t.Errorf("not logged:\n%s", e.logs)
	}
}
