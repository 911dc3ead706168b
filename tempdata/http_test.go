package tempdata

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// response is what a client saw.
type response struct {
	status int
	header http.Header
	body   []byte
}

func doRequest(t *testing.T, client *http.Client, method, url, key string, body []byte) response {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Error(err)
		return response{}
	}
	if key != "" {
		req.Header.Set(IdempotencyKeyHeader, key)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Error(err)
		return response{}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Error(err)
	}
	return response{resp.StatusCode, resp.Header, b}
}

// errorCode returns the "code" of a JSON error body.
func errorCode(b []byte) string {
	var e struct {
		Error struct {
			Code  string `json:"code"`
			Field string `json:"field"`
		} `json:"error"`
	}
	_ = json.Unmarshal(b, &e)
	return e.Error.Code
}

// assertReplay checks that r is a byte-identical replay of orig: same status
// and body bytes, the same headers except those the transport sets per
// response (Date), Set-Cookie (never replayed) and the replay marker.
func assertReplay(t *testing.T, what string, orig, r response) {
	t.Helper()
	if r.status != orig.status || !bytes.Equal(r.body, orig.body) {
		t.Errorf("%s: %d %q, want replay of %d %q", what, r.status, r.body, orig.status, orig.body)
	}
	if r.header.Get(ReplayedHeader) != "true" {
		t.Errorf("%s: no %s header", what, ReplayedHeader)
	}
	if r.header.Values("Set-Cookie") != nil {
		t.Errorf("%s: replayed Set-Cookie %q", what, r.header.Values("Set-Cookie"))
	}
	strip := func(h http.Header) http.Header {
		h = h.Clone()
		for _, k := range []string{"Date", "Set-Cookie", ReplayedHeader} {
			h.Del(k)
		}
		return h
	}
	if a, b := strip(orig.header), strip(r.header); !maps.EqualFunc(a, b, slices.Equal) {
		t.Errorf("%s: headers %v, want %v", what, b, a)
	}
}

// TestIdempotencyMiddlewareConcurrent is acceptance item 5: 50 concurrent
// identical requests run the handler once; the others get 409 in_progress
// or, once it completed, a byte-identical replay; later duplicates replay
// byte-identically; a different body with the same key gets 422. The handler
// holds the first request until all 50 have reached the server, so the
// duplicates really overlap it. On memory, Redis and Cluster.
func TestIdempotencyMiddlewareConcurrent(t *testing.T) {
	t.Parallel()
	for _, tg := range targets() {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			store := tg.newEnv(t).store(Config{})
			const n = 50
			var arrived, runs atomic.Int64
			allSent := make(chan struct{})
			handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				run := runs.Add(1)
				<-allSent
				body, _ := io.ReadAll(r.Body)
				h := w.Header()
				h.Set("Content-Type", "application/json")
				h.Set("Location", "/payments/pay_1")
				h.Add("X-Payment-Step", "charged")
				h.Add("X-Payment-Step", "receipt")
				http.SetCookie(w, &http.Cookie{Name: "session", Value: "secret"})
				w.WriteHeader(http.StatusCreated)
				// The run number and time make a second run detectable.
				fmt.Fprintf(w, `{"run":%d,"at":%d,"echo":%q}`, run, time.Now().UnixNano(), body)
			})
			mw := IdempotencyMiddleware(store, IdempotencyOptions{Logger: quiet(Config{}).Logger})(handler)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if arrived.Add(1) == n {
					close(allSent)
				}
				mw.ServeHTTP(w, r)
			}))
			defer srv.Close()
			client := srv.Client()
			body := []byte(`{"appointment":"appt_123","amount":5000}`)

			resps := make([]response, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					resps[i] = doRequest(t, client, http.MethodPost, srv.URL+"/pay", `"pay-appt_123"`, body)
				}()
			}
			wg.Wait()
			if t.Failed() {
				t.FailNow()
			}
			if got := runs.Load(); got != 1 {
				t.Fatalf("handler ran %d times for %d identical requests, want 1", got, n)
			}
			var orig *response
			for i := range resps {
				if resps[i].status == http.StatusCreated && resps[i].header.Get(ReplayedHeader) == "" {
					if orig != nil {
						t.Fatalf("two original (not replayed) responses")
					}
					orig = &resps[i]
				}
			}
			if orig == nil {
				t.Fatalf("no original response among %d", n)
			}
			if orig.header.Get("Set-Cookie") == "" || !bytes.Contains(orig.body, []byte(`"run":1`)) {
				t.Fatalf("original response %v %q lacks what the handler wrote", orig.header, orig.body)
			}
			var conflicts, replays int
			for i := range resps {
				r := resps[i]
				switch {
				case &resps[i] == orig:
				case r.status == http.StatusConflict:
					conflicts++
					if errorCode(r.body) != "in_progress" || r.header.Get("Content-Type") != "application/json" {
						t.Errorf("409 body %q (%s), want JSON code in_progress", r.body, r.header.Get("Content-Type"))
					}
				default:
					replays++
					assertReplay(t, "concurrent duplicate", *orig, r)
				}
			}
			t.Logf("%d concurrent duplicates: %d got 409 in_progress, %d a replay", n-1, conflicts, replays)

			for i := range 3 {
				r := doRequest(t, client, http.MethodPost, srv.URL+"/pay", `"pay-appt_123"`, body)
				assertReplay(t, fmt.Sprintf("later duplicate %d", i), *orig, r)
			}
			for _, c := range []struct {
				what, path string
				body       []byte
			}{
				{"another body", "/pay", []byte(`{"appointment":"appt_123","amount":9999}`)},
				{"another path", "/refund", body},
				{"another query", "/pay?dry=1", body},
			} {
				r := doRequest(t, client, http.MethodPost, srv.URL+c.path, `"pay-appt_123"`, c.body)
				if r.status != http.StatusUnprocessableEntity || errorCode(r.body) != "fingerprint_mismatch" {
					t.Errorf("same key, %s: %d %q, want 422 fingerprint_mismatch", c.what, r.status, r.body)
				}
			}
			if got := runs.Load(); got != 1 {
				t.Fatalf("handler ran %d times in all, want 1", got)
			}
		})
	}
}

