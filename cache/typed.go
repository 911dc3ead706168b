package cache

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/maypok86/otter/v2"
)

// Cache is a typed two-level cache: decoded values in this process (otter)
// in front of a shared Store. It is safe for concurrent use; create one per
// namespace and type, and share it.
type Cache[T any] struct {
	s     *Store
	ns    string
	cfg   Config[T]
	codec Codec[T]

	// l1 holds decoded values by backend value key; memo maps a logical key
	// to its backend keys (pure, so it needs no invalidation).
	l1   *otter.Cache[string, *local[T]]
	memo *memo

	mu    sync.Mutex
	calls map[string]*call[T]
	// tombs: backend value keys this instance invalidated and whose
	// tracking push has not arrived yet (until then the client-side cache
	// of rueidis may still hold the old bytes; see docs/cache.md).
	tombs      tombs
	refreshing sync.Map // backend value key -> struct{}
}

// local is one value in the local level.
type local[T any] struct {
	v        T
	negative bool
	meta     Meta
	softAt   time.Time
	delta    time.Duration
	beta     float64
	until    time.Time
	tagKeys  []string
	versions []uint64
}

// call is one load in flight in this process; every caller of the key waits
// on it, each on its own ctx.
type call[T any] struct {
	done chan struct{}
	v    T
	m    Meta
	err  error
}

// errCachedNotFound is returned for a cached not-found; it wraps ErrNotFound.
var errCachedNotFound = fmt.Errorf("%w (cached)", ErrNotFound)

// New returns a typed cache on s.
func New[T any](s *Store, cfg Config[T]) *Cache[T] {
	c := &Cache[T]{
		s:     s,
		ns:    cfg.Namespace,
		cfg:   cfg,
		codec: cfg.Codec,
		calls: make(map[string]*call[T]),
		tombs: newTombs(),
	}
	if c.ns == "" {
		c.ns = "default"
	}
	if c.codec == nil {
		c.codec = JSON[T]{}
	}
	size := cfg.LocalSize
	if size == 0 {
		size = DefaultLocalSize
	}
	if size > 0 {
		var clock otter.Clock // nil: otter's default, the precise time
		if s.coarse != nil {
			clock = s.coarse
		}
		c.l1 = otter.Must(&otter.Options[string, *local[T]]{
			MaximumSize: size,
			Clock:       clock,
			ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[string, *local[T]]) time.Duration {
				return time.Until(e.Value.until)
			}),
		})
		c.memo = newMemo(size)
		s.hub.register(c.dropLocal, c.flushLocal)
	}
	return c
}

// JSON is the default codec: encoding/json.
type JSON[T any] struct{}

// Encode implements Codec.
func (JSON[T]) Encode(v T) ([]byte, error) { return json.Marshal(v) }

// Decode implements Codec.
func (JSON[T]) Decode(b []byte) (T, error) {
	var v T
	err := json.Unmarshal(b, &v)
	return v, err
}

// Raw is a codec for []byte values (no encoding).
type Raw struct{}

// Encode implements Codec.
func (Raw) Encode(v []byte) ([]byte, error) { return v, nil }

// Decode implements Codec.
func (Raw) Decode(b []byte) ([]byte, error) { return b, nil }

func (c *Cache[T]) dropLocal(key string) {
	c.l1.Invalidate(key)
	c.mu.Lock()
	c.tombs.remove(key)
	c.mu.Unlock()
}

func (c *Cache[T]) flushLocal() {
	c.l1.InvalidateAll()
	c.mu.Lock()
	c.tombs.clear()
	c.mu.Unlock()
}

// rk returns key's backend keys.
func (c *Cache[T]) rk(key string) rkey {
	if c.memo != nil {
		if k, ok := c.memo.get(key); ok {
			return k
		}
	}
	k := c.s.valueKey(c.ns, key)
	if c.memo != nil {
		c.memo.set(key, k)
	}
	return k
}

func checkKey(key string) error {
	if key == "" || len(key) > MaxKeyLen {
		return fmt.Errorf("%w: key must be 1..%d bytes", ErrInvalidArgument, MaxKeyLen)
	}
	return nil
}

