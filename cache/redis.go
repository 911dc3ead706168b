package cache

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// The Lua scripts; KEYS and ARGV are documented at the top of each file.
// Each touches the keys of one logical key (or one tag), which share a hash
// tag, so they run unchanged on Redis Cluster.
var (
	//go:embed acquire.lua
	luaAcquire string
	//go:embed fill.lua
	luaFill string
	//go:embed release.lua
	luaRelease string
	//go:embed invalidate.lua
	luaInvalidate string
	//go:embed bump.lua
	luaBump string

	scriptAcquire    = rueidis.NewLuaScript(luaAcquire)
	scriptFill       = rueidis.NewLuaScript(luaFill)
	scriptRelease    = rueidis.NewLuaScript(luaRelease)
	scriptInvalidate = rueidis.NewLuaScript(luaInvalidate)
	scriptBump       = rueidis.NewLuaScript(luaBump)
)

// tagKeyTTL outlives every entry (see bump.lua).
const tagKeyTTL = MaxTTL + 24*time.Hour

// redisBackend is the Redis shared level.
type redisBackend struct {
	client rueidis.Client
	// cscTTL is the client-side cache TTL of tracked reads.
	cscTTL time.Duration

	store *Store
	// subscribed: the Pub/Sub subscription is up (Pub/Sub mode only).
	subscribed atomic.Bool
	stop       context.CancelFunc
	done       chan struct{}
	closeOnce  sync.Once
	tracker    *Tracker
}

// NewRedisStore returns a Store whose shared level is Redis (standalone,
// Sentinel or Cluster), through client.
//
// Keys, where ID is the escaping (or, with KeyHashSecret, the HMAC) of
// internal/keys:
//
//	<prefix>cache:{ID(ns)/ID(key)}        string: an entry, PX = TTL + StaleFor
//	<prefix>cache:{ID(ns)/ID(key)}:lease  string: the loader's token, PX = LoadTimeout
//	<prefix>ctag:{ID(tag)}                string: the tag's version, PX = MaxTTL + 1 day
//
// Local copies stay coherent across instances by CLIENT TRACKING when
// cfg.Tracker is the client's OnInvalidations hook (see Tracker), and by
// Pub/Sub messages on <prefix>cache:invalidations otherwise.
//
// NewRedisStore has no error result: a bad cfg.Prefix or a nil client is
// logged once, GetOrLoad then always calls the loader (Meta.Degraded) and the
// other calls return ErrBackend.
func NewRedisStore(client rueidis.Client, cfg StoreConfig) *Store {
	b := &redisBackend{client: client, tracker: cfg.Tracker}
	s := newStore(b, "redis", cfg)
	b.store = s
	if client == nil && s.cfgErr == nil {
		s.cfgErr = fmt.Errorf("%w: NewRedisStore was given a nil client", ErrBackend)
		s.log.Error("cache: unusable store configuration; every call will fall through to the loader or fail",
			"backend", "redis", "err", s.cfgErr.Error())
	}
	switch cfg.Invalidation {
	case "tracking":
		s.tracking = cfg.Tracker != nil
		if !s.tracking {
			s.log.Warn("cache: Invalidation is \"tracking\" but no Tracker is set; using Pub/Sub")
		}
	case "pubsub":
	case "":
		s.tracking = cfg.Tracker != nil
	default:
		s.log.Warn("cache: unknown Invalidation mode; using automatic", "mode", cfg.Invalidation)
		s.tracking = cfg.Tracker != nil
	}
	b.cscTTL = DefaultLocalTTL
	s.channel = s.keys.RawKey(capValue, "invalidations")
	if s.tracking {
		cfg.Tracker.attach(&s.hub)
	} else {
		s.localCap = cfg.PubSubLocalTTL
		if s.localCap <= 0 {
			s.localCap = DefaultPubSubLocalTTL
		}
		if s.cfgErr == nil {
			ctx, cancel := context.WithCancel(context.Background())
			b.stop = cancel
			b.done = make(chan struct{})
			go b.subscribe(ctx)
		}
	}
	return s
}

// subscribed reports whether local copies may be kept: always, except in
// Pub/Sub mode while the subscription is down (an invalidation sent then
// would be missed).
func (s *Store) subscribed() bool {
	if rb, ok := s.b.(*redisBackend); ok && !s.tracking {
		return rb.subscribed.Load()
	}
	return true
}

