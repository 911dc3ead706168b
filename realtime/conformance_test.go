package realtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/clock"
	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/internal/testutil"
)

// The conformance suite: the Broker contract (realtime.go), run unchanged on
// the memory backend (on a fake clock), a real redis-server and a real
// 3-node Redis Cluster. Several Brokers over one backend play several
// application instances; on Redis each has its own client.

var ctxb = context.Background()

type env struct {
	redis bool
	url   string
	// brokers returns n brokers with cfg sharing one backend, each on its
	// own client on Redis. Every call of one env must pass the same cfg.
	brokers func(cfg Config, n int) []Broker
	// advance makes the backend's clock pass d: the fake clock moves; on
	// Redis it waits for real time to pass.
	advance func(d time.Duration)
	// admin is a client for the failure tests (nil on memory).
	admin rueidis.Client
	// clientName names every connection of the brokers' clients, so a
	// failure test kills only its own (redistest.ClientIDs).
	clientName string
}

func (e env) broker(cfg Config) Broker { return e.brokers(cfg, 1)[0] }

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

func forEach(t *testing.T, f func(t *testing.T, e env)) {
	t.Parallel()
	for _, tg := range targets() {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			f(t, tg.newEnv(t))
		})
	}
}

func quiet(cfg Config) Config {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg
}

func memoryEnv(t *testing.T) env {
	clk := clock.NewFake(time.Now().Truncate(time.Millisecond))
	var (
		mu sync.Mutex
		b  Broker
	)
	return env{
		brokers: func(cfg Config, n int) []Broker {
			mu.Lock()
			defer mu.Unlock()
			if b == nil {
				cfg = quiet(cfg)
				cfg.Now = clk.Now
				b = NewMemory(cfg)
				t.Cleanup(func() { _ = b.Close() })
			}
			out := make([]Broker, n)
			for i := range out {
				out[i] = b // one process: instances share the store
			}
			return out
		},
		advance: clk.Advance,
	}
}

func redisEnv(t *testing.T, url string) env {
	prefix := redistest.Prefix(t)
	name := strings.TrimSuffix(prefix, ":")
	return env{
		redis:      true,
		url:        url,
		clientName: name,
		brokers: func(cfg Config, n int) []Broker {
			cfg = quiet(cfg)
			cfg.Prefix = prefix
			if cfg.Timeout == 0 {
				cfg.Timeout = 10 * time.Second
			}
			out := make([]Broker, n)
			for i := range out {
				b, err := NewRedis(redistest.ClientNamed(t, url, name), cfg)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = b.Close() })
				out[i] = b
			}
			return out
		},
		advance: func(d time.Duration) {
			// Redis expires keys on its own clock: wait for d to pass.
			deadline := time.Now().Add(d)
			for time.Now().Before(deadline) {
				time.Sleep(time.Until(deadline) + time.Millisecond)
			}
		},
		admin: redistest.Client(t, url),
	}
}

// next returns the next event within a generous bound (a missing event
// fails the test instead of hanging it).
func next(t *testing.T, s *Subscription) Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctxb, 20*time.Second)
	defer cancel()
	ev, err := s.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return ev
}

func wantMessage(t *testing.T, ev Event, ch string, off uint64, data string) {
	t.Helper()
	if ev.Kind != EventMessage || ev.Channel != ch || ev.Position.Offset != off || string(ev.Message.Data) != data {
		t.Fatalf("event = %+v (data %q), want message %s/%d %q", ev, msgData(ev), ch, off, data)
	}
}

func msgData(ev Event) string {
	if ev.Message == nil {
		return ""
	}
	return string(ev.Message.Data)
}

func TestPublishNumbersAndHistory(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		b := e.broker(Config{HistorySize: 5})
		var epoch string
		for i := 1; i <= 8; i++ {
			p := testutil.Must[Position](t, "Publish")(b.Publish(ctxb, "appt:1", []byte(strconv.Itoa(i))))
			if p.Offset != uint64(i) || p.Epoch == "" || (epoch != "" && p.Epoch != epoch) {
				t.Fatalf("publish %d: position %+v (epoch %q)", i, p, epoch)
			}
			epoch = p.Epoch
		}
		h := testutil.Must[History](t, "History")(b.History(ctxb, "appt:1", 0, 100))
		if h.Epoch != epoch || h.Top != 8 || len(h.Messages) != 5 || h.Messages[0].Offset != 4 || string(h.Messages[4].Data) != "8" {
			t.Fatalf("history = %+v, want offsets 4..8 of %s", h, epoch)
		}
		for i, m := range h.Messages {
			if m.Offset != uint64(4+i) || m.Epoch != epoch || m.Channel != "appt:1" || m.PublishedAt.IsZero() {
				t.Fatalf("message %d = %+v", i, m)
			}
		}
		h = testutil.Must[History](t, "History")(b.History(ctxb, "appt:1", 5, 2))
		if len(h.Messages) != 2 || h.Messages[0].Offset != 6 || h.Messages[1].Offset != 7 {
			t.Fatalf("history since 5 limit 2 = %+v", h.Messages)
		}
		h = testutil.Must[History](t, "History")(b.History(ctxb, "appt:1", 8, 10))
		if len(h.Messages) != 0 || h.Top != 8 {
			t.Fatalf("history since top = %+v", h)
		}
		h = testutil.Must[History](t, "History")(b.History(ctxb, "never", 0, 10))
		if h.Epoch != "" || h.Top != 0 || len(h.Messages) != 0 {
			t.Fatalf("history of an unused channel = %+v", h)
		}
	})
}

