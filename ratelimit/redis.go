package ratelimit

import (
	"context"
	"crypto/sha1"
	_ "embed"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/keys"
)

// The Lua sources, assembled at init into the scripts below: each
// algorithm's formulas are written once, as blocks in its own file, and
// pasted into both kinds of script (see common.lua).
var (
	//go:embed common.lua
	luaCommon string
	//go:embed slidinglog.lua
	luaSlidingLog string
	//go:embed slidingwindow.lua
	luaSlidingWindow string
	//go:embed gcra.lua
	luaGCRA string
	//go:embed fixedwindow.lua
	luaFixedWindow string
	//go:embed single.lua
	luaSingle string
	//go:embed algfuncs.lua
	luaAlgFuncs string
	//go:embed allowall.lua
	luaAllowAll string
)

// Scripts. A single check (Allow, AllowN, Peek, Record: the hot path) runs
// a short script holding only its algorithm's code, inline, for its mode:
// singleScripts[algIndex(alg)][modeIndex(mode)]. AllowAll groups and their
// refunds run one script holding every algorithm.
var (
	singleScripts  = assembleSingles()
	allowAllSource = assembleAllowAll()
	allowAllScript = rueidis.NewLuaScript(allowAllSource)
	allowAllSHA    = func() string { s := sha1.Sum([]byte(allowAllSource)); return hex.EncodeToString(s[:]) }()
)

// algSources are the algorithm files, indexed like Algorithms (algIndex).
var algSources = [...]string{luaSlidingLog, luaSlidingWindow, luaGCRA, luaFixedWindow}

// singleModes are the modes of the single-check scripts, indexed by
// modeIndex.
var singleModes = [...]string{modeAllow, modePeek, modeRecord}

// modeIndex is mode's position in singleModes.
func modeIndex(mode string) int {
	switch mode {
	case modePeek:
		return 1
	case modeRecord:
		return 2
	default:
		return 0
	}
}

// blocks splits an algorithm file into its eval, write and refund blocks:
// the lines after "--:eval", "--:write" and "--:refund" (the file's header
// comment, before the first marker, is dropped).
func blocks(src string) map[string]string {
	b := map[string]string{}
	cur := ""
	for _, line := range strings.SplitAfter(src, "\n") {
		if name, ok := strings.CutPrefix(strings.TrimSpace(line), "--:"); ok {
			cur = name
			continue
		}
		if cur != "" {
			b[cur] += line
		}
	}
	return b
}

// paste replaces each line of tmpl that is just "--{name}" (indentation
// aside) with blocks[name].
func paste(tmpl string, blocks map[string]string) string {
	var sb strings.Builder
	for _, line := range strings.SplitAfter(tmpl, "\n") {
		t := strings.TrimSpace(line)
		if name, ok := strings.CutPrefix(t, "--{"); ok && strings.HasSuffix(name, "}") {
			if code, ok := blocks[strings.TrimSuffix(name, "}")]; ok {
				sb.WriteString(code)
				continue
			}
		}
		sb.WriteString(line)
	}
	return sb.String()
}

// assembleSingle returns the single-check script of the algorithm whose
// file is alg, for mode (see single.lua).
func assembleSingle(alg, mode string) string {
	b := blocks(alg)
	b["mode"] = "local mode = '" + mode + "'\n"
	return luaCommon + paste(luaSingle, b)
}

// assembleSingles returns every single-check script, indexed by algIndex
// and modeIndex.
func assembleSingles() (s [len(algSources)][len(singleModes)]*rueidis.Lua) {
	for a, alg := range algSources {
		for m, mode := range singleModes {
			s[a][m] = rueidis.NewLuaScript(assembleSingle(alg, mode))
		}
	}
	return s
}

// assembleAllowAll returns the AllowAll script (see allowall.lua).
func assembleAllowAll() string {
	var sb strings.Builder
	sb.WriteString(luaCommon)
	for i, alg := range algSources {
		c := algCode(Algorithms[i])
		names := strings.NewReplacer("X_eval", c+"_eval", "X_write", c+"_write", "X_refund", c+"_refund")
		sb.WriteString(names.Replace(paste(luaAlgFuncs, blocks(alg))))
	}
	sb.WriteString(luaAllowAll)
	return sb.String()
}

