package lock

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/keys"
	"github.com/elevacare/eleva-redis/internal/lograte"
)

// The Lua scripts; each file's header documents its KEYS and ARGV.
var (
	//go:embed acquire.lua
	luaAcquire string
	//go:embed refresh.lua
	luaRefresh string
	//go:embed release.lua
	luaRelease string
	//go:embed inspect.lua
	luaInspect string
	//go:embed handoff.lua
	luaHandoff string

	acquireScript = rueidis.NewLuaScript(luaAcquire)
	refreshScript = rueidis.NewLuaScript(luaRefresh)
	releaseScript = rueidis.NewLuaScript(luaRelease)
	inspectScript = rueidis.NewLuaScript(luaInspect)
	handoffScript = rueidis.NewLuaScript(luaHandoff)
)

// keyCapability is the capability segment of every lock key.
const keyCapability = "lock"

// redisBackend keeps locks in Redis: one script call per operation, Redis
// TIME for fences, the server's TTL for expiry.
type redisBackend struct {
	client  rueidis.Client
	keys    keys.Builder
	timeout time.Duration
	// publish is the release script's notification command: "PUBLISH",
	// "SPUBLISH" (Cluster) or "" (notifications off).
	publish string
	notify  *notifier // nil when notifications are off
	m       *metrics
	log     *logLimiter
}

// NewRedis returns a Locker that keeps its locks in Redis (standalone,
// Sentinel or Cluster) through client, shared by every instance using the
// same Prefix and KeyHashSecret.
//
// The lock name's keys are "<prefix>lock:{<id>}" (the holder's token) and
// "<prefix>lock:{<id>}:fence" (the last fence issued), where id is the name
// escaped (or HMACed with KeyHashSecret) by internal/keys; both share a hash
// tag, so one script updates both on Cluster. Releases are published on
// "<prefix>lock:{<id>}:released" (sharded Pub/Sub on Cluster).
//
// NewRedis has no error result: when cfg.Prefix is invalid (see keys.New) or
// client is nil, the problem is logged once and every call returns an error
// (wrapping keys.ErrInvalidPrefix, or ErrBackend for a nil client).
func NewRedis(client rueidis.Client, cfg Config) Locker {
	m := newMetrics(cfg.Registerer)
	r := &redisBackend{client: client, timeout: cfg.timeout(), m: m, log: newLogLimiter(cfg.logger())}
	var cfgErr error
	b, err := keys.New(cfg.Prefix, cfg.KeyHashSecret)
	switch {
	case err != nil:
		cfgErr = fmt.Errorf("lock: %w", err)
	case client == nil:
		cfgErr = fmt.Errorf("%w: NewRedis was given a nil client", ErrBackend)
	}
	if cfgErr != nil {
		cfg.logger().Error("lock: unusable Redis locker configuration; every call will fail", "err", cfgErr.Error())
	}
	r.keys = b
	l := newLocker(r, m, cfgErr, r.timeout)
	if cfgErr == nil && !cfg.DisableNotifications {
		sharded := client.Mode() == rueidis.ClientModeCluster
		r.publish = "PUBLISH"
		if sharded {
			r.publish = "SPUBLISH"
		}
		r.notify = newNotifier(client, sharded, r.timeout, l.queue, m, r.log)
	}
	return l
}

func (r *redisBackend) kind() string   { return "redis" }
func (r *redisBackend) now() time.Time { return time.Now() }
func (r *redisBackend) notifies() bool { return r.notify != nil }

// lockKeys returns name's lock key and fence key. The fence key and the
// release channel are the lock key plus a constant part, which is what
// keys.Builder.RawKey would build (the parts are key-safe, so Escape leaves
// them as they are); building them by concatenation spares an escape of the
// name per key on every call.
func (r *redisBackend) lockKeys(name string) (lockKey, fenceKey string) {
	lk := r.keys.RawKey(keyCapability, r.keys.ID(name))
	return lk, lk + ":fence"
}

// keysOf returns all three names of name's lock: its lock key, fence key and
// release channel.
func (r *redisBackend) keysOf(name string) (lockKey, fenceKey, channel string) {
	lk, fk := r.lockKeys(name)
	return lk, fk, lk + ":released"
}

// releaseKeys returns name's lock key and release channel.
func (r *redisBackend) releaseKeys(name string) (lockKey, channel string) {
	lk := r.keys.RawKey(keyCapability, r.keys.ID(name))
	return lk, lk + ":released"
}

// ms formats d in whole milliseconds, rounded up: a lock never lives shorter
// than asked.
func ms(d time.Duration) string {
	return strconv.FormatInt(int64((d+time.Millisecond-1)/time.Millisecond), 10)
}

// call runs fn under Config.Timeout. A failure is the caller's ctx error when
// the caller gave up, ErrBackend otherwise (counted and logged).
func (r *redisBackend) call(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, r.timeout)
	err := fn(cctx)
	cancel()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("lock: %s: %w", op, ctx.Err())
	}
	r.m.backendError()
	r.log.warn("lock: Redis call failed", "op", op, "err", err.Error())
	return fmt.Errorf("%w: %s: %w", ErrBackend, op, err)
}