func TestPublishIdempotency(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		bs := e.brokers(Config{}, 3)
		var (
			wg  sync.WaitGroup
			mu  sync.Mutex
			got = map[Position]int{}
		)
		for i := range 30 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p, err := bs[i%3].Publish(ctxb, "appt:idem", []byte("x"), WithIdempotencyKey("k"+strconv.Itoa(i%5)))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				got[p]++
				mu.Unlock()
			}()
		}
		wg.Wait()
		h := testutil.Must[History](t, "History")(bs[0].History(ctxb, "appt:idem", 0, 100))
		if len(got) != 5 || h.Top != 5 {
			t.Fatalf("30 publishes with 5 keys: positions %v, top %d; want 5 distinct, top 5", got, h.Top)
		}
	})
}

func TestConcurrentPublishContiguous(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		bs := e.brokers(Config{}, 4)
		const per = 50
		var wg sync.WaitGroup
		offs := make(chan uint64, 4*per)
		for i := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range per {
					p, err := bs[i].Publish(ctxb, "appt:many", []byte("x"))
					if err != nil {
						t.Error(err)
						return
					}
					offs <- p.Offset
				}
			}()
		}
		wg.Wait()
		close(offs)
		seen := map[uint64]bool{}
		for o := range offs {
			if seen[o] || o < 1 || o > 4*per {
				t.Fatalf("offset %d duplicated or out of 1..%d", o, 4*per)
			}
			seen[o] = true
		}
	})
}

func TestSubscribeDeliversInOrderAcrossInstances(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		bs := e.brokers(Config{}, 3)
		chans := []string{"appt:a", "appt:b", "presence:c"}
		subs := make([]*Subscription, len(bs))
		for i, b := range bs {
			subs[i] = testutil.Must[*Subscription](t, "Subscribe")(b.Subscribe(ctxb, chans, nil))
			defer subs[i].Close()
		}
		const per = 40
		var wg sync.WaitGroup
		for i, b := range bs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range per {
					if _, err := b.Publish(ctxb, chans[j%len(chans)], []byte(fmt.Sprintf("%d-%d", i, j))); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		total := len(bs) * per
		for si, s := range subs {
			last := map[string]uint64{}
			for range total {
				ev := next(t, s)
				if ev.Kind != EventMessage || ev.Position.Offset != last[ev.Channel]+1 {
					t.Fatalf("subscriber %d: %+v after offset %d", si, ev, last[ev.Channel])
				}
				last[ev.Channel] = ev.Position.Offset
			}
			if ev, ok, err := s.TryNext(ctxb); ok || err != nil {
				t.Fatalf("subscriber %d: extra event %+v %v", si, ev, err)
			}
		}
	})
}

func TestSubscribeStartsAtCurrent(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		b := e.broker(Config{})
		testutil.Must[Position](t, "Publish")(b.Publish(ctxb, "c", []byte("old")))
		s := testutil.Must[*Subscription](t, "Subscribe")(b.Subscribe(ctxb, []string{"c", "empty"}, nil))
		defer s.Close()
		if ps := s.Positions(); ps[0].Offset != 1 || ps[0].Epoch == "" || ps[1] != (Position{}) {
			t.Fatalf("positions at start = %+v", ps)
		}
		testutil.Must[Position](t, "Publish")(b.Publish(ctxb, "empty", []byte("e1")))
		testutil.Must[Position](t, "Publish")(b.Publish(ctxb, "c", []byte("new")))
		got := map[string]Event{}
		for range 2 {
			ev := next(t, s)
			got[ev.Channel] = ev
		}
		wantMessage(t, got["c"], "c", 2, "new")
		wantMessage(t, got["empty"], "empty", 1, "e1")
	})
}