// Script modes: those of the single-check scripts (allow, peek, record; see
// single.lua) and ARGV[1] of allowall.lua (allow, refund).
const (
	modeAllow  = "allow"
	modePeek   = "peek"
	modeRecord = "record"
	modeRefund = "refund"
)

// keyCapability is the capability segment of every rate-limit key.
const keyCapability = "rl"

// fieldsPerCheck is the number of allowall.lua ARGV fields per check after
// the mode, and replyPerCheck its number of reply values per check.
const (
	fieldsPerCheck = 6
	replyPerCheck  = 5
)

// algCode is the short algorithm suffix of a state key and the scripts'
// algorithm code.
func algCode(a Algorithm) string {
	switch a {
	case SlidingWindow:
		return "sw"
	case GCRA:
		return "gc"
	case FixedWindow:
		return "fw"
	default:
		return "sl"
	}
}

// redisLimiter is the Redis backend: one EVALSHA per decision (one per hash
// slot for AllowAll, pipelined), Redis TIME, failure policy on error.
type redisLimiter struct {
	client rueidis.Client
	keys   keys.Builder
	// cfgErr, when set, is returned by every call: NewRedis has no error
	// result, and a bad configuration must not panic nor silently use
	// another key space.
	cfgErr    error
	fo        *failover
	decisions *decisionCounters
}

var _ Limiter = (*redisLimiter)(nil)

// NewRedis returns a Limiter that keeps its state in Redis (standalone,
// Sentinel or Cluster) through client, shared by every instance using the
// same Prefix and KeyHashSecret.
//
// State keys are "<prefix>rl:{<tag>}:<alg>" for a check whose Tag is empty or
// equal to its Key (every Allow, AllowN, Peek, Record), and
// "<prefix>rl:{<tag>}:<key>:<alg>" otherwise, where tag and key are escaped
// (or HMACed with KeyHashSecret) by internal/keys, and alg is sl, sw, gc or
// fw.
//
// NewRedis has no error result: when cfg.Prefix is invalid (see keys.New) or
// client is nil, the problem is logged once and every call returns an error
// (wrapping keys.ErrInvalidPrefix, or ErrBackend for a nil client) rather
// than deciding anything.
//
// Each call runs with a deadline of cfg.Timeout; when Redis fails, times out
// or the circuit breaker is open, the rule's failure policy decides (see
// FailurePolicy) and the decision is marked Degraded.
func NewRedis(client rueidis.Client, cfg Config) Limiter {
	m := newMetrics(cfg.Registerer)
	r := &redisLimiter{client: client, fo: newFailover("redis", cfg, m), decisions: m.decisionCounters("redis")}
	b, err := keys.New(cfg.Prefix, cfg.KeyHashSecret)
	switch {
	case err != nil:
		r.cfgErr = fmt.Errorf("ratelimit: %w", err)
	case client == nil:
		r.cfgErr = fmt.Errorf("%w: NewRedis was given a nil client", ErrBackend)
	}
	if r.cfgErr != nil {
		r.fo.log.Error("ratelimit: unusable Redis limiter configuration; every call will fail", "err", r.cfgErr.Error())
	}
	r.keys = b
	return r
}

// stateKey returns the state key of (tag, key, alg) and the key-safe tag that
// decides its Cluster slot.
func (r *redisLimiter) stateKey(tag, key string, alg Algorithm) (safeTag, k string) {
	if tag == "" {
		tag = key
	}
	safeTag = r.keys.ID(tag)
	if tag == key {
		return safeTag, r.keys.RawKey(keyCapability, safeTag, algCode(alg))
	}
	return safeTag, r.keys.RawKey(keyCapability, safeTag, r.keys.ID(key), algCode(alg))
}

// appendArgs appends allowall.lua's per-check fields for l and cost n.
func appendArgs(args []string, l Limit, n int, token string) []string {
	return append(args,
		algCode(l.algorithm()),
		strconv.Itoa(l.Limit),
		strconv.FormatInt(l.Window.Microseconds(), 10),
		strconv.Itoa(l.capacity()),
		strconv.Itoa(n),
		token,
	)
}

// Allow is AllowN with n = 1.
func (r *redisLimiter) Allow(ctx context.Context, key string, l Limit) (Decision, error) {
	return r.one(ctx, modeAllow, key, l, 1)
}

