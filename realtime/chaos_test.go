package realtime

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/internal/testutil"
)

// Acceptance 1: 100 channels x 1000 sequenced messages published through two
// instances while SSE clients are cut at random and reconnect with their
// Last-Event-ID, and (on Redis) while CLIENT KILL cuts the instances'
// Pub/Sub subscriptions (CLIENT LIST TYPE pubsub, this test's connections). Every client must end with every channel
// it reads at offset 1000, each message received exactly once and in order:
// history (1000 per channel) covers every gap, so no reset is allowed either.
func TestSSEChaos(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		const (
			nChannels = 100
			perChan   = 1000
			nClients  = 4
			perClient = 25 // channels read by each client: every channel has a reader
		)
		reg := prometheus.NewRegistry()
		bs := e.brokers(Config{Registerer: reg}, 2)
		srvs := make([]*httptest.Server, len(bs))
		for i, b := range bs {
			srvs[i] = sseServer(t, b, SSEConfig{QueueSize: 4096})
		}
		channels := make([]string, nChannels)
		for i := range channels {
			channels[i] = "appt:" + strconv.Itoa(i)
		}

		ctx, cancel := context.WithTimeout(ctxb, 3*time.Minute)
		defer cancel()
		clients := make([]*chaosClient, nClients)
		for i := range clients {
			var chans []string
			for j := range perClient {
				chans = append(chans, channels[(i*perClient+j)%nChannels])
			}
			clients[i] = &chaosClient{channels: chans, srvs: srvs, want: perChan, rng: rand.New(rand.NewPCG(uint64(i), 7))}
			clients[i].init()
		}
		var wg sync.WaitGroup
		for _, c := range clients {
			ready := make(chan struct{})
			wg.Add(1)
			go func() { defer wg.Done(); c.run(ctx, ready) }()
			<-ready // connected at the start position before anything is published
		}

		var kills atomic.Int64
		stopKill := make(chan struct{})
		killDone := make(chan struct{})
		go func() {
			defer close(killDone)
			if e.admin == nil {
				return
			}
			for {
				select {
				case <-stopKill:
					return
				case <-time.After(150 * time.Millisecond):
				}
				// Only this test's connections: other tests share the server.
				for _, n := range e.admin.Nodes() {
					ids, err := redistest.ClientIDs(ctxb, n, "pubsub", e.clientName)
					if err != nil {
						continue
					}
					for _, id := range ids {
						if n.Do(ctxb, n.B().Arbitrary("CLIENT", "KILL", "ID").Args(strconv.FormatInt(id, 10)).Build()).Error() == nil {
							kills.Add(1)
						}
					}
				}
			}
		}()

		// Publishers: 16 goroutines over both instances; a failed publish
		// (its connection killed) is retried with the same idempotency key.
		var pwg sync.WaitGroup
		work := make(chan [2]int, 1024)
		for w := range 16 {
			pwg.Add(1)
			go func() {
				defer pwg.Done()
				for job := range work {
					ch, n := channels[job[0]], job[1]
					data := []byte(`{"n":` + strconv.Itoa(n) + `}`)
					for attempt := 0; ; attempt++ {
						_, err := bs[(w+attempt)%len(bs)].Publish(ctx, ch, data, WithIdempotencyKey(strconv.Itoa(n)))
						if err == nil {
							break
						}
						if ctx.Err() != nil || attempt > 50 {
							t.Errorf("publish %s/%d: %v", ch, n, err)
							return
						}
					}
				}
			}()
		}
		for n := range perChan {
			for c := range nChannels {
				work <- [2]int{c, n}
			}
		}
		close(work)
		pwg.Wait()
		close(stopKill)
		<-killDone
		for _, ch := range channels {
			h, err := bs[0].History(ctxb, ch, 0, 0)
			if err != nil || h.Top != perChan {
				t.Fatalf("%s: top %d (%v), want %d: a retried publish was duplicated or lost", ch, h.Top, err, perChan)
			}
		}
		wg.Wait()
		var cuts, resumes int
		for i, c := range clients {
			if c.err != nil {
				t.Errorf("client %d: %v", i, c.err)
			}
			cuts += c.cuts
			resumes += c.resumes
		}
		resub := testutil.Sum(t, reg, metricEvents, "event", "resubscribed")
		t.Logf("%s: %d channels x %d messages, %d clients; %d client cuts, %d resumes with Last-Event-ID; %d Pub/Sub connections killed, %v resubscriptions repaired",
			t.Name(), nChannels, perChan, nClients, cuts, resumes, kills.Load(), resub)
		if cuts == 0 || resumes == 0 {
			t.Fatalf("the run cut no client (%d) or resumed none (%d)", cuts, resumes)
		}
		if e.admin != nil && (kills.Load() == 0 || resub == 0) {
			t.Fatalf("CLIENT KILL TYPE pubsub killed %d connections, %v resubscriptions: the failure was not exercised", kills.Load(), resub)
		}
	})
}