// mwHarness is a memory store, a counting handler and the middleware.
type mwHarness struct {
	h    http.Handler
	runs atomic.Int64
}

// newHarness wraps handler (which gets the run number) in the middleware.
// outer, if set, runs before the middleware (it plays outer middleware).
func newHarness(opts IdempotencyOptions, handler func(run int64, w http.ResponseWriter, r *http.Request)) *mwHarness {
	x := &mwHarness{}
	if opts.Logger == nil {
		opts.Logger = quiet(Config{}).Logger
	}
	store := NewMemory(quiet(Config{}))
	x.h = IdempotencyMiddleware(store, opts)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handler(x.runs.Add(1), w, r)
	}))
	return x
}

func (x *mwHarness) do(method, target, body string, header ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Add(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	x.h.ServeHTTP(w, r)
	return w
}

func echo(run int64, w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	fmt.Fprintf(w, "run %d: %s", run, b)
}

func TestIdempotencyMiddlewarePassThrough(t *testing.T) {
	x := newHarness(IdempotencyOptions{}, echo)
	// Not one of the methods: untouched, every time, key or not.
	for range 2 {
		x.do(http.MethodGet, "/", "", IdempotencyKeyHeader, "k")
		x.do(http.MethodPut, "/", "b", IdempotencyKeyHeader, "k")
	}
	// No header: unprotected.
	x.do(http.MethodPost, "/", "b")
	x.do(http.MethodPost, "/", "b")
	if got := x.runs.Load(); got != 6 {
		t.Fatalf("handler ran %d times, want 6 (nothing intercepted)", got)
	}
	// Methods option.
	x = newHarness(IdempotencyOptions{Methods: []string{http.MethodPut}}, echo)
	x.do(http.MethodPut, "/", "b", IdempotencyKeyHeader, "k")
	if w := x.do(http.MethodPut, "/", "b", IdempotencyKeyHeader, "k"); w.Header().Get(ReplayedHeader) != "true" || x.runs.Load() != 1 {
		t.Fatalf("PUT with Methods [PUT]: not replayed (runs %d)", x.runs.Load())
	}
	x.do(http.MethodPost, "/", "b", IdempotencyKeyHeader, "k")
	if x.runs.Load() != 2 {
		t.Fatalf("POST with Methods [PUT] was intercepted")
	}
}

func TestIdempotencyMiddlewareBadInput(t *testing.T) {
	x := newHarness(IdempotencyOptions{Require: true, MaxBodyBytes: 10}, echo)
	for _, c := range []struct {
		name   string
		body   string
		header []string
		status int
		code   string
	}{
		{"missing header with Require", "b", nil, 400, "invalid_argument"},
		{"empty sf-string", "b", []string{IdempotencyKeyHeader, `""`}, 400, "invalid_argument"},
		{"unterminated sf-string", "b", []string{IdempotencyKeyHeader, `"abc`}, 400, "invalid_argument"},
		{"quote inside sf-string", "b", []string{IdempotencyKeyHeader, `"a"b"`}, 400, "invalid_argument"},
		{"bad escape", "b", []string{IdempotencyKeyHeader, `"a\n"`}, 400, "invalid_argument"},
		{"non-ASCII", "b", []string{IdempotencyKeyHeader, "clé"}, 400, "invalid_argument"},
		{"too long", "b", []string{IdempotencyKeyHeader, strings.Repeat("k", MaxIdempotencyKeyLen+1)}, 400, "invalid_argument"},
		{"two header fields", "b", []string{IdempotencyKeyHeader, "a", IdempotencyKeyHeader, "b"}, 400, "invalid_argument"},
		{"body over MaxBodyBytes", "01234567890", []string{IdempotencyKeyHeader, "k"}, 413, "payload_too_large"},
	} {
		w := x.do(http.MethodPost, "/", c.body, c.header...)
		if w.Code != c.status || errorCode(w.Body.Bytes()) != c.code {
			t.Errorf("%s: %d %q, want %d %s", c.name, w.Code, w.Body, c.status, c.code)
		}
	}
	if x.runs.Load() != 0 {
		t.Fatalf("the handler ran %d times on bad input", x.runs.Load())
	}
	// At the limits: accepted.
	if w := x.do(http.MethodPost, "/", "0123456789", IdempotencyKeyHeader, strings.Repeat("k", MaxIdempotencyKeyLen)); w.Code != 200 {
		t.Fatalf("body at MaxBodyBytes, key at its maximum: %d %q", w.Code, w.Body)
	}
}

func TestIdempotencyMiddlewareKeySpelling(t *testing.T) {
	x := newHarness(IdempotencyOptions{}, echo)
	first := x.do(http.MethodPost, "/", "body", IdempotencyKeyHeader, `"a\"b\\c"`)
	if first.Code != 200 || first.Body.String() != "run 1: body" {
		t.Fatalf("first: %d %q (the handler must see the body)", first.Code, first.Body)
	}
	// The sf-string and its bare value are one key.
	w := x.do(http.MethodPost, "/", "body", IdempotencyKeyHeader, `a"b\c`)
	if w.Header().Get(ReplayedHeader) != "true" || w.Body.String() != "run 1: body" {
		t.Fatalf("bare spelling of the same key: %d %q, want a replay", w.Code, w.Body)
	}
}

func TestIdempotencyMiddlewareFailures(t *testing.T) {
	t.Run("5xx fails the record", func(t *testing.T) {
		x := newHarness(IdempotencyOptions{}, func(run int64, w http.ResponseWriter, r *http.Request) {
			if run == 1 {
				http.Error(w, "database down", http.StatusServiceUnavailable)
				return
			}
			echo(run, w, r)
		})
		if w := x.do(http.MethodPost, "/", "b", IdempotencyKeyHeader, "k"); w.Code != 503 {
			t.Fatalf("first: %d", w.Code)
		}
		if w := x.do(http.MethodPost, "/", "b", IdempotencyKeyHeader, "k"); w.Code != 200 || w.Header().Get(ReplayedHeader) != "" || x.runs.Load() != 2 {
			t.Fatalf("retry after a 5xx: %d (runs %d), want the handler to run again", w.Code, x.runs.Load())
		}
	})
	t.Run("5xx stored with StoreServerErrors", func(t *testing.T) {
		x := newHarness(IdempotencyOptions{StoreServerErrors: true}, func(run int64, w http.ResponseWriter, r *http.Request) {
			http.Error(w, fmt.Sprint("failed in run ", run), http.StatusInternalServerError)
		})
		x.do(http.MethodPost, "/", "b", IdempotencyKeyHeader, "k")
		w := x.do(http.MethodPost, "/", "b", IdempotencyKeyHeader, "k")
		if w.Code != 500 || w.Header().Get(ReplayedHeader) != "true" || !strings.Contains(w.Body.String(), "run 1") || x.runs.Load() != 1 {
			t.Fatalf("retry after a stored 5xx: %d %q (runs %d), want the replay", w.Code, w.Body, x.runs.Load())
		}
	})
	t.Run("panic fails the record and propagates", func(t *testing.T) {
		x := newHarness(IdempotencyOptions{}, func(run int64, w http.ResponseWriter, r *http.Request) {
			if run == 1 {
				w.Header().Set("X-Partial", "1")
				_, _ = w.Write([]byte("partial"))
				panic("boom")
			}
			echo(run, w, r)
		})
		var recovered any
		func() {
			defer func() { recovered = recover() }()
			x.do(http.MethodPost, "/", "b", IdempotencyKeyHeader, "k")
		}()
		if recovered != "boom" {
			t.Fatalf("recovered %v, want the handler's panic", recovered)
		}
		if w := x.do(http.MethodPost, "/", "b", IdempotencyKeyHeader, "k"); w.Code != 200 || w.Body.String() != "run 2: b" {
			t.Fatalf("retry after a panic: %d %q, want the handler to run again", w.Code, w.Body)
		}
	})
}

func TestIdempotencyMiddlewareScopes(t *testing.T) {
	x := newHarness(IdempotencyOptions{KeyScope: func(r *http.Request) string { return r.Header.Get("X-Client") }}, echo)
	a := x.do(http.MethodPost, "/", "b", IdempotencyKeyHeader, "k", "X-Client", "client:a")
	b := x.do(http.MethodPost, "/", "b", IdempotencyKeyHeader, "k", "X-Client", "client")
	if a.Body.String() != "run 1: b" || b.Body.String() != "run 2: b" {
		t.Fatalf("two clients with one key: %q, %q; want both to run", a.Body, b.Body)
	}
	// A scope ending where another's key begins must not collide either.
	c := x.do(http.MethodPost, "/", "b", IdempotencyKeyHeader, "a:k", "X-Client", "client")
	if c.Body.String() != "run 3: b" {
		t.Fatalf("scope %q key %q: %q, want its own run", "client", "a:k", c.Body)
	}
	if w := x.do(http.MethodPost, "/", "b", IdempotencyKeyHeader, "k", "X-Client", "client:a"); w.Body.String() != "run 1: b" {
		t.Fatalf("same client again: %q, want the replay of run 1", w.Body)
	}
}

func TestIdempotencyMiddlewareHeaders(t *testing.T) {
	// Outer middleware sets a per-request id before the idempotency layer:
	// it is the outer layer's, not recorded, and the replay carries the
	// replay request's own id.
	var reqID atomic.Int64
	x := newHarness(IdempotencyOptions{}, func(run int64, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", "/things/1")
		w.Header().Set("Connection", "close")
		w.Header().Set("X-Handler", "set")
		w.WriteHeader(http.StatusAccepted)
	})
	inner := x.h
	x.h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", fmt.Sprint(reqID.Add(1)))
		inner.ServeHTTP(w, r)
	})
	first := x.do(http.MethodPost, "/", "", IdempotencyKeyHeader, "k")
	replay := x.do(http.MethodPost, "/", "", IdempotencyKeyHeader, "k")
	if first.Code != 202 || replay.Code != 202 || replay.Body.Len() != 0 {
		t.Fatalf("status %d then %d (body %q), want 202 twice, empty", first.Code, replay.Code, replay.Body)
	}
	if replay.Header().Get("X-Request-Id") != "2" || replay.Header().Get("Location") != "/things/1" || replay.Header().Get("X-Handler") != "set" {
		t.Fatalf("replay headers %v: want the handler's headers and the replay's own request id", replay.Header())
	}
	if replay.Header().Get("Connection") != "" {
		t.Fatalf("a hop-by-hop header was replayed: %v", replay.Header())
	}
}