func (r *redisBackend) acquire(ctx context.Context, name, token string, ttl time.Duration) (uint64, bool, time.Duration, error) {
	lk, fk := r.lockKeys(name)
	var n int64
	err := r.call(ctx, "acquire", func(ctx context.Context) error {
		var err error
		n, err = acquireScript.Exec(ctx, r.client, []string{lk, fk}, []string{token, ms(ttl), ms(ttl + fenceGrace)}).AsInt64()
		if err == nil && n == 0 {
			err = errors.New("acquire script returned 0, want a fence or a negative pttl")
		}
		return err
	})
	if err != nil {
		// The script may have run with its reply lost: release what this
		// token may hold, so an abandoned lock does not block others for its
		// whole ttl.
		go r.abandon(name, token)
		return 0, false, 0, err
	}
	if n < 0 {
		// Held: n is -1 - the holder's remaining ms.
		return 0, false, time.Duration(-1-n) * time.Millisecond, nil
	}
	return uint64(n), true, 0, nil
}

// abandon releases name if token holds it, best effort.
func (r *redisBackend) abandon(name, token string) {
	_ = r.release(context.Background(), name, token)
}

func (r *redisBackend) refresh(ctx context.Context, name, token string, ttl time.Duration) error {
	lk, fk := r.lockKeys(name)
	var n int64
	err := r.call(ctx, "refresh", func(ctx context.Context) error {
		var err error
		n, err = refreshScript.Exec(ctx, r.client, []string{lk, fk}, []string{token, ms(ttl), ms(ttl + fenceGrace)}).AsInt64()
		return err
	})
	if err != nil {
		return err
	}
	if n != 1 {
		return ErrLost
	}
	return nil
}

func (r *redisBackend) release(ctx context.Context, name, token string) error {
	lk, ch := r.releaseKeys(name)
	var n int64
	err := r.call(ctx, "release", func(ctx context.Context) error {
		var err error
		n, err = releaseScript.Exec(ctx, r.client, []string{lk}, []string{token, r.publish, ch}).AsInt64()
		return err
	})
	if err != nil {
		return err
	}
	if n != 1 {
		return ErrLost
	}
	return nil
}

func (r *redisBackend) handoff(ctx context.Context, name, token, newToken string, ttl time.Duration) (uint64, error) {
	lk, fk := r.lockKeys(name)
	var n int64
	err := r.call(ctx, "handoff", func(ctx context.Context) error {
		var err error
		n, err = handoffScript.Exec(ctx, r.client, []string{lk, fk}, []string{token, newToken, ms(ttl), ms(ttl + fenceGrace)}).AsInt64()
		if err == nil && n < 0 {
			err = fmt.Errorf("handoff script returned %d, want a fence or 0", n)
		}
		return err
	})
	if err != nil {
		// The script may have run with its reply lost: then newToken holds
		// the lock and nobody knows it. Release it (and publish), so the
		// lock is not stuck for the waiter's whole ttl.
		go r.abandon(name, newToken)
		return 0, err
	}
	if n == 0 {
		return 0, ErrLost
	}
	return uint64(n), nil
}

func (r *redisBackend) inspect(ctx context.Context, name string) (Info, error) {
	lk, fk := r.lockKeys(name)
	var (
		pttl  int64
		fence uint64
	)
	err := r.call(ctx, "inspect", func(ctx context.Context) error {
		vals, err := inspectScript.Exec(ctx, r.client, []string{lk, fk}, nil).ToArray()
		if err != nil {
			return err
		}
		if len(vals) != 2 {
			return fmt.Errorf("inspect script returned %d values, want 2", len(vals))
		}
		if pttl, err = vals[0].AsInt64(); err != nil {
			return err
		}
		s, err := vals[1].ToString()
		if err != nil {
			return err
		}
		fence, err = strconv.ParseUint(s, 10, 64)
		return err
	})
	if err != nil {
		return Info{}, err
	}
	if pttl < 0 {
		// -2: free. (-1, a lock without expiry, cannot be written by this
		// package; treat it as held with an unknown expiry rather than free.)
		if pttl == -2 {
			return Info{Name: name}, nil
		}
		return Info{Name: name, Held: true, Fence: fence}, nil
	}
	return Info{Name: name, Held: true, ExpiresAt: time.Now().Add(time.Duration(pttl) * time.Millisecond), Fence: fence}, nil
}

func (r *redisBackend) watch(ctx context.Context, name string) func() {
	if r.notify == nil {
		return func() {}
	}
	_, ch := r.releaseKeys(name)
	ready, unsub := r.notify.join(ch, name)
	t := time.NewTimer(r.timeout)
	select {
	case <-ready:
	case <-t.C:
	case <-ctx.Done():
	}
	t.Stop()
	return unsub
}

func (r *redisBackend) watchIfReady(name string) (func(), bool) {
	if r.notify == nil {
		return nil, false
	}
	_, ch := r.releaseKeys(name)
	return r.notify.joinIfReady(ch)
}

func (r *redisBackend) notifyReady(name string) bool {
	if r.notify == nil {
		return false
	}
	_, ch := r.releaseKeys(name)
	return r.notify.ready(ch)
}

// logLimiter logs backend failures at most once per lograte.DefaultEvery,
// with the number suppressed in between.
type logLimiter struct{ lim *lograte.Limiter }

func newLogLimiter(log *slog.Logger) *logLimiter {
	return &logLimiter{lim: lograte.New(log, 0)}
}

func (l *logLimiter) warn(msg string, args ...any) { l.lim.Log(slog.LevelWarn, msg, args...) }
