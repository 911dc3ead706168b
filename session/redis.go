package session

import (
	"context"
	"crypto/sha1"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// The Lua scripts; KEYS and ARGV are documented at the top of each file.
// Every script touches one key, so it runs unchanged on Redis Cluster, where
// a session and its user's index live in different slots.
var (
	//go:embed create.lua
	luaCreate string
	//go:embed update.lua
	luaUpdate string
	//go:embed touch.lua
	luaTouch string
	//go:embed delete.lua
	luaDelete string
	//go:embed revoke.lua
	luaRevoke string
	//go:embed set_roles.lua
	luaSetRoles string
	//go:embed rotate_del.lua
	luaRotateDel string
	//go:embed index_add.lua
	luaIndexAdd string
	//go:embed index_read.lua
	luaIndexRead string
	//go:embed index_rem.lua
	luaIndexRem string

	scriptCreate    = newScript(luaCreate)
	scriptUpdate    = newScript(luaUpdate)
	scriptTouch     = newScript(luaTouch)
	scriptDelete    = newScript(luaDelete)
	scriptRevoke    = newScript(luaRevoke)
	scriptSetRoles  = newScript(luaSetRoles)
	scriptRotateDel = newScript(luaRotateDel)
	scriptIndexAdd  = newScript(luaIndexAdd)
	scriptIndexRead = newScript(luaIndexRead)
	scriptIndexRem  = newScript(luaIndexRem)
)

// script is a Lua script run with EVALSHA, falling back to EVAL when the
// server does not have it (a restart, a new node), one at a time or many in
// one pipeline.
type script struct {
	src, sha string
	lua      *rueidis.Lua
}

func newScript(src string) *script {
	sum := sha1.Sum([]byte(src))
	return &script{src: src, sha: hex.EncodeToString(sum[:]), lua: rueidis.NewLuaScript(src)}
}

func (s *script) exec(ctx context.Context, c rueidis.Client, keys, args []string) rueidis.RedisResult {
	return s.lua.Exec(ctx, c, keys, args)
}

// execMany runs the script once per key (one key each, args(i) as ARGV) in
// one pipeline: rueidis sends each to the key's node, all nodes in
// parallel. Scripts the server does not know are sent again with EVAL.
func (s *script) execMany(ctx context.Context, c rueidis.Client, keys []string, args func(i int) []string) []rueidis.RedisResult {
	cmds := make(rueidis.Commands, len(keys))
	for i, k := range keys {
		cmds[i] = c.B().Evalsha().Sha1(s.sha).Numkeys(1).Key(k).Arg(args(i)...).Build()
	}
	res := c.DoMulti(ctx, cmds...)
	var again []int
	for i, r := range res {
		if err, ok := rueidis.IsRedisErr(r.Error()); ok && err.IsNoScript() {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		cmds = cmds[:0]
		for _, i := range again {
			cmds = append(cmds, c.B().Eval().Script(s.src).Numkeys(1).Key(keys[i]).Arg(args(i)...).Build())
		}
		for j, r := range c.DoMulti(ctx, cmds...) {
			res[again[j]] = r
		}
	}
	return res
}

// Hash fields read back, in this order (see create.lua).
var sessionFields = []string{"id", "userId", "roles", "deviceInfo", "preferences",
	"createdAt", "lastActivity", "idleTimeout", "absoluteExpiry", "version", "indexScore"}

// peekFields are what HasRole and Touch read, from the client-side cache.
var peekFields = []string{"userId", "roles", "lastActivity", "idleTimeout"}

// indexSlack is added to every index score: the session's own script may run
// on another Cluster node, whose clock may be a little ahead of the index's.
const indexSlack = time.Minute

// ownWriteWindow is how long after its own write of a session this instance
// reads it from Redis rather than from its client-side cache. Redis sends the
// invalidation of the cached copy after the write's reply (redis/redis#9422),
// possibly on another of the client's connections: without this, a read right
// after one's own write could, for a few microseconds, see the value from
// before it. Writes of other instances are invalidated asynchronously
// whatever we do (see docs/sessions.md).
const ownWriteWindow = time.Second

// redisBackend is the Redis backend.
type redisBackend struct {
	client   rueidis.Client
	n        names
	metrics  *metrics
	cacheTTL time.Duration
	// markerTTL is the lifetime of a pending-roles marker: longer than any
	// Create or Rotate can take between its two steps.
	markerTTL time.Duration
	recent    recentWrites
	// offsetMs estimates Redis TIME minus the local clock (ms), learned
	// from every script reply that reports TIME; the throttle of Touch
	// compares it with a cached lastActivity without a round trip.
	offsetMs    atomic.Int64
	offsetKnown atomic.Bool
	now         func() time.Time
	// hook, when set (tests), is called between the steps of the
	// multi-step operations, to interleave other calls deterministically:
	// "create:indexed", "rotate:copied".
	hook func(step string)
}

var _ backend = (*redisBackend)(nil)

// NewRedis returns a Store that keeps sessions in Redis (standalone,
// Sentinel or Cluster) through client, shared by every instance using the
// same Prefix and KeyHashSecret (and Keyring, when encryption is on).
//
// Keys, where ID is the escaping (or, with KeyHashSecret, the HMAC) of
// internal/keys:
//
//	<prefix>sess:{ID(id)}            hash:       the session (fields in create.lua)
//	<prefix>sess-user:{ID(userId)}   sorted set: the user's index (index_add.lua)
//
// Every key is written together with its expiry in one script. A session's
// key and its user's index live in different Cluster slots, so Create,
// Delete, Rotate, RevokeUser and SetUserRoles are several single-key steps,
// ordered so that a crash between two steps never leaves a live session out
// of its user's index (docs/sessions.md).
//
// HasRole and Touch read through rueidis client-side caching (DoCache):
// Redis tracks what each client has read and invalidates it on every write,
// from any instance, and rueidis drops the whole local cache when its
// connection drops. A client built with DisableCache (a provider that
// refuses CLIENT TRACKING) serves them from Redis instead: still correct,
// just one round trip each.
//
// NewRedis has no error result: when cfg is invalid (a bad Prefix, see
// keys.New; a TTL out of range) or client is nil, the problem is logged once
// and every call returns an error wrapping ErrBackend.
func NewRedis(client rueidis.Client, cfg Config) Store {
	var err error
	if client == nil {
		err = fmt.Errorf("%w: NewRedis was given a nil client", ErrBackend)
	}
	m := newMetrics(cfg.Registerer)
	return newStore(cfg, "redis", m, func(n names) backend {
		return &redisBackend{
			client:    client,
			n:         n,
			metrics:   m,
			cacheTTL:  cfg.cacheTTL(),
			markerTTL: max(time.Minute, 4*cfg.timeout()),
			recent:    recentWrites{m: make(map[string]int64)},
			now:       time.Now,
		}
	}, err)
}

func ms(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

// learnTime records Redis TIME (ms) from a script reply.
func (r *redisBackend) learnTime(redisNow int64) {
	r.offsetMs.Store(redisNow - r.now().UnixMilli())
	r.offsetKnown.Store(true)
}

// redisNow estimates Redis TIME in ms; ok false until a reply taught it.
func (r *redisBackend) redisNow() (int64, bool) {
	return r.now().UnixMilli() + r.offsetMs.Load(), r.offsetKnown.Load()
}

// ints parses the integer elements of a script reply.
func ints(vals []rueidis.RedisMessage, n int, what string) ([]int64, error) {
	if len(vals) < n {
		return nil, fmt.Errorf("session: %s returned %d values, want at least %d", what, len(vals), n)
	}
	out := make([]int64, n)
	for i := range out {
		v, err := vals[i].AsInt64()
		if err != nil {
			return nil, fmt.Errorf("session: %s: %w", what, err)
		}
		out[i] = v
	}
	return out, nil
}

// parseRecord reads a record from the values of sessionFields (the first
// nine are enough for a record). found is false when userId is missing: no
// session, or a pending-roles marker.
func parseRecord(vals []rueidis.RedisMessage) (rec record, found bool, err error) {
	if len(vals) < 9 {
		return record{}, false, fmt.Errorf("session: read %d fields, want 9", len(vals))
	}
	if vals[1].IsNil() {
		return record{}, false, nil
	}
	str := func(i int) string {
		s, e := vals[i].ToString()
		if e != nil && !vals[i].IsNil() {
			err = e
		}
		return s
	}
	num := func(i int) int64 {
		v, e := strconv.ParseInt(str(i), 10, 64)
		if e != nil && err == nil {
			err = fmt.Errorf("session: malformed stored field %s", sessionFields[i])
		}
		return v
	}
	rec = record{
		id:           str(0),
		userID:       str(1),
		roles:        str(2),
		deviceInfo:   []byte(str(3)),
		preferences:  []byte(str(4)),
		createdAt:    num(5),
		lastActivity: num(6),
		idle:         num(7),
		absExpiry:    num(8),
	}
	return rec, true, err
}

func (r *redisBackend) create(ctx context.Context, rec record, ttl time.Duration) (record, error) {
	// The index first: a crash between the two steps leaves an index
	// entry without a session (ignored), never a session RevokeUser
	// cannot find.
	member := r.n.member(rec.id)
	score, err := scriptIndexAdd.exec(ctx, r.client, []string{r.n.user(rec.userID)},
		[]string{member, "rel", ms(ttl), ms(indexSlack)}).ToString()
	if err != nil {
		return record{}, err
	}
	if r.hook != nil {
		r.hook("create:indexed")
	}
	k := r.n.session(rec.id)
	defer r.recent.mark(k)
	vals, err := scriptCreate.exec(ctx, r.client, []string{k}, []string{
		rec.id, rec.userID, rec.roles, string(rec.deviceInfo), string(rec.preferences),
		itoa(rec.idle), ms(ttl), score, "create", "", "",
	}).ToArray()
	if err != nil {
		return record{}, err
	}
	return r.created(vals, rec, "create.lua")
}

// created completes rec from create.lua's reply.
func (r *redisBackend) created(vals []rueidis.RedisMessage, rec record, what string) (record, error) {
	n, err := ints(vals, 4, what)
	if err != nil {
		return record{}, err
	}
	r.learnTime(n[1])
	switch n[0] {
	case 1:
	case 0:
		return record{}, ErrExists
	case -1:
		return record{}, ErrNotFound
	default:
		return record{}, fmt.Errorf("session: %s returned code %d", what, n[0])
	}
	if len(vals) < 5 {
		return record{}, fmt.Errorf("session: %s returned %d values", what, len(vals))
	}
	roles, err := vals[4].ToString()
	if err != nil {
		return record{}, err
	}
	rec.roles, rec.lastActivity, rec.createdAt, rec.absExpiry = roles, n[1], n[2], n[3]
	return rec, nil
}

func (r *redisBackend) get(ctx context.Context, id string) (record, bool, error) {
	k := r.n.session(id)
	vals, err := r.client.Do(ctx, r.client.B().Hmget().Key(k).Field(sessionFields...).Build()).ToArray()
	if err != nil {
		return record{}, false, err
	}
	return parseRecord(vals)
}

func (r *redisBackend) peek(ctx context.Context, id string) (cached, bool, error) {
	k := r.n.session(id)
	if r.recent.fresh(k) {
		return parseCached(r.client.Do(ctx, r.client.B().Hmget().Key(k).Field(peekFields...).Build()))
	}
	return r.peekCached(ctx, k)
}

// peekCached reads the peek fields of the session key k through the
// client-side cache.
func (r *redisBackend) peekCached(ctx context.Context, k string) (cached, bool, error) {
	res := r.client.DoCache(ctx, r.client.B().Hmget().Key(k).Field(peekFields...).Cache(), r.cacheTTL)
	if res.Error() == nil {
		r.metrics.countCache(res.IsCacheHit())
	}
	return parseCached(res)
}

func parseCached(res rueidis.RedisResult) (cached, bool, error) {
	vals, err := res.ToArray()
	if err != nil {
		return cached{}, false, err
	}
	if len(vals) != len(peekFields) {
		return cached{}, false, fmt.Errorf("session: read %d fields, want %d", len(vals), len(peekFields))
	}
	if vals[0].IsNil() {
		return cached{}, false, nil
	}
	var c cached
	if c.roles, err = vals[1].ToString(); err != nil {
		return cached{}, false, err
	}
	la, err1 := vals[2].AsInt64()
	idle, err2 := vals[3].AsInt64()
	if err := errors.Join(err1, err2); err != nil {
		return cached{}, false, err
	}
	c.lastActivity, c.idle = la, idle
	return c, true, nil
}

func (r *redisBackend) update(ctx context.Context, id string, p patch) (record, bool, error) {
	flag := func(set bool) string {
		if set {
			return "1"
		}
		return "0"
	}
	var roles string
	if p.roles != nil {
		roles = *p.roles
	}
	k := r.n.session(id)
	defer r.recent.mark(k)
	vals, err := scriptUpdate.exec(ctx, r.client, []string{k}, []string{
		flag(p.roles != nil), roles,
		flag(p.deviceInfo != nil), string(p.deviceInfo),
		flag(p.preferences != nil), string(p.preferences),
	}).ToArray()
	if rueidis.IsRedisNil(err) {
		return record{}, false, nil
	}
	if err != nil {
		return record{}, false, err
	}
	rec, found, err := parseRecord(vals)
	if err == nil && found {
		r.learnTime(rec.lastActivity)
	}
	return rec, found, err
}

func (r *redisBackend) touch(ctx context.Context, id string, every time.Duration) (bool, error) {
	// The throttle is checked on this instance's cached copy first: when
	// it shows a live session with a recent activity, nothing is sent at
	// all. Otherwise touch.lua decides, atomically with the write: also
	// when the copy shows no session (it may predate a Create), and right
	// after this instance's own write (the copy may predate it; see
	// ownWriteWindow).
	k := r.n.session(id)
	if !r.recent.fresh(k) {
		c, found, err := r.peekCached(ctx, k)
		if err != nil {
			return false, err
		}
		if now, ok := r.redisNow(); found && ok && now-c.lastActivity < touchEvery(every, c.idle) {
			r.metrics.countTouch(touchSkippedLocal)
			return true, nil
		}
	}
	vals, err := scriptTouch.exec(ctx, r.client, []string{k}, []string{ms(every)}).ToArray()
	if err != nil {
		r.recent.mark(k) // it may have written
		return false, err
	}
	n, err := ints(vals, 2, "touch.lua")
	if err != nil {
		return false, err
	}
	r.learnTime(n[1])
	switch n[0] {
	case 0:
		return false, nil
	case 1:
		r.metrics.countTouch(touchSkipped)
	default:
		r.recent.mark(k)
		r.metrics.countTouch(touchWritten)
	}
	return true, nil
}

func (r *redisBackend) del(ctx context.Context, id string) error {
	k := r.n.session(id)
	defer r.recent.mark(k)
	vals, err := scriptDelete.exec(ctx, r.client, []string{k}, nil).AsStrSlice()
	if rueidis.IsRedisNil(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(vals) != 2 {
		return fmt.Errorf("session: delete.lua returned %d values", len(vals))
	}
	// Second step, another slot: a crash before it leaves an index entry
	// without a session, which readers ignore and index_add.lua removes
	// once its bound has passed.
	return r.unindex(ctx, vals[0], []string{r.n.member(id), vals[1]})
}

// unindex removes members from the user's index, each only if its score is
// the one given (pairs member, score).
func (r *redisBackend) unindex(ctx context.Context, userID string, pairs []string) error {
	if len(pairs) == 0 {
		return nil
	}
	return scriptIndexRem.exec(ctx, r.client, []string{r.n.user(userID)}, pairs).Error()
}

// indexed returns the members of the user's index and their scores.
func (r *redisBackend) indexed(ctx context.Context, userID string) (members, scores []string, err error) {
	flat, err := scriptIndexRead.exec(ctx, r.client, []string{r.n.user(userID)}, nil).AsStrSlice()
	if err != nil {
		return nil, nil, err
	}
	if len(flat)%2 != 0 {
		return nil, nil, fmt.Errorf("session: index_read.lua returned %d values", len(flat))
	}
	for i := 0; i < len(flat); i += 2 {
		members = append(members, flat[i])
		scores = append(scores, flat[i+1])
	}
	return members, scores, nil
}

// maxRotateAttempts bounds Rotate's copies of a session that keeps changing.
const maxRotateAttempts = 5

func (r *redisBackend) rotate(ctx context.Context, oldID, newID string, reseal func(*record) error) (record, error) {
	ok, nk := r.n.session(oldID), r.n.session(newID)
	defer r.recent.mark(ok)
	defer r.recent.mark(nk)
	for range maxRotateAttempts {
		// 1. Read the old session and its version.
		vals, err := r.client.Do(ctx, r.client.B().Hmget().Key(ok).Field(sessionFields...).Build()).ToArray()
		if err != nil {
			return record{}, err
		}
		rec, found, err := parseRecord(vals)
		if err != nil {
			return record{}, err
		}
		if !found {
			return record{}, ErrNotFound
		}
		version, err1 := vals[9].ToString()
		oldScore, err2 := vals[10].ToString()
		if err := errors.Join(err1, err2); err != nil {
			return record{}, fmt.Errorf("session: rotate: %w", err)
		}
		// The copy names the session it was made from, down to the
		// creation (the index score is new for every Create), so a retry
		// may replace it and nothing else may.
		from := r.n.member(oldID) + " " + oldScore
		if err := reseal(&rec); err != nil {
			return record{}, err
		}
		// 2. Index the new id (first, as in create).
		score, err := scriptIndexAdd.exec(ctx, r.client, []string{r.n.user(rec.userID)},
			[]string{r.n.member(newID), "abs", itoa(rec.absExpiry), ms(indexSlack)}).ToString()
		if err != nil {
			return record{}, err
		}
		// 3. Store the copy; a copy left by an earlier attempt is replaced.
		cvals, err := scriptCreate.exec(ctx, r.client, []string{nk}, []string{
			rec.id, rec.userID, rec.roles, string(rec.deviceInfo), string(rec.preferences),
			itoa(rec.idle), itoa(rec.absExpiry), score, "rotate", from, itoa(rec.createdAt),
		}).ToArray()
		if err != nil {
			return record{}, err
		}
		if rec, err = r.created(cvals, rec, "create.lua"); err != nil {
			return record{}, err
		}
		if r.hook != nil {
			r.hook("rotate:copied")
		}
		// 4. Delete the old session unless it changed since step 1.
		code, err := scriptRotateDel.exec(ctx, r.client, []string{ok}, []string{version, oldScore}).AsInt64()
		if err != nil {
			return record{}, err
		}
		switch code {
		case 1:
			// 5. Unindex the old id (a crash before leaves an entry
			// without a session: ignored).
			return rec, r.unindex(ctx, rec.userID, []string{r.n.member(oldID), oldScore})
		case -1:
			// Deleted or revoked meanwhile: so is the copy.
			if err := r.del(ctx, newID); err != nil {
				return record{}, err
			}
			return record{}, ErrNotFound
		}
		// Changed meanwhile (an update, a role change): copy again.
	}
	return record{}, ErrConflict
}

func (r *redisBackend) list(ctx context.Context, userID string) ([]record, error) {
	members, _, err := r.indexed(ctx, userID)
	if err != nil || len(members) == 0 {
		return nil, err
	}
	cmds := make(rueidis.Commands, len(members))
	for i, m := range members {
		cmds[i] = r.client.B().Hmget().Key(r.n.sessionOf(m)).Field(sessionFields...).Build()
	}
	var out []record
	for _, res := range r.client.DoMulti(ctx, cmds...) {
		vals, err := res.ToArray()
		if err != nil {
			return nil, err
		}
		rec, found, err := parseRecord(vals)
		if err != nil {
			return nil, err
		}
		// Entries without a session, or whose id another user has taken
		// since, are skipped.
		if found && rec.userID == userID {
			out = append(out, rec)
		}
	}
	return out, nil
}

func (r *redisBackend) revokeUser(ctx context.Context, userID string) (int, error) {
	members, scores, err := r.indexed(ctx, userID)
	if err != nil || len(members) == 0 {
		return 0, err
	}
	ks := make([]string, len(members))
	for i, m := range members {
		ks[i] = r.n.sessionOf(m)
	}
	defer func() {
		for _, k := range ks {
			r.recent.mark(k)
		}
	}()
	var revoked int
	var pairs []string
	var errs []error
	for i, res := range scriptRevoke.execMany(ctx, r.client, ks, func(int) []string { return []string{userID} }) {
		n, err := res.AsInt64()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if n == 1 {
			revoked++
			pairs = append(pairs, members[i], scores[i])
		}
	}
	// Only the revoked entries leave the index: an entry without a session
	// may belong to a Create between its two steps, which must stay
	// findable (the entry goes once its bound has passed).
	if err := r.unindex(ctx, userID, pairs); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return revoked, errors.Join(errs...)
	}
	return revoked, nil
}

func (r *redisBackend) setUserRoles(ctx context.Context, userID, roles string) (int, error) {
	members, _, err := r.indexed(ctx, userID)
	if err != nil || len(members) == 0 {
		return 0, err
	}
	ks := make([]string, len(members))
	for i, m := range members {
		ks[i] = r.n.sessionOf(m)
	}
	defer func() {
		for _, k := range ks {
			r.recent.mark(k)
		}
	}()
	marker := ms(r.markerTTL)
	var updated int
	var errs []error
	for _, res := range scriptSetRoles.execMany(ctx, r.client, ks, func(int) []string { return []string{userID, roles, marker} }) {
		n, err := res.AsInt64()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if n == 1 {
			updated++
		}
	}
	return updated, errors.Join(errs...)
}

// recentWrites remembers the session keys this instance wrote in the last
// ownWriteWindow (see there).
type recentWrites struct {
	mu      sync.Mutex
	m       map[string]int64 // key → monotonic ns of the write
	sweepAt int
}

// epoch anchors the monotonic clock of recentWrites.
var epoch = time.Now()

func (w *recentWrites) mark(k string) {
	now := int64(time.Since(epoch))
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.m) >= w.sweepAt {
		for key, at := range w.m {
			if now-at >= int64(ownWriteWindow) {
				delete(w.m, key)
			}
		}
		w.sweepAt = max(64, 2*len(w.m))
	}
	w.m[k] = now
}

// fresh reports whether k was written here within ownWriteWindow.
func (w *recentWrites) fresh(k string) bool {
	now := int64(time.Since(epoch))
	w.mu.Lock()
	defer w.mu.Unlock()
	at, ok := w.m[k]
	if ok && now-at >= int64(ownWriteWindow) {
		delete(w.m, k)
		return false
	}
	return ok
}
