package analytics

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/internal/testutil"
)

// TestRedisDown (acceptance 3): with redis-server stopped, Capture, Incr and
// the reads return an error wrapping ErrBackend within the timeout (plus
// slack), each failure is counted, and the same Store works again once
// Redis is back, without a restart.
func TestRedisDown(t *testing.T) {
	t.Parallel()
	srv := redistest.NewServer(t)
	reg := newRegistry()
	const timeout = 200 * time.Millisecond
	s := NewRedis(redistest.Client(t, srv.URL()), quiet(Config{Prefix: redistest.Prefix(t), Timeout: timeout, Registerer: reg}))
	if _, err := s.Incr(ctxb, "m", 1, time.Time{}); err != nil {
		t.Fatal(err)
	}
	srv.Stop(t)
	now := time.Now()
	const rounds = 3
	slowest := testutil.FailClosed(t, rounds, []testutil.Call{
		testutil.C("Capture", func() error { return s.Capture(ctxb, Event{Event: "e", DistinctID: "d"}) }),
		testutil.C("Incr", func() error { _, err := s.Incr(ctxb, "m", 1, now, ForUser("u")); return err }),
		testutil.C("AddUnique", func() error { return s.AddUnique(ctxb, "m", "x", now) }),
		testutil.C("Series", func() error { _, err := s.Series(ctxb, "m", now, now); return err }),
		testutil.C("CountUnique", func() error { _, err := s.CountUnique(ctxb, "m", now, now); return err }),
		testutil.C("Stats", func() error { _, err := s.Stats(ctxb); return err }),
	}, ErrBackend, timeout+time.Second)
	t.Logf("slowest call with Redis down: %v (timeout %v)", slowest, timeout)
	for _, c := range []struct {
		op   string
		want float64
	}{{"capture", rounds}, {"incr", rounds}, {"unique_add", rounds}} {
		if got := testutil.Sum(t, reg, MetricErrors, "backend", "redis", "op", c.op); got != c.want {
			t.Errorf("%s{op=%s} = %v, want %v", MetricErrors, c.op, got, c.want)
		}
	}
	if got := testutil.Sum(t, reg, MetricDropped, "reason", "capture_error"); got != rounds {
		t.Errorf("%s{reason=capture_error} = %v, want %v", MetricDropped, got, rounds)
	}
	// A caller's own short deadline is honoured too.
	ctx, cancel := context.WithTimeout(ctxb, 10*time.Millisecond)
	defer cancel()
	if err := s.Capture(ctx, Event{Event: "e", DistinctID: "d"}); !errors.Is(err, ErrBackend) {
		t.Fatalf("Capture with a cancelled ctx: %v", err)
	}
	srv.Start(t)
	until(t, "Redis back", 10*time.Second, func() bool {
		_, err := s.Incr(ctxb, "m", 1, now)
		return err == nil
	})
	if err := s.Capture(ctxb, Event{Event: "e", DistinctID: "d"}); err != nil {
		t.Fatalf("Capture after the restart: %v", err)
	}
}

// TestStreamCapTrims: beyond StreamCap the oldest events are trimmed and
// counted as dropped; the stream has a TTL.
func TestStreamCapTrims(t *testing.T) {
	t.Parallel()
	reg := newRegistry()
	prefix := redistest.Prefix(t)
	client := redistest.Client(t, redistest.URL(t))
	s := NewRedis(client, quiet(Config{Prefix: prefix, StreamCap: 10, Registerer: reg}))
	captureN(t, s, 1000, nil)
	st := testutil.Must[Stats](t, "Stats")(s.Stats(ctxb))
	if st.Buffered >= 1000 || st.Buffered < 10 || st.Dropped != 1000-st.Buffered {
		t.Fatalf("stats %+v: want about 10 buffered and the rest dropped", st)
	}
	if got := testutil.Sum(t, reg, MetricDropped, "reason", "trimmed"); got != float64(st.Dropped) {
		t.Fatalf("dropped metric %v, stats %d", got, st.Dropped)
	}
	ttl, err := client.Do(ctxb, client.B().Pttl().Key(s.(*redisStore).stream).Build()).AsInt64()
	if err != nil || ttl <= 0 {
		t.Fatalf("stream PTTL %d %v", ttl, err)
	}
}

// TestMemoryBufferFull: the memory buffer drops (and counts) what does not
// fit; Capture returns ErrBufferFull without blocking.
func TestMemoryBufferFull(t *testing.T) {
	t.Parallel()
	reg := newRegistry()
	s := NewMemory(quiet(Config{MemoryBufferSize: 3, Registerer: reg}))
	for i := range 5 {
		err := s.Capture(ctxb, Event{Event: "e", DistinctID: "d"})
		if i < 3 && err != nil || i >= 3 && !errors.Is(err, ErrBufferFull) {
			t.Fatalf("capture %d: %v", i, err)
		}
	}
	if st := testutil.Must[Stats](t, "Stats")(s.Stats(ctxb)); st.Buffered != 3 || st.Dropped != 2 {
		t.Fatalf("stats %+v", st)
	}
	if got := testutil.Sum(t, reg, MetricDropped, "reason", "buffer_full"); got != 2 {
		t.Fatalf("dropped %v", got)
	}
}

