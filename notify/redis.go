package notify

import (
	"cmp"
	"context"
	"crypto/sha1"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/keys"
	"github.com/elevacare/eleva-redis/internal/lograte"
)

// The Lua scripts; KEYS and ARGV are documented at the top of each file, the
// data model at the top of common.lua, which is prepended to each. On
// Cluster every script's keys share one hash tag (a shard), so each runs in
// one slot; on a single Redis an enqueue, due or claim call may carry
// several shards' keys (see groupCalls), every other script still one
// shard's.
var (
	//go:embed common.lua
	luaCommon string
	//go:embed enqueue.lua
	luaEnqueue string
	//go:embed due.lua
	luaDue string
	//go:embed claim.lua
	luaClaim string
	//go:embed ack.lua
	luaAck string
	//go:embed nack.lua
	luaNack string
	//go:embed extend.lua
	luaExtend string
	//go:embed pending.lua
	luaPending string
	//go:embed remove.lua
	luaRemove string
	//go:embed cancel.lua
	luaCancel string
	//go:embed requeue.lua
	luaRequeue string
	//go:embed stats.lua
	luaStats string
	//go:embed dead.lua
	luaDead string

	scriptEnqueue = newScript("enqueue", luaEnqueue)
	scriptDue     = newScript("due", luaDue)
	scriptClaim   = newScript("claim", luaClaim)
	scriptAck     = newScript("ack", luaAck)
	scriptNack    = newScript("nack", luaNack)
	scriptExtend  = newScript("extend", luaExtend)
	scriptPending = newScript("pending", luaPending)
	scriptRemove  = newScript("remove", luaRemove)
	scriptCancel  = newScript("cancel", luaCancel)
	scriptRequeue = newScript("requeue", luaRequeue)
	scriptStats   = newScript("stats", luaStats)
	scriptDead    = newScript("dead", luaDead)
)

// script is a Lua script (common.lua + its own file) run with EVALSHA,
// falling back to EVAL when the server does not know it.
type script struct {
	name, src, sha string
}

func newScript(name, body string) *script {
	src := luaCommon + body
	sum := sha1.Sum([]byte(src))
	return &script{name: name, src: src, sha: hex.EncodeToString(sum[:])}
}

// call is one script invocation.
type call struct {
	s          *script
	keys, args []string
}

const keyCapability = "nq"

// redisBackend is the Redis backend.
type redisBackend struct {
	client       rueidis.Client
	kb           keys.Builder
	timeout      time.Duration
	shards       int
	shardKs      []shardKeys // per shard, built by NewRedis
	lease        time.Duration
	deadCap      int              // per shard
	deliveredCap int              // per shard
	log          *lograte.Limiter // failures, at most one line per 5s
	cursor       atomic.Uint64
	// onScript, when set (tests), sees every script's name and keys before
	// it is sent.
	onScript func(name string, keys []string)
	wake     wakePublisher
	acks     combiner[*ackReq]
	enqs     combiner[*enqReq]
}

var _ backend = (*redisBackend)(nil)