// AllowN takes n units when they fit.
func (r *redisLimiter) AllowN(ctx context.Context, key string, l Limit, n int) (Decision, error) {
	return r.one(ctx, modeAllow, key, l, n)
}

// Peek reports the decision of one unit without consuming.
func (r *redisLimiter) Peek(ctx context.Context, key string, l Limit) (Decision, error) {
	return r.one(ctx, modePeek, key, l, 1)
}

// Record takes n units even over the limit.
func (r *redisLimiter) Record(ctx context.Context, key string, l Limit, n int) (Decision, error) {
	return r.one(ctx, modeRecord, key, l, n)
}

// one decides a single rule in one call of its algorithm's single-check
// script.
func (r *redisLimiter) one(ctx context.Context, mode, key string, l Limit, n int) (Decision, error) {
	if err := ctx.Err(); err != nil {
		return Decision{}, fmt.Errorf("ratelimit: %w", err)
	}
	if err := validateKey(key); err != nil {
		return Decision{}, err
	}
	if err := l.Validate(); err != nil {
		return Decision{}, err
	}
	if err := validateCost(n); err != nil {
		return Decision{}, err
	}
	if r.cfgErr != nil {
		return Decision{}, r.cfgErr
	}
	alg := l.algorithm()
	_, k := r.stateKey("", key, alg)
	keys := []string{k}
	args := []string{strconv.Itoa(l.Limit), strconv.FormatInt(l.Window.Microseconds(), 10), strconv.Itoa(n)}
	if c := l.capacity(); c != l.Limit {
		args = append(args, strconv.Itoa(c))
	}
	sc := singleScripts[algIndex(alg)][modeIndex(mode)]
	var d Decision
	out, err := r.fo.run(ctx, mode, func(ctx context.Context) error {
		var err error
		d, err = parseSingle(sc.Exec(ctx, r.client, keys, args), l)
		return err
	})
	switch out {
	case callAbort:
		return Decision{}, err
	case callDegrade:
		if d, err = r.fo.decide(ctx, mode, key, l, n); err != nil {
			return Decision{}, err
		}
	}
	if mode != modePeek {
		r.decisions.inc(alg, d.Allowed)
	}
	return d, nil
}

// parseSingle turns a single-check script's reply into the decision of l:
// {remaining, resetAt} when the units fit, {remaining, resetAt, retryAfter}
// when they do not.
func parseSingle(res rueidis.RedisResult, l Limit) (Decision, error) {
	vals, err := res.ToArray()
	if err != nil {
		return Decision{}, err
	}
	if len(vals) != 2 && len(vals) != 3 {
		return Decision{}, fmt.Errorf("ratelimit: script returned %d values, want 2 or 3", len(vals))
	}
	var nums [3]int64
	for j := range vals {
		if nums[j], err = vals[j].AsInt64(); err != nil {
			return Decision{}, fmt.Errorf("ratelimit: script reply: %w", err)
		}
	}
	return Decision{
		Allowed:    len(vals) == 2,
		Limit:      l.capacity(),
		Remaining:  int(nums[0]),
		ResetAt:    time.UnixMicro(nums[1]),
		RetryAfter: time.Duration(nums[2]) * time.Microsecond,
	}, nil
}

// parseReply turns allowall.lua's reply into decisions, one per limit, and the
// refund tokens.
func parseReply(res rueidis.RedisResult, ls []Limit) ([]Decision, []string, error) {
	vals, err := res.ToArray()
	if err != nil {
		return nil, nil, err
	}
	if len(vals) != replyPerCheck*len(ls) {
		return nil, nil, fmt.Errorf("ratelimit: script returned %d values for %d checks", len(vals), len(ls))
	}
	ds := make([]Decision, len(ls))
	tokens := make([]string, len(ls))
	for i, l := range ls {
		var nums [4]int64
		for j := range nums {
			if nums[j], err = vals[replyPerCheck*i+j].AsInt64(); err != nil {
				return nil, nil, fmt.Errorf("ratelimit: script reply: %w", err)
			}
		}
		if tokens[i], err = vals[replyPerCheck*i+4].ToString(); err != nil {
			return nil, nil, fmt.Errorf("ratelimit: script reply: %w", err)
		}
		ds[i] = Decision{
			Allowed:    nums[0] == 1,
			Limit:      l.capacity(),
			Remaining:  int(nums[1]),
			ResetAt:    time.UnixMicro(nums[2]),
			RetryAfter: time.Duration(nums[3]) * time.Microsecond,
		}
	}
	return ds, tokens, nil
}