// subscribe keeps the Pub/Sub subscription up, dropping every local copy
// whenever it (re)starts, since messages sent while it was down are lost.
func (b *redisBackend) subscribe(ctx context.Context) {
	defer close(b.done)
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		dc, release := b.client.Dedicate()
		wait := dc.SetPubSubHooks(rueidis.PubSubHooks{
			OnMessage: func(m rueidis.PubSubMessage) { b.store.hub.invalidate(m.Message) },
			OnSubscription: func(s rueidis.PubSubSubscription) {
				if s.Kind == "subscribe" {
					b.store.hub.invalidateAll()
					b.subscribed.Store(true)
				}
			},
		})
		err := dc.Do(ctx, dc.B().Subscribe().Channel(b.store.channel).Build()).Error()
		if err == nil {
			backoff = 50 * time.Millisecond
			select {
			case err = <-wait:
			case <-ctx.Done():
			}
		}
		b.subscribed.Store(false)
		b.store.hub.invalidateAll()
		release()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			b.store.log.Warn("cache: invalidation subscription lost; local copies dropped, resubscribing",
				"err", err.Error())
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (b *redisBackend) close() {
	b.closeOnce.Do(func() {
		if b.stop != nil {
			b.stop()
			<-b.done
		}
		if b.tracker != nil {
			b.tracker.detach(&b.store.hub)
		}
	})
}

func (b *redisBackend) read(ctx context.Context, k rkey, tracked bool) (*entry, bool, error) {
	var res []rueidis.RedisResult
	if tracked {
		res = b.client.DoMultiCache(ctx,
			rueidis.CT(b.client.B().Get().Key(k.value).Cache(), b.cscTTL),
			rueidis.CT(b.client.B().Get().Key(k.lease).Cache(), b.cscTTL))
	} else {
		res = b.client.DoMulti(ctx,
			b.client.B().Get().Key(k.value).Build(),
			b.client.B().Get().Key(k.lease).Build())
	}
	raw, err := res[0].AsBytes()
	if err != nil && !rueidis.IsRedisNil(err) {
		return nil, false, err
	}
	_, lerr := res[1].ToString()
	if lerr != nil && !rueidis.IsRedisNil(lerr) {
		return nil, false, lerr
	}
	leased := lerr == nil
	if raw == nil {
		return nil, leased, nil
	}
	e, perr := parseEntry(raw)
	if perr != nil {
		return nil, leased, nil // unreadable: a miss, overwritten by the next load
	}
	return e, leased, nil
}

// parseEntry decodes the entry format (see acquire.lua).
func parseEntry(raw []byte) (*entry, error) {
	bad := errors.New("cache: malformed entry")
	if len(raw) < 2 || (raw[0] != 'v' && raw[0] != 'n') {
		return nil, bad
	}
	nl := bytes.IndexByte(raw, '\n')
	if nl < 0 {
		return nil, bad
	}
	head := raw[1:nl]
	var f [5][]byte
	for i := 0; i < 4; i++ {
		j := bytes.IndexByte(head, '|')
		if j < 0 {
			return nil, bad
		}
		f[i], head = head[:j], head[j+1:]
	}
	f[4] = head
	var n [4]int64
	for i := 1; i < 5; i++ {
		x, err := strconv.ParseInt(string(f[i]), 10, 64)
		if err != nil {
			return nil, bad
		}
		n[i-1] = x
	}
	return &entry{
		negative: raw[0] == 'n',
		tagspec:  string(f[0]),
		cachedAt: time.UnixMilli(n[0]),
		softAt:   time.UnixMilli(n[1]),
		hardAt:   time.UnixMilli(n[2]),
		delta:    time.Duration(n[3]) * time.Millisecond,
		data:     raw[nl+1:],
	}, nil
}

func ms(d time.Duration) string {
	m := d.Milliseconds()
	if m < 1 {
		m = 1
	}
	return strconv.FormatInt(m, 10)
}

func (b *redisBackend) acquire(ctx context.Context, k rkey, token, refresh string, leaseTTL time.Duration) (acquireResult, error) {
	vals, err := scriptAcquire.Exec(ctx, b.client, []string{k.value, k.lease},
		[]string{token, ms(leaseTTL), refresh}).ToArray()
	if err != nil {
		return acquireResult{}, err
	}
	if len(vals) == 0 {
		return acquireResult{}, errors.New("cache: empty acquire reply")
	}
	code, err := vals[0].AsInt64()
	if err != nil {
		return acquireResult{}, err
	}
	switch code {
	case 1:
		raw, err := vals[1].AsBytes()
		if err != nil {
			return acquireResult{}, err
		}
		e, perr := parseEntry(raw)
		if perr != nil {
			// Unreadable: take a refresh lease to overwrite it.
			return b.acquire(ctx, k, token, forceRefresh, leaseTTL)
		}
		return acquireResult{e: e}, nil
	case 2:
		return acquireResult{token: token}, nil
	default:
		pttl, err := vals[1].AsInt64()
		if err != nil {
			return acquireResult{}, err
		}
		if pttl < 0 {
			pttl = 0
		}
		return acquireResult{heldFor: time.Duration(pttl) * time.Millisecond}, nil
	}
}

func (b *redisBackend) fill(ctx context.Context, k rkey, a fillArgs) (time.Time, bool, error) {
	kind := "v"
	if a.negative {
		kind = "n"
	}
	vals, err := scriptFill.Exec(ctx, b.client, []string{k.value, k.lease}, []string{
		a.token, kind, a.tagspec, ms(a.soft), ms(a.hard),
		strconv.FormatInt(a.delta.Milliseconds(), 10), string(a.data), a.publishChannel,
	}).ToArray()
	if err != nil {
		return time.Time{}, false, err
	}
	if len(vals) == 0 {
		return time.Time{}, false, errors.New("cache: empty fill reply")
	}
	ok, err := vals[0].AsInt64()
	if err != nil {
		return time.Time{}, false, err
	}
	if ok != 1 {
		return time.Time{}, false, nil
	}
	now, err := vals[1].AsInt64()
	if err != nil {
		return time.Time{}, false, err
	}
	return time.UnixMilli(now), true, nil
}

func (b *redisBackend) release(ctx context.Context, k rkey, token, channel string) error {
	return scriptRelease.Exec(ctx, b.client, []string{k.value, k.lease}, []string{token, channel}).Error()
}

func (b *redisBackend) invalidate(ctx context.Context, ks []rkey, channel string) error {
	if channel == "" {
		cmds := make(rueidis.Commands, 0, len(ks))
		for _, k := range ks {
			cmds = append(cmds, b.client.B().Del().Key(k.value, k.lease).Build())
		}
		for _, r := range b.client.DoMulti(ctx, cmds...) {
			if err := r.Error(); err != nil {
				return err
			}
		}
		return nil
	}
	execs := make([]rueidis.LuaExec, 0, len(ks))
	for _, k := range ks {
		execs = append(execs, rueidis.LuaExec{Keys: []string{k.value, k.lease}, Args: []string{channel}})
	}
	for _, r := range scriptInvalidate.ExecMulti(ctx, b.client, execs...) {
		if err := r.Error(); err != nil {
			return err
		}
	}
	return nil
}

func (b *redisBackend) versions(ctx context.Context, tagKeys []string, tracked bool) ([]uint64, error) {
	var res []rueidis.RedisResult
	if tracked {
		cmds := make([]rueidis.CacheableTTL, 0, len(tagKeys))
		for _, k := range tagKeys {
			cmds = append(cmds, rueidis.CT(b.client.B().Get().Key(k).Cache(), b.cscTTL))
		}
		res = b.client.DoMultiCache(ctx, cmds...)
	} else {
		cmds := make(rueidis.Commands, 0, len(tagKeys))
		for _, k := range tagKeys {
			cmds = append(cmds, b.client.B().Get().Key(k).Build())
		}
		res = b.client.DoMulti(ctx, cmds...)
	}
	out := make([]uint64, len(tagKeys))
	for i, r := range res {
		s, err := r.ToString()
		if rueidis.IsRedisNil(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("cache: tag version %q: %w", s, err)
		}
		out[i] = v
	}
	return out, nil
}

func (b *redisBackend) bump(ctx context.Context, tagKeys []string, channel string) error {
	execs := make([]rueidis.LuaExec, 0, len(tagKeys))
	for _, k := range tagKeys {
		execs = append(execs, rueidis.LuaExec{Keys: []string{k}, Args: []string{ms(tagKeyTTL), channel}})
	}
	for _, r := range scriptBump.ExecMulti(ctx, b.client, execs...) {
		if err := r.Error(); err != nil {
			return err
		}
	}
	return nil
}
