package tempdata

import (
	"context"
	_ "embed"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/rueidis"
)

// The Lua scripts; KEYS and ARGV are documented at the top of each file.
// Every script touches one key, so it runs unchanged on Redis Cluster.
var (
	//go:embed put.lua
	luaPut string
	//go:embed get.lua
	luaGet string
	//go:embed begin.lua
	luaBegin string
	//go:embed complete.lua
	luaComplete string
	//go:embed fail.lua
	luaFail string

	scriptPut      = rueidis.NewLuaScript(luaPut)
	scriptGet      = rueidis.NewLuaScript(luaGet)
	scriptBegin    = rueidis.NewLuaScript(luaBegin)
	scriptComplete = rueidis.NewLuaScript(luaComplete)
	scriptFail     = rueidis.NewLuaScript(luaFail)
)

// redisBackend is the Redis backend: one command or one script per call,
// Redis TIME and Redis key expiry.
type redisBackend struct {
	client rueidis.Client
}

var _ backend = (*redisBackend)(nil)

// NewRedis returns a Store that keeps its entries in Redis (standalone,
// Sentinel or Cluster) through client, shared by every instance using the
// same Prefix and KeyHashSecret (and Keyring, when encryption is on).
//
// Keys, where ID is the escaping (or, with KeyHashSecret, the HMAC) of
// internal/keys:
//
//	<prefix>tmp:{ID(namespace)/ID(key)}      string: a value (Put, Take, ...)
//	<prefix>tok:{ID(purpose)/SHA256(token)}  string: a token's data (base64url hash)
//	<prefix>idem:{ID(key)}                   hash:   an idempotency record
//
// Every key is written together with its TTL in one command or script.
// Take and Consume are one GETDEL; Put, Get, Issue and the idempotency state
// changes are one script each (put.lua, get.lua, begin.lua, complete.lua,
// fail.lua).
//
// NewRedis has no error result: when cfg.Prefix is invalid (see keys.New) or
// client is nil, the problem is logged once and every call returns an error
// wrapping ErrBackend.
func NewRedis(client rueidis.Client, cfg Config) Store {
	var err error
	if client == nil {
		err = fmt.Errorf("%w: NewRedis was given a nil client", ErrBackend)
	}
	return newStore(&redisBackend{client: client}, "redis", cfg, err)
}

// ms is ttl in whole milliseconds (ttl >= MinTTL, so at least 1).
func ms(ttl time.Duration) string { return strconv.FormatInt(ttl.Milliseconds(), 10) }

// redisTime is the time of a script's TIME reply (seconds, microseconds).
func redisTime(vals []rueidis.RedisMessage, at int) (time.Time, error) {
	sec, err := vals[at].AsInt64()
	if err != nil {
		return time.Time{}, err
	}
	usec, err := vals[at+1].AsInt64()
	if err != nil {
		return time.Time{}, err
	}
	return time.Unix(sec, usec*1000), nil
}