// chaosClient is one browser: it reads its channels over SSE, cuts its own
// connection at random and reconnects with Last-Event-ID (to either
// instance), and checks every message against the position it holds.
type chaosClient struct {
	channels []string
	srvs     []*httptest.Server
	want     uint64
	rng      *rand.Rand

	idx     map[string]int
	pos     []Position
	lastID  string
	done    int // channels at want
	cuts    int
	resumes int
	err     error
}

func (c *chaosClient) init() {
	c.idx = map[string]int{}
	for i, ch := range c.channels {
		c.idx[ch] = i
	}
	c.pos = make([]Position, len(c.channels))
}

func (c *chaosClient) run(ctx context.Context, ready chan struct{}) {
	first := true
	for c.err == nil && c.done < len(c.channels) {
		if ctx.Err() != nil {
			c.err = fmt.Errorf("timed out with %d of %d channels complete (positions %v)", c.done, len(c.channels), c.pos)
			break
		}
		cctx, cancel := context.WithCancel(ctx)
		srv := c.srvs[c.rng.IntN(len(c.srvs))]
		resp, err := dialSSE(cctx, srv.URL, c.channels, c.lastID, "")
		if err != nil || resp.StatusCode != 200 {
			cancel()
			if err == nil {
				_ = resp.Body.Close()
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
			if first {
				c.err = err
				close(ready)
				return
			}
			continue // the instance is busy; retry like a browser
		}
		if c.lastID != "" {
			c.resumes++
		}
		budget := 200 + c.rng.IntN(3000) // events before this client cuts itself
		err = readSSE(resp.Body, func(ev sseEvent) bool {
			if ev.comment != "" {
				return true
			}
			if first {
				first = false
				close(ready)
			}
			if e := c.apply(ev); e != nil {
				c.err = e
				return false
			}
			if c.done == len(c.channels) {
				return false
			}
			budget--
			return budget > 0
		})
		if err == nil && c.err == nil && c.done < len(c.channels) {
			c.cuts++
		}
		cancel()
		_ = resp.Body.Close()
	}
	if first {
		close(ready)
	}
}

// apply checks one event against the client's positions and moves them.
func (c *chaosClient) apply(ev sseEvent) error {
	if !ev.hasID {
		return fmt.Errorf("event without id: %+v", ev)
	}
	next, err := ParseEventID(ev.id, len(c.channels))
	if err != nil {
		return fmt.Errorf("id %q: %w", ev.id, err)
	}
	switch ev.event {
	case "":
		// The id-only event at the start of a stream: the position it
		// resumed from, unchanged.
		for i := range next {
			if c.lastID != "" && next[i] != c.pos[i] {
				return fmt.Errorf("stream started at %v, want %v", next[i], c.pos[i])
			}
		}
	case "reset":
		return fmt.Errorf("reset %s although history covers every message", ev.data)
	case "message":
		var m sseMessage
		if err := json.Unmarshal([]byte(ev.data), &m); err != nil {
			return fmt.Errorf("data %q: %w", ev.data, err)
		}
		i, ok := c.idx[m.Channel]
		if !ok {
			return fmt.Errorf("message of unsubscribed channel %q", m.Channel)
		}
		if m.Offset != c.pos[i].Offset+1 {
			return fmt.Errorf("%s: offset %d after %d (gap or duplicate)", m.Channel, m.Offset, c.pos[i].Offset)
		}
		if c.pos[i].Epoch != "" && next[i].Epoch != c.pos[i].Epoch {
			return fmt.Errorf("%s: epoch changed without reset", m.Channel)
		}
		for j := range next {
			if j != i && next[j] != c.pos[j] {
				return fmt.Errorf("id moved channel %d it did not deliver: %v -> %v", j, c.pos[j], next[j])
			}
		}
		if next[i].Offset != m.Offset {
			return fmt.Errorf("%s: id offset %d for message %d", m.Channel, next[i].Offset, m.Offset)
		}
		if m.Offset == c.want {
			c.done++
		}
	default:
		return fmt.Errorf("unknown event %q", ev.event)
	}
	c.pos = next
	c.lastID = ev.id
	return nil
}
