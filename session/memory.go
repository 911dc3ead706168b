package session

import (
	"bytes"
	"context"
	"maps"
	"slices"
	"sync"
	"time"
)

// The memory backend keeps sessions in process memory with real expiry on an
// injectable clock. It is not shared between processes and not durable: a
// restart forgets every session.
//
// One mutex guards everything, so every operation — including the
// multi-key ones (an index and a session, two sessions for Rotate) — is a
// single atomic step; the Redis backend's documented races (see
// docs/sessions.md) cannot happen here. A session whose expiry has passed is
// treated as absent and removed when found; sessions never looked up again
// are reclaimed when the map grows to its sweep threshold (twice the live
// size at the last sweep), so sweeping costs O(1) amortised per insert and
// no background goroutine or Close is needed.

const memSweepMin = 64 // smallest sweep threshold

type memoryBackend struct {
	now     func() time.Time
	n       names
	metrics *metrics

	mu       sync.Mutex
	sessions map[string]*record         // session key → session
	users    map[string]map[string]bool // index key → session keys
	sweepAt  int
	// onWrite, when set (tests), is called with the key of every session
	// written or deleted, under b.mu.
	onWrite func(sessionKey string)
}

var _ backend = (*memoryBackend)(nil)

// NewMemory returns an in-process Store with the same semantics as the Redis
// backend. It uses cfg.Now (nil means time.Now), cfg.Prefix and
// cfg.KeyHashSecret (for its map keys, which are the Redis key names),
// cfg.Keyring (values are sealed in memory too, so both backends behave
// alike), the TTL, idle and touch settings, and cfg.Registerer;
// cfg.Timeout and cfg.CacheTTL do not apply (nothing blocks, nothing is
// cached). It needs no Close.
func NewMemory(cfg Config) Store {
	m := newMetrics(cfg.Registerer)
	return newStore(cfg, "memory", m, func(n names) backend { return newMemoryBackend(cfg.now(), n, m) }, nil)
}

func newMemoryBackend(now func() time.Time, n names, m *metrics) *memoryBackend {
	return &memoryBackend{
		now:      now,
		n:        n,
		metrics:  m,
		sessions: make(map[string]*record),
		users:    make(map[string]map[string]bool),
		sweepAt:  memSweepMin,
	}
}

func nowMs(now func() time.Time) int64 { return now().UnixMilli() }

// lookup returns the live session under key k, removing it if it has
// expired. b.mu is held.
func (b *memoryBackend) lookup(k string, now int64) *record {
	r := b.sessions[k]
	if r == nil {
		return nil
	}
	if now >= r.expiresAt() {
		b.remove(k)
		return nil
	}
	return r
}

// remove deletes the session under k and its index entry. b.mu is held.
func (b *memoryBackend) remove(k string) {
	r := b.sessions[k]
	if r == nil {
		return
	}
	delete(b.sessions, k)
	uk := b.n.user(r.userID)
	delete(b.users[uk], k)
	if len(b.users[uk]) == 0 {
		delete(b.users, uk)
	}
}

// insert stores r under k (replacing any session there) and indexes it,
// sweeping expired sessions first when the map has grown to its threshold.
// b.mu is held.
func (b *memoryBackend) insert(k string, r *record, now int64) {
	b.remove(k)
	if len(b.sessions) >= b.sweepAt {
		for key, old := range b.sessions {
			if now >= old.expiresAt() {
				b.remove(key)
			}
		}
		b.sweepAt = max(memSweepMin, 2*len(b.sessions))
	}
	b.sessions[k] = r
	uk := b.n.user(r.userID)
	if b.users[uk] == nil {
		b.users[uk] = make(map[string]bool)
	}
	b.users[uk][k] = true
	b.wrote(k)
}

func (b *memoryBackend) wrote(k string) {
	if b.onWrite != nil {
		b.onWrite(k)
	}
}

// clone copies r so that no caller shares the stored slices.
func clone(r *record) record {
	c := *r
	c.deviceInfo = bytes.Clone(r.deviceInfo)
	c.preferences = bytes.Clone(r.preferences)
	return c
}

func (b *memoryBackend) create(_ context.Context, r record, ttl time.Duration) (record, error) {
	now := nowMs(b.now)
	b.mu.Lock()
	defer b.mu.Unlock()
	r.createdAt, r.lastActivity = now, now
	r.absExpiry = now + ttl.Milliseconds()
	r.deviceInfo, r.preferences = bytes.Clone(r.deviceInfo), bytes.Clone(r.preferences)
	b.insert(b.n.session(r.id), &r, now)
	return clone(&r), nil
}