// NewRedis returns a Queue kept in Redis (standalone, Sentinel or Cluster)
// through client, shared by every instance using the same Prefix,
// KeyHashSecret and Shards.
//
// Keys (the data model is documented in common.lua and docs/notify.md):
// every user belongs to one of Config.Shards shards (crc32 of the key-safe
// user id), and all keys of a shard, the shard's due index and every one of
// its users' queues, share the hash tag "{<shard>}":
//
//	<prefix>nq:{<s>}:due | :data | :w | :r | :dead | :done | :stats
//	<prefix>nq:{<s>}:u:<user> | :u:<user>:f | :u:<user>:l
//
// No key has a TTL: pending notifications never expire with a key. Run
// Redis with maxmemory-policy noeviction.
//
// NewRedis has no error result: when cfg is invalid (a bad Prefix, see
// keys.New) or client is nil, the problem is logged once and every call
// returns an error wrapping ErrBackend.
func NewRedis(client rueidis.Client, cfg Config) Queue {
	var cfgErr error
	kb, err := keys.New(cfg.Prefix, cfg.KeyHashSecret)
	switch {
	case err != nil:
		cfgErr = fmt.Errorf("%w: %w", ErrBackend, err)
	case client == nil:
		cfgErr = fmt.Errorf("%w: NewRedis was given a nil client", ErrBackend)
	}
	if cfgErr != nil {
		cfg.logger().Error("notify: unusable Redis queue configuration; every call will fail", "err", cfgErr.Error())
	}
	shards := cfg.shards()
	r := &redisBackend{
		client:       client,
		kb:           kb,
		timeout:      cfg.timeout(),
		shards:       shards,
		lease:        cfg.lease(),
		deadCap:      (cfg.deadCap() + shards - 1) / shards,
		deliveredCap: (cfg.deliveredCap() + shards - 1) / shards,
		log:          lograte.New(cfg.logger(), 0),
	}
	// The shards' key names, built once: every call names several.
	r.shardKs = make([]shardKeys, shards)
	for s := range r.shardKs {
		tag := r.kb.RawKey(keyCapability, strconv.Itoa(s))
		r.shardKs[s] = shardKeys{tag: tag, due: tag + ":due", data: tag + ":data", w: tag + ":w", r: tag + ":r",
			dead: tag + ":dead", done: tag + ":done", statsKey: tag + ":stats"}
	}
	return &queue{cfg: cfg, b: r, m: newMetrics(cfg.Registerer), kind: "redis", cfgErr: cfgErr}
}

// shardKeys are the per-shard keys.
type shardKeys struct {
	tag                                   string // <prefix>nq:{<s>}
	due, data, w, r, dead, done, statsKey string
}

func (r *redisBackend) shard(s int) shardKeys { return r.shardKs[s] }

// userKeys are one user's keys and its key-safe id.
type userKeys struct {
	shardKeys
	uid, queue, inflight, lease string
}

func (r *redisBackend) userByUID(uid string) userKeys {
	sk := r.shard(int(crc32.ChecksumIEEE([]byte(uid)) % uint32(r.shards)))
	q := sk.tag + ":u:" + uid
	return userKeys{shardKeys: sk, uid: uid, queue: q, inflight: q + ":f", lease: q + ":l"}
}

func (r *redisBackend) user(userID string) userKeys { return r.userByUID(r.kb.ID(userID)) }

func itoa(v int64) string { return strconv.FormatInt(v, 10) }

// run sends calls in one pipeline (each to its slot's node) under
// Config.Timeout and returns their results; err is for the whole call.
func (r *redisBackend) run(ctx context.Context, op string, calls []call) ([]rueidis.RedisResult, error) {
	cctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	cmds := make(rueidis.Commands, len(calls))
	for i, c := range calls {
		if r.onScript != nil {
			r.onScript(c.s.name, c.keys)
		}
		cmds[i] = r.client.B().Evalsha().Sha1(c.s.sha).Numkeys(int64(len(c.keys))).Key(c.keys...).Arg(c.args...).Build()
	}
	res := r.client.DoMulti(cctx, cmds...)
	var again []int
	for i, x := range res {
		if e, ok := rueidis.IsRedisErr(x.Error()); ok && e.IsNoScript() {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		cmds = cmds[:0]
		for _, i := range again {
			c := calls[i]
			cmds = append(cmds, r.client.B().Eval().Script(c.s.src).Numkeys(int64(len(c.keys))).Key(c.keys...).Arg(c.args...).Build())
		}
		for j, x := range r.client.DoMulti(cctx, cmds...) {
			res[again[j]] = x
		}
	}
	for _, x := range res {
		if err := x.Error(); err != nil {
			return res, r.fail(ctx, op, err)
		}
	}
	return res, nil
}

// fail maps a failure to the caller's ctx error when the caller gave up,
// ErrBackend otherwise (logged, rate-limited: an outage must not flood the
// log).
func (r *redisBackend) fail(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("notify: %s: %w", op, ctx.Err())
	}
	r.log.Log(slog.LevelWarn, "notify: Redis call failed", "op", op, "err", err.Error())
	return fmt.Errorf("%w: %s: %w", ErrBackend, op, err)
}

