package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/keys"
	"github.com/elevacare/eleva-redis/internal/seal"
)

// This file is the untyped shared level: the Store, its backend interface,
// the entry format both backends keep, and the invalidation hub that keeps
// local copies coherent and wakes callers waiting for another loader.

// Key capabilities (the segment after the prefix).
const (
	capValue = "cache"
	capTag   = "ctag"
)

// entry is one stored value or not-found, as the shared level keeps it.
type entry struct {
	negative bool
	// tagspec lists the value's tag keys with the versions they had when
	// its load began: "key version,key version" ("" untagged). Tag keys
	// hold no space, comma, '|' or newline (internal/keys).
	tagspec  string
	cachedAt time.Time
	// softAt is the end of the TTL: after it the value is stale; hardAt is
	// when the shared level drops it (softAt + StaleFor).
	softAt, hardAt time.Time
	// delta is how long the load took (XFetch's δ).
	delta time.Duration
	data  []byte
}

// acquireResult is the outcome of backend.acquire.
type acquireResult struct {
	// e is the stored entry (not the copy a refresh saw stale); its tags
	// are for the caller to check.
	e *entry
	// token is set when the caller now holds the lease.
	token string
	// heldFor is the remaining lease time of another holder.
	heldFor time.Duration
}

// fillArgs is what backend.fill writes.
type fillArgs struct {
	token          string // "" writes unconditionally (Set)
	negative       bool
	tagspec        string
	soft, hard     time.Duration
	delta          time.Duration
	data           []byte
	publishChannel string
}

// forceRefresh is acquire's refresh argument that takes the lease whatever
// is stored.
const forceRefresh = "*"

// leaseSuffix makes a lease key from its value key. A value key ends with
// its hash tag's '}', so no value key ends with it.
const leaseSuffix = ":lease"

// rkey is one logical key's pair of backend keys, in one hash slot.
type rkey struct {
	value, lease string
}

// backend is the shared level a Store runs on. Every method is one atomic
// step per key.
type backend interface {
	// read returns the entry under k (nil when none or unreadable) and
	// whether a lease on k is held. In tracking mode the read subscribes
	// this client to changes of both keys.
	read(ctx context.Context, k rkey, tracked bool) (e *entry, leased bool, err error)
	// acquire returns the stored entry if there is one (for a refresh: if
	// it is not the copy seen stale, whose cachedAt in ms is refresh;
	// forceRefresh: never); otherwise takes the lease for leaseTTL, or
	// reports the current holder's remaining time.
	acquire(ctx context.Context, k rkey, token, refresh string, leaseTTL time.Duration) (acquireResult, error)
	// fill writes an entry if token still holds the lease (or token is
	// ""), removing the lease; ok false means the lease was lost.
	fill(ctx context.Context, k rkey, a fillArgs) (cachedAt time.Time, ok bool, err error)
	// release gives up the lease if token holds it.
	release(ctx context.Context, k rkey, token, channel string) error
	// invalidate deletes the entries and leases of ks.
	invalidate(ctx context.Context, ks []rkey, channel string) error
	// versions returns the current versions of the tag keys (0 when absent).
	versions(ctx context.Context, tagKeys []string, tracked bool) ([]uint64, error)
	// bump gives each tag key a new, never reused version.
	bump(ctx context.Context, tagKeys []string, channel string) error
	close()
}

// Store is the shared level of every typed Cache built on it: Redis (see
// NewRedisStore) or in-process memory (NewMemoryStore). Create one per
// process and share it; it is safe for concurrent use.
type Store struct {
	b       backend
	name    string
	keys    keys.Builder
	timeout time.Duration
	backOff time.Duration
	now     func() time.Time
	// localNow is the clock of the local level's freshness checks: a
	// coarse clock (see newStore) unless StoreConfig.Now is set.
	localNow func() time.Time
	// coarse is that coarse clock, nil when StoreConfig.Now is set; also
	// the clock of the local levels' expiry.
	coarse  *otter.CoarseClock
	log     *slog.Logger
	metrics *metrics
	keyring *seal.Keyring // nil: values stored unencrypted
	cfgErr  error

	// tracking: local copies are kept coherent by CLIENT TRACKING pushes;
	// otherwise by messages on channel (Pub/Sub) or directly (memory).
	tracking bool
	channel  string
	localCap time.Duration // the cap on local TTLs (0: none)
	memory   bool

	hub hub

	// downUntil (unix ns) is the end of the back-off after a failure.
	downUntil atomic.Int64
}