func (b *memoryBackend) get(_ context.Context, id string) (record, bool, error) {
	now := nowMs(b.now)
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.lookup(b.n.session(id), now)
	if r == nil {
		return record{}, false, nil
	}
	return clone(r), true, nil
}

func (b *memoryBackend) peek(_ context.Context, id string) (cached, bool, error) {
	now := nowMs(b.now)
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.lookup(b.n.session(id), now)
	if r == nil {
		return cached{}, false, nil
	}
	return cached{roles: r.roles, lastActivity: r.lastActivity, idle: r.idle}, true, nil
}

func (b *memoryBackend) update(_ context.Context, id string, p patch) (record, bool, error) {
	now := nowMs(b.now)
	b.mu.Lock()
	defer b.mu.Unlock()
	k := b.n.session(id)
	r := b.lookup(k, now)
	if r == nil {
		return record{}, false, nil
	}
	if p.roles != nil {
		r.roles = *p.roles
	}
	if p.deviceInfo != nil {
		r.deviceInfo = bytes.Clone(p.deviceInfo)
	}
	if p.preferences != nil {
		r.preferences = bytes.Clone(p.preferences)
	}
	r.lastActivity = now
	b.wrote(k)
	return clone(r), true, nil
}

func (b *memoryBackend) touch(_ context.Context, id string, every time.Duration) (bool, error) {
	now := nowMs(b.now)
	b.mu.Lock()
	defer b.mu.Unlock()
	k := b.n.session(id)
	r := b.lookup(k, now)
	if r == nil {
		return false, nil
	}
	if now-r.lastActivity < touchEvery(every, r.idle) {
		b.metrics.countTouch(touchSkipped)
		return true, nil
	}
	r.lastActivity = now
	b.wrote(k)
	b.metrics.countTouch(touchWritten)
	return true, nil
}

func (b *memoryBackend) del(_ context.Context, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	k := b.n.session(id)
	b.remove(k)
	b.wrote(k)
	return nil
}

func (b *memoryBackend) rotate(_ context.Context, oldID, newID string, reseal func(*record) error) (record, error) {
	now := nowMs(b.now)
	b.mu.Lock()
	defer b.mu.Unlock()
	ok, nk := b.n.session(oldID), b.n.session(newID)
	old := b.lookup(ok, now)
	if old == nil {
		return record{}, ErrNotFound
	}
	if b.lookup(nk, now) != nil {
		return record{}, ErrExists
	}
	r := clone(old)
	if err := reseal(&r); err != nil {
		return record{}, err
	}
	r.lastActivity = now
	b.remove(ok)
	b.wrote(ok)
	b.insert(nk, &r, now)
	return clone(&r), nil
}

// userSessions returns the session keys of the user's index, with the
// expired ones removed. b.mu is held.
func (b *memoryBackend) userSessions(userID string, now int64) []string {
	ks := slices.Collect(maps.Keys(b.users[b.n.user(userID)]))
	live := ks[:0]
	for _, k := range ks {
		if b.lookup(k, now) != nil {
			live = append(live, k)
		}
	}
	return live
}

func (b *memoryBackend) list(_ context.Context, userID string) ([]record, error) {
	now := nowMs(b.now)
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []record
	for _, k := range b.userSessions(userID, now) {
		out = append(out, clone(b.sessions[k]))
	}
	return out, nil
}

func (b *memoryBackend) revokeUser(_ context.Context, userID string) (int, error) {
	now := nowMs(b.now)
	b.mu.Lock()
	defer b.mu.Unlock()
	ks := b.userSessions(userID, now)
	for _, k := range ks {
		b.remove(k)
		b.wrote(k)
	}
	return len(ks), nil
}

func (b *memoryBackend) setUserRoles(_ context.Context, userID, roles string) (int, error) {
	now := nowMs(b.now)
	b.mu.Lock()
	defer b.mu.Unlock()
	ks := b.userSessions(userID, now)
	for _, k := range ks {
		b.sessions[k].roles = roles
		b.wrote(k)
	}
	return len(ks), nil
}

// size is the number of stored sessions, expired ones included (tests).
func (b *memoryBackend) size() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.sessions)
}
