package tempdata

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/elevacare/eleva-redis/internal/clock"
	"github.com/elevacare/eleva-redis/internal/seal"
	"github.com/elevacare/eleva-redis/internal/testutil"
)

var t0 = time.Unix(1_700_000_000, 0)

func newFakeMemory(cfg Config) (*store, *memoryBackend, *clock.Fake) {
	clk := clock.NewFake(t0)
	cfg.Now = clk.Now
	s := NewMemory(quiet(cfg)).(*store)
	return s, s.b.(*memoryBackend), clk
}

// TestMemoryExpiryIsExact checks, on a fake clock, that an entry lives
// exactly its TTL: present one nanosecond before its expiry, gone at it.
func TestMemoryExpiryIsExact(t *testing.T) {
	s, _, clk := newFakeMemory(Config{})
	exp := testutil.Must[time.Time](t, "Put")(s.Put(ctxb, "ns", "k", []byte("v"), 10*time.Second))
	if !exp.Equal(t0.Add(10 * time.Second)) {
		t.Fatalf("expiresAt = %v, want %v", exp, t0.Add(10*time.Second))
	}
	tok, texp, err := s.Issue(ctxb, "p", []byte("d"), 10*time.Second)
	if err != nil || !texp.Equal(exp) {
		t.Fatalf("Issue: %v, %v", texp, err)
	}
	clk.Advance(10*time.Second - 1)
	if it := testutil.Must[Item](t, "Get")(s.Get(ctxb, "ns", "k")); !it.ExpiresAt.Equal(exp) {
		t.Fatalf("Get expiresAt = %v, want %v", it.ExpiresAt, exp)
	}
	clk.Advance(1)
	_, err = s.Get(ctxb, "ns", "k")
	testutil.WantErr(t, "Get at expiry", err, ErrNotFound)
	_, err = s.Consume(ctxb, "p", tok)
	testutil.WantErr(t, "Consume at expiry", err, ErrNotFound)
	testutil.Must[time.Time](t, "PutIfAbsent at expiry")(s.PutIfAbsent(ctxb, "ns", "k", []byte("v2"), time.Second))
}

// TestMemoryIdempotencyLease checks the lease arithmetic on a fake clock:
// an in-progress record blocks until exactly its TTL, Complete with ttl 0
// keeps the lease's expiry, and a ttl sets it from the completion time.
func TestMemoryIdempotencyLease(t *testing.T) {
	s, _, clk := newFakeMemory(Config{})
	rec := testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "k", "fp", time.Minute))
	if rec.State != Started || !rec.ExpiresAt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("Begin = %+v", rec)
	}
	clk.Advance(time.Minute - 1)
	_, err := s.Begin(ctxb, "k", "fp", time.Minute)
	testutil.WantErr(t, "Begin just before the lease ends", err, ErrInProgress)
	clk.Advance(1)
	// The lease ended (a crashed request): the key begins again, and the
	// first owner's Complete now completes the new record. This is the
	// documented limit of a lease without fencing.
	rec = testutil.Must[Record](t, "Begin after the lease")(s.Begin(ctxb, "k", "fp", time.Minute))
	if rec.State != Started || !rec.ExpiresAt.Equal(t0.Add(2*time.Minute)) {
		t.Fatalf("Begin after the lease = %+v", rec)
	}
	clk.Advance(30 * time.Second)
	if err := s.Complete(ctxb, "k", []byte("r"), 0); err != nil {
		t.Fatal(err)
	}
	rec = testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "k", "fp", time.Minute))
	if rec.State != Completed || !rec.ExpiresAt.Equal(t0.Add(2*time.Minute)) {
		t.Fatalf("after Complete(ttl 0): %+v, want expiry kept at %v", rec, t0.Add(2*time.Minute))
	}

	testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "k2", "", time.Minute))
	clk.Advance(10 * time.Second)
	if err := s.Complete(ctxb, "k2", []byte("r"), time.Hour); err != nil {
		t.Fatal(err)
	}
	want := clk.Now().Add(time.Hour)
	clk.Advance(time.Hour - 1)
	if rec := testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "k2", "", time.Minute)); rec.State != Completed || !rec.ExpiresAt.Equal(want) {
		t.Fatalf("after Complete(1h): %+v, want expiry %v", rec, want)
	}
	clk.Advance(1)
	if rec := testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "k2", "", time.Minute)); rec.State != Started {
		t.Fatalf("after the retention: %+v, want Started", rec)
	}
	// Complete after the lease ended with nobody beginning again: not found.
	testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "k3", "", time.Minute))
	clk.Advance(time.Minute)
	testutil.WantErr(t, "Complete after the lease", s.Complete(ctxb, "k3", []byte("r"), 0), ErrNotFound)
}