// resolve applies opts over the Config defaults and checks them.
func (c *Cache[T]) resolve(opts []Option) (options, error) {
	o := options{
		ttl: c.cfg.TTL, negTTL: c.cfg.NegativeTTL, localTTL: c.cfg.LocalTTL,
		loadTimeout: c.cfg.LoadTimeout, jitter: c.cfg.Jitter,
	}
	if o.ttl == 0 {
		o.ttl = DefaultTTL
	}
	if o.negTTL == 0 {
		o.negTTL = DefaultNegativeTTL
	}
	if o.localTTL == 0 {
		o.localTTL = DefaultLocalTTL
	}
	if o.loadTimeout <= 0 {
		o.loadTimeout = DefaultLoadTimeout
	}
	if o.jitter == 0 {
		o.jitter = DefaultJitter
	}
	for _, f := range opts {
		f(&o)
	}
	switch {
	case o.ttl <= 0 || o.ttl > MaxTTL || o.stale < 0 || o.ttl+o.stale > MaxTTL:
		return o, fmt.Errorf("%w: TTL plus StaleFor must be in (0, %v]", ErrInvalidArgument, MaxTTL)
	case o.negTTL > MaxTTL:
		return o, fmt.Errorf("%w: NegativeTTL above %v", ErrInvalidArgument, MaxTTL)
	case o.beta < 0 || math.IsNaN(o.beta) || math.IsInf(o.beta, 0):
		return o, fmt.Errorf("%w: EarlyRefresh beta must be >= 0", ErrInvalidArgument)
	case o.jitter >= 1 || math.IsNaN(o.jitter):
		return o, fmt.Errorf("%w: Jitter must be below 1", ErrInvalidArgument)
	}
	if c.s.localCap > 0 && o.localTTL > c.s.localCap {
		o.localTTL = c.s.localCap
	}
	return o, nil
}

// GetOrLoad returns the value of key: from the local level, else the shared
// level, else by calling load — once for the whole fleet: the first caller
// anywhere takes a lease in the shared level and loads; every other caller,
// on any instance, waits for that value (woken when it lands, not polling),
// each on its own ctx. The load runs detached from the caller's cancellation,
// bounded by LoadTimeout, so one impatient caller cannot fail the others.
//
// A load that began before an Invalidate (or Set, or InvalidateTags of one of
// its tags) of key never writes its value back, and no caller that started
// after that invalidation gets it: the load is retried.
//
// A loader error wrapping ErrNotFound is cached for NegativeTTL and returned
// as an error wrapping ErrNotFound; any other loader error is returned and
// never cached. When the shared level fails, GetOrLoad calls load directly
// and reports Meta.Degraded.
func (c *Cache[T]) GetOrLoad(ctx context.Context, key string, load func(context.Context) (T, error), opts ...Option) (T, Meta, error) {
	if c.l1 != nil && len(opts) == 0 {
		if v, m, err, ok := c.fromLocal(key, load, nil); ok {
			return v, m, err
		}
	}
	return c.getOrLoad(ctx, key, load, opts)
}

// Get returns the value of key without loading: ErrNotFound on a miss (or a
// cached not-found). A stored value records its own tags, so no Tags
// option is needed to read it.
func (c *Cache[T]) Get(ctx context.Context, key string, opts ...Option) (T, Meta, error) {
	if c.l1 != nil && len(opts) == 0 {
		if v, m, err, ok := c.fromLocal(key, nil, nil); ok {
			return v, m, err
		}
	}
	var zero T
	if err := checkKey(key); err != nil {
		return zero, Meta{}, err
	}
	o, err := c.resolve(opts)
	if err != nil {
		return zero, Meta{}, err
	}
	if c.s.cfgErr != nil {
		return zero, Meta{}, c.s.cfgErr
	}
	v, m, found, err := c.readShared(ctx, c.rk(key), nil, o)
	if err != nil {
		return zero, Meta{}, err
	}
	if !found {
		c.s.metrics.op("get", "miss")
		return zero, Meta{}, ErrNotFound
	}
	return v, m, nil
}

// fromLocal serves key from the local level; ok false means a miss there.
func (c *Cache[T]) fromLocal(key string, load func(context.Context) (T, error), opts []Option) (T, Meta, error, bool) {
	var zero T
	rk, ok := c.memo.get(key)
	if !ok {
		return zero, Meta{}, nil, false
	}
	l, ok := c.l1.GetIfPresent(rk.value)
	if !ok {
		return zero, Meta{}, nil, false
	}
	now := c.s.localNow()
	if !now.Before(l.meta.ExpiresAt) || !c.tagsCurrent(l) {
		return zero, Meta{}, nil, false
	}
	m := l.meta
	m.Source = SourceLocal
	if !now.Before(l.softAt) {
		if load == nil {
			return zero, Meta{}, nil, false // Get does not serve stale values
		}
		m.Stale = true
		c.refreshWith(rk, l.meta.CachedAt, load, opts)
	} else if l.beta > 0 && load != nil && xfetch(now, l.softAt, l.delta, l.beta) {
		c.refreshWith(rk, l.meta.CachedAt, load, opts)
	}
	c.s.metrics.hit(SourceLocal)
	if l.negative {
		return zero, m, errCachedNotFound, true
	}
	return l.v, m, nil, true
}