// Reset deletes the key's state for every algorithm in one DEL (the four
// keys share a hash tag). It resets the state of Allow, AllowN, Peek and
// Record, and of AllowAll checks whose Tag is empty or equal to key.
func (r *redisLimiter) Reset(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("ratelimit: %w", err)
	}
	if err := validateKey(key); err != nil {
		return err
	}
	if r.cfgErr != nil {
		return r.cfgErr
	}
	ks := make([]string, 0, len(Algorithms))
	for _, a := range Algorithms {
		_, k := r.stateKey("", key, a)
		ks = append(ks, k)
	}
	out, err := r.fo.run(ctx, "reset", func(ctx context.Context) error {
		return r.client.Do(ctx, r.client.B().Del().Key(ks...).Build()).Error()
	})
	r.fo.resetLocal(ctx, key)
	switch out {
	case callAbort:
		return err
	case callDegrade:
		return fmt.Errorf("%w: reset: %w", ErrBackend, err)
	}
	return nil
}

// group is the checks of an AllowAll call that share a hash tag, decided by
// one script call.
type group struct {
	idx    []int // positions in the checks
	keys   []string
	limits []Limit
	costs  []int
	args   []string // mode first, then fieldsPerCheck per check
}

// AllowAll decides the checks all-or-nothing. Checks sharing a hash tag are
// one script call that writes only when all of them fit; calls for different
// tags are pipelined in one round trip (in parallel across Cluster nodes).
// When one group denies, the groups that consumed are refunded by a second
// pipelined call, so a denial consumes nothing net; between the two, other
// requests may briefly see those units taken (and be denied, never
// over-admitted). If the refund itself fails, the units stay consumed until
// their keys expire; this is logged and counted as a backend error.
//
// If any group fails (timeout, connection, error reply), the groups that
// consumed are refunded and the whole call is decided by the strictest
// failure policy among the checks.
//
// Checks that name the same state (same Tag, Key and Algorithm) are decided
// in order, each seeing the earlier ones' cost as taken, as on the memory
// backend.
func (r *redisLimiter) AllowAll(ctx context.Context, checks ...Check) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("ratelimit: %w", err)
	}
	norm := make([]Check, len(checks))
	for i, c := range checks {
		if c.Cost == 0 {
			c.Cost = 1
		}
		if err := validateKey(c.Key); err != nil {
			return Result{}, fmt.Errorf("check %d (%q): %w", i, c.Name, err)
		}
		if err := c.Limit.Validate(); err != nil {
			return Result{}, fmt.Errorf("check %d (%q): %w", i, c.Name, err)
		}
		if err := validateCost(c.Cost); err != nil {
			return Result{}, fmt.Errorf("check %d (%q): %w", i, c.Name, err)
		}
		norm[i] = c
	}
	if r.cfgErr != nil {
		return Result{}, r.cfgErr
	}
	if len(norm) == 0 {
		return Result{Allowed: true, Decisions: []Decision{}}, nil
	}

	var groups []*group
	byTag := make(map[string]*group, len(norm))
	for i, c := range norm {
		safeTag, k := r.stateKey(c.Tag, c.Key, c.Limit.algorithm())
		g := byTag[safeTag]
		if g == nil {
			g = &group{args: []string{modeAllow}}
			byTag[safeTag] = g
			groups = append(groups, g)
		}
		g.idx = append(g.idx, i)
		g.keys = append(g.keys, k)
		g.limits = append(g.limits, c.Limit)
		g.costs = append(g.costs, c.Cost)
		g.args = appendArgs(g.args, c.Limit, c.Cost, "")
	}

	res := Result{Decisions: make([]Decision, len(norm))}
	out, err := r.fo.run(ctx, "allowAll", func(cctx context.Context) error {
		return r.allowAll(cctx, ctx, groups, &res)
	})
	switch out {
	case callAbort:
		return Result{}, err
	case callDegrade:
		if res, err = r.fo.decideAll(ctx, r.fo.strictest(norm), norm); err != nil {
			return Result{}, err
		}
	}
	for _, c := range norm {
		r.decisions.inc(c.Limit.algorithm(), res.Allowed)
	}
	return res, nil
}

