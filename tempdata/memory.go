package tempdata

import (
	"bytes"
	"context"
	"hash/maphash"
	"sync"
	"time"
)

// The memory backend keeps entries in process memory with real TTL expiry on
// an injectable clock. It is not shared between processes and not durable: a
// restart forgets every value, token and idempotency record.
//
// Layout: memShards shards, each a mutex and a map from the backend key (the
// same string the Redis backend uses) to an entry. An entry whose expiry has
// passed is treated as absent and removed when found. Expired entries that
// are never looked up again are reclaimed when a shard grows: an insert that
// takes the shard to its sweep threshold removes every expired entry of that
// shard and sets the threshold to twice the live size (at least
// memSweepMin), so sweeping costs O(1) amortised per insert, a shard holds at
// most about twice the entries live at its last sweep, and no background
// goroutine or Close is needed.

const (
	memShards   = 64 // a power of two
	memSweepMin = 64 // smallest sweep threshold of a shard
)

// Idempotency record states, as in the Redis scripts.
const (
	memPlain     byte = 0 // a value or a token, not a record
	memStarted   byte = 's'
	memCompleted byte = 'c'
)

type memEntry struct {
	value    []byte // the value, token data or (completed record) response
	expireAt time.Time
	state    byte   // memPlain, memStarted or memCompleted
	fp       string // idempotency fingerprint hash; "" = none
}

type memShard struct {
	mu      sync.Mutex
	m       map[string]*memEntry
	sweepAt int
}

type memoryBackend struct {
	now    func() time.Time
	seed   maphash.Seed
	shards [memShards]memShard
}

var _ backend = (*memoryBackend)(nil)

// NewMemory returns an in-process Store with the same semantics as the Redis
// backend. It uses cfg.Now (nil means time.Now), cfg.KeyHashSecret and
// cfg.Prefix (for its map keys, which are the Redis key names), cfg.Keyring
// (values are sealed in memory too, so both backends behave alike) and
// cfg.Registerer; cfg.Timeout does not apply (nothing blocks). It needs no
// Close.
func NewMemory(cfg Config) Store {
	return newStore(newMemoryBackend(cfg.now()), "memory", cfg, nil)
}

func newMemoryBackend(now func() time.Time) *memoryBackend {
	b := &memoryBackend{now: now, seed: maphash.MakeSeed()}
	for i := range b.shards {
		b.shards[i].m = make(map[string]*memEntry)
		b.shards[i].sweepAt = memSweepMin
	}
	return b
}

func (b *memoryBackend) shard(k string) *memShard {
	return &b.shards[maphash.String(b.seed, k)&(memShards-1)]
}

// lookup returns the live entry of k, removing it if it has expired. The
// shard's lock is held.
func (s *memShard) lookup(k string, now time.Time) *memEntry {
	e := s.m[k]
	if e == nil {
		return nil
	}
	if !now.Before(e.expireAt) {
		delete(s.m, k)
		return nil
	}
	return e
}

// insert stores e under k, sweeping the shard first when it has grown to its
// threshold. The shard's lock is held.
func (s *memShard) insert(k string, e *memEntry, now time.Time) {
	if _, replace := s.m[k]; !replace && len(s.m) >= s.sweepAt {
		for key, old := range s.m {
			if !now.Before(old.expireAt) {
				delete(s.m, key)
			}
		}
		s.sweepAt = max(memSweepMin, 2*len(s.m))
	}
	s.m[k] = e
}

func (b *memoryBackend) put(_ context.Context, k string, value []byte, ttl time.Duration, nx bool) (time.Time, bool, error) {
	now := b.now()
	s := b.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if nx && s.lookup(k, now) != nil {
		return time.Time{}, false, nil
	}
	exp := now.Add(ttl)
	s.insert(k, &memEntry{value: bytes.Clone(value), expireAt: exp}, now)
	return exp, true, nil
}

func (b *memoryBackend) get(_ context.Context, k string) ([]byte, time.Time, bool, error) {
	now := b.now()
	s := b.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.lookup(k, now)
	if e == nil || e.state != memPlain {
		return nil, time.Time{}, false, nil
	}
	return cloneNonNil(e.value), e.expireAt, true, nil
}

func (b *memoryBackend) take(_ context.Context, k string) ([]byte, bool, error) {
	now := b.now()
	s := b.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.lookup(k, now)
	if e == nil || e.state != memPlain {
		return nil, false, nil
	}
	delete(s.m, k)
	// The entry is gone from the map: its slice can be handed out as is.
	if e.value == nil {
		return []byte{}, true, nil
	}
	return e.value, true, nil
}

func (b *memoryBackend) del(_ context.Context, k string) error {
	s := b.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, k)
	return nil
}

func (b *memoryBackend) begin(_ context.Context, k, fp string, ttl time.Duration) (beginCode, []byte, time.Time, error) {
	now := b.now()
	s := b.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.lookup(k, now)
	if e == nil {
		exp := now.Add(ttl)
		s.insert(k, &memEntry{state: memStarted, fp: fp, expireAt: exp}, now)
		return beginStarted, nil, exp, nil
	}
	if e.fp != "" && fp != "" && e.fp != fp {
		return beginMismatch, nil, time.Time{}, nil
	}
	if e.state == memCompleted {
		return beginCompleted, cloneNonNil(e.value), e.expireAt, nil
	}
	return beginInProgress, nil, e.expireAt, nil
}

func (b *memoryBackend) complete(_ context.Context, k string, response []byte, ttl time.Duration) (idemOutcome, error) {
	now := b.now()
	s := b.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.lookup(k, now)
	switch {
	case e == nil:
		return idemMissing, nil
	case e.state == memCompleted:
		return idemCompleted, nil
	}
	e.state = memCompleted
	e.value = bytes.Clone(response)
	if ttl > 0 {
		e.expireAt = now.Add(ttl)
	}
	return idemDone, nil
}

func (b *memoryBackend) fail(_ context.Context, k string) (idemOutcome, error) {
	now := b.now()
	s := b.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.lookup(k, now)
	switch {
	case e == nil:
		return idemMissing, nil
	case e.state == memCompleted:
		return idemCompleted, nil
	}
	delete(s.m, k)
	return idemDone, nil
}

// cloneNonNil copies v; an empty value comes back as an empty, non-nil slice
// (as from Redis).
func cloneNonNil(v []byte) []byte {
	if len(v) == 0 {
		return []byte{}
	}
	return bytes.Clone(v)
}

// size is the number of stored entries, expired ones included (tests).
func (b *memoryBackend) size() int {
	n := 0
	for i := range b.shards {
		s := &b.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}
