package cache

import (
	"context"
	"strconv"
	"sync"
	"time"
)

// memoryBackend is the in-process shared level: the same entries, leases and
// tag versions as Redis, in maps under one mutex, on the Store's clock. Its
// invalidations reach the typed caches directly, before the call returns.
type memoryBackend struct {
	store *Store

	mu      sync.Mutex
	entries map[string]*entry
	leases  map[string]memLease
	tags    map[string]uint64
	writes  int
}

type memLease struct {
	token string
	until time.Time
}

// NewMemoryStore returns a Store whose shared level is this process's memory:
// the embedded default, for one process. Every typed Cache on it shares the
// entries, leases and tags, exactly as instances share Redis.
func NewMemoryStore(cfg StoreConfig) *Store {
	b := &memoryBackend{
		entries: make(map[string]*entry),
		leases:  make(map[string]memLease),
		tags:    make(map[string]uint64),
	}
	s := newStore(b, "memory", cfg)
	s.memory = true
	b.store = s
	return s
}

func (b *memoryBackend) close() {}

// live returns k's entry unless it has expired (and then forgets it); the
// caller holds mu.
func (b *memoryBackend) live(k string, now time.Time) *entry {
	e, ok := b.entries[k]
	if !ok {
		return nil
	}
	if !now.Before(e.hardAt) {
		delete(b.entries, k)
		return nil
	}
	return e
}

func (b *memoryBackend) lease(k string, now time.Time) (memLease, bool) {
	l, ok := b.leases[k]
	if !ok {
		return memLease{}, false
	}
	if !now.Before(l.until) {
		delete(b.leases, k)
		return memLease{}, false
	}
	return l, true
}

func (b *memoryBackend) read(_ context.Context, k rkey, _ bool) (*entry, bool, error) {
	now := b.store.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	_, leased := b.lease(k.value, now)
	return b.live(k.value, now), leased, nil
}

func (b *memoryBackend) acquire(_ context.Context, k rkey, token, refresh string, leaseTTL time.Duration) (acquireResult, error) {
	now := b.store.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if e := b.live(k.value, now); e != nil && refresh != forceRefresh &&
		(refresh == "" || strconv.FormatInt(e.cachedAt.UnixMilli(), 10) != refresh) {
		return acquireResult{e: e}, nil
	}
	if l, ok := b.lease(k.value, now); ok {
		return acquireResult{heldFor: l.until.Sub(now)}, nil
	}
	b.leases[k.value] = memLease{token: token, until: now.Add(leaseTTL)}
	return acquireResult{token: token}, nil
}

func (b *memoryBackend) fill(_ context.Context, k rkey, a fillArgs) (time.Time, bool, error) {
	// Whole milliseconds, as Redis keeps them.
	now := b.store.now().Truncate(time.Millisecond)
	b.mu.Lock()
	if a.token != "" {
		if l, ok := b.lease(k.value, now); !ok || l.token != a.token {
			b.mu.Unlock()
			return time.Time{}, false, nil
		}
	}
	delete(b.leases, k.value)
	b.entries[k.value] = &entry{
		negative: a.negative,
		tagspec:  a.tagspec,
		cachedAt: now,
		softAt:   now.Add(msTrunc(a.soft)),
		hardAt:   now.Add(msTrunc(a.hard)),
		delta:    a.delta.Truncate(time.Millisecond),
		data:     append([]byte(nil), a.data...),
	}
	b.writes++
	if b.writes%1024 == 0 {
		b.sweep(now)
	}
	b.mu.Unlock()
	b.store.hub.invalidate(k.value)
	return now, true, nil
}

func msTrunc(d time.Duration) time.Duration {
	d = d.Truncate(time.Millisecond)
	if d < time.Millisecond {
		d = time.Millisecond
	}
	return d
}

// sweep drops expired entries and leases, so keys never read again do not
// accumulate; the caller holds mu.
func (b *memoryBackend) sweep(now time.Time) {
	for k, e := range b.entries {
		if !now.Before(e.hardAt) {
			delete(b.entries, k)
		}
	}
	for k, l := range b.leases {
		if !now.Before(l.until) {
			delete(b.leases, k)
		}
	}
}

func (b *memoryBackend) release(_ context.Context, k rkey, token, _ string) error {
	b.mu.Lock()
	l, ok := b.leases[k.value]
	if !ok || l.token != token {
		b.mu.Unlock()
		return nil
	}
	delete(b.leases, k.value)
	b.mu.Unlock()
	b.store.hub.invalidate(k.value)
	return nil
}

func (b *memoryBackend) invalidate(_ context.Context, ks []rkey, _ string) error {
	b.mu.Lock()
	for _, k := range ks {
		delete(b.entries, k.value)
		delete(b.leases, k.value)
	}
	b.mu.Unlock()
	for _, k := range ks {
		b.store.hub.invalidate(k.value)
	}
	return nil
}

func (b *memoryBackend) versions(_ context.Context, tagKeys []string, _ bool) ([]uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]uint64, len(tagKeys))
	for i, k := range tagKeys {
		out[i] = b.tags[k]
	}
	return out, nil
}

func (b *memoryBackend) bump(_ context.Context, tagKeys []string, _ string) error {
	now := b.store.now()
	b.mu.Lock()
	for _, k := range tagKeys {
		// The Redis rule: never reuse a version (bump.lua). Tags are
		// never forgotten here, so +1 from a clock seed is enough.
		v := b.tags[k] + 1
		if v == 1 {
			v = uint64(now.UnixMicro())
		}
		b.tags[k] = v
	}
	b.mu.Unlock()
	for _, k := range tagKeys {
		b.store.hub.invalidate(k)
	}
	return nil
}
