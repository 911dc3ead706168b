package analytics

import (
	"context"
	"fmt"
	"hash/maphash"
	"strconv"
	"sync"
	"time"
)

// memoryStore is the in-process backend: counters and exact unique sets with
// real expiry (on cfg.Now), and a bounded event buffer. Not durable, not
// shared between processes.
type memoryStore struct {
	cfg Config
	m   *metrics

	mu        sync.Mutex
	counters  map[string]*memCounter
	uniques   map[string]*memSet
	lastSweep time.Time

	buf *memBuffer
}

type memCounter struct {
	v   int64
	exp time.Time
}

// memSet keeps 64-bit hashes of the members (not the members): exact up to
// hash collisions, and no user data kept in memory longer than needed.
type memSet struct {
	m   map[uint64]struct{}
	exp time.Time
}

var seed = maphash.MakeSeed()

var _ Store = (*memoryStore)(nil)

// NewMemory returns a Store in this process's memory: counters and unique
// counts (exact, not HyperLogLog) expire like Redis keys, and events go to
// a bounded buffer (Config.MemoryBufferSize) that a Forwarder drains. It is
// neither durable nor shared: events not yet sent are lost when the process
// ends (Forwarder.Close flushes them within its deadline).
func NewMemory(cfg Config) Store {
	m := newMetrics(cfg.Registerer)
	return &memoryStore{
		cfg: cfg, m: m,
		counters: make(map[string]*memCounter),
		uniques:  make(map[string]*memSet),
		buf:      newMemBuffer(cfg, m),
	}
}

// sweep drops expired entries about once a minute, so memory stays bounded
// by the retention. Called with mu held.
func (s *memoryStore) sweep(now time.Time) {
	if now.Sub(s.lastSweep) < time.Minute {
		return
	}
	s.lastSweep = now
	for k, c := range s.counters {
		if !now.Before(c.exp) {
			delete(s.counters, k)
		}
	}
	for k, u := range s.uniques {
		if !now.Before(u.exp) {
			delete(s.uniques, k)
		}
	}
}

func memKey(kind, metric, user string, d time.Time) string {
	return kind + strconv.Itoa(len(metric)) + ":" + metric + ":" + dayString(d) + ":" + user
}