// TestMemorySweepBoundsSize checks that expired entries nobody looks up
// again are reclaimed as new ones arrive: without the sweep the second batch
// would double the map.
func TestMemorySweepBoundsSize(t *testing.T) {
	s, b, clk := newFakeMemory(Config{})
	const n = 20_000
	for i := range n {
		testutil.Must[time.Time](t, "Put")(s.Put(ctxb, "a", fmt.Sprint(i), nil, time.Second))
	}
	if got := b.size(); got != n {
		t.Fatalf("size after %d live puts = %d", n, got)
	}
	clk.Advance(2 * time.Second)
	for i := range n {
		testutil.Must[time.Time](t, "Put")(s.Put(ctxb, "b", fmt.Sprint(i), nil, time.Second))
	}
	got := b.size()
	t.Logf("entries after %d expired + %d live puts: %d", n, n, got)
	if got > n+n/4 {
		t.Fatalf("size %d: expired entries were not swept (want at most %d)", got, n+n/4)
	}
}

// TestMemoryCopies checks that the memory backend keeps its own copies: a
// caller changing its slices afterwards changes nothing stored.
func TestMemoryCopies(t *testing.T) {
	s, _, _ := newFakeMemory(Config{})
	in := []byte("original")
	testutil.Must[time.Time](t, "Put")(s.Put(ctxb, "ns", "k", in, time.Hour))
	copy(in, "XXXXXXXX")
	out := testutil.Must[Item](t, "Get")(s.Get(ctxb, "ns", "k"))
	copy(out.Value, "YYYYYYYY")
	if got := testutil.Must[Item](t, "Get")(s.Get(ctxb, "ns", "k")); string(got.Value) != "original" {
		t.Fatalf("stored value changed through a caller's slice: %q", got.Value)
	}
	testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "r", "", time.Hour))
	resp := []byte("response")
	if err := s.Complete(ctxb, "r", resp, 0); err != nil {
		t.Fatal(err)
	}
	copy(resp, "XXXXXXXX")
	rec := testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "r", "", time.Hour))
	copy(rec.Response, "YYYYYYYY")
	if rec := testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "r", "", time.Hour)); string(rec.Response) != "response" {
		t.Fatalf("stored response changed through a caller's slice: %q", rec.Response)
	}
}