func newStore(b backend, name string, cfg StoreConfig) *Store {
	s := &Store{
		b:       b,
		name:    name,
		timeout: cfg.Timeout,
		backOff: cfg.BackOff,
		now:     cfg.Now,
		log:     cfg.Logger,
		metrics: newMetrics(cfg.Registerer),
		keyring: cfg.Keyring,
	}
	if s.timeout <= 0 {
		s.timeout = DefaultTimeout
	}
	if s.backOff <= 0 {
		s.backOff = DefaultBackOff
	}
	if s.now == nil {
		s.now = time.Now
		// A local hit must cost about as much as a map read, and reading
		// the precise time costs more than that on many machines (70ns on
		// the benchmark VM, twice per hit: ours and otter's). Freshness
		// checks of local copies may be late by about coarseResolution;
		// coherence does not depend on the clock (invalidations do).
		s.coarse = otter.NewCoarseClock(coarseResolution)
		s.localNow = func() time.Time { return time.Unix(0, s.coarse.NowNano()) }
	} else {
		s.localNow = s.now
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.hub.init()
	kb, err := keys.New(cfg.Prefix, cfg.KeyHashSecret)
	if err != nil {
		s.cfgErr = fmt.Errorf("%w: %w", ErrBackend, err)
		s.log.Error("cache: unusable store configuration; every call will fall through to the loader or fail",
			"backend", name, "err", s.cfgErr.Error())
	}
	s.keys = kb
	return s
}

// Mode reports how local copies are kept coherent: "tracking" (Redis
// client-side caching pushes), "pubsub" (Redis Pub/Sub messages) or "memory"
// (in-process).
func (s *Store) Mode() string {
	switch {
	case s.memory:
		return "memory"
	case s.tracking:
		return "tracking"
	}
	return "pubsub"
}

// Close stops the Store's background work (the Pub/Sub subscription). It
// does not close the Redis client.
func (s *Store) Close() {
	if s.b != nil {
		s.b.close()
	}
	if s.coarse != nil {
		// Safe while caches still read it: it then reads the precise time.
		s.coarse.Stop()
	}
}

// coarseResolution is how often the coarse clock of the local level reads
// the time.
const coarseResolution = time.Millisecond

// valueKey returns the backend keys of (namespace, key): both in the slot of
// their own hash tag.
func (s *Store) valueKey(ns, key string) rkey {
	tag := s.keys.ID(ns) + "/" + s.keys.ID(key)
	v := s.keys.RawKey(capValue, tag)
	return rkey{value: v, lease: v + leaseSuffix}
}

func (s *Store) tagKey(tag string) string { return s.keys.Key(capTag, tag) }

// ctx bounds one backend call.
func (s *Store) ctx(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, s.timeout)
}

// down reports whether the Store is in its back-off after a failure.
func (s *Store) down() bool {
	u := s.downUntil.Load()
	return u != 0 && time.Now().UnixNano() < u
}

// failed records a backend failure (not a caller's cancellation) and
// returns err wrapped in ErrBackend.
func (s *Store) failed(op string, parent context.Context, err error) error {
	if parent.Err() == nil {
		s.downUntil.Store(time.Now().Add(s.backOff).UnixNano())
		s.metrics.backendError(op)
		s.log.Warn("cache: backend call failed", "backend", s.name, "op", op, "err", err.Error())
	}
	if errors.Is(err, ErrBackend) {
		return err
	}
	return fmt.Errorf("%w: %s: %w", ErrBackend, op, err)
}

// tagKeys resolves the tags of one value to their sorted, deduplicated keys.
func (s *Store) tagKeys(tags []string) ([]string, error) {
	if len(tags) > MaxTags {
		return nil, fmt.Errorf("%w: %d tags on one value (max %d)", ErrInvalidArgument, len(tags), MaxTags)
	}
	return s.tagKeysAny(tags)
}