func (s *memoryStore) Incr(ctx context.Context, metric string, by int64, at time.Time, opts ...Option) (int64, error) {
	if err := CheckMetric(metric); err != nil {
		return 0, err
	}
	if err := checkBy(by); err != nil {
		return 0, err
	}
	o, err := resolve(opts)
	if err != nil {
		return 0, err
	}
	d, exp, err := s.cfg.bucket(at)
	if err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		s.m.fail("memory", "incr", err)
		return 0, fmt.Errorf("%w: %w", ErrBackend, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.now()
	s.sweep(now)
	add := func(k string) int64 {
		c := s.counters[k]
		if c == nil || !now.Before(c.exp) {
			c = &memCounter{}
			s.counters[k] = c
		}
		c.v += by
		c.exp = exp
		return c.v
	}
	v := add(memKey("n", metric, "", d))
	if o.hasUser {
		add(memKey("u", metric, o.user, d))
	}
	return v, nil
}

func (s *memoryStore) Series(ctx context.Context, metric string, from, to time.Time, opts ...Option) ([]Point, error) {
	if err := CheckMetric(metric); err != nil {
		return nil, err
	}
	o, err := resolve(opts)
	if err != nil {
		return nil, err
	}
	ds, err := days(from, to)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.now()
	out := make([]Point, len(ds))
	for i, d := range ds {
		k := memKey("n", metric, "", d)
		if o.hasUser {
			k = memKey("u", metric, o.user, d)
		}
		out[i].Date = d
		if c := s.counters[k]; c != nil && now.Before(c.exp) {
			out[i].Value = c.v
		}
	}
	return out, nil
}

func (s *memoryStore) Total(ctx context.Context, metric string, from, to time.Time, opts ...Option) (int64, error) {
	ps, err := s.Series(ctx, metric, from, to, opts...)
	return sum(ps), err
}

func (s *memoryStore) AddUnique(ctx context.Context, metric, member string, at time.Time) error {
	if err := CheckMetric(metric); err != nil {
		return err
	}
	if err := checkName("member", member); err != nil {
		return err
	}
	d, exp, err := s.cfg.bucket(at)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.now()
	s.sweep(now)
	k := memKey("h", metric, "", d)
	u := s.uniques[k]
	if u == nil || !now.Before(u.exp) {
		u = &memSet{m: make(map[uint64]struct{})}
		s.uniques[k] = u
	}
	u.m[maphash.String(seed, member)] = struct{}{}
	u.exp = exp
	return nil
}

func (s *memoryStore) CountUnique(ctx context.Context, metric string, from, to time.Time) (int64, error) {
	if err := CheckMetric(metric); err != nil {
		return 0, err
	}
	ds, err := days(from, to)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.now()
	union := make(map[uint64]struct{})
	for _, d := range ds {
		if u := s.uniques[memKey("h", metric, "", d)]; u != nil && now.Before(u.exp) {
			for h := range u.m {
				union[h] = struct{}{}
			}
		}
	}
	return int64(len(union)), nil
}

func (s *memoryStore) Capture(ctx context.Context, ev Event) error {
	_, err := s.CaptureMany(ctx, []Event{ev})
	return err
}

func (s *memoryStore) CaptureMany(ctx context.Context, evs []Event) (int, error) {
	datas := make([][]byte, len(evs))
	for i, ev := range evs {
		_, b, err := s.cfg.prepare(ev)
		if err != nil {
			return 0, fmt.Errorf("event %d: %w", i, err)
		}
		datas[i] = b
	}
	n, err := s.buf.add(datas)
	if err != nil {
		s.m.fail("memory", "capture", err)
	}
	return n, err
}

func (s *memoryStore) Buffer() Buffer { return s.buf }

func (s *memoryStore) Stats(ctx context.Context) (Stats, error) { return s.buf.Stats(ctx) }

// memBuffer is the memory backend's bounded buffer, with the Redis stream's
// delivery semantics: read entries stay pending until settled and are read
// again once claimAfter has passed.
type memBuffer struct {
	cfg Config
	m   *metrics

	mu      sync.Mutex
	seq     uint64
	fresh   []*memEntry // never read, oldest first
	pending map[string]*memEntry
	dead    []Entry
	sent    int64
	dropped int64
	wake    chan struct{} // closed and replaced when entries are added
}

type memEntry struct {
	Entry
	readAt time.Time
}

func newMemBuffer(cfg Config, m *metrics) *memBuffer {
	return &memBuffer{cfg: cfg, m: m, pending: make(map[string]*memEntry), wake: make(chan struct{})}
}

func (b *memBuffer) add(datas [][]byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	room := b.cfg.memoryBufferSize() - len(b.fresh) - len(b.pending)
	n := min(max(room, 0), len(datas))
	for _, d := range datas[:n] {
		b.seq++
		b.fresh = append(b.fresh, &memEntry{Entry: Entry{ID: strconv.FormatUint(b.seq, 10), Data: d}})
	}
	if n > 0 {
		close(b.wake)
		b.wake = make(chan struct{})
	}
	if n < len(datas) {
		lost := len(datas) - n
		b.dropped += int64(lost)
		b.m.drop("buffer_full", lost)
		return n, fmt.Errorf("%w: %d events dropped (MemoryBufferSize %d)", ErrBufferFull, lost, b.cfg.memoryBufferSize())
	}
	return n, nil
}

func (b *memBuffer) Read(ctx context.Context, consumer string, max int, claimAfter, wait time.Duration) ([]Entry, error) {
	if max <= 0 {
		return nil, fmt.Errorf("%w: max must be positive", ErrInvalidArgument)
	}
	var deadline <-chan time.Time
	for {
		b.mu.Lock()
		now := b.cfg.now()
		var out []Entry
		for _, e := range b.pending {
			if len(out) == max {
				break
			}
			if now.Sub(e.readAt) >= claimAfter {
				e.readAt = now
				out = append(out, e.Entry)
			}
		}
		for len(out) < max && len(b.fresh) > 0 {
			e := b.fresh[0]
			b.fresh[0] = nil
			b.fresh = b.fresh[1:]
			e.readAt = now
			b.pending[e.ID] = e
			out = append(out, e.Entry)
		}
		wake := b.wake
		b.mu.Unlock()
		if len(out) > 0 || wait <= 0 {
			return out, nil
		}
		if deadline == nil {
			t := time.NewTimer(wait)
			defer t.Stop()
			deadline = t.C
		}
		select {
		case <-wake:
		case <-deadline:
			return nil, nil
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrBackend, context.Cause(ctx))
		}
	}
}

func (b *memBuffer) Ack(ctx context.Context, ids []string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, id := range ids {
		if _, ok := b.pending[id]; ok {
			delete(b.pending, id)
			b.sent++
		}
	}
	return nil
}

func (b *memBuffer) Dead(ctx context.Context, entries []Entry, reason string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range entries {
		if _, ok := b.pending[e.ID]; ok {
			delete(b.pending, e.ID)
			b.dead = append(b.dead, e)
		}
	}
	if over := len(b.dead) - b.cfg.deadCap(); over > 0 {
		b.dead = append([]Entry(nil), b.dead[over:]...)
	}
	return nil
}

func (b *memBuffer) Stats(ctx context.Context) (Stats, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return Stats{
		Buffered: int64(len(b.fresh) + len(b.pending)),
		Sent:     b.sent,
		Retrying: int64(len(b.pending)),
		Dead:     int64(len(b.dead)),
		Dropped:  b.dropped,
	}, nil
}