func (c *Cache[T]) refreshWith(rk rkey, seen time.Time, load func(context.Context) (T, error), opts []Option) {
	if o, err := c.resolve(opts); err == nil {
		c.refresh(rk, seen, load, o)
	}
}

// xfetch reports whether a read at now should refresh early: now −
// δ·β·ln(U) ≥ expiry, U uniform in (0, 1].
func xfetch(now, softAt time.Time, delta time.Duration, beta float64) bool {
	u := 1 - mrand.Float64() // (0, 1]
	gap := time.Duration(-float64(delta) * beta * math.Log(u))
	return !now.Add(gap).Before(softAt)
}

func (c *Cache[T]) tagsCurrent(l *local[T]) bool {
	for i, k := range l.tagKeys {
		v, ok := c.s.hub.tagVersion(k)
		if !ok || v != l.versions[i] {
			return false
		}
	}
	return true
}

func (c *Cache[T]) tombstoned(rk rkey) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tombs.live(rk.value, time.Now())
}

func (c *Cache[T]) getOrLoad(ctx context.Context, key string, load func(context.Context) (T, error), opts []Option) (T, Meta, error) {
	var zero T
	if err := checkKey(key); err != nil {
		return zero, Meta{}, err
	}
	if load == nil {
		return zero, Meta{}, fmt.Errorf("%w: nil loader", ErrInvalidArgument)
	}
	o, err := c.resolve(opts)
	if err != nil {
		return zero, Meta{}, err
	}
	if _, err := c.s.tagKeys(o.tags); err != nil {
		return zero, Meta{}, err
	}
	if c.l1 != nil && len(opts) > 0 {
		if v, m, err, ok := c.fromLocal(key, load, opts); ok {
			return v, m, err
		}
	}
	rk := c.rk(key)
	if c.s.cfgErr != nil || c.s.down() {
		return c.direct(ctx, key, rk, load, o, true)
	}
	// Concurrent misses of one key in this process make one read (and at
	// most one load): the call in flight does both.
	return c.flight(ctx, key, rk, load, o)
}

// readShared reads key from the shared level. found false (and no error) is
// a miss; a cached not-found is an error wrapping ErrNotFound.
func (c *Cache[T]) readShared(ctx context.Context, rk rkey, load func(context.Context) (T, error), o options) (T, Meta, bool, error) {
	var zero T
	tks, err := c.s.tagKeys(o.tags)
	if err != nil {
		return zero, Meta{}, false, err
	}
	_ = tks // checked: a read does not need the tags, the entry lists its own
	seq := c.s.hub.seq.Load()
	tomb := c.s.tracking && c.tombstoned(rk)
	cctx, cancel := c.s.ctx(ctx)
	e, _, err := c.s.b.read(cctx, rk, c.s.tracking && !tomb)
	cancel()
	if err != nil {
		return zero, Meta{}, false, c.s.failed("read", ctx, err)
	}
	now := c.s.now()
	if e == nil || !now.Before(e.hardAt) {
		return zero, Meta{}, false, nil
	}
	eTags, vers, ok, err := c.s.current(ctx, e)
	if err != nil {
		return zero, Meta{}, false, err
	}
	if !ok {
		return zero, Meta{}, false, nil // a tag moved since its load
	}
	stale := !now.Before(e.softAt)
	if stale && load == nil {
		return zero, Meta{}, false, nil
	}
	var v T
	if !e.negative {
		v, err = c.decode(rk, e.data)
		if err != nil {
			c.s.metrics.op("decode", "error")
			return zero, Meta{}, false, nil // a miss: the load overwrites it
		}
	}
	m := Meta{CachedAt: e.cachedAt, ExpiresAt: e.hardAt, Source: SourceRedis, Stale: stale}
	if !tomb && (c.s.tracking || c.s.memory || c.s.subscribed()) {
		c.storeLocal(rk, e, v, eTags, vers, o, seq)
	}
	if load != nil {
		if stale || (o.beta > 0 && xfetch(now, e.softAt, e.delta, o.beta)) {
			c.refresh(rk, e.cachedAt, load, o)
		}
	}
	c.s.metrics.hit(SourceRedis)
	if e.negative {
		return zero, m, true, errCachedNotFound
	}
	return v, m, true, nil
}

