package tempdata

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/internal/seal"
	"github.com/elevacare/eleva-redis/internal/testutil"
)

// The conformance suite: the behaviours of the Store contract (tempdata.go),
// run unchanged on the memory backend, a real redis-server and a real 3-node
// Redis Cluster. The memory backend runs on the real clock here (its
// fake-clock arithmetic is checked in memory_test.go), so both backends see
// time pass the same way.

// env is one test's backend: every Store it makes shares the same data (the
// same memory backend, or the same Redis key prefix), so several stores play
// several application instances, or one instance before and after a
// configuration change (key rotation).
type env struct {
	// store returns a Store with cfg (Prefix and Timeout are filled in).
	store func(cfg Config) Store
	// instances returns n stores with cfg, each on its own client.
	instances func(cfg Config, n int) []Store
	// dump returns every key name and stored value of this test, joined.
	dump func() []byte
}

type target struct {
	name   string
	newEnv func(t *testing.T) env
}

func targets() []target {
	return []target{
		{"memory", memoryEnv},
		{"redis", func(t *testing.T) env { return redisEnv(t, redistest.URL(t)) }},
		{"cluster", func(t *testing.T) env { return redisEnv(t, redistest.ClusterURL(t)) }},
	}
}

func quiet(cfg Config) Config {
	if cfg.Logger == nil {
		// Tests that provoke failures check what they care about.
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg
}

func memoryEnv(t *testing.T) env {
	b := newMemoryBackend(time.Now)
	mk := func(cfg Config) Store { return newStore(b, "memory", quiet(cfg), nil) }
	return env{
		store: mk,
		instances: func(cfg Config, n int) []Store {
			out := make([]Store, n)
			for i := range out {
				out[i] = mk(cfg)
			}
			return out
		},
		dump: func() []byte {
			var buf bytes.Buffer
			for i := range b.shards {
				s := &b.shards[i]
				s.mu.Lock()
				for k, e := range s.m {
					buf.WriteString(k)
					buf.WriteByte(0)
					buf.Write(e.value)
					buf.WriteString(e.fp)
					buf.WriteByte(0)
				}
				s.mu.Unlock()
			}
			return buf.Bytes()
		},
	}
}

func redisEnv(t *testing.T, url string) env {
	prefix := redistest.Prefix(t)
	client := redistest.Client(t, url)
	prep := func(cfg Config) Config {
		cfg.Prefix = prefix
		if cfg.Timeout == 0 {
			// Generous: a conformance result must come from Redis, not
			// from a timeout on a loaded CI machine.
			cfg.Timeout = 10 * time.Second
		}
		return quiet(cfg)
	}
	return env{
		store: func(cfg Config) Store { return NewRedis(client, prep(cfg)) },
		instances: func(cfg Config, n int) []Store {
			out := make([]Store, n)
			for i := range out {
				out[i] = NewRedis(redistest.Client(t, url), prep(cfg))
			}
			return out
		},
		dump: func() []byte { return redisDump(t, client, prefix) },
	}
}

// redisKeys lists the keys under prefix on every node (test helper: SCAN is
// never used on a request path).
func redisKeys(t *testing.T, client rueidis.Client, prefix string) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	for _, node := range client.Nodes() {
		var cursor uint64
		for {
			e, err := node.Do(ctx, node.B().Scan().Cursor(cursor).Match(prefix+"*").Count(1000).Build()).AsScanEntry()
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

// redisDump returns every key under prefix and its raw value.
func redisDump(t *testing.T, client rueidis.Client, prefix string) []byte {
	t.Helper()
	ctx := context.Background()
	var buf bytes.Buffer
	for _, k := range redisKeys(t, client, prefix) {
		buf.WriteString(k)
		buf.WriteByte(0)
		typ, err := client.Do(ctx, client.B().Type().Key(k).Build()).ToString()
		if err != nil {
			t.Fatalf("TYPE: %v", err)
		}
		switch typ {
		case "string":
			v, err := client.Do(ctx, client.B().Get().Key(k).Build()).AsBytes()
			if err != nil && !rueidis.IsRedisNil(err) {
				t.Fatalf("GET: %v", err)
			}
			buf.Write(v)
		case "hash":
			m, err := client.Do(ctx, client.B().Hgetall().Key(k).Build()).AsStrMap()
			if err != nil {
				t.Fatalf("HGETALL: %v", err)
			}
			for f, v := range m {
				buf.WriteString(f + "=" + v + "\x00")
			}
		}
		buf.WriteByte(0)
	}
	return buf.Bytes()
}

func TestConformance(t *testing.T) {
	t.Parallel()
	for _, tg := range targets() {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			runConformance(t, tg.newEnv)
		})
	}
}

// slack absorbs the time between Redis TIME and the test's clock readings
// (same machine) under -race.
const slack = time.Second

func within(t *testing.T, what string, got, lo, hi time.Time) {
	t.Helper()
	if got.Before(lo.Add(-slack)) || got.After(hi.Add(slack)) {
		t.Errorf("%s = %v, want within [%v, %v] (±%v)", what, got, lo, hi, slack)
	}
}

var ctxb = context.Background()

func runConformance(t *testing.T, newEnv func(t *testing.T) env) {
	t.Run("PutGet", func(t *testing.T) {
		t.Parallel()
		s := newEnv(t).store(Config{})
		before := time.Now()
		exp := testutil.Must[time.Time](t, "Put")(s.Put(ctxb, "setup", "user-42", []byte(`{"step":1}`), time.Hour))
		after := time.Now()
		within(t, "Put expiresAt", exp, before.Add(time.Hour), after.Add(time.Hour))
		it := testutil.Must[Item](t, "Get")(s.Get(ctxb, "setup", "user-42"))
		if string(it.Value) != `{"step":1}` {
			t.Fatalf("Get = %q", it.Value)
		}
		within(t, "Get expiresAt", it.ExpiresAt, before.Add(time.Hour), time.Now().Add(time.Hour))
		// Put replaces the value and the TTL.
		testutil.Must[time.Time](t, "Put again")(s.Put(ctxb, "setup", "user-42", []byte(`{"step":2}`), 2*time.Hour))
		it = testutil.Must[Item](t, "Get")(s.Get(ctxb, "setup", "user-42"))
		if string(it.Value) != `{"step":2}` {
			t.Fatalf("Get after replace = %q", it.Value)
		}
		within(t, "Get expiresAt after replace", it.ExpiresAt, after.Add(2*time.Hour), time.Now().Add(2*time.Hour))
		// Empty and binary values round-trip.
		for i, v := range [][]byte{nil, {}, {0}, bytes.Repeat([]byte{0xff, 0, '\n', 0xE1}, 300)} {
			k := fmt.Sprint("v", i)
			testutil.Must[time.Time](t, "Put")(s.Put(ctxb, "bin", k, v, time.Hour))
			if got := testutil.Must[Item](t, "Get")(s.Get(ctxb, "bin", k)); !bytes.Equal(got.Value, v) || got.Value == nil {
				t.Errorf("Get of %q = %q (nil %v)", v, got.Value, got.Value == nil)
			}
		}
	})

	t.Run("MissingAndDelete", func(t *testing.T) {
		t.Parallel()
		s := newEnv(t).store(Config{})
		_, err := s.Get(ctxb, "ns", "missing")
		testutil.WantErr(t, "Get missing", err, ErrNotFound)
		_, err = s.Take(ctxb, "ns", "missing")
		testutil.WantErr(t, "Take missing", err, ErrNotFound)
		if err := s.Delete(ctxb, "ns", "missing"); err != nil {
			t.Fatalf("Delete missing: %v", err)
		}
		testutil.Must[time.Time](t, "Put")(s.Put(ctxb, "ns", "k", []byte("v"), time.Hour))
		if err := s.Delete(ctxb, "ns", "k"); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		_, err = s.Get(ctxb, "ns", "k")
		testutil.WantErr(t, "Get after Delete", err, ErrNotFound)
		if err := s.Delete(ctxb, "ns", "k"); err != nil {
			t.Fatalf("Delete again: %v", err)
		}
	})

	t.Run("PutIfAbsent", func(t *testing.T) {
		t.Parallel()
		s := newEnv(t).store(Config{})
		testutil.Must[time.Time](t, "PutIfAbsent")(s.PutIfAbsent(ctxb, "form", "f1", []byte("first"), time.Hour))
		_, err := s.PutIfAbsent(ctxb, "form", "f1", []byte("second"), time.Hour)
		testutil.WantErr(t, "PutIfAbsent over a live value", err, ErrExists)
		if got := testutil.Must[Item](t, "Get")(s.Get(ctxb, "form", "f1")); string(got.Value) != "first" {
			t.Fatalf("value after a refused PutIfAbsent = %q, want first", got.Value)
		}
		testutil.Must[[]byte](t, "Take")(s.Take(ctxb, "form", "f1"))
		testutil.Must[time.Time](t, "PutIfAbsent after Take")(s.PutIfAbsent(ctxb, "form", "f1", []byte("third"), time.Hour))
		if got := testutil.Must[Item](t, "Get")(s.Get(ctxb, "form", "f1")); string(got.Value) != "third" {
			t.Fatalf("value = %q, want third", got.Value)
		}
	})

	t.Run("Take", func(t *testing.T) {
		t.Parallel()
		s := newEnv(t).store(Config{})
		testutil.Must[time.Time](t, "Put")(s.Put(ctxb, "ns", "k", []byte("once"), time.Hour))
		if v := testutil.Must[[]byte](t, "Take")(s.Take(ctxb, "ns", "k")); string(v) != "once" {
			t.Fatalf("Take = %q", v)
		}
		_, err := s.Take(ctxb, "ns", "k")
		testutil.WantErr(t, "second Take", err, ErrNotFound)
		_, err = s.Get(ctxb, "ns", "k")
		testutil.WantErr(t, "Get after Take", err, ErrNotFound)
	})

	t.Run("TTLExpiry", func(t *testing.T) {
		t.Parallel()
		s := newEnv(t).store(Config{})
		const ttl = 150 * time.Millisecond
		testutil.Must[time.Time](t, "Put")(s.Put(ctxb, "ns", "short", []byte("v"), ttl))
		testutil.Must[time.Time](t, "Put")(s.Put(ctxb, "ns", "short-take", []byte("v"), ttl))
		testutil.Must[time.Time](t, "Put")(s.Put(ctxb, "ns", "long", []byte("v"), time.Hour))
		tok, _, err := s.Issue(ctxb, "p", []byte("d"), ttl)
		if err != nil {
			t.Fatal(err)
		}
		if rec := testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "lease", "", ttl)); rec.State != Started {
			t.Fatalf("Begin = %+v", rec)
		}
		if _, err := s.Get(ctxb, "ns", "short"); err != nil {
			t.Fatalf("Get before expiry: %v", err)
		}
		time.Sleep(ttl + 100*time.Millisecond) // the semantics under test: wait the TTL out

		_, err = s.Get(ctxb, "ns", "short")
		testutil.WantErr(t, "Get after expiry", err, ErrNotFound)
		_, err = s.Take(ctxb, "ns", "short-take")
		testutil.WantErr(t, "Take after expiry", err, ErrNotFound)
		_, err = s.Consume(ctxb, "p", tok)
		testutil.WantErr(t, "Consume after expiry", err, ErrNotFound)
		if _, err := s.Get(ctxb, "ns", "long"); err != nil {
			t.Fatalf("Get of an unexpired value: %v", err)
		}
		// An in-progress lease that ran out (a crashed request) may begin again.
		if rec := testutil.Must[Record](t, "Begin after lease expiry")(s.Begin(ctxb, "lease", "", time.Hour)); rec.State != Started {
			t.Fatalf("Begin after lease expiry = %+v, want Started", rec)
		}
		testutil.Must[time.Time](t, "PutIfAbsent after expiry")(s.PutIfAbsent(ctxb, "ns", "short", []byte("again"), time.Hour))
	})

	t.Run("Tokens", func(t *testing.T) {
		t.Parallel()
		s := newEnv(t).store(Config{})
		before := time.Now()
		tok, exp, err := s.Issue(ctxb, "verify-email", []byte(`{"userId":"42"}`), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		within(t, "Issue expiresAt", exp, before.Add(time.Hour), time.Now().Add(time.Hour))
		raw, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil || len(tok) != TokenLen || len(raw) != 32 {
			t.Fatalf("token %q: %d chars, %d bytes, %v; want 43 chars of base64url for 32 bytes", tok, len(tok), len(raw), err)
		}
		seen := map[string]bool{tok: true}
		for range 20 {
			tk, _, err := s.Issue(ctxb, "verify-email", nil, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if seen[tk] {
				t.Fatalf("token %q issued twice", tk)
			}
			seen[tk] = true
		}
		// A wrong purpose finds nothing and consumes nothing.
		_, err = s.Consume(ctxb, "reset-password", tok)
		testutil.WantErr(t, "Consume with a wrong purpose", err, ErrNotFound)
		if d := testutil.Must[[]byte](t, "Consume")(s.Consume(ctxb, "verify-email", tok)); string(d) != `{"userId":"42"}` {
			t.Fatalf("Consume = %q", d)
		}
		_, err = s.Consume(ctxb, "verify-email", tok)
		testutil.WantErr(t, "second Consume", err, ErrNotFound)

		// Empty data round-trips.
		tk, _, err := s.Issue(ctxb, "p", nil, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if d := testutil.Must[[]byte](t, "Consume")(s.Consume(ctxb, "p", tk)); d == nil || len(d) != 0 {
			t.Fatalf("Consume of empty data = %q (nil %v)", d, d == nil)
		}
	})

	t.Run("MalformedTokens", func(t *testing.T) {
		t.Parallel()
		s := newEnv(t).store(Config{})
		tok, _, err := s.Issue(ctxb, "p", []byte("d"), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		// The last character of a 43-character token carries 2 unused
		// bits: flipping them gives a non-canonical spelling of the same
		// bytes, which must not work either.
		last := strings.IndexByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", tok[42])
		nonCanonical := tok[:42] + string("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last^1])
		for _, bad := range []string{
			"", "x", tok[:42], tok + "A", tok + "=", " " + tok, strings.ToUpper(tok),
			tok[:42] + "+", tok[:42] + "/", tok[:42] + ".", strings.ReplaceAll(strings.ReplaceAll(tok, "-", "+"), "_", "/"),
			nonCanonical, strings.Repeat("A", 43), strings.Repeat("é", 22), "../../etc/passwd", "*", "{p}:x",
		} {
			if bad == tok {
				continue
			}
			_, err := s.Consume(ctxb, "p", bad)
			testutil.WantErr(t, fmt.Sprintf("Consume(%q)", bad), err, ErrNotFound)
		}
		if d := testutil.Must[[]byte](t, "Consume of the real token")(s.Consume(ctxb, "p", tok)); string(d) != "d" {
			t.Fatalf("Consume = %q", d)
		}
	})

	t.Run("Idempotency", func(t *testing.T) {
		t.Parallel()
		s := newEnv(t).store(Config{})
		before := time.Now()
		rec := testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "pay:appt_1", "fp-a", time.Minute))
		if rec.State != Started || rec.Response != nil {
			t.Fatalf("first Begin = %+v, want Started", rec)
		}
		within(t, "Started ExpiresAt", rec.ExpiresAt, before.Add(time.Minute), time.Now().Add(time.Minute))
		_, err := s.Begin(ctxb, "pay:appt_1", "fp-a", time.Minute)
		testutil.WantErr(t, "Begin while in progress", err, ErrInProgress)
		_, err = s.Begin(ctxb, "pay:appt_1", "", time.Minute)
		testutil.WantErr(t, "Begin without fingerprint while in progress", err, ErrInProgress)
		_, err = s.Begin(ctxb, "pay:appt_1", "fp-b", time.Minute)
		testutil.WantErr(t, "Begin with another fingerprint while in progress", err, ErrFingerprintMismatch)

		if err := s.Complete(ctxb, "pay:appt_1", []byte(`{"paid":true}`), 0); err != nil {
			t.Fatalf("Complete: %v", err)
		}
		rec = testutil.Must[Record](t, "Begin after Complete")(s.Begin(ctxb, "pay:appt_1", "fp-a", time.Minute))
		if rec.State != Completed || string(rec.Response) != `{"paid":true}` {
			t.Fatalf("Begin after Complete = %+v", rec)
		}
		// ttl 0 kept the lease's expiry.
		within(t, "Completed ExpiresAt (ttl kept)", rec.ExpiresAt, before.Add(time.Minute), time.Now().Add(time.Minute))
		if rec := testutil.Must[Record](t, "Begin without fingerprint")(s.Begin(ctxb, "pay:appt_1", "", time.Minute)); rec.State != Completed {
			t.Fatalf("Begin without fingerprint after Complete = %+v", rec)
		}
		_, err = s.Begin(ctxb, "pay:appt_1", "fp-b", time.Minute)
		testutil.WantErr(t, "Begin with another fingerprint after Complete", err, ErrFingerprintMismatch)
		testutil.WantErr(t, "second Complete", s.Complete(ctxb, "pay:appt_1", []byte("other"), 0), ErrExists)
		testutil.WantErr(t, "Fail after Complete", s.Fail(ctxb, "pay:appt_1"), ErrExists)
		if rec := testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "pay:appt_1", "fp-a", time.Minute)); rec.State != Completed || string(rec.Response) != `{"paid":true}` {
			t.Fatalf("record after a refused Complete and Fail = %+v", rec)
		}

		// Fail lets the key begin again, with any fingerprint.
		testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "k2", "fp-a", time.Minute))
		if err := s.Fail(ctxb, "k2"); err != nil {
			t.Fatalf("Fail: %v", err)
		}
		if err := s.Fail(ctxb, "k2"); err != nil {
			t.Fatalf("Fail of a missing record: %v", err)
		}
		if rec := testutil.Must[Record](t, "Begin after Fail")(s.Begin(ctxb, "k2", "fp-b", time.Minute)); rec.State != Started {
			t.Fatalf("Begin after Fail = %+v, want Started", rec)
		}
		testutil.WantErr(t, "Complete of a missing record", s.Complete(ctxb, "never-begun", []byte("x"), 0), ErrNotFound)

		// Complete with a ttl sets the retention from now; an empty
		// response round-trips.
		testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "k3", "", time.Minute))
		before = time.Now()
		if err := s.Complete(ctxb, "k3", nil, 48*time.Hour); err != nil {
			t.Fatal(err)
		}
		rec = testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "k3", "fp", time.Minute))
		if rec.State != Completed || rec.Response == nil || len(rec.Response) != 0 {
			t.Fatalf("Begin after Complete(nil) = %+v", rec)
		}
		within(t, "Completed ExpiresAt (new ttl)", rec.ExpiresAt, before.Add(48*time.Hour), time.Now().Add(48*time.Hour))
	})

	t.Run("CompleteAndFailIgnoreCancellation", func(t *testing.T) {
		t.Parallel()
		s := newEnv(t).store(Config{})
		cancelled, cancel := context.WithCancel(ctxb)
		cancel()
		_, err := s.Begin(cancelled, "k", "", time.Minute)
		testutil.WantErr(t, "Begin with a cancelled ctx", err, context.Canceled)
		testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "k", "", time.Minute))
		if err := s.Complete(cancelled, "k", []byte("r"), 0); err != nil {
			t.Fatalf("Complete with a cancelled ctx: %v", err)
		}
		testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "k2", "", time.Minute))
		if err := s.Fail(cancelled, "k2"); err != nil {
			t.Fatalf("Fail with a cancelled ctx: %v", err)
		}
		if rec := testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "k2", "", time.Minute)); rec.State != Started {
			t.Fatalf("after Fail with a cancelled ctx: %+v", rec)
		}
	})

	t.Run("InvalidArguments", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		s := e.store(Config{})
		long := strings.Repeat("x", MaxNameLen+1)
		big := make([]byte, MaxValueSize+1)
		ok := []byte("v")
		put := func(ns, k string, v []byte, ttl time.Duration) func() error {
			return func() error { _, err := s.Put(ctxb, ns, k, v, ttl); return err }
		}
		for _, c := range []struct {
			name string
			call func() error
		}{
			{"Put empty namespace", put("", "k", ok, time.Hour)},
			{"Put empty key", put("ns", "", ok, time.Hour)},
			{"Put long namespace", put(long, "k", ok, time.Hour)},
			{"Put long key", put("ns", long, ok, time.Hour)},
			{"Put ttl 0", put("ns", "k", ok, 0)},
			{"Put negative ttl", put("ns", "k", ok, -time.Second)},
			{"Put ttl under 1ms", put("ns", "k", ok, 500*time.Microsecond)},
			{"Put ttl over max", put("ns", "k", ok, MaxTTL+time.Millisecond)},
			{"Put value too large", put("ns", "k", big, time.Hour)},
			{"PutIfAbsent value too large", func() error { _, err := s.PutIfAbsent(ctxb, "ns", "k", big, time.Hour); return err }},
			{"Get empty key", func() error { _, err := s.Get(ctxb, "ns", ""); return err }},
			{"Take empty namespace", func() error { _, err := s.Take(ctxb, "", "k"); return err }},
			{"Delete empty key", func() error { return s.Delete(ctxb, "ns", "") }},
			{"Issue empty purpose", func() error { _, _, err := s.Issue(ctxb, "", ok, time.Hour); return err }},
			{"Issue long purpose", func() error { _, _, err := s.Issue(ctxb, long, ok, time.Hour); return err }},
			{"Issue ttl 0", func() error { _, _, err := s.Issue(ctxb, "p", ok, 0); return err }},
			{"Issue data too large", func() error { _, _, err := s.Issue(ctxb, "p", big, time.Hour); return err }},
			{"Consume empty purpose", func() error { _, err := s.Consume(ctxb, "", strings.Repeat("A", 43)); return err }},
			{"Begin empty key", func() error { _, err := s.Begin(ctxb, "", "", time.Hour); return err }},
			{"Begin ttl 0", func() error { _, err := s.Begin(ctxb, "k", "", 0); return err }},
			{"Begin long fingerprint", func() error { _, err := s.Begin(ctxb, "k", long, time.Hour); return err }},
			{"Complete negative ttl", func() error { return s.Complete(ctxb, "k", ok, -time.Second) }},
			{"Complete ttl over max", func() error { return s.Complete(ctxb, "k", ok, MaxTTL+time.Hour) }},
			{"Complete response too large", func() error { return s.Complete(ctxb, "k", big, 0) }},
			{"Fail empty key", func() error { return s.Fail(ctxb, "") }},
		} {
			if err := c.call(); !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("%s: %v, want ErrInvalidArgument", c.name, err)
			}
		}
		// Nothing was written by any of them.
		if d := e.dump(); len(d) != 0 {
			t.Fatalf("invalid calls wrote %q", d)
		}
	})

	t.Run("KeyEscaping", func(t *testing.T) {
		t.Parallel()
		s := newEnv(t).store(Config{})
		// Pairs that would collide under a naive "ns:key" or "ns/key" join,
		// plus Redis syntax and unicode.
		names := [][2]string{
			{"a:b", "c"}, {"a", "b:c"}, {"a/b", "c"}, {"a", "b/c"}, {"a%3Ab", "c"}, {"a%2Fb", "c"},
			{"{x}", "y"}, {"x", "{y}"}, {"{", "}"}, {"}", "{"}, {"*", "*"}, {"?", "[a-z]"},
			{"user@example.com", "payment:appt_123"}, {"ü", "日本語"}, {"u", "\xfc"}, {"ns", " "}, {"ns", "\x00"},
			{"a b", "c\r\nd"},
		}
		for i, n := range names {
			testutil.Must[time.Time](t, "Put")(s.Put(ctxb, n[0], n[1], []byte(fmt.Sprint(i)), time.Hour))
		}
		for i, n := range names {
			if it := testutil.Must[Item](t, fmt.Sprintf("Get(%q, %q)", n[0], n[1]))(s.Get(ctxb, n[0], n[1])); string(it.Value) != fmt.Sprint(i) {
				t.Errorf("Get(%q, %q) = %q, want %d", n[0], n[1], it.Value, i)
			}
		}
		testutil.Must[[]byte](t, "Take")(s.Take(ctxb, "a:b", "c"))
		if it := testutil.Must[Item](t, "Get")(s.Get(ctxb, "a", "b:c")); string(it.Value) != "1" {
			t.Errorf("Take of (a:b, c) disturbed (a, b:c): %q", it.Value)
		}
		// Purposes and idempotency keys are escaped the same way.
		tok, _, err := s.Issue(ctxb, "p:{x}*", []byte("d"), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Consume(ctxb, "p", tok)
		testutil.WantErr(t, "Consume with a prefix of the purpose", err, ErrNotFound)
		if d := testutil.Must[[]byte](t, "Consume")(s.Consume(ctxb, "p:{x}*", tok)); string(d) != "d" {
			t.Fatalf("Consume = %q", d)
		}
		testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "{k}:*", "", time.Hour))
		if rec := testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "{k}", "", time.Hour)); rec.State != Started {
			t.Fatalf("Begin of a different key = %+v", rec)
		}
	})

	t.Run("Encryption", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		k1, k2 := testutil.KeyEntry("k1", 1), testutil.KeyEntry("k2", 2)
		old := e.store(Config{Keyring: testutil.Keyring(t, k1)})
		const secret = "jane.doe@example.com has diabetes"
		testutil.Must[time.Time](t, "Put")(old.Put(ctxb, "form", "f", []byte(secret), time.Hour))
		tok, _, err := old.Issue(ctxb, "verify", []byte(secret+" token"), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		testutil.Must[Record](t, "Begin")(old.Begin(ctxb, "idem", "", time.Hour))
		if err := old.Complete(ctxb, "idem", []byte(secret+" response"), 0); err != nil {
			t.Fatal(err)
		}
		dump := e.dump()
		if bytes.Contains(dump, []byte("diabetes")) || bytes.Contains(dump, []byte(tok)) {
			t.Fatalf("stored data holds a plaintext or the token: %q", dump)
		}
		raw, _ := base64.RawURLEncoding.DecodeString(tok)
		if bytes.Contains(dump, raw) {
			t.Fatalf("stored data holds the token's bytes")
		}
		if it := testutil.Must[Item](t, "Get")(old.Get(ctxb, "form", "f")); string(it.Value) != secret {
			t.Fatalf("Get = %q", it.Value)
		}

		// Rotation: the new keyring seals with k2 and still opens k1 values.
		rotated := e.store(Config{Keyring: testutil.Keyring(t, k2, k1)})
		if it := testutil.Must[Item](t, "Get after rotation")(rotated.Get(ctxb, "form", "f")); string(it.Value) != secret {
			t.Fatalf("Get after rotation = %q", it.Value)
		}
		if d := testutil.Must[[]byte](t, "Consume after rotation")(rotated.Consume(ctxb, "verify", tok)); string(d) != secret+" token" {
			t.Fatalf("Consume after rotation = %q", d)
		}
		if rec := testutil.Must[Record](t, "Begin after rotation")(rotated.Begin(ctxb, "idem", "", time.Hour)); string(rec.Response) != secret+" response" {
			t.Fatalf("Begin after rotation = %+v", rec)
		}
		testutil.Must[time.Time](t, "Put")(rotated.Put(ctxb, "form", "new", []byte("under k2"), time.Hour))
		// A keyring without k2 cannot read it: an error, not a value and
		// not "not found".
		_, err = old.Get(ctxb, "form", "new")
		testutil.WantErr(t, "Get of a k2 value with only k1", err, seal.ErrUnknownKey)
		testutil.WantErr(t, "Get of a k2 value with only k1", err, ErrUnreadable)
		// A keyring store cannot read a value written without encryption.
		plain := e.store(Config{})
		testutil.Must[time.Time](t, "Put")(plain.Put(ctxb, "form", "plain", []byte("plain"), time.Hour))
		_, err = rotated.Get(ctxb, "form", "plain")
		testutil.WantErr(t, "Get of a plain value with a keyring", err, seal.ErrCorrupt)
		testutil.WantErr(t, "Get of a plain value with a keyring", err, ErrUnreadable)
		if !bytes.Contains(e.dump(), []byte("plain")) {
			t.Fatalf("the dump does not show an unencrypted value: the secrecy check above proves nothing")
		}
	})

	t.Run("KeyHashSecret", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		s := e.store(Config{KeyHashSecret: []byte("secret")})
		testutil.Must[time.Time](t, "Put")(s.Put(ctxb, "patients", "jane.doe@example.com", []byte("v"), time.Hour))
		testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "booking-for-jane.doe@example.com", "body: jane.doe@example.com", time.Hour))
		if dump := e.dump(); bytes.Contains(dump, []byte("jane")) || bytes.Contains(dump, []byte("patients")) {
			t.Fatalf("names or fingerprints appear in stored data: %q", dump)
		}
		if it := testutil.Must[Item](t, "Get")(s.Get(ctxb, "patients", "jane.doe@example.com")); string(it.Value) != "v" {
			t.Fatalf("Get = %q", it.Value)
		}
		_, err := s.Begin(ctxb, "booking-for-jane.doe@example.com", "body: other", time.Hour)
		testutil.WantErr(t, "Begin with another fingerprint", err, ErrFingerprintMismatch)
	})

	t.Run("ConcurrentConsume", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		stores := e.instances(Config{}, 4)
		tok, _, err := stores[0].Issue(ctxb, "oauth-state", []byte("state"), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		ok, notFound := race(t, 1000, stores, func(s Store) error {
			d, err := s.Consume(ctxb, "oauth-state", tok)
			if err == nil && string(d) != "state" {
				return fmt.Errorf("Consume returned %q", d)
			}
			return err
		})
		if ok != 1 || notFound != 999 {
			t.Fatalf("1000 concurrent Consume: %d successes, %d not found; want exactly 1 and 999", ok, notFound)
		}
	})

	t.Run("ConcurrentTake", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		stores := e.instances(Config{}, 4)
		testutil.Must[time.Time](t, "Put")(stores[0].Put(ctxb, "ns", "once", []byte("v"), time.Hour))
		ok, notFound := race(t, 1000, stores, func(s Store) error {
			v, err := s.Take(ctxb, "ns", "once")
			if err == nil && string(v) != "v" {
				return fmt.Errorf("Take returned %q", v)
			}
			return err
		})
		if ok != 1 || notFound != 999 {
			t.Fatalf("1000 concurrent Take: %d successes, %d not found; want exactly 1 and 999", ok, notFound)
		}
	})

	t.Run("ConcurrentBeginAndPutIfAbsent", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		stores := e.instances(Config{}, 4)
		var started, inProgress atomic.Int64
		raceEach(t, 200, stores, func(s Store) error {
			rec, err := s.Begin(ctxb, "double-click", "fp", time.Hour)
			switch {
			case err == nil && rec.State == Started:
				started.Add(1)
			case errors.Is(err, ErrInProgress):
				inProgress.Add(1)
			default:
				return fmt.Errorf("Begin: %+v, %v", rec, err)
			}
			return nil
		})
		if started.Load() != 1 || inProgress.Load() != 199 {
			t.Fatalf("200 concurrent Begin: %d started, %d in progress; want 1 and 199", started.Load(), inProgress.Load())
		}
		var stored, exists atomic.Int64
		raceEach(t, 200, stores, func(s Store) error {
			_, err := s.PutIfAbsent(ctxb, "ns", "first", []byte("v"), time.Hour)
			switch {
			case err == nil:
				stored.Add(1)
			case errors.Is(err, ErrExists):
				exists.Add(1)
			default:
				return err
			}
			return nil
		})
		if stored.Load() != 1 || exists.Load() != 199 {
			t.Fatalf("200 concurrent PutIfAbsent: %d stored, %d exists; want 1 and 199", stored.Load(), exists.Load())
		}
	})
}

// race runs f n times concurrently, spread over stores, all released at
// once, and counts successes and ErrNotFound; any other error fails the test.
func race(t *testing.T, n int, stores []Store, f func(Store) error) (ok, notFound int64) {
	t.Helper()
	var okN, nfN atomic.Int64
	raceEach(t, n, stores, func(s Store) error {
		err := f(s)
		switch {
		case err == nil:
			okN.Add(1)
		case errors.Is(err, ErrNotFound):
			nfN.Add(1)
		default:
			return err
		}
		return nil
	})
	return okN.Load(), nfN.Load()
}

// raceEach runs f n times concurrently, goroutine i on stores[i%len], all
// released together; an error fails the test.
func raceEach(t *testing.T, n int, stores []Store, f func(Store) error) {
	t.Helper()
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if err := f(stores[i%len(stores)]); err != nil {
				errs <- err
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("unexpected error: %v", err)
	}
}