// TestMetrics checks eleva_tempdata_ops_total by op and outcome, that two
// stores on one registry add up, and that a store without a registry works.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, _, _ := newFakeMemory(Config{Registerer: reg})
	s2, _, _ := newFakeMemory(Config{Registerer: reg})
	testutil.Must[time.Time](t, "Put")(s.Put(ctxb, "ns", "k", []byte("v"), time.Hour))
	testutil.Must[time.Time](t, "Put")(s2.Put(ctxb, "ns", "k", []byte("v"), time.Hour))
	_, _ = s.Get(ctxb, "ns", "missing")
	_, _ = s.PutIfAbsent(ctxb, "ns", "k", []byte("v"), time.Hour)
	_, _ = s.Put(ctxb, "", "k", nil, time.Hour)
	_, _ = s.Consume(ctxb, "p", "malformed")
	testutil.Must[Record](t, "Begin")(s.Begin(ctxb, "i", "a", time.Hour))
	_, _ = s.Begin(ctxb, "i", "a", time.Hour)
	_, _ = s.Begin(ctxb, "i", "b", time.Hour)
	for _, c := range []struct {
		op, outcome string
		want        float64
	}{
		{opPut, outcomeOK, 2},
		{opGet, outcomeNotFound, 1},
		{opPutIfAbsent, outcomeExists, 1},
		{opPut, outcomeInvalid, 1},
		{opConsume, outcomeNotFound, 1},
		{opBegin, outcomeOK, 1},
		{opBegin, outcomeInProgress, 1},
		{opBegin, outcomeMismatch, 1},
		{opTake, outcomeOK, 0},
	} {
		if got := testutil.Sum(t, reg, metricOps, "op", c.op, "outcome", c.outcome); got != c.want {
			t.Errorf("%s{op=%s,outcome=%s} = %v, want %v", metricOps, c.op, c.outcome, got, c.want)
		}
	}
	var m *metrics
	m.count(opPut, outcomeOK) // nil-safe: no panic
	if outcomeOf(errors.New("x")) != outcomeOther || outcomeOf(nil) != outcomeOK || outcomeOf(fmt.Errorf("%w: x", ErrUnreadable)) != outcomeUnreadable {
		t.Errorf("outcomeOf misclassifies")
	}
}

// TestBadConfig checks that an invalid prefix fails every call with
// ErrBackend rather than panicking or writing under another prefix.
func TestBadConfig(t *testing.T) {
	for _, s := range []Store{
		NewMemory(quiet(Config{Prefix: "bad{prefix}"})),
		NewRedis(nil, quiet(Config{})),
	} {
		_, err := s.Put(ctxb, "ns", "k", []byte("v"), time.Hour)
		testutil.WantErr(t, "Put with a bad configuration", err, ErrBackend)
		_, _, err = s.Issue(ctxb, "p", nil, time.Hour)
		testutil.WantErr(t, "Issue with a bad configuration", err, ErrBackend)
		_, err = s.Begin(ctxb, "k", "", time.Hour)
		testutil.WantErr(t, "Begin with a bad configuration", err, ErrBackend)
	}
}

func TestParseKeyring(t *testing.T) {
	k, err := ParseKeyring(testutil.KeyEntry("k2", 2) + "," + testutil.KeyEntry("k1", 1))
	if err != nil || k.CurrentKeyID() != "k2" {
		t.Fatalf("ParseKeyring: %v, %v", k, err)
	}
	for _, bad := range []string{"", "k1", "k1:c2hvcnQ="} {
		if _, err := ParseKeyring(bad); !errors.Is(err, seal.ErrInvalidKeyring) {
			t.Errorf("ParseKeyring(%q): %v, want seal.ErrInvalidKeyring", bad, err)
		}
	}
}

// TestLogicalIDInjective checks the additional-data encoding on inputs that
// a plain join would confuse.
func TestLogicalIDInjective(t *testing.T) {
	ids := [][]byte{
		logicalID(capTemp, []byte("a"), []byte("bc")),
		logicalID(capTemp, []byte("ab"), []byte("c")),
		logicalID(capTemp, []byte("abc"), []byte("")),
		logicalID(capTemp, []byte(""), []byte("abc")),
		logicalID(capToken, []byte("a"), []byte("bc")),
		logicalID(capIdem, []byte("abc")),
		logicalID(capIdem, []byte("a\x01bc")),
	}
	for i := range ids {
		for j := i + 1; j < len(ids); j++ {
			if bytes.Equal(ids[i], ids[j]) {
				t.Errorf("logicalID %d and %d are equal: %q", i, j, ids[i])
			}
		}
	}
}