// storeLocal keeps a value read from the shared level, unless an
// invalidation arrived since seq was taken (it may have been about this
// value, and the local copy would then outlive it).
func (c *Cache[T]) storeLocal(rk rkey, e *entry, v T, tks []string, vers []uint64, o options, seq uint64) {
	if c.l1 == nil || o.localTTL < 0 {
		return
	}
	until := c.s.now().Add(o.localTTL)
	if e.hardAt.Before(until) {
		until = e.hardAt
	}
	c.l1.Set(rk.value, &local[T]{
		v: v, negative: e.negative,
		meta:   Meta{CachedAt: e.cachedAt, ExpiresAt: e.hardAt},
		softAt: e.softAt, delta: e.delta, beta: o.beta, until: until,
		tagKeys: tks, versions: vers,
	})
	if c.s.hub.seq.Load() != seq {
		c.l1.Invalidate(rk.value)
	}
}

// direct calls load without the shared level (it failed, or is backing
// off): one load per key in this process, not cached.
func (c *Cache[T]) direct(ctx context.Context, key string, rk rkey, load func(context.Context) (T, error), o options, degraded bool) (T, Meta, error) {
	c.s.metrics.op("get_or_load", "degraded")
	cl, leader := c.join(rk.value)
	if leader {
		go func() {
			defer c.finish(rk.value, cl)
			lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.loadTimeout)
			defer cancel()
			v, err := load(lctx)
			c.s.metrics.load(err)
			cl.v, cl.err = v, err
			cl.m = Meta{CachedAt: c.s.now(), Source: SourceLoader, Degraded: degraded}
		}()
	}
	return c.await(ctx, cl)
}

// join returns the call in flight for k, or starts one (leader true).
func (c *Cache[T]) join(k string) (*call[T], bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cl, ok := c.calls[k]; ok {
		return cl, false
	}
	cl := &call[T]{done: make(chan struct{})}
	c.calls[k] = cl
	return cl, true
}

// detach stops new callers from joining cl (they start a new call).
func (c *Cache[T]) detach(k string, cl *call[T]) {
	c.mu.Lock()
	if c.calls[k] == cl {
		delete(c.calls, k)
	}
	c.mu.Unlock()
}

func (c *Cache[T]) finish(k string, cl *call[T]) {
	c.detach(k, cl)
	close(cl.done)
}

func (c *Cache[T]) await(ctx context.Context, cl *call[T]) (T, Meta, error) {
	select {
	case <-cl.done:
		return cl.v, cl.m, cl.err
	case <-ctx.Done():
		var zero T
		return zero, Meta{}, context.Cause(ctx)
	}
}

// flight loads key once per process and, through the lease, once per fleet.
func (c *Cache[T]) flight(ctx context.Context, key string, rk rkey, load func(context.Context) (T, error), o options) (T, Meta, error) {
	cl, leader := c.join(rk.value)
	if leader {
		go func() {
			defer c.finish(rk.value, cl)
			cl.v, cl.m, cl.err = c.lead(context.WithoutCancel(ctx), rk, cl, load, o)
		}()
	}
	return c.await(ctx, cl)
}

// maxLeaseLost bounds the reloads after lost leases (the key keeps changing
// while it loads); past it, a last load is returned uncached.
const maxLeaseLost = 3

