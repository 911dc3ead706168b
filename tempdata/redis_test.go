package tempdata

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/internal/seal"
	"github.com/elevacare/eleva-redis/internal/testutil"
)

// TestRedisKeyLayout checks, on the cluster, that every key the store writes
// has a TTL, has the documented shape (one hash tag, no user input outside
// it, no token in it), and that a key's hash tag is its whole identity.
func TestRedisKeyLayout(t *testing.T) {
	t.Parallel()
	url := redistest.ClusterURL(t)
	client := redistest.Client(t, url)
	prefix := redistest.Prefix(t)
	s := NewRedis(client, quiet(Config{Prefix: prefix, Timeout: 10 * time.Second})).(*store)

	testutil.Must[time.Time](t, "Put")(s.Put(ctxb, "ns:{x}", "user@example.com*", []byte("v"), time.Hour))
	testutil.Must[time.Time](t, "PutIfAbsent")(s.PutIfAbsent(ctxb, "ns", "k2", []byte("v"), time.Hour))
	tok, _, err := s.Issue(ctxb, "verify-email", []byte("d"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "started", "fp", time.Hour))
	testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "completed", "fp", time.Minute))
	if err := s.Complete(ctxb, "completed", []byte("r"), 2*time.Hour); err != nil {
		t.Fatal(err)
	}
	testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "kept", "", time.Minute))
	if err := s.Complete(ctxb, "kept", []byte("r"), 0); err != nil {
		t.Fatal(err)
	}

	ks := redisKeys(t, client, prefix)
	if len(ks) != 6 {
		t.Fatalf("%d keys, want 6: %q", len(ks), ks)
	}
	wantShape := map[string]string{
		prefix + "tmp:{ns%3A%7Bx%7D/user@example.com%2A}": "string",
		prefix + "tmp:{ns/k2}":                            "string",
		prefix + "idem:{started}":                         "hash",
		prefix + "idem:{completed}":                       "hash",
		prefix + "idem:{kept}":                            "hash",
	}
	for _, k := range ks {
		pttl, err := client.Do(ctxb, client.B().Pttl().Key(k).Build()).AsInt64()
		if err != nil || pttl <= 0 {
			t.Errorf("key %q: PTTL %d, %v; want a TTL on every key", k, pttl, err)
		}
		if strings.Count(k, "{") != 1 || strings.Count(k, "}") != 1 || !strings.HasSuffix(k, "}") {
			t.Errorf("key %q: want exactly one hash tag, at the end", k)
		}
		if strings.Contains(k, tok) {
			t.Errorf("key %q holds the token", k)
		}
		if strings.HasPrefix(k, prefix+"tok:{verify-email/") {
			continue
		}
		if _, ok := wantShape[k]; !ok {
			t.Errorf("unexpected key %q", k)
		}
	}
	// The completed record's TTL is the one Complete set (2h), not the lease.
	pttl, err := client.Do(ctxb, client.B().Pttl().Key(prefix+"idem:{completed}").Build()).AsInt64()
	if err != nil || pttl < int64(time.Hour/time.Millisecond) {
		t.Errorf("completed record PTTL %d, %v; want about 2h", pttl, err)
	}
}

