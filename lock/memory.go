package lock

import (
	"context"
	"sync"
	"time"
)

// The memory backend keeps locks in process memory, with the same semantics
// as Redis: expiry on its clock (Config.Now), the same fence rule
// (max(previous + 1, now in µs), the previous fence remembered for the lock's
// ttl + 24h), and in-process wake-ups and hand-offs for waiters. It is not
// shared between processes and not durable.
//
// Expired records are reclaimed when the map grows: an insert that takes it
// past its sweep threshold removes every record whose fence memory has
// expired and sets the threshold to twice the live size, so sweeping costs
// O(1) amortised per insert and needs no goroutine.

const memSweepMin = 64

// memLock is the record of one name. token is "" when the lock is free;
// expires is the lock's expiry, fenceExpires that of the fence memory.
type memLock struct {
	token        string
	expires      time.Time
	fence        uint64
	fenceExpires time.Time
}

type memBackend struct {
	clock   func() time.Time
	mu      sync.Mutex
	locks   map[string]*memLock
	sweepAt int
}

// NewMemory returns a Locker that keeps its locks in this process. Only the
// Now, Registerer and Logger fields of cfg apply.
func NewMemory(cfg Config) Locker {
	b := &memBackend{clock: cfg.Now, locks: make(map[string]*memLock), sweepAt: memSweepMin}
	if b.clock == nil {
		b.clock = time.Now
	}
	return newLocker(b, newMetrics(cfg.Registerer), nil, 0) // the memory backend never fails
}

func (b *memBackend) kind() string                         { return "memory" }
func (b *memBackend) now() time.Time                       { return b.clock() }
func (b *memBackend) notifies() bool                       { return false }
func (b *memBackend) watch(context.Context, string) func() { return func() {} }
func (b *memBackend) watchIfReady(string) (func(), bool)   { return nil, false }
func (b *memBackend) notifyReady(string) bool              { return false }

// held reports whether e is held at now.
func (e *memLock) held(now time.Time) bool {
	return e != nil && e.token != "" && now.Before(e.expires)
}

func (b *memBackend) acquire(_ context.Context, name, token string, ttl time.Duration) (uint64, bool, time.Duration, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clock()
	e := b.locks[name]
	if e.held(now) {
		return 0, false, e.expires.Sub(now), nil
	}
	if e == nil {
		b.sweep(now)
		e = &memLock{}
		b.locks[name] = e
	}
	fence := e.take(now, token, ttl)
	return fence, true, 0, nil
}

// take gives e to token for ttl from now and returns its new fence, by
// acquire.lua's rule: max(previous + 1, now in µs), the previous fence
// remembered for ttl + fenceGrace after the lock's last acquire or refresh.
func (e *memLock) take(now time.Time, token string, ttl time.Duration) uint64 {
	prev := e.fence
	if !now.Before(e.fenceExpires) {
		prev = 0 // forgotten, as the Redis fence key expires
	}
	fence := max(prev+1, uint64(max(now.UnixMicro(), 0)))
	*e = memLock{token: token, expires: now.Add(ttl), fence: fence, fenceExpires: now.Add(ttl + fenceGrace)}
	return fence
}

// sweep removes the records whose fence memory has expired when the map has
// reached its threshold. The caller holds b.mu.
func (b *memBackend) sweep(now time.Time) {
	if len(b.locks) < b.sweepAt {
		return
	}
	for name, e := range b.locks {
		if !e.held(now) && !now.Before(e.fenceExpires) {
			delete(b.locks, name)
		}
	}
	b.sweepAt = max(memSweepMin, 2*len(b.locks))
}

func (b *memBackend) refresh(_ context.Context, name, token string, ttl time.Duration) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clock()
	e := b.locks[name]
	if !e.held(now) || e.token != token {
		return ErrLost
	}
	e.expires = now.Add(ttl)
	e.fenceExpires = now.Add(ttl + fenceGrace)
	return nil
}

func (b *memBackend) release(_ context.Context, name, token string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clock()
	e := b.locks[name]
	if !e.held(now) || e.token != token {
		return ErrLost
	}
	e.token, e.expires = "", time.Time{}
	return nil
}

func (b *memBackend) handoff(_ context.Context, name, token, newToken string, ttl time.Duration) (uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clock()
	e := b.locks[name]
	if !e.held(now) || e.token != token {
		return 0, ErrLost
	}
	fence := e.take(now, newToken, ttl)
	return fence, nil
}

func (b *memBackend) inspect(_ context.Context, name string) (Info, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clock()
	e := b.locks[name]
	if !e.held(now) {
		return Info{Name: name}, nil
	}
	return Info{Name: name, Held: true, ExpiresAt: e.expires, Fence: e.fence}, nil
}