// lead runs one call: read, else lease and load, else wait for the holder.
func (c *Cache[T]) lead(ctx context.Context, rk rkey, cl *call[T], load func(context.Context) (T, error), o options) (T, Meta, error) {
	v, m, found, err := c.readShared(ctx, rk, load, o)
	if found || errors.Is(err, ErrNotFound) {
		return v, m, err
	}
	if err != nil {
		return c.loadUncached(ctx, load, o, true)
	}
	tks, _ := c.s.tagKeys(o.tags) // checked by the caller
	deadline := time.Now().Add(2 * o.loadTimeout)
	lost, refresh := 0, ""
	for {
		// The versions of this load's tags, read before the load, go
		// with its value: a bump during the load makes the value stale.
		vers, err := c.s.currentVersions(ctx, tks)
		if err != nil {
			return c.loadUncached(ctx, load, o, true)
		}
		spec := tagspec(tks, vers)
		woken, stop := c.s.hub.wait(rk.value)
		token := newToken()
		cctx, cancel := c.s.ctx(ctx)
		r, err := c.s.b.acquire(cctx, rk, token, refresh, o.loadTimeout)
		cancel()
		if err != nil {
			stop()
			_ = c.s.failed("acquire", ctx, err)
			return c.loadUncached(ctx, load, o, true)
		}
		switch {
		case r.e != nil:
			stop()
			_, _, current, err := c.s.current(ctx, r.e)
			if err != nil {
				return c.loadUncached(ctx, load, o, true)
			}
			if !current {
				// Stored before one of its tags moved: replace exactly
				// this copy (unless someone already did).
				refresh = strconv.FormatInt(r.e.cachedAt.UnixMilli(), 10)
				if lost++; lost > maxLeaseLost {
					return c.loadUncached(ctx, load, o, false)
				}
				continue
			}
			if v, m, err, ok := c.decodeEntry(rk, r.e); ok {
				return v, m, err
			}
			refresh = forceRefresh // undecodable: load and overwrite it
			if lost++; lost > maxLeaseLost {
				return c.loadUncached(ctx, load, o, false)
			}
			continue
		case r.token != "":
			stop()
			refresh = ""
			v, m, err, again := c.loadAndFill(ctx, rk, cl, token, spec, load, o)
			if !again {
				return v, m, err
			}
			lost++
			if lost >= maxLeaseLost {
				return c.loadUncached(ctx, load, o, false)
			}
		default:
			// Another caller holds the lease. Read both keys tracked, so
			// their change wakes us, then wait for it (or for the lease's
			// end, in case its holder died and no change comes).
			if c.s.tracking {
				// While this instance's own invalidation of rk awaits its
				// push (a tombstone), the client-side cache may still hold
				// the old entry: serve none from this read then. The read
				// stays tracked (its registration is what wakes us) and its
				// lease state still decides whether to try again, which the
				// acquire script answers from Redis itself.
				tomb := c.tombstoned(rk)
				cctx, cancel := c.s.ctx(ctx)
				e, leased, err := c.s.b.read(cctx, rk, true)
				cancel()
				if tomb {
					e = nil
				}
				if err == nil && e != nil && c.s.now().Before(e.hardAt) {
					if _, _, current, cerr := c.s.current(ctx, e); cerr == nil && current {
						if v, m, err, ok := c.decodeEntry(rk, e); ok {
							stop()
							return v, m, err
						}
					}
				}
				if err == nil && !leased {
					stop()
					continue
				}
			}
			wait := r.heldFor + 5*time.Millisecond
			if rest := time.Until(deadline); rest < wait {
				wait = rest
			}
			if wait <= 0 {
				stop()
				return c.loadUncached(ctx, load, o, false)
			}
			t := time.NewTimer(wait)
			select {
			case <-woken:
			case <-t.C:
			}
			t.Stop()
			stop()
		}
	}
}

// decodeEntry turns rk's shared entry into a result; ok false if
// undecodable.
func (c *Cache[T]) decodeEntry(rk rkey, e *entry) (T, Meta, error, bool) {
	var zero T
	m := Meta{CachedAt: e.cachedAt, ExpiresAt: e.hardAt, Source: SourceRedis}
	if e.negative {
		return zero, m, errCachedNotFound, true
	}
	v, err := c.decode(rk, e.data)
	if err != nil {
		c.s.metrics.op("decode", "error")
		return zero, Meta{}, nil, false
	}
	return v, m, nil, true
}

// loadAndFill runs the loader under the lease and writes the value back if
// the lease still holds. again: the lease was lost, load afresh.
func (c *Cache[T]) loadAndFill(ctx context.Context, rk rkey, cl *call[T], token, spec string, load func(context.Context) (T, error), o options) (T, Meta, error, bool) {
	var zero T
	start := time.Now()
	lctx, cancel := context.WithTimeout(ctx, o.loadTimeout)
	v, err := load(lctx)
	cancel()
	delta := time.Since(start)
	c.s.metrics.load(err)
	notFound := errors.Is(err, ErrNotFound)
	if err != nil && (!notFound || o.negTTL < 0) {
		c.releaseLease(ctx, rk, token)
		return zero, Meta{}, err, false
	}
	fa := fillArgs{token: token, tagspec: spec, delta: delta, publishChannel: c.s.pubChannel()}
	if notFound {
		fa.negative = true
		fa.soft, fa.hard = o.negTTL, o.negTTL
	} else {
		data, size, err := c.encode(rk, v)
		if err != nil {
			c.releaseLease(ctx, rk, token)
			return zero, Meta{}, fmt.Errorf("%w: encode: %w", ErrCodec, err), false
		}
		if size > MaxValueSize {
			c.releaseLease(ctx, rk, token)
			return v, Meta{CachedAt: c.s.now(), Source: SourceLoader}, nil, false
		}
		fa.data = data
		fa.soft = jittered(o.ttl, o.jitter)
		fa.hard = fa.soft + o.stale
	}
	// Callers arriving from now on start a new call: had an invalidation
	// come between their arrival and the write below, they must not get
	// this value.
	if cl != nil {
		c.detach(rk.value, cl)
	}
	cctx, cancel2 := c.s.ctx(ctx)
	cachedAt, ok, ferr := c.s.b.fill(cctx, rk, fa)
	cancel2()
	if ferr != nil {
		_ = c.s.failed("fill", ctx, ferr)
		m := Meta{CachedAt: c.s.now(), Source: SourceLoader, Degraded: true}
		if notFound {
			return zero, m, err, false
		}
		return v, m, nil, false
	}
	if !ok {
		c.s.metrics.op("fill", "lease_lost")
		return zero, Meta{}, nil, true
	}
	m := Meta{CachedAt: cachedAt, ExpiresAt: cachedAt.Add(fa.hard), Source: SourceLoader}
	if notFound {
		return zero, m, err, false
	}
	return v, m, nil, false
}