func TestSubscribeResumesFromHistory(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		b := e.broker(Config{HistorySize: 10})
		tests := []struct {
			name      string
			since     func(p Position) Position // p: the channel's top
			wantReset bool
			wantFirst uint64 // first message offset after the (optional) reset; 0: none
		}{
			{"within history", func(p Position) Position { return Position{p.Epoch, 9} }, false, 10},
			{"at the oldest kept", func(p Position) Position { return Position{p.Epoch, 5} }, false, 6},
			{"older than history", func(p Position) Position { return Position{p.Epoch, 4} }, true, 0},
			{"another epoch", func(Position) Position { return Position{"AAAAAAAA", 12} }, true, 0},
			{"ahead of the channel", func(p Position) Position { return Position{p.Epoch, 99} }, true, 0},
			{"at the top", func(p Position) Position { return p }, false, 0},
			{"nothing seen yet", func(Position) Position { return Position{} }, true, 0},
		}
		for i, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				ch := "r" + strconv.Itoa(i)
				var p Position
				for i := 1; i <= 15; i++ {
					p = testutil.Must[Position](t, "Publish")(b.Publish(ctxb, ch, []byte(strconv.Itoa(i))))
				}
				s := testutil.Must[*Subscription](t, "Subscribe")(b.Subscribe(ctxb, []string{ch}, []Position{tc.since(p)}))
				defer s.Close()
				if tc.wantReset {
					ev := next(t, s)
					if ev.Kind != EventReset || ev.Position != p {
						t.Fatalf("first event = %+v, want reset to %+v", ev, p)
					}
				}
				if tc.wantFirst != 0 {
					for o := tc.wantFirst; o <= 15; o++ {
						wantMessage(t, next(t, s), ch, o, strconv.FormatUint(o, 10))
					}
				}
				// Then live delivery continues after the top.
				testutil.Must[Position](t, "Publish")(b.Publish(ctxb, ch, []byte("live")))
				wantMessage(t, next(t, s), ch, 16, "live")
				if got := s.Positions()[0]; got != (Position{p.Epoch, 16}) {
					t.Fatalf("Positions = %+v", got)
				}
			})
		}
	})
}

// A consumer that falls behind its queue loses nothing: the overflow is a gap
// repaired from history.
func TestSlowConsumerRepairedFromHistory(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		b := e.broker(Config{})
		s := testutil.Must[*Subscription](t, "Subscribe")(b.Subscribe(ctxb, []string{"slow"}, nil, WithQueueSize(2)))
		defer s.Close()
		const n = 60
		for i := 1; i <= n; i++ {
			testutil.Must[Position](t, "Publish")(b.Publish(ctxb, "slow", []byte(strconv.Itoa(i))))
		}
		for i := 1; i <= n; i++ {
			wantMessage(t, next(t, s), "slow", uint64(i), strconv.Itoa(i))
		}
	})
}

func TestOverflowDisconnects(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		b := e.broker(Config{})
		s := testutil.Must[*Subscription](t, "Subscribe")(b.Subscribe(ctxb, []string{"ovf"}, nil, WithQueueSize(2), WithDisconnectOnOverflow()))
		defer s.Close()
		probe := testutil.Must[*Subscription](t, "Subscribe")(b.Subscribe(ctxb, []string{"ovf"}, nil))
		defer probe.Close()
		for i := 1; i <= 10; i++ {
			testutil.Must[Position](t, "Publish")(b.Publish(ctxb, "ovf", []byte("x")))
		}
		// Once the probe saw all ten, so did s's queue.
		for range 10 {
			next(t, probe)
		}
		for range 3 {
			if _, err := s.Next(ctxb); err != nil {
				testutil.WantErr(t, "Next after overflow", err, ErrOverflow)
				return
			}
		}
		t.Fatal("a subscription with a queue of 2 took 10 messages without overflowing")
	})
}

func TestEpochChangeResets(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		ttl := 300 * time.Millisecond
		b := e.broker(Config{HistoryTTL: ttl})
		p1 := testutil.Must[Position](t, "Publish")(b.Publish(ctxb, "ep", []byte("1")))
		e.advance(ttl + 50*time.Millisecond)
		h := testutil.Must[History](t, "History")(b.History(ctxb, "ep", 0, 10))
		if h.Epoch != "" || h.Top != 0 {
			t.Fatalf("history after the TTL = %+v, want none", h)
		}
		p2 := testutil.Must[Position](t, "Publish")(b.Publish(ctxb, "ep", []byte("2")))
		if p2.Epoch == p1.Epoch || p2.Offset != 1 {
			t.Fatalf("after expiry: %+v, want a new epoch at offset 1 (old %+v)", p2, p1)
		}
		s := testutil.Must[*Subscription](t, "Subscribe")(b.Subscribe(ctxb, []string{"ep"}, []Position{p1}))
		defer s.Close()
		if ev := next(t, s); ev.Kind != EventReset || ev.Position != p2 {
			t.Fatalf("resume from the old epoch: %+v, want reset to %+v", ev, p2)
		}
	})
}