// allowAll runs the groups and, on a denial or a failed group, refunds the
// groups that consumed. callerCtx outlives ctx's deadline for the refund.
func (r *redisLimiter) allowAll(ctx, callerCtx context.Context, groups []*group, res *Result) error {
	execs := make([]rueidis.LuaExec, len(groups))
	for i, g := range groups {
		execs[i] = rueidis.LuaExec{Keys: g.keys, Args: g.args}
	}
	replies := r.evalMulti(ctx, execs)

	var firstErr error
	consumed := make([]bool, len(groups))
	tokens := make([][]string, len(groups))
	res.Allowed = true
	for gi, g := range groups {
		ds, toks, err := parseReply(replies[gi], g.limits)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			res.Allowed = false
			continue
		}
		groupFits := true
		for j, d := range ds {
			res.Decisions[g.idx[j]] = d
			if !d.Allowed {
				groupFits = false
				res.Allowed = false
				res.RetryAfter = max(res.RetryAfter, d.RetryAfter)
			}
		}
		// In allow mode a group writes exactly when all its checks fit.
		consumed[gi] = groupFits
		tokens[gi] = toks
	}
	if res.Allowed {
		return nil
	}
	var refunds []rueidis.LuaExec
	for gi, g := range groups {
		if !consumed[gi] {
			continue
		}
		args := []string{modeRefund}
		for j, l := range g.limits {
			args = appendArgs(args, l, g.costs[j], tokens[gi][j])
			// The call is a denial: report what is left without this call.
			d := &res.Decisions[g.idx[j]]
			d.Remaining = min(d.Limit, d.Remaining+g.costs[j])
		}
		refunds = append(refunds, rueidis.LuaExec{Keys: g.keys, Args: args})
	}
	if len(refunds) > 0 {
		r.refund(callerCtx, refunds)
	}
	return firstErr
}

// refund runs the compensating scripts. It runs even when the caller's ctx
// is cancelled (a refund is owed whatever the caller does next), under its own
// Config.Timeout.
func (r *redisLimiter) refund(callerCtx context.Context, execs []rueidis.LuaExec) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(callerCtx), r.fo.timeout)
	defer cancel()
	start := time.Now()
	replies := r.evalMulti(ctx, execs)
	r.fo.metrics.observeBackend(time.Since(start))
	for _, rep := range replies {
		if err := rep.Error(); err != nil {
			r.fo.metrics.backendError()
			r.fo.logFailure("refund", fmt.Errorf("units of a denied AllowAll stay consumed until expiry: %w", err), false)
			return
		}
	}
}

// evalMulti runs allowall.lua once per exec, pipelined: one round trip (the
// Cluster client sends each node its share in parallel). It uses EVALSHA and
// re-sends only the NOSCRIPT failures with EVAL. rueidis's Lua.ExecMulti is
// not used because it SCRIPT LOADs on every node before each call, a second
// round trip to every node.
func (r *redisLimiter) evalMulti(ctx context.Context, execs []rueidis.LuaExec) []rueidis.RedisResult {
	if len(execs) == 1 {
		return []rueidis.RedisResult{allowAllScript.Exec(ctx, r.client, execs[0].Keys, execs[0].Args)}
	}
	cmds := make(rueidis.Commands, len(execs))
	for i, e := range execs {
		cmds[i] = r.client.B().Evalsha().Sha1(allowAllSHA).Numkeys(int64(len(e.Keys))).Key(e.Keys...).Arg(e.Args...).Build()
	}
	replies := r.client.DoMulti(ctx, cmds...)
	var again rueidis.Commands
	var at []int
	for i := range replies {
		if rerr, ok := rueidis.IsRedisErr(replies[i].Error()); ok && rerr.IsNoScript() {
			e := execs[i]
			again = append(again, r.client.B().Eval().Script(allowAllSource).Numkeys(int64(len(e.Keys))).Key(e.Keys...).Arg(e.Args...).Build())
			at = append(at, i)
		}
	}
	if len(again) > 0 {
		for j, rep := range r.client.DoMulti(ctx, again...) {
			replies[at[j]] = rep
		}
	}
	return replies
}