// loadUncached calls load and returns its value without caching it.
func (c *Cache[T]) loadUncached(ctx context.Context, load func(context.Context) (T, error), o options, degraded bool) (T, Meta, error) {
	lctx, cancel := context.WithTimeout(ctx, o.loadTimeout)
	defer cancel()
	v, err := load(lctx)
	c.s.metrics.load(err)
	return v, Meta{CachedAt: c.s.now(), Source: SourceLoader, Degraded: degraded}, err
}

func (c *Cache[T]) releaseLease(ctx context.Context, rk rkey, token string) {
	cctx, cancel := c.s.ctx(ctx)
	defer cancel()
	if err := c.s.b.release(cctx, rk, token, c.s.pubChannel()); err != nil {
		_ = c.s.failed("release", ctx, err)
	}
}

// refresh reloads key in the background (stale-while-revalidate, XFetch):
// one refresh per key in this process, and through the lease one per fleet.
func (c *Cache[T]) refresh(rk rkey, seen time.Time, load func(context.Context) (T, error), o options) {
	if _, busy := c.refreshing.LoadOrStore(rk.value, struct{}{}); busy {
		return
	}
	go func() {
		defer c.refreshing.Delete(rk.value)
		ctx := context.Background()
		tks, _ := c.s.tagKeys(o.tags)
		vers, err := c.s.currentVersions(ctx, tks)
		if err != nil {
			return
		}
		token := newToken()
		cctx, cancel := c.s.ctx(ctx)
		r, err := c.s.b.acquire(cctx, rk, token, strconv.FormatInt(seen.UnixMilli(), 10), o.loadTimeout)
		cancel()
		if err != nil {
			_ = c.s.failed("refresh", ctx, err)
			return
		}
		if r.token == "" {
			return // another instance refreshes
		}
		c.s.metrics.op("refresh", "started")
		_, _, _, _ = c.loadAndFill(ctx, rk, nil, token, tagspec(tks, vers), load, o)
	}()
}

func jittered(ttl time.Duration, jitter float64) time.Duration {
	if jitter <= 0 {
		return ttl
	}
	d := ttl - time.Duration(mrand.Float64()*jitter*float64(ttl))
	if d < time.Millisecond {
		d = time.Millisecond
	}
	return d
}

func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Set stores v under key for the TTL (opts as for GetOrLoad), replacing any
// value and cancelling any lease: a load in flight will not overwrite it.
func (c *Cache[T]) Set(ctx context.Context, key string, v T, opts ...Option) error {
	return c.fill(ctx, key, "", v, opts)
}

// Fill stores v under key if lease (from Lease) still holds: ErrLeaseLost
// when key was invalidated or set since, and then nothing is written.
func (c *Cache[T]) Fill(ctx context.Context, key, lease string, v T, opts ...Option) error {
	if lease == "" {
		return fmt.Errorf("%w: empty lease", ErrInvalidArgument)
	}
	return c.fill(ctx, key, lease, v, opts)
}