func TestPresence(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		b := e.broker(Config{})
		s := testutil.Must[*Subscription](t, "Subscribe")(b.Subscribe(ctxb, []string{PresenceChannel("expert:1")}, nil))
		defer s.Close()
		ttl := 400 * time.Millisecond
		ps := testutil.Must[PresenceState](t, "SetPresence")(b.SetPresence(ctxb, "expert:1", StatusBusy, ttl))
		if ps.Status != StatusBusy || ps.ExpiresAt.Sub(ps.UpdatedAt) != ttl {
			t.Fatalf("SetPresence = %+v", ps)
		}
		got := testutil.Must[map[string]PresenceState](t, "Presence")(b.Presence(ctxb, []string{"expert:1", "expert:2"}))
		if got["expert:1"].Status != StatusBusy || !got["expert:1"].UpdatedAt.Equal(ps.UpdatedAt) || got["expert:2"].Status != StatusOffline {
			t.Fatalf("Presence = %+v", got)
		}
		ev := next(t, s)
		want := fmt.Sprintf(`{"subject":"expert:1","status":"busy","updatedAt":%d,"expiresAt":%d}`, ps.UpdatedAt.UnixMilli(), ps.ExpiresAt.UnixMilli())
		wantMessage(t, ev, PresenceChannel("expert:1"), 1, want)
		e.advance(ttl + 50*time.Millisecond)
		got = testutil.Must[map[string]PresenceState](t, "Presence")(b.Presence(ctxb, []string{"expert:1"}))
		if got["expert:1"] != (PresenceState{Status: StatusOffline}) {
			t.Fatalf("after the TTL: %+v, want offline", got)
		}
	})
}

func TestBadInput(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		b := e.broker(Config{})
		long := string(make([]byte, MaxChannelLen+1))
		many := make([]string, MaxChannels+1)
		for i := range many {
			many[i] = strconv.Itoa(i)
		}
		calls := []struct {
			name string
			call func() error
		}{
			{"empty channel", func() error { _, err := b.Publish(ctxb, "", nil); return err }},
			{"long channel", func() error { _, err := b.Publish(ctxb, long, nil); return err }},
			{"comma", func() error { _, err := b.Publish(ctxb, "a,b", nil); return err }},
			{"control", func() error { _, err := b.Publish(ctxb, "a\nb", nil); return err }},
			{"bad utf8", func() error { _, err := b.Publish(ctxb, "a\xff", nil); return err }},
			{"big data", func() error { _, err := b.Publish(ctxb, "a", make([]byte, MaxDataLen+1)); return err }},
			{"history channel", func() error { _, err := b.History(ctxb, "", 0, 1); return err }},
			{"no channels", func() error { _, err := b.Subscribe(ctxb, nil, nil); return err }},
			{"too many", func() error { _, err := b.Subscribe(ctxb, many, nil); return err }},
			{"duplicate", func() error { _, err := b.Subscribe(ctxb, []string{"a", "a"}, nil); return err }},
			{"since count", func() error { _, err := b.Subscribe(ctxb, []string{"a"}, []Position{{}, {}}); return err }},
			{"offset without epoch", func() error { _, err := b.Subscribe(ctxb, []string{"a"}, []Position{{Offset: 3}}); return err }},
			{"bad epoch", func() error {
				_, err := b.Subscribe(ctxb, []string{"a"}, []Position{{Epoch: "a:b", Offset: 3}})
				return err
			}},
			{"status", func() error { _, err := b.SetPresence(ctxb, "x", "away", 0); return err }},
			{"subject", func() error { _, err := b.SetPresence(ctxb, "", StatusOnline, 0); return err }},
			{"ttl", func() error { _, err := b.SetPresence(ctxb, "x", StatusOnline, -time.Second); return err }},
			{"presence subject", func() error { _, err := b.Presence(ctxb, []string{""}); return err }},
		}
		for _, c := range calls {
			if err := c.call(); !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("%s: %v, want ErrInvalidArgument", c.name, err)
			}
		}
	})
}

func TestClosedBroker(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		b := e.brokers(Config{}, 1)[0]
		if e.redis {
			// Its own broker: closing it must not end the others' tests.
		} else {
			b = NewMemory(quiet(Config{}))
		}
		s := testutil.Must[*Subscription](t, "Subscribe")(b.Subscribe(ctxb, []string{"z"}, nil))
		_ = b.Close()
		_, err := s.Next(ctxb)
		testutil.WantErr(t, "Next after Close", err, ErrClosed)
		_, err = b.Subscribe(ctxb, []string{"z"}, nil)
		testutil.WantErr(t, "Subscribe after Close", err, ErrClosed)
	})
}
