package realtime

import (
	"context"
	"encoding/json"
	"sync"
	"time"
)

// NewMemory returns a Broker that keeps everything in this process: the
// same sequencing, history (capped ring, TTL), epochs, idempotency and
// presence expiry as the Redis backend, on cfg.Now's clock. It is neither
// durable nor shared between processes.
func NewMemory(cfg Config) Broker {
	m := newMetrics(cfg.Registerer)
	st := &memStore{cfg: cfg, chans: map[string]*memChan{}, idem: map[idemRef]idemEntry{}, pres: map[string]PresenceState{}}
	b := &broker{cfg: cfg, kind: "memory", st: st, hub: newHub(m), m: m}
	st.hub = b.hub
	return b
}

type memStore struct {
	cfg Config
	hub *hub

	mu    sync.Mutex
	chans map[string]*memChan
	idem  map[idemRef]idemEntry
	pres  map[string]PresenceState
	ops   int // publishes since the last sweep
}

type memChan struct {
	epoch   string
	top     uint64
	ring    []*Message // oldest first, at most historySize
	expires time.Time
}

type idemRef struct{ channel, key string }

type idemEntry struct {
	pos     Position
	expires time.Time
}

// sweepEvery is the number of publishes between sweeps of expired entries,
// so that abandoned channels do not hold memory for ever.
const sweepEvery = 1024

func (s *memStore) chanLocked(channel string, now time.Time) *memChan {
	c := s.chans[channel]
	if c != nil && !now.Before(c.expires) {
		delete(s.chans, channel)
		c = nil
	}
	return c
}

func (s *memStore) sweepLocked(now time.Time) {
	s.ops++
	if s.ops < sweepEvery {
		return
	}
	s.ops = 0
	for k, c := range s.chans {
		if !now.Before(c.expires) {
			delete(s.chans, k)
		}
	}
	for k, e := range s.idem {
		if !now.Before(e.expires) {
			delete(s.idem, k)
		}
	}
	for k, p := range s.pres {
		if !now.Before(p.ExpiresAt) {
			delete(s.pres, k)
		}
	}
}

func (s *memStore) publish(ctx context.Context, channel string, data []byte, idemKey string) (Position, error) {
	if err := ctx.Err(); err != nil {
		return Position{}, backendErr("publish", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.publishLocked(channel, data, idemKey, s.cfg.now()), nil
}

func (s *memStore) publishLocked(channel string, data []byte, idemKey string, now time.Time) Position {
	s.sweepLocked(now)
	ref := idemRef{channel, idemKey}
	if idemKey != "" {
		if e, ok := s.idem[ref]; ok && now.Before(e.expires) {
			return e.pos
		}
	}
	c := s.chanLocked(channel, now)
	if c == nil {
		c = &memChan{epoch: newEpoch()}
		s.chans[channel] = c
	}
	c.top++
	m := &Message{Channel: channel, Epoch: c.epoch, Offset: c.top, Data: append([]byte(nil), data...), PublishedAt: now.Truncate(time.Millisecond)}
	if n := s.cfg.historySize(); len(c.ring) >= n {
		copy(c.ring, c.ring[len(c.ring)-n+1:])
		for i := n - 1; i < len(c.ring); i++ {
			c.ring[i] = nil
		}
		c.ring = c.ring[:n-1]
	}
	c.ring = append(c.ring, m)
	c.expires = now.Add(s.cfg.historyTTL())
	if idemKey != "" {
		s.idem[ref] = idemEntry{pos: m.Position(), expires: now.Add(s.cfg.idempotencyTTL())}
	}
	// Under s.mu: subscribers see one channel's messages in offset order.
	s.hub.deliver(m)
	return m.Position()
}

func (s *memStore) history(ctx context.Context, channel string, since uint64, limit int) (History, error) {
	if err := ctx.Err(); err != nil {
		return History{}, backendErr("history", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.chanLocked(channel, s.cfg.now())
	if c == nil {
		return History{}, nil
	}
	h := History{Epoch: c.epoch, Top: c.top}
	if limit <= 0 || since >= c.top || len(c.ring) == 0 {
		return h, nil
	}
	first := c.ring[0].Offset
	i := 0
	if since+1 > first {
		i = int(since + 1 - first)
	}
	end := min(len(c.ring), i+limit)
	h.Messages = append([]*Message(nil), c.ring[i:end]...)
	return h, nil
}

func (s *memStore) positions(ctx context.Context, channels []string) ([]Position, error) {
	if err := ctx.Err(); err != nil {
		return nil, backendErr("positions", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.now()
	out := make([]Position, len(channels))
	for i, ch := range channels {
		if c := s.chanLocked(ch, now); c != nil {
			out[i] = Position{Epoch: c.epoch, Offset: c.top}
		}
	}
	return out, nil
}

func (s *memStore) setPresence(ctx context.Context, subject string, status Status, ttl time.Duration) (PresenceState, error) {
	if err := ctx.Err(); err != nil {
		return PresenceState{}, backendErr("set_presence", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.now().Truncate(time.Millisecond)
	ps := PresenceState{Status: status, UpdatedAt: now, ExpiresAt: now.Add(ttl)}
	s.pres[subject] = ps
	s.publishLocked(PresenceChannel(subject), presenceData(subject, ps), "", now)
	return ps, nil
}

func (s *memStore) presence(ctx context.Context, subjects []string) (map[string]PresenceState, error) {
	if err := ctx.Err(); err != nil {
		return nil, backendErr("presence", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.now()
	out := make(map[string]PresenceState, len(subjects))
	for _, sub := range subjects {
		ps, ok := s.pres[sub]
		if !ok || !now.Before(ps.ExpiresAt) {
			delete(s.pres, sub)
			ps = PresenceState{Status: StatusOffline}
		}
		out[sub] = ps
	}
	return out, nil
}

// presenceData is the message SetPresence publishes. The Redis script builds
// the same JSON from presencePrefix.
func presenceData(subject string, ps PresenceState) []byte {
	return []byte(presencePrefix(subject, ps.Status) + itoa(ps.UpdatedAt.UnixMilli()) +
		`,"expiresAt":` + itoa(ps.ExpiresAt.UnixMilli()) + `}`)
}

func presencePrefix(subject string, status Status) string {
	sub, _ := json.Marshal(subject)
	return `{"subject":` + string(sub) + `,"status":"` + string(status) + `","updatedAt":`
}