func (c *Cache[T]) fill(ctx context.Context, key, token string, v T, opts []Option) error {
	if err := checkKey(key); err != nil {
		return err
	}
	o, err := c.resolve(opts)
	if err != nil {
		return err
	}
	tks, err := c.s.tagKeys(o.tags)
	if err != nil {
		return err
	}
	if c.s.cfgErr != nil {
		return c.s.cfgErr
	}
	rk := c.rk(key)
	data, size, err := c.encode(rk, v)
	if err != nil {
		return fmt.Errorf("%w: encode: %w", ErrCodec, err)
	}
	if size > MaxValueSize {
		return fmt.Errorf("%w: value of %d bytes (max %d)", ErrInvalidArgument, size, MaxValueSize)
	}
	vers, err := c.s.currentVersions(ctx, tks)
	if err != nil {
		return err
	}
	op := "set"
	if token != "" {
		op = "fill"
		// A lease given with tags carries their versions then: the value
		// was loaded under those, and a tag that moved since means the
		// value may be stale — the lease is lost, as after Invalidate.
		var leased []uint64
		var withTags bool
		token, leased, withTags, err = splitLease(token)
		if err != nil {
			return err
		}
		if withTags {
			if len(leased) != len(tks) {
				return fmt.Errorf("%w: the tags differ from the ones the lease was given with", ErrInvalidArgument)
			}
			if !slices.Equal(leased, vers) {
				c.releaseLease(ctx, rk, token)
				c.s.metrics.op(op, "lease_lost")
				return ErrLeaseLost
			}
		}
	}
	c.forget(rk)
	soft := jittered(o.ttl, o.jitter)
	cctx, cancel := c.s.ctx(context.WithoutCancel(ctx))
	_, ok, err := c.s.b.fill(cctx, rk, fillArgs{
		token: token, tagspec: tagspec(tks, vers), soft: soft, hard: soft + o.stale,
		data: data, publishChannel: c.s.pubChannel(),
	})
	cancel()
	c.forget(rk)
	if err != nil {
		c.s.metrics.op(op, "backend_error")
		return c.s.failed(op, ctx, err)
	}
	if !ok {
		c.s.metrics.op(op, "lease_lost")
		return ErrLeaseLost
	}
	c.s.metrics.op(op, "ok")
	return nil
}

// forget drops this instance's copy of rk, makes reads in flight discard
// theirs, and (tracking mode) sets the tombstone that keeps reads off the
// client-side cache until the change's push arrives.
func (c *Cache[T]) forget(rk rkey) {
	c.s.hub.seq.Add(1)
	if c.l1 != nil {
		c.l1.Invalidate(rk.value)
	}
	if c.s.tracking {
		c.mu.Lock()
		now := time.Now()
		c.tombs.add(rk.value, now.Add(tombstoneFor), now)
		c.mu.Unlock()
	}
	if cl, ok := c.peek(rk.value); ok {
		c.detach(rk.value, cl)
	}
}

// tombstoneFor bounds a tombstone whose push never comes (the key was not
// tracked by this client, so its client-side cache had no copy anyway).
const tombstoneFor = time.Second

func (c *Cache[T]) peek(k string) (*call[T], bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl, ok := c.calls[k]
	return cl, ok
}

// Invalidate removes keys from the shared level (and their leases, so loads
// in flight will not write them back) and from this instance. When it
// returns, this instance serves no old value of them; other instances stop
// within their invalidation latency (docs/cache.md). Keys may be in
// different Cluster slots: each key is one atomic DEL.
func (c *Cache[T]) Invalidate(ctx context.Context, keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	rks := make([]rkey, 0, len(keys))
	for _, k := range keys {
		if err := checkKey(k); err != nil {
			return err
		}
		rks = append(rks, c.rk(k))
	}
	if c.s.cfgErr != nil {
		return c.s.cfgErr
	}
	for _, rk := range rks {
		c.forget(rk)
	}
	cctx, cancel := c.s.ctx(context.WithoutCancel(ctx))
	err := c.s.b.invalidate(cctx, rks, c.s.pubChannel())
	cancel()
	for _, rk := range rks {
		c.forget(rk)
	}
	if err != nil {
		c.s.metrics.op("invalidate", "backend_error")
		return c.s.failed("invalidate", ctx, err)
	}
	c.s.metrics.op("invalidate", "ok")
	return nil
}

// InvalidateTags is Store.InvalidateTags.
func (c *Cache[T]) InvalidateTags(ctx context.Context, tags ...string) error {
	return c.s.InvalidateTags(ctx, tags...)
}

// A lease given with tags is "<token>.<v1>-<v2>...": the token and the tags'
// versions when it was given (tokens are base64url, so hold no '.').
func joinLease(token string, vs []uint64) string {
	var b strings.Builder
	b.WriteString(token)
	b.WriteByte('.')
	for i, v := range vs {
		if i > 0 {
			b.WriteByte('-')
		}
		b.WriteString(strconv.FormatUint(v, 10))
	}
	return b.String()
}

func splitLease(lease string) (token string, vs []uint64, withTags bool, err error) {
	token, rest, withTags := strings.Cut(lease, ".")
	if token == "" {
		return "", nil, false, fmt.Errorf("%w: malformed lease", ErrInvalidArgument)
	}
	if !withTags {
		return token, nil, false, nil
	}
	for _, p := range strings.Split(rest, "-") {
		v, perr := strconv.ParseUint(p, 10, 64)
		if perr != nil {
			return "", nil, false, fmt.Errorf("%w: malformed lease", ErrInvalidArgument)
		}
		vs = append(vs, v)
	}
	return token, vs, true, nil
}