// ints parses the integer fields of a script reply.
func ints(vals []rueidis.RedisMessage, idx ...int) ([]int64, error) {
	out := make([]int64, len(idx))
	for i, j := range idx {
		v, err := vals[j].AsInt64()
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

func replyLen(vals []rueidis.RedisMessage, want int, script string) error {
	if len(vals) != want {
		return fmt.Errorf("tempdata: %s returned %d values, want %d", script, len(vals), want)
	}
	return nil
}

func (r *redisBackend) put(ctx context.Context, k string, value []byte, ttl time.Duration, nx bool) (time.Time, bool, error) {
	mode := ""
	if nx {
		mode = "nx"
	}
	vals, err := scriptPut.Exec(ctx, r.client, []string{k}, []string{string(value), ms(ttl), mode}).ToArray()
	if err != nil {
		return time.Time{}, false, err
	}
	if err := replyLen(vals, 3, "put.lua"); err != nil {
		return time.Time{}, false, err
	}
	n, err := ints(vals, 0)
	if err != nil {
		return time.Time{}, false, err
	}
	now, err := redisTime(vals, 1)
	if err != nil {
		return time.Time{}, false, err
	}
	if n[0] != 1 {
		return time.Time{}, false, nil
	}
	return now.Add(time.Duration(ttl.Milliseconds()) * time.Millisecond), true, nil
}

func (r *redisBackend) get(ctx context.Context, k string) ([]byte, time.Time, bool, error) {
	vals, err := scriptGet.Exec(ctx, r.client, []string{k}, nil).ToArray()
	if rueidis.IsRedisNil(err) {
		return nil, time.Time{}, false, nil
	}
	if err != nil {
		return nil, time.Time{}, false, err
	}
	if err := replyLen(vals, 4, "get.lua"); err != nil {
		return nil, time.Time{}, false, err
	}
	v, err := vals[0].AsBytes()
	if err != nil {
		return nil, time.Time{}, false, err
	}
	n, err := ints(vals, 1)
	if err != nil {
		return nil, time.Time{}, false, err
	}
	now, err := redisTime(vals, 2)
	if err != nil {
		return nil, time.Time{}, false, err
	}
	var exp time.Time
	if n[0] >= 0 {
		exp = now.Add(time.Duration(n[0]) * time.Millisecond)
	}
	return nonNil(v), exp, true, nil
}

func (r *redisBackend) take(ctx context.Context, k string) ([]byte, bool, error) {
	v, err := r.client.Do(ctx, r.client.B().Getdel().Key(k).Build()).AsBytes()
	if rueidis.IsRedisNil(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return nonNil(v), true, nil
}

func (r *redisBackend) del(ctx context.Context, k string) error {
	return r.client.Do(ctx, r.client.B().Del().Key(k).Build()).Error()
}

func (r *redisBackend) begin(ctx context.Context, k, fp string, ttl time.Duration) (beginCode, []byte, time.Time, error) {
	vals, err := scriptBegin.Exec(ctx, r.client, []string{k}, []string{fp, ms(ttl)}).ToArray()
	if err != nil {
		return 0, nil, time.Time{}, err
	}
	if err := replyLen(vals, 5, "begin.lua"); err != nil {
		return 0, nil, time.Time{}, err
	}
	n, err := ints(vals, 0, 2)
	if err != nil {
		return 0, nil, time.Time{}, err
	}
	now, err := redisTime(vals, 3)
	if err != nil {
		return 0, nil, time.Time{}, err
	}
	code := beginCode(n[0])
	var exp time.Time
	if code != beginMismatch && n[1] >= 0 {
		exp = now.Add(time.Duration(n[1]) * time.Millisecond)
	}
	if code != beginCompleted {
		return code, nil, exp, nil
	}
	resp, err := vals[1].AsBytes()
	if err != nil {
		return 0, nil, time.Time{}, err
	}
	return code, nonNil(resp), exp, nil
}

func (r *redisBackend) complete(ctx context.Context, k string, response []byte, ttl time.Duration) (idemOutcome, error) {
	ttlArg := "0"
	if ttl > 0 {
		ttlArg = ms(ttl)
	}
	n, err := scriptComplete.Exec(ctx, r.client, []string{k}, []string{string(response), ttlArg}).AsInt64()
	if err != nil {
		return 0, err
	}
	return idemFromScript(n)
}

func (r *redisBackend) fail(ctx context.Context, k string) (idemOutcome, error) {
	n, err := scriptFail.Exec(ctx, r.client, []string{k}, nil).AsInt64()
	if err != nil {
		return 0, err
	}
	return idemFromScript(n)
}

// idemFromScript maps the replies of complete.lua and fail.lua.
func idemFromScript(n int64) (idemOutcome, error) {
	switch n {
	case 1:
		return idemDone, nil
	case 0:
		return idemMissing, nil
	case 2:
		return idemCompleted, nil
	}
	return 0, fmt.Errorf("tempdata: script returned %d", n)
}

func nonNil(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return v
}