func TestIdempotencyMiddlewareLargeResponse(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), MaxValueSize/16+10)
	x := newHarness(IdempotencyOptions{}, func(run int64, w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		for off := 0; off < len(big); off += 4096 {
			_, _ = w.Write(big[off:min(off+4096, len(big))])
		}
	})
	first := x.do(http.MethodPost, "/", "", IdempotencyKeyHeader, "k")
	if first.Code != 200 || !bytes.Equal(first.Body.Bytes(), big) {
		t.Fatalf("first: %d, %d bytes; want the whole %d-byte body", first.Code, first.Body.Len(), len(big))
	}
	replay := x.do(http.MethodPost, "/", "", IdempotencyKeyHeader, "k")
	if replay.Code != 200 || replay.Body.Len() != 0 || replay.Header().Get(BodyOmittedHeader) != "true" ||
		replay.Header().Get("Content-Type") != "text/plain" || x.runs.Load() != 1 {
		t.Fatalf("replay of a response over MaxValueSize: %d, %d bytes, %v (runs %d)", replay.Code, replay.Body.Len(), replay.Header(), x.runs.Load())
	}
}

func TestResponseEncoding(t *testing.T) {
	h := http.Header{"Content-Type": {"application/json"}, "X-Multi": {"a", "", "b"}, "X-Empty": {}}
	for _, body := range [][]byte{nil, []byte("hello"), {0, 1, 2, 0xff}} {
		enc := encodeResponse(201, h, body, false)
		status, got, gotBody, omitted, err := decodeResponse(enc)
		if err != nil || status != 201 || omitted || !bytes.Equal(gotBody, body) || !maps.EqualFunc(got, h, slices.Equal) {
			t.Fatalf("round trip of %q: %d %v %q %v %v", body, status, got, gotBody, omitted, err)
		}
	}
	if _, _, b, omitted, err := decodeResponse(encodeResponse(200, nil, []byte("x"), true)); err != nil || !omitted || len(b) != 0 {
		t.Fatalf("omitted body: %q %v %v", b, omitted, err)
	}
}