func (r *redisBackend) one(ctx context.Context, op string, c call) (rueidis.RedisResult, error) {
	res, err := r.run(ctx, op, []call{c})
	if err != nil {
		return rueidis.RedisResult{}, err
	}
	return res[0], nil
}

func (r *redisBackend) bad(ctx context.Context, op string, err error) error {
	return r.fail(ctx, op, fmt.Errorf("unexpected reply: %w", err))
}

func msOf(t time.Time) string {
	if t.IsZero() {
		return "0"
	}
	return itoa(t.UnixMilli())
}

// maxEnqueueBatch is the most items one enqueue script call carries. The
// items of an EnqueueMany, and concurrent Enqueues (see enqReq), go in as
// few calls as the topology allows (all in one on a single Redis, one per
// shard on Cluster, where a script's keys must share a slot), so a call's
// fixed cost is shared: about a fifth of a lone enqueue's server time
// (bench/README.md). The cap keeps any one call short (about 40µs of server
// time per item, so about 1.3ms), so other clients' commands are not held
// up behind a long script.
const maxEnqueueBatch = 32

// enqReq is one Enqueue in the backend's enqueue combiner (combine.go):
// concurrent Enqueues share enqueue.lua calls, as EnqueueMany's items do.
type enqReq struct {
	it  item
	res Result
	err error
}