// TestMemoryExpiry: memory counters and sketches expire at the end of their
// day plus the retention, on the injected clock.
func TestMemoryExpiry(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	clk := func() time.Time { return now }
	s := NewMemory(quiet(Config{Retention: 2 * day, Now: clk}))
	testutil.Must[int64](t, "Incr")(s.Incr(ctxb, "m", 4, time.Time{}))
	if err := s.AddUnique(ctxb, "u", "a", time.Time{}); err != nil {
		t.Fatal(err)
	}
	d := dayOf(now)
	now = d.Add(3*day - time.Millisecond) // the last millisecond kept
	if n := testutil.Must[int64](t, "Total")(s.Total(ctxb, "m", d, d)); n != 4 {
		t.Fatalf("before expiry: %d", n)
	}
	now = d.Add(3 * day)
	if n := testutil.Must[int64](t, "Total")(s.Total(ctxb, "m", d, d)); n != 0 {
		t.Fatalf("after expiry: %d", n)
	}
	if n := testutil.Must[int64](t, "CountUnique")(s.CountUnique(ctxb, "u", d, d)); n != 0 {
		t.Fatalf("sketch after expiry: %d", n)
	}
}

// TestChunks: batches stay within BatchSize and MaxBatchBytes.
func TestChunks(t *testing.T) {
	f, err := NewForwarder(NewMemory(Config{}).Buffer(), ForwarderConfig{APIKey: "k", BatchSize: 3, MaxBatchBytes: 300})
	if err != nil {
		t.Fatal(err)
	}
	mk := func(sizes ...int) []Entry {
		var out []Entry
		for _, n := range sizes {
			out = append(out, Entry{Data: make([]byte, n)})
		}
		return out
	}
	for _, c := range []struct {
		sizes []int
		want  []int
	}{
		{[]int{10, 10, 10, 10}, []int{3, 1}},
		{[]int{100, 100, 100}, []int{2, 1}},
		{[]int{500, 10}, []int{1, 1}}, // an event over the cap goes alone
		{[]int{10}, []int{1}},
	} {
		var got []int
		for _, ch := range f.chunks(mk(c.sizes...)) {
			got = append(got, len(ch))
		}
		if len(got) != len(c.want) {
			t.Fatalf("%v: chunks %v, want %v", c.sizes, got, c.want)
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Fatalf("%v: chunks %v, want %v", c.sizes, got, c.want)
			}
		}
	}
}

// TestRetryAfter parses both forms and bounds them.
func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		in   string
		want time.Duration
	}{
		{"", 0}, {"3", 3 * time.Second}, {"-1", 0}, {"x", 0}, {"999999999", 24 * time.Hour},
		{now.Add(90 * time.Second).Format(http1123), 90 * time.Second},
		{now.Add(-time.Hour).Format(http1123), 0},
	} {
		if got := RetryAfter(c.in, now); got != c.want {
			t.Errorf("RetryAfter(%q) = %v, want %v", c.in, got, c.want)
		}
	}
}

const http1123 = "Mon, 02 Jan 2006 15:04:05 GMT"

// TestForwarderConfig: a forwarder without a key or with a bad host is
// refused.
func TestForwarderConfig(t *testing.T) {
	b := NewMemory(Config{}).Buffer()
	for _, cfg := range []ForwarderConfig{{}, {APIKey: "k", Host: "ftp://x"}} {
		if _, err := NewForwarder(b, cfg); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%+v: %v", cfg, err)
		}
	}
	if _, err := NewForwarder(nil, ForwarderConfig{APIKey: "k"}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("nil buffer: %v", err)
	}
}

// TestBackoff: the retry delay doubles from BackoffBase with jitter in its
// upper half, and is capped at BackoffCap.
func TestBackoff(t *testing.T) {
	f, err := NewForwarder(NewMemory(Config{}).Buffer(), ForwarderConfig{APIKey: "k", BackoffBase: 100 * time.Millisecond, BackoffCap: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		attempt int
		max     time.Duration
	}{{0, 100 * time.Millisecond}, {1, 200 * time.Millisecond}, {2, 400 * time.Millisecond}, {3, 800 * time.Millisecond},
		{4, time.Second}, {40, time.Second}, {1000, time.Second}} {
		for range 100 {
			if d := f.backoff(c.attempt); d < c.max/2 || d > c.max {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", c.attempt, d, c.max/2, c.max)
			}
		}
	}
}