// FuzzDecodeResponse checks that a corrupt recorded response never panics
// the middleware, and that encoding round-trips.
func FuzzDecodeResponse(f *testing.F) {
	f.Add(encodeResponse(201, http.Header{"A": {"b", "c"}}, []byte("body"), false))
	f.Add(encodeResponse(200, nil, nil, true))
	f.Add([]byte{1, 0, 0, 200, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		status, h, body, omitted, err := decodeResponse(b)
		if err != nil {
			return
		}
		again := encodeResponse(status, h, body, omitted)
		s2, h2, b2, o2, err := decodeResponse(again)
		if err != nil || s2 != status || o2 != omitted || !bytes.Equal(b2, body) || !maps.EqualFunc(h2, h, slices.Equal) {
			t.Fatalf("re-encoding changed the response")
		}
	})
}

// FuzzParseIdempotencyKey checks that header parsing never panics and only
// accepts printable ASCII keys of the allowed length.
func FuzzParseIdempotencyKey(f *testing.F) {
	for _, s := range []string{`"abc"`, "abc", `"a\"b"`, `""`, `"`, `"\`, "\x00", "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		k, ok := parseIdempotencyKey([]string{v})
		if !ok {
			return
		}
		if k == "" || len(k) > MaxIdempotencyKeyLen {
			t.Fatalf("accepted %q as %q", v, k)
		}
		for i := 0; i < len(k); i++ {
			if k[i] < 0x20 || k[i] > 0x7e {
				t.Fatalf("accepted %q as %q with byte %#x", v, k, k[i])
			}
		}
	})
}