func (r *redisBackend) enqueue(ctx context.Context, items []item) ([]Result, error) {
	if len(items) != 1 {
		// EnqueueMany: its items already share calls.
		out, errs := r.enqueueNow(ctx, items)
		for _, err := range errs {
			if err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	req := &enqReq{it: items[0]}
	if err := r.enqs.do(ctx, req, r.timeout, r.sendEnqueues); err != nil {
		return nil, r.combineFailed(ctx, "enqueue", err)
	}
	if req.err != nil {
		return nil, req.err
	}
	return []Result{req.res}, nil
}

// sendEnqueues sends one round of Enqueues; each gets its call's result.
func (r *redisBackend) sendEnqueues(ctx context.Context, reqs []*enqReq) {
	items := make([]item, len(reqs))
	for i, q := range reqs {
		items[i] = q.it
	}
	out, errs := r.enqueueNow(ctx, items)
	for i, q := range reqs {
		q.res, q.err = out[i], errs[i]
	}
}

// enqueueNow sends the items' calls in one pipeline and returns each
// item's result, or the error of its call.
func (r *redisBackend) enqueueNow(ctx context.Context, items []item) ([]Result, []error) {
	groups, calls := r.enqueueCalls(items)
	// run's error is the first failed call's (logged once, mapped to ctx's
	// error when ctx ended); every failed call reports it.
	res, runErr := r.run(ctx, "enqueue", calls)
	out, errs := make([]Result, len(items)), make([]error, len(items))
	for j, x := range res {
		err := runErr
		if x.Error() == nil {
			err = r.enqueueResults(ctx, x, groups[j], items, out)
		}
		for _, i := range groups[j] {
			errs[i] = err
		}
	}
	return out, errs
}

// enqueueCalls groups items into enqueue.lua calls (by shard on Cluster),
// keeping their order within a group (an id given twice is then stored
// once, the first time), in chunks of at most maxEnqueueBatch.
func (r *redisBackend) enqueueCalls(items []item) ([][]int, []call) {
	users := make([]userKeys, len(items))
	for i, it := range items {
		users[i] = r.user(it.n.UserID)
	}
	groups := r.groupCalls(len(items), maxEnqueueBatch, func(i int) string { return users[i].tag })
	calls := make([]call, len(groups))
	for j, g := range groups {
		ks := make([]string, 0, 7*len(g))
		args := make([]string, 0, 7*len(g))
		for _, i := range g {
			u, n := users[i], items[i].n
			ks = append(ks, u.due, u.data, u.w, u.statsKey, u.done, u.queue, u.lease)
			args = append(args, u.uid, n.ID, strconv.Itoa(n.Priority.band()), msOf(n.ScheduledFor), msOf(n.ExpiresAt),
				strconv.Itoa(n.MaxAttempts), string(items[i].payload))
		}
		calls[j] = call{s: scriptEnqueue, keys: ks, args: args}
	}
	return groups, calls
}

// enqueueResults writes the results of one enqueue.lua call, of the items
// g, into out.
func (r *redisBackend) enqueueResults(ctx context.Context, x rueidis.RedisResult, g []int, items []item, out []Result) error {
	v, err := x.ToArray()
	if err != nil || len(v) != 1+2*len(g) {
		return r.bad(ctx, "enqueue", fmt.Errorf("%d elements for %d items, %v", len(v), len(g), err))
	}
	now, _ := v[0].AsInt64()
	for k, i := range g {
		created, _ := v[1+2*k].AsInt64()
		meta, _ := v[2+2*k].ToString()
		out[i] = Result{ID: items[i].n.ID, Created: created == 1}
		if meta == "delivered" {
			out[i].State = StateDelivered
			continue
		}
		m, err := parseMeta(meta)
		if err != nil {
			return r.bad(ctx, "enqueue", err)
		}
		out[i].State = m.state(now)
	}
	return nil
}

// meta is the mutable part of a stored notification (see common.lua).
type meta struct {
	st                   byte
	band                 int
	due, sched, expires  int64
	attempts, maxAttempt int
	lastError            string
}

func parseMeta(s string) (meta, error) {
	f := strings.SplitN(s, "|", 9)
	if len(f) != 9 || len(f[0]) != 1 {
		return meta{}, fmt.Errorf("bad meta %q", s)
	}
	var m meta
	var errs [6]error
	m.st = f[0][0]
	m.band, errs[0] = strconv.Atoi(f[2])
	m.due, errs[1] = strconv.ParseInt(f[3], 10, 64)
	m.sched, errs[2] = strconv.ParseInt(f[4], 10, 64)
	m.expires, errs[3] = strconv.ParseInt(f[5], 10, 64)
	m.attempts, errs[4] = strconv.Atoi(f[6])
	m.maxAttempt, errs[5] = strconv.Atoi(f[7])
	for _, e := range errs {
		if e != nil {
			return meta{}, fmt.Errorf("bad meta %q: %w", s, e)
		}
	}
	m.lastError = f[8]
	return m, nil
}

// state is the HTTP API state of an item with this meta at now (ms).
func (m meta) state(now int64) State {
	switch m.st {
	case 'f':
		return StateInflight
	case 'd':
		return StateDead
	}
	switch {
	case m.due <= now:
		return StatePending
	case m.attempts > 0:
		return StateRetrying
	}
	return StateScheduled
}

func msTime(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

func decode(id, rawPayload, rawMeta string, now int64) (Notification, error) {
	var p payload
	if err := json.Unmarshal([]byte(rawPayload), &p); err != nil {
		return Notification{}, fmt.Errorf("bad payload: %w", err)
	}
	m, err := parseMeta(rawMeta)
	if err != nil {
		return Notification{}, err
	}
	return Notification{ID: id, UserID: p.U, Type: p.T, Title: p.H, Message: p.M, Data: p.D,
		Priority: priorityOfBand(m.band), ScheduledFor: msTime(m.sched), ExpiresAt: msTime(m.expires),
		Attempts: m.attempts, MaxAttempts: m.maxAttempt, State: m.state(now), LastError: m.lastError}, nil
}

// triples decodes {id, payload, meta, ...} from v[start:].
func triples(v []rueidis.RedisMessage, start int, now int64) ([]Notification, error) {
	if (len(v)-start)%3 != 0 {
		return nil, fmt.Errorf("%d elements", len(v))
	}
	out := make([]Notification, 0, (len(v)-start)/3)
	for i := start; i+2 < len(v); i += 3 {
		id, _ := v[i].ToString()
		p, _ := v[i+1].ToString()
		m, _ := v[i+2].ToString()
		n, err := decode(id, p, m, now)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

func (r *redisBackend) pending(ctx context.Context, userID string, limit int) ([]Notification, error) {
	u := r.user(userID)
	x, err := r.one(ctx, "pending", call{s: scriptPending,
		keys: []string{u.due, u.queue, u.lease, u.data, u.w, u.r, u.dead, u.statsKey},
		args: []string{u.uid, strconv.Itoa(limit), strconv.Itoa(r.deadCap)}})
	if err != nil {
		return nil, err
	}
	v, err := x.ToArray()
	if err != nil || len(v) == 0 {
		return nil, r.bad(ctx, "pending", fmt.Errorf("%v", err))
	}
	now, _ := v[0].AsInt64()
	out, err := triples(v, 1, now)
	if err != nil {
		return nil, r.bad(ctx, "pending", err)
	}
	return out, nil
}

func (r *redisBackend) remove(ctx context.Context, userID string, ids []string) (int, error) {
	u := r.user(userID)
	args := append([]string{u.uid, strconv.Itoa(r.deliveredCap)}, ids...)
	x, err := r.one(ctx, "remove", call{s: scriptRemove, keys: []string{u.due, u.queue, u.lease, u.data, u.w, u.r, u.statsKey, u.done}, args: args})
	if err != nil {
		return 0, err
	}
	n, err := x.AsInt64()
	if err != nil {
		return 0, r.bad(ctx, "remove", err)
	}
	return int(n), nil
}

func (r *redisBackend) cancel(ctx context.Context, userID, id string) (bool, error) {
	u := r.user(userID)
	x, err := r.one(ctx, "cancel", call{s: scriptCancel,
		keys: []string{u.due, u.queue, u.inflight, u.lease, u.data, u.w, u.r, u.dead, u.statsKey}, args: []string{u.uid, id}})
	if err != nil {
		return false, err
	}
	n, err := x.AsInt64()
	if err != nil {
		return false, r.bad(ctx, "cancel", err)
	}
	return n == 1, nil
}

func (r *redisBackend) requeueDead(ctx context.Context, userID, id string) (bool, error) {
	u := r.user(userID)
	x, err := r.one(ctx, "requeue_dead", call{s: scriptRequeue,
		keys: []string{u.due, u.queue, u.lease, u.data, u.w, u.dead}, args: []string{u.uid, id}})
	if err != nil {
		return false, err
	}
	n, err := x.AsInt64()
	if err != nil {
		return false, r.bad(ctx, "requeue_dead", err)
	}
	return n == 1, nil
}

func (r *redisBackend) stats(ctx context.Context) (Stats, error) {
	calls := make([]call, r.shards)
	for s := range calls {
		k := r.shard(s)
		calls[s] = call{s: scriptStats, keys: []string{k.w, k.r, k.dead, k.statsKey}}
	}
	res, err := r.run(ctx, "stats", calls)
	if err != nil {
		return Stats{}, err
	}
	var st Stats
	for _, x := range res {
		v, err := x.AsIntSlice()
		if err != nil || len(v) != 7 {
			return Stats{}, r.bad(ctx, "stats", fmt.Errorf("%d elements, %v", len(v), err))
		}
		st.Scheduled += v[0]
		st.Pending += v[1]
		st.Inflight += v[2]
		st.Retrying += v[3]
		st.Dead += v[4]
		st.Delivered += v[5]
		st.DeadDropped += v[6]
	}
	return st, nil
}

func (r *redisBackend) listDead(ctx context.Context, limit int) ([]Notification, error) {
	calls := make([]call, r.shards)
	for s := range calls {
		k := r.shard(s)
		calls[s] = call{s: scriptDead, keys: []string{k.dead, k.data}, args: []string{strconv.Itoa(limit)}}
	}
	res, err := r.run(ctx, "list_dead", calls)
	if err != nil {
		return nil, err
	}
	type dead struct {
		n  Notification
		at int64
	}
	var all []dead
	for _, x := range res {
		v, err := x.ToArray()
		if err != nil || len(v) == 0 || (len(v)-1)%3 != 0 {
			return nil, r.bad(ctx, "list_dead", fmt.Errorf("%d elements, %v", len(v), err))
		}
		now, _ := v[0].AsInt64()
		for i := 1; i+2 < len(v); i += 3 {
			ref, _ := v[i].ToString()
			p, _ := v[i+1].ToString()
			ms, _ := v[i+2].ToString()
			_, id, _ := strings.Cut(ref, ":")
			n, err := decode(id, p, ms, now)
			if err != nil {
				return nil, r.bad(ctx, "list_dead", err)
			}
			m, _ := parseMeta(ms)
			all = append(all, dead{n, m.due})
		}
	}
	slices.SortStableFunc(all, func(a, b dead) int {
		if a.at != b.at {
			return cmp.Compare(b.at, a.at)
		}
		return strings.Compare(b.n.ID, a.n.ID)
	})
	out := make([]Notification, 0, min(limit, len(all)))
	for _, d := range all[:min(limit, len(all))] {
		out = append(out, d.n)
	}
	return out, nil
}

// claimChunk is how many shards' due indexes one round of a Claim reads;
// claimFirstChunk how many its first round reads (with many due users, a
// few shards suffice; an idle queue costs one more round trip). On a single
// Redis a round is one due.lua call; on Cluster one call per shard.
const (
	claimChunk      = 64
	claimFirstChunk = 8
)

// maxClaimBatch is the most users one claim.lua call leases, so that a
// call stays short (about 30µs of server time per user), like
// maxEnqueueBatch.
const maxClaimBatch = 32

// groupCalls splits n items into script calls: by group key (a shard's
// hash tag on Cluster, where a script's keys must share a slot; one group on
// a single Redis), each group's items in order, in chunks of at most max.
// It returns each call's item indexes.
func (r *redisBackend) groupCalls(n, max int, tag func(i int) string) [][]int {
	cluster := r.client.Mode() == rueidis.ClientModeCluster
	var groups [][]int
	open := map[string]int{} // group key -> index in groups of its chunk being filled
	for i := range n {
		gk := ""
		if cluster {
			gk = tag(i)
		}
		j, ok := open[gk]
		if !ok || len(groups[j]) == max {
			j = len(groups)
			open[gk] = j
			groups = append(groups, make([]int, 0, min(max, n)))
		}
		groups[j] = append(groups[j], i)
	}
	return groups
}

func (r *redisBackend) claim(ctx context.Context, maxUsers, perUser int) ([]Batch, error) {
	// 1. Find due users, shard by shard from a rotating start, so that no
	// shard starves the others.
	start := int(r.cursor.Add(1) % uint64(r.shards))
	var users []string
	for done := 0; done < r.shards && len(users) < maxUsers; {
		n := min(claimChunk, r.shards-done)
		if done == 0 {
			n = min(claimFirstChunk, n)
		}
		dues := make([]string, n)
		for i := range dues {
			dues[i] = r.shard((start + done + i) % r.shards).due
		}
		done += n
		left := strconv.Itoa(maxUsers - len(users))
		var calls []call
		for _, g := range r.groupCalls(n, n, func(i int) string { return dues[i] }) {
			ks := make([]string, len(g))
			for k, i := range g {
				ks[k] = dues[i]
			}
			calls = append(calls, call{s: scriptDue, keys: ks, args: []string{left}})
		}
		res, err := r.run(ctx, "claim", calls)
		if err != nil {
			return nil, err
		}
		for _, x := range res {
			v, err := x.AsStrSlice()
			if err != nil || len(v) == 0 {
				return nil, r.bad(ctx, "claim", fmt.Errorf("%v", err))
			}
			users = append(users, v[1:]...)
		}
	}
	users = users[:min(len(users), maxUsers)]
	if len(users) == 0 {
		return nil, nil
	}
	// 2. Claim them, as few users per call as the topology allows; a user
	// another claimer took first is skipped.
	uks := make([]userKeys, len(users))
	tokens := make([]string, len(users))
	for i, uid := range users {
		uks[i] = r.userByUID(uid)
		tokens[i] = newToken()
	}
	groups := r.groupCalls(len(users), maxClaimBatch, func(i int) string { return uks[i].tag })
	calls := make([]call, len(groups))
	for j, g := range groups {
		ks := make([]string, 0, 9*len(g))
		args := make([]string, 0, 3+2*len(g))
		args = append(args, itoa(r.lease.Milliseconds()), strconv.Itoa(perUser), strconv.Itoa(r.deadCap))
		for _, i := range g {
			u := uks[i]
			ks = append(ks, u.due, u.queue, u.inflight, u.lease, u.data, u.w, u.r, u.dead, u.statsKey)
			args = append(args, u.uid, tokens[i])
		}
		calls[j] = call{s: scriptClaim, keys: ks, args: args}
	}
	res, err := r.run(ctx, "claim", calls)
	if err != nil {
		return nil, err
	}
	var out []Batch
	for j, x := range res {
		g := groups[j]
		v, err := x.ToArray()
		if err != nil || len(v) != 1+len(g) {
			return nil, r.bad(ctx, "claim", fmt.Errorf("%d elements for %d users, %v", len(v), len(g), err))
		}
		now, _ := v[0].AsInt64()
		for k, i := range g {
			e, err := v[1+k].ToArray()
			if err != nil || len(e) < 2 {
				return nil, r.bad(ctx, "claim", fmt.Errorf("%d elements, %v", len(e), err))
			}
			exp, _ := e[0].AsInt64()
			if exp == 0 {
				continue
			}
			items, err := triples(e, 2, now)
			if err != nil {
				return nil, r.bad(ctx, "claim", err)
			}
			out = append(out, Batch{UserID: items[0].UserID, Items: items, Token: tokens[i], ExpiresAt: time.UnixMilli(exp)})
		}
	}
	return out, nil
}

func (r *redisBackend) nack(ctx context.Context, b Batch, fails []nackItem) (int, error) {
	u := r.user(b.UserID)
	args := make([]string, 0, 3+4*len(fails))
	args = append(args, u.uid, b.Token, strconv.Itoa(r.deadCap))
	for _, f := range fails {
		perm := "0"
		if f.permanent {
			perm = "1"
		}
		args = append(args, f.id, itoa(f.delay.Milliseconds()), perm, f.err)
	}
	x, err := r.one(ctx, "nack", call{s: scriptNack, keys: []string{u.due, u.queue, u.inflight, u.lease, u.data, u.r, u.dead, u.statsKey}, args: args})
	if err != nil {
		return 0, err
	}
	v, err := x.AsIntSlice()
	if err != nil || len(v) == 0 {
		return 0, r.bad(ctx, "nack", fmt.Errorf("%v", err))
	}
	if v[0] < 0 {
		return 0, leaseLost("nack")
	}
	return int(v[0]), nil
}

func (r *redisBackend) extend(ctx context.Context, b *Batch) error {
	u := r.user(b.UserID)
	x, err := r.one(ctx, "extend", call{s: scriptExtend, keys: []string{u.due, u.lease}, args: []string{u.uid, b.Token, itoa(r.lease.Milliseconds())}})
	if err != nil {
		return err
	}
	exp, err := x.AsInt64()
	if err != nil {
		return r.bad(ctx, "extend", err)
	}
	if exp < 0 {
		return leaseLost("extend")
	}
	b.ExpiresAt = time.UnixMilli(exp)
	return nil
}