// TestRedisCopiedCiphertextFails checks that a sealed value copied by
// someone with Redis access to another key, or to a token key, does not
// open there: the additional data binds it to its logical key.
func TestRedisCopiedCiphertextFails(t *testing.T) {
	t.Parallel()
	client := redistest.Client(t, redistest.URL(t))
	s := NewRedis(client, quiet(Config{Prefix: redistest.Prefix(t), Keyring: testutil.Keyring(t, testutil.KeyEntry("k1", 1))})).(*store)
	testutil.Must[time.Time](t, "Put")(s.Put(ctxb, "ns", "alice", []byte("alice's data"), time.Hour))
	testutil.Must[time.Time](t, "Put")(s.Put(ctxb, "ns", "mallory", []byte("mallory's data"), time.Hour))
	raw, err := client.Do(ctxb, client.B().Get().Key(s.tempRef("ns", "alice").key).Build()).AsBytes()
	if err != nil {
		t.Fatal(err)
	}
	setRaw := func(k string) {
		t.Helper()
		if err := client.Do(ctxb, client.B().Set().Key(k).Value(string(raw)).Px(time.Hour).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	setRaw(s.tempRef("ns", "mallory").key)
	_, err = s.Get(ctxb, "ns", "mallory")
	testutil.WantErr(t, "Get of a value copied from another key", err, seal.ErrCorrupt)

	tok, _, err := s.Issue(ctxb, "p", []byte("token data"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	digest, _ := parseToken(tok)
	setRaw(s.tokenRef("p", digest).key)
	_, err = s.Consume(ctxb, "p", tok)
	testutil.WantErr(t, "Consume of a token whose data was replaced by a copied value", err, seal.ErrCorrupt)
	if it := testutil.Must[Item](t, "Get")(s.Get(ctxb, "ns", "alice")); string(it.Value) != "alice's data" {
		t.Fatalf("original = %q", it.Value)
	}
}

// TestRedisFailClosed is acceptance item 6 (tempdata part): with
// redis-server killed, every operation returns an error wrapping ErrBackend
// within a bounded time and never success, the idempotency middleware answers
// 503 without running its handler; after a restart the same Store works.
func TestRedisFailClosed(t *testing.T) {
	t.Parallel()
	srv := redistest.NewServer(t)
	client := redistest.Client(t, srv.URL())
	const timeout = 200 * time.Millisecond
	const bound = 2 * time.Second // generous: the point is "does not hang"
	s := NewRedis(client, quiet(Config{Prefix: redistest.Prefix(t), Timeout: timeout}))

	untilHealthy(t, s)
	tok, _, err := s.Issue(ctxb, "p", []byte("d"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Must[time.Time](t, "Put")(s.Put(ctxb, "ns", "k", []byte("v"), time.Hour))
	testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "idem", "", time.Hour))

	var handlerRuns atomic.Int64
	h := IdempotencyMiddleware(s, IdempotencyOptions{Logger: quiet(Config{}).Logger})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handlerRuns.Add(1)
	}))

	srv.Stop(t)

	calls := []testutil.Call{
		testutil.C("Take", func() error { _, err := s.Take(ctxb, "ns", "k"); return err }),
		testutil.C("Consume", func() error { _, err := s.Consume(ctxb, "p", tok); return err }),
		testutil.C("Put", func() error { _, err := s.Put(ctxb, "ns", "k2", []byte("v"), time.Hour); return err }),
		testutil.C("PutIfAbsent", func() error { _, err := s.PutIfAbsent(ctxb, "ns", "k3", []byte("v"), time.Hour); return err }),
		testutil.C("Get", func() error { _, err := s.Get(ctxb, "ns", "k"); return err }),
		testutil.C("Delete", func() error { return s.Delete(ctxb, "ns", "k") }),
		testutil.C("Issue", func() error { _, _, err := s.Issue(ctxb, "p", nil, time.Hour); return err }),
		testutil.C("Begin", func() error { _, err := s.Begin(ctxb, "idem2", "", time.Hour); return err }),
		testutil.C("Complete", func() error { return s.Complete(ctxb, "idem", []byte("r"), 0) }),
		testutil.C("Fail", func() error { return s.Fail(ctxb, "idem") }),
	}
	slowest := testutil.FailClosed(t, 3, calls, ErrBackend, bound)
	newReq := func() *http.Request {
		req := httptest.NewRequest(http.MethodPost, "/pay", strings.NewReader("{}"))
		req.Header.Set(IdempotencyKeyHeader, `"k1"`)
		return req
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, newReq())
	if rec.Code != http.StatusServiceUnavailable || handlerRuns.Load() != 0 || !strings.Contains(rec.Body.String(), `"unavailable"`) {
		t.Fatalf("middleware with Redis down: %d %q after %d handler runs; want 503 unavailable, handler not run", rec.Code, rec.Body, handlerRuns.Load())
	}
	t.Logf("slowest call with Redis down: %v (timeout %v)", slowest, timeout)

	// Restart: the same Store works again. The server does not persist, so
	// what was stored before is gone — and is reported gone, not found.
	srv.Start(t)
	untilHealthy(t, s)
	_, err = s.Consume(ctxb, "p", tok)
	testutil.WantErr(t, "Consume of a token lost with the server", err, ErrNotFound)
	tok, _, err = s.Issue(ctxb, "p", []byte("after"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if d := testutil.Must[[]byte](t, "Consume after restart")(s.Consume(ctxb, "p", tok)); string(d) != "after" {
		t.Fatalf("Consume after restart = %q", d)
	}
	if rec := testutil.Must[Record](t, "Begin after restart")(s.Begin(ctxb, "idem", "", time.Hour)); rec.State != Started {
		t.Fatalf("Begin after restart = %+v", rec)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, newReq())
	if rec.Code != http.StatusOK || handlerRuns.Load() != 1 {
		t.Fatalf("middleware after restart: %d after %d handler runs; want 200 after 1", rec.Code, handlerRuns.Load())
	}
}

// TestRedisTimeoutFailsClosed checks the slow-Redis path: with the server
// paused for writes, calls return ErrBackend after about Config.Timeout, not
// when Redis answers.
func TestRedisTimeoutFailsClosed(t *testing.T) {
	t.Parallel()
	srv := redistest.NewServer(t)
	client := redistest.Client(t, srv.URL())
	admin := redistest.Client(t, srv.URL())
	const timeout = 100 * time.Millisecond
	s := NewRedis(client, quiet(Config{Prefix: redistest.Prefix(t), Timeout: timeout}))
	untilHealthy(t, s)
	tok, _, err := s.Issue(ctxb, "p", []byte("d"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.Do(ctxb, admin.B().ClientPause().Timeout(10000).Write().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	unpaused := false
	unpause := func() {
		if !unpaused {
			unpaused = true
			if err := admin.Do(ctxb, admin.B().ClientUnpause().Build()).Error(); err != nil {
				t.Errorf("CLIENT UNPAUSE: %v", err)
			}
		}
	}
	defer unpause()
	for _, c := range []struct {
		name string
		call func() error
	}{
		{"Consume", func() error { _, err := s.Consume(ctxb, "p", tok); return err }},
		{"Put", func() error { _, err := s.Put(ctxb, "ns", "k", []byte("v"), time.Hour); return err }},
		{"Begin", func() error { _, err := s.Begin(ctxb, "k", "", time.Hour); return err }},
	} {
		start := time.Now()
		err := c.call()
		el := time.Since(start)
		if !errors.Is(err, ErrBackend) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s with Redis paused: %v, want ErrBackend wrapping a deadline", c.name, err)
		}
		if el > 2*time.Second {
			t.Fatalf("%s with Redis paused took %v; timeout is %v", c.name, el, timeout)
		}
	}
	unpause()
	untilHealthy(t, s)
}

// untilHealthy waits (at most 10s) until a Put succeeds: a restarted server
// takes a moment to accept the client's reconnection.
func untilHealthy(t *testing.T, s Store) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := s.Put(ctxb, "health", "probe", nil, time.Second)
		if err == nil {
			return
		}
		if !errors.Is(err, ErrBackend) {
			t.Fatalf("probe: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no successful call within 10s: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // poll interval while the client reconnects
	}
}