// tagKeysAny is tagKeys without the per-value limit (InvalidateTags).
func (s *Store) tagKeysAny(tags []string) ([]string, error) {
	if len(tags) == 0 {
		return nil, nil
	}
	out := make([]string, 0, len(tags))
	for _, t := range tags {
		if t == "" || len(t) > MaxKeyLen {
			return nil, fmt.Errorf("%w: tag must be 1..%d bytes", ErrInvalidArgument, MaxKeyLen)
		}
		out = append(out, s.tagKey(t))
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// currentVersions returns the versions of tagKeys, from the local table when
// every one is there.
func (s *Store) currentVersions(ctx context.Context, tagKeys []string) ([]uint64, error) {
	if len(tagKeys) == 0 {
		return nil, nil
	}
	vs := make([]uint64, len(tagKeys))
	all := true
	for i, k := range tagKeys {
		v, ok := s.hub.tagVersion(k)
		if !ok {
			all = false
			break
		}
		vs[i] = v
	}
	if all {
		return vs, nil
	}
	seq := s.hub.seq.Load()
	tomb := s.tracking && s.hub.tagTombstoned(tagKeys)
	cctx, cancel := s.ctx(ctx)
	got, err := s.b.versions(cctx, tagKeys, s.tracking && !tomb)
	cancel()
	if err != nil {
		return nil, s.failed("tag_versions", ctx, err)
	}
	// Keep them locally only when no invalidation arrived meanwhile: one
	// may have been about these keys.
	if !tomb && s.hub.seq.Load() == seq {
		for i, k := range tagKeys {
			s.hub.setTagVersion(k, got[i])
		}
	}
	return got, nil
}

// tagspec is the entry format's list of tag keys and versions.
func tagspec(tagKeys []string, vs []uint64) string {
	if len(tagKeys) == 0 {
		return ""
	}
	var b strings.Builder
	for i, k := range tagKeys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteByte(' ')
		b.WriteString(strconv.FormatUint(vs[i], 10))
	}
	return b.String()
}

// parseTagspec is the inverse of tagspec.
func parseTagspec(spec string) ([]string, []uint64, error) {
	if spec == "" {
		return nil, nil, nil
	}
	parts := strings.Split(spec, ",")
	ks := make([]string, len(parts))
	vs := make([]uint64, len(parts))
	for i, p := range parts {
		k, v, ok := strings.Cut(p, " ")
		n, err := strconv.ParseUint(v, 10, 64)
		if !ok || k == "" || err != nil {
			return nil, nil, errors.New("cache: malformed tag list")
		}
		ks[i], vs[i] = k, n
	}
	return ks, vs, nil
}

// current reports whether e's tags still have the versions it was loaded
// under, and returns them.
func (s *Store) current(ctx context.Context, e *entry) (tagKeys []string, vs []uint64, ok bool, err error) {
	tagKeys, stored, perr := parseTagspec(e.tagspec)
	if perr != nil {
		return nil, nil, false, nil // unreadable: stale
	}
	now, err := s.currentVersions(ctx, tagKeys)
	if err != nil {
		return nil, nil, false, err
	}
	return tagKeys, stored, slices.Equal(now, stored), nil
}

// InvalidateTags gives each tag a new version: every value stored under any
// of them becomes a miss on every instance, in O(1) per tag, whatever the
// number of values. When it returns, this instance no longer serves them;
// other instances stop within their invalidation latency
// (docs/cache.md).
func (s *Store) InvalidateTags(ctx context.Context, tags ...string) error {
	if s.cfgErr != nil {
		return s.cfgErr
	}
	if len(tags) == 0 {
		return nil
	}
	tks, err := s.tagKeysAny(tags)
	if err != nil {
		return err
	}
	// Forget the local versions first, so no read that starts now uses
	// them, then bump. In tracking mode the tombstones keep reads off the
	// client-side cache until the bump's own push has arrived (it follows
	// the reply, so the cache may briefly still hold the old version).
	if s.tracking {
		s.hub.tombTags(tks, time.Now().Add(tombstoneFor))
	}
	s.hub.dropTags(tks)
	cctx, cancel := s.ctx(context.WithoutCancel(ctx))
	defer cancel()
	if err := s.b.bump(cctx, tks, s.pubChannel()); err != nil {
		s.metrics.op("invalidate_tags", "backend_error")
		return s.failed("invalidate_tags", ctx, err)
	}
	s.hub.dropTags(tks)
	s.metrics.op("invalidate_tags", "ok")
	return nil
}

// pubChannel is the channel writes publish on ("" unless Pub/Sub mode).
func (s *Store) pubChannel() string {
	if s.tracking || s.memory {
		return ""
	}
	return s.channel
}

// Tracker carries CLIENT TRACKING invalidations from a rueidis client to the
// Stores built on it. Create it before the client and pass its method as the
// client's hook:
//
//	tr := cache.NewTracker()
//	client, _ := rueidis.NewClient(rueidis.ClientOption{
//		InitAddress:     []string{"localhost:6379"},
//		OnInvalidations: tr.OnInvalidations,
//	})
//	store := cache.NewRedisStore(client, cache.StoreConfig{Tracker: tr})
type Tracker struct {
	mu   sync.RWMutex
	hubs []*hub
}

// NewTracker returns a Tracker with no Store attached yet.
func NewTracker() *Tracker { return &Tracker{} }

// OnInvalidations is the rueidis.ClientOption.OnInvalidations hook. rueidis
// calls it with the invalidated keys, and with nil when the connection
// closed or the server flushed: then every local copy is dropped.
func (t *Tracker) OnInvalidations(msgs []rueidis.RedisMessage) {
	t.mu.RLock()
	hubs := t.hubs
	t.mu.RUnlock()
	if msgs == nil {
		for _, h := range hubs {
			h.invalidateAll()
		}
		return
	}
	for _, m := range msgs {
		k, err := m.ToString()
		if err != nil {
			continue
		}
		for _, h := range hubs {
			h.invalidate(k)
		}
	}
}

func (t *Tracker) attach(h *hub) {
	t.mu.Lock()
	t.hubs = append(slices.Clone(t.hubs), h)
	t.mu.Unlock()
}

func (t *Tracker) detach(h *hub) {
	t.mu.Lock()
	t.hubs = slices.DeleteFunc(slices.Clone(t.hubs), func(x *hub) bool { return x == h })
	t.mu.Unlock()
}

// hub receives invalidations of backend keys and passes them on: to the
// local levels of the typed caches, to the local tag versions, and to callers
// waiting for a key to change.
type hub struct {
	// seq counts invalidations; a local fill checks it did not move while
	// its value was read, since an invalidation in between may be about it.
	seq atomic.Uint64

	mu      sync.Mutex
	locals  []func(key string)
	flushes []func()
	waiters map[string][]chan struct{}

	tags sync.Map // tag key -> uint64
	// tagTombs: tag keys this instance bumped and whose push has not
	// arrived yet (see InvalidateTags); guarded by mu.
	tagTombs tombs
}

func (h *hub) init() {
	h.waiters = make(map[string][]chan struct{})
	h.tagTombs = newTombs()
}

func (h *hub) tombTags(ks []string, until time.Time) {
	h.mu.Lock()
	now := time.Now()
	for _, k := range ks {
		h.tagTombs.add(k, until, now)
	}
	h.mu.Unlock()
}

// tagTombstoned reports whether any of ks has a live tombstone.
func (h *hub) tagTombstoned(ks []string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	for _, k := range ks {
		if h.tagTombs.live(k, now) {
			return true
		}
	}
	return false
}

// register adds a local level: drop(key) removes one backend key's copy,
// flush removes all.
func (h *hub) register(drop func(string), flush func()) {
	h.mu.Lock()
	h.locals = append(h.locals, drop)
	h.flushes = append(h.flushes, flush)
	h.mu.Unlock()
}

func (h *hub) invalidate(key string) {
	h.seq.Add(1)
	h.tags.Delete(key)
	// A lease key's change wakes the waiters of its value key: a holder
	// that gave up its lease (release) changes only the lease key.
	wk := strings.TrimSuffix(key, leaseSuffix)
	h.mu.Lock()
	locals := h.locals
	ws := h.waiters[wk]
	delete(h.waiters, wk)
	h.tagTombs.remove(key)
	h.mu.Unlock()
	for _, drop := range locals {
		drop(key)
	}
	for _, w := range ws {
		close(w)
	}
	h.seq.Add(1)
}

func (h *hub) invalidateAll() {
	h.seq.Add(1)
	h.tags.Clear()
	h.mu.Lock()
	flushes := h.flushes
	ws := h.waiters
	h.waiters = make(map[string][]chan struct{})
	h.tagTombs.clear()
	h.mu.Unlock()
	for _, f := range flushes {
		f()
	}
	for _, l := range ws {
		for _, w := range l {
			close(w)
		}
	}
	h.seq.Add(1)
}

// wait returns a channel closed at the next invalidation of key (or of
// everything). Register before reading, so a change between the read and
// the wait is not missed.
func (h *hub) wait(key string) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	h.mu.Lock()
	h.waiters[key] = append(h.waiters[key], ch)
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		l := h.waiters[key]
		for i, w := range l {
			if w == ch {
				l = slices.Delete(l, i, i+1)
				break
			}
		}
		if len(l) == 0 {
			delete(h.waiters, key)
		} else {
			h.waiters[key] = l
		}
	}
}

func (h *hub) tagVersion(k string) (uint64, bool) {
	v, ok := h.tags.Load(k)
	if !ok {
		return 0, false
	}
	return v.(uint64), true
}

func (h *hub) setTagVersion(k string, v uint64) { h.tags.Store(k, v) }

func (h *hub) dropTags(ks []string) {
	h.seq.Add(1)
	for _, k := range ks {
		h.tags.Delete(k)
	}
	h.seq.Add(1)
}