// Lease is the lease protocol of GetOrLoad for callers that load elsewhere
// (the HTTP API's TypeScript clients). On a hit it returns the value. On a
// miss it returns an error wrapping ErrNotFound, with a lease when this caller
// must load (then Fill with it); when another caller holds the lease it first
// waits up to wait for that caller's value, and returns a fresh lease if the
// holder gave up, or none if wait ran out.
//
// Pass the value's Tags to Lease as well as to Fill: the lease then carries
// the tags' versions from before the load, and a Fill after one of them
// moved gets ErrLeaseLost, as after an Invalidate. (Without them, Fill takes
// the versions current at the Fill.)
func (c *Cache[T]) Lease(ctx context.Context, key string, wait time.Duration, opts ...Option) (T, Meta, string, error) {
	var zero T
	if err := checkKey(key); err != nil {
		return zero, Meta{}, "", err
	}
	o, err := c.resolve(opts)
	if err != nil {
		return zero, Meta{}, "", err
	}
	tks, err := c.s.tagKeys(o.tags)
	if err != nil {
		return zero, Meta{}, "", err
	}
	if c.s.cfgErr != nil {
		return zero, Meta{}, "", c.s.cfgErr
	}
	rk := c.rk(key)
	deadline := time.Now().Add(wait)
	refresh := ""
	for {
		vers, err := c.s.currentVersions(ctx, tks)
		if err != nil {
			return zero, Meta{}, "", err
		}
		woken, stop := c.s.hub.wait(rk.value)
		token := newToken()
		cctx, cancel := c.s.ctx(ctx)
		r, err := c.s.b.acquire(cctx, rk, token, refresh, o.loadTimeout)
		cancel()
		if err != nil {
			stop()
			return zero, Meta{}, "", c.s.failed("lease", ctx, err)
		}
		if r.e != nil {
			stop()
			_, _, current, err := c.s.current(ctx, r.e)
			if err != nil {
				return zero, Meta{}, "", err
			}
			if !current { // a tag moved: lease to replace this copy
				refresh = strconv.FormatInt(r.e.cachedAt.UnixMilli(), 10)
				continue
			}
			v, m, err, ok := c.decodeEntry(rk, r.e)
			if ok {
				return v, m, "", err
			}
			// Undecodable (written with another codec or type): a miss,
			// as for GetOrLoad; lease to replace this copy.
			refresh = strconv.FormatInt(r.e.cachedAt.UnixMilli(), 10)
			continue
		}
		if r.token != "" && len(tks) > 0 {
			token = joinLease(r.token, vers)
		}
		if r.token != "" {
			stop()
			return zero, Meta{}, token, fmt.Errorf("%w: load it and fill with the lease", ErrNotFound)
		}
		if c.s.tracking {
			cctx, cancel := c.s.ctx(ctx)
			_, leased, err := c.s.b.read(cctx, rk, true)
			cancel()
			if err == nil && !leased {
				stop()
				continue
			}
		}
		rest := time.Until(deadline)
		if rest <= 0 {
			stop()
			return zero, Meta{}, "", fmt.Errorf("%w: another caller is loading it", ErrNotFound)
		}
		if w := r.heldFor + 5*time.Millisecond; w < rest {
			rest = w
		}
		t := time.NewTimer(rest)
		select {
		case <-woken:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			stop()
			return zero, Meta{}, "", context.Cause(ctx)
		}
		t.Stop()
		stop()
	}
}

// encode encodes v for rk's entry: the codec's bytes, sealed when the Store
// has a Keyring, and their size before sealing (what MaxValueSize bounds).
func (c *Cache[T]) encode(rk rkey, v T) (data []byte, size int, err error) {
	plain, err := c.codec.Encode(v)
	if err != nil {
		return nil, 0, err
	}
	return c.s.keyring.Seal(plain, []byte(rk.value)), len(plain), nil
}

// decode opens (when the Store has a Keyring) and decodes rk's stored bytes.
// The additional data is rk's Redis key, so bytes copied from another key do
// not open: an error, which callers treat as a miss.
func (c *Cache[T]) decode(rk rkey, data []byte) (T, error) {
	plain, err := c.s.keyring.Open(data, []byte(rk.value))
	if err != nil {
		var zero T
		return zero, err
	}
	return c.codec.Decode(plain)
}
