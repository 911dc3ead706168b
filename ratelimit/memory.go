package ratelimit

import (
	"context"
	"fmt"
	"hash/maphash"
	"math"
	"sync"
	"time"
)

// The memory backend keeps every counter in process memory. It implements the
// formulas of docs/ratelimit-algorithms.md exactly as the Redis scripts do
// (same integer µs clock, same float operations in the same order), so the
// conformance suite gives identical results on both. It is not shared between
// processes and not durable.
//
// Layout: memShards shards, each a mutex and maps from (tag, key, algorithm)
// to a state struct that is updated in place, so a decision on an existing key
// allocates nothing. The shard is chosen by hashing the tag, so all keys of one
// tag live in one shard (AllowAll on one subject locks one mutex), and Reset
// and Allow on a key find its states in one shard.
//
// Expiry: every written state gets the expiry the Redis script gives its key
// (kept in µs, where Redis rounds up to the ms: a difference that could show
// only when one key is read with another window within that sub-ms gap), and
// a state whose expiry has passed is treated as absent. Expired
// states are reclaimed when a shard grows: an insert that takes the shard past
// its sweep threshold removes every expired state of that shard and sets the
// threshold to twice the live size, so sweeping costs O(1) amortised per
// insert, a shard holds at most max(memSweepMin, twice the states live at its
// last sweep), and no background goroutine or Close is needed. An expired
// state found by a lookup is reset and reused in place.

const (
	memShards   = 256 // a power of two
	memSweepMin = 64  // smallest sweep threshold of a shard
)

// memAlg is an Algorithm as a small integer, for the map key.
type memAlg uint8

const (
	memSlidingLog memAlg = iota
	memSlidingWindow
	memGCRA
	memFixedWindow
	memNumAlgs
)

// memKey identifies one state. tag is "" when the tag equals key (every
// Allow/AllowN/Peek/Record, and checks without a Tag); such states live in the
// shard's per-algorithm maps keyed by the key alone. A real tag is never ""
// (an empty Check.Tag means the key), so (tag, key) stays unique.
type memKey struct {
	tag string
	key string
	alg memAlg
}

// memEntry is the state of one (tag, key, algorithm). One struct serves every
// algorithm so that no interface boxing happens on the hot path; a zero
// memEntry is exactly the absent state of every algorithm.
type memEntry struct {
	// expireAt is the µs time at which the state expires (the Redis TTL);
	// from then on it is treated as absent.
	expireAt int64
	// fixed-window and sliding-window: window index, its count and (sliding
	// window only) the previous window's count.
	win, cur, prev int64
	// gcra: theoretical arrival time in µs.
	tat float64
	// sliding-log: ring buffer of admitted stamps in ascending order;
	// logLen stamps starting at logHead. Grown geometrically up to the limit.
	stamps  []int64
	logHead int
	logLen  int
}

// memShard holds the states of the tags that hash to it. States without a
// tag of their own (the common case: Allow and untagged checks) are kept in
// one map per algorithm keyed by the key string alone, which hashes and
// compares one string instead of a struct of two (about 20ns less per
// lookup); tagged states are in their own map. Padded to two cache lines so
// that neighbouring shards' mutexes do not share a line (adjacent-line
// prefetch included).
type memShard struct {
	mu      sync.Mutex
	plain   [memNumAlgs]map[string]*memEntry
	tagged  map[memKey]*memEntry
	sweepAt int
	// last is the time (µs) of the latest decision on this shard.
	last int64
	_    [128 - 8 - 8*memNumAlgs - 8 - 8 - 8]byte
}

func (s *memShard) init() {
	for a := range s.plain {
		s.plain[a] = make(map[string]*memEntry)
	}
	s.tagged = make(map[memKey]*memEntry)
	s.sweepAt = memSweepMin
}

// get returns the stored state of k (expired or not), or nil.
func (s *memShard) get(k memKey) *memEntry {
	if k.tag == "" {
		return s.plain[k.alg][k.key]
	}
	return s.tagged[k]
}

func (s *memShard) del(k memKey) {
	if k.tag == "" {
		delete(s.plain[k.alg], k.key)
	} else {
		delete(s.tagged, k)
	}
}

// size is the number of stored states, expired ones included.
func (s *memShard) size() int {
	n := len(s.tagged)
	for _, p := range s.plain {
		n += len(p)
	}
	return n
}

type memoryLimiter struct {
	now  func() time.Time
	seed maphash.Seed
	// counts is nil without a Registerer: one nil check per decision.
	counts *decisionCounters
	shards [memShards]memShard
}

var _ Limiter = (*memoryLimiter)(nil)

// NewMemory returns an in-process Limiter with the same semantics as the Redis
// backend. It uses cfg.Now (nil means time.Now) and cfg.Registerer (decisions
// are counted in eleva_ratelimit_decisions_total with backend="memory"; Peek
// is not a decision and is not counted); the other fields concern remote
// backends. The limiter needs no Close. Used on its own (one process) and as
// the FailLocal fallback.
func NewMemory(cfg Config) Limiter {
	m := &memoryLimiter{now: cfg.Now, seed: maphash.MakeSeed(), counts: newMetrics(cfg.Registerer).decisionCounters("memory")}
	if m.now == nil {
		m.now = time.Now
	}
	for i := range m.shards {
		m.shards[i].init()
	}
	return m
}

// mode says what a decision may write.
type memMode uint8

const (
	memModeAllow  memMode = iota // consume when it fits
	memModePeek                  // never consume
	memModeRecord                // always consume
)

func algOf(a Algorithm) memAlg {
	switch a {
	case SlidingWindow:
		return memSlidingWindow
	case GCRA:
		return memGCRA
	case FixedWindow:
		return memFixedWindow
	default: // "" and SlidingLog; Validate rejected everything else
		return memSlidingLog
	}
}

func (m *memoryLimiter) shardFor(tag string) *memShard {
	return &m.shards[maphash.String(m.seed, tag)&(memShards-1)]
}

func (m *memoryLimiter) nowMicro() int64 { return m.now().UnixMicro() }

// Allow is AllowN with n = 1.
func (m *memoryLimiter) Allow(ctx context.Context, key string, l Limit) (Decision, error) {
	var d Decision
	err := m.single(key, l, 1, memModeAllow, &d)
	return d, err
}

// AllowN takes n units when they fit.
func (m *memoryLimiter) AllowN(ctx context.Context, key string, l Limit, n int) (Decision, error) {
	var d Decision
	err := m.single(key, l, n, memModeAllow, &d)
	return d, err
}

// Peek evaluates one unit and writes nothing.
func (m *memoryLimiter) Peek(ctx context.Context, key string, l Limit) (Decision, error) {
	var d Decision
	err := m.single(key, l, 1, memModePeek, &d)
	return d, err
}

// Record takes n units even over the limit.
func (m *memoryLimiter) Record(ctx context.Context, key string, l Limit, n int) (Decision, error) {
	var d Decision
	err := m.single(key, l, n, memModeRecord, &d)
	return d, err
}

// single decides one rule on (key, key, algorithm). The context is ignored:
// a memory decision never blocks, and honouring a cancelled context would
// break the FailLocal fallback, which runs precisely when the caller's
// context has given up on Redis.
func (m *memoryLimiter) single(key string, l Limit, n int, mode memMode, d *Decision) error {
	if err := validateKey(key); err != nil {
		return err
	}
	if err := l.Validate(); err != nil {
		return err
	}
	if err := validateCost(n); err != nil {
		return err
	}
	k := memKey{key: key, alg: algOf(l.Algorithm)}
	s := m.shardFor(key)
	// The clock is read before locking, to keep the critical section short
	// for a hot key. A time read before waiting for the lock can be older
	// than the time of a decision that got the lock first (a fixed window
	// from the past would then overwrite the current window's count), so
	// such a reading is replaced by a fresh one under the lock, which is what
	// the Redis script's TIME amounts to.
	now := m.nowMicro()
	s.mu.Lock()
	if now < s.last {
		now = m.nowMicro()
	}
	s.last = now
	s.decide(k, now, &l, int64(n), mode, d)
	s.mu.Unlock()
	if m.counts != nil && mode != memModePeek {
		m.counts.inc(l.Algorithm, d.Allowed)
	}
	return nil
}

// decide runs one decision on the shard's state for k. The caller holds s.mu.
func (s *memShard) decide(k memKey, now int64, l *Limit, n int64, mode memMode, d *Decision) {
	e := s.get(k)
	if e == nil {
		// Absent: decide on a zero state on the stack and store it only
		// when the decision wrote (a denial or a Peek creates nothing).
		var tmp memEntry
		if tmp.decide(now, k.alg, l, n, mode, d) {
			ne := new(memEntry)
			*ne = tmp
			s.insert(k, ne, now)
		}
		return
	}
	if e.expireAt <= now {
		e.clear()
	}
	e.decide(now, k.alg, l, n, mode, d)
}

// insert adds a new state, sweeping the shard first when it has grown past
// its threshold. The caller holds s.mu.
func (s *memShard) insert(k memKey, e *memEntry, now int64) {
	if s.size() >= s.sweepAt {
		s.sweep(now)
	}
	if k.tag == "" {
		s.plain[k.alg][k.key] = e
	} else {
		s.tagged[k] = e
	}
}

// sweep removes every expired state and doubles the threshold over the live
// size, which makes its O(len) cost O(1) amortised per insert.
func (s *memShard) sweep(now int64) {
	for _, p := range s.plain {
		for k, e := range p {
			if e.expireAt <= now {
				delete(p, k)
			}
		}
	}
	for k, e := range s.tagged {
		if e.expireAt <= now {
			delete(s.tagged, k)
		}
	}
	s.sweepAt = max(memSweepMin, 2*s.size())
}

// clear turns an expired state into the absent state in place, keeping the
// ring's backing array so that a key that keeps coming back allocates nothing.
// expireAt is kept: until a decision writes, the state stays expired.
func (e *memEntry) clear() {
	e.win, e.cur, e.prev = 0, 0, 0
	e.tat = 0
	e.logHead, e.logLen = 0, 0
}

// decide applies the algorithm of l to e (which is never expired), fills d
// and reports whether it wrote. The decision is filled in place rather than
// returned: a 64-byte struct copied up through every layer showed as a
// tenth of the hot path's time.
func (e *memEntry) decide(now int64, alg memAlg, l *Limit, n int64, mode memMode, d *Decision) bool {
	// Validate bounds Window to [1ms, MaxWindow] and Limit to [1, 1e9].
	w := l.Window.Microseconds()
	switch alg {
	case memSlidingWindow:
		return e.slidingWindow(now, w, int64(l.Limit), n, mode, d)
	case memGCRA:
		burst := l.Burst
		if burst == 0 {
			burst = l.Limit
		}
		return e.gcra(now, w, int64(l.Limit), int64(burst), n, mode, d)
	case memFixedWindow:
		return e.fixedWindow(now, w, int64(l.Limit), n, mode, d)
	default:
		return e.slidingLog(now, w, int64(l.Limit), n, mode, d)
	}
}

// consumes reports whether a decision writes, given whether the cost fits.
func consumes(mode memMode, fits bool) bool {
	return mode == memModeRecord || (mode == memModeAllow && fits)
}

func micros(us int64) time.Duration {
	if us > math.MaxInt64/int64(time.Microsecond) {
		return math.MaxInt64
	}
	return time.Duration(us) * time.Microsecond
}

// memMaxMicros bounds float µs converted to int64. Records of up to 1e9 units
// at up to a year each can push a GCRA tat ~1e22µs ahead, beyond int64;
// those times saturate (about 146,000 years from the epoch) instead of
// wrapping around to the past.
const memMaxMicros = 1 << 62

func floatMicros(f float64) int64 {
	if f >= memMaxMicros {
		return memMaxMicros
	}
	return int64(f)
}

func (e *memEntry) fixedWindow(now, w, limit, n int64, mode memMode, d *Decision) bool {
	idx := now / w
	c := int64(0)
	if e.win == idx {
		c = e.cur
	}
	fits := n <= limit && c+n <= limit
	resetAt := (idx + 1) * w
	wrote := consumes(mode, fits)
	if wrote {
		c += n
		e.win, e.cur = idx, c
		e.expireAt = resetAt
	}
	*d = Decision{Allowed: fits, Limit: int(limit), Remaining: int(max(0, limit-c)), ResetAt: time.UnixMicro(resetAt)}
	if !fits {
		if n > limit {
			d.RetryAfter = micros(w)
		} else {
			d.RetryAfter = micros(resetAt - now)
		}
	}
	return wrote
}

func (e *memEntry) slidingWindow(now, w, limit, n int64, mode memMode, d *Decision) bool {
	idx := now / w
	elapsed := now - idx*w
	var c, p int64
	switch e.win {
	case idx:
		c, p = e.cur, e.prev
	case idx - 1:
		p = e.cur
	}
	// est = p * (W - elapsed) / W + c, evaluated left to right as in Lua.
	// The division between the product and the sum rules out a fused
	// multiply-add, so Go rounds exactly like Lua here.
	est := float64(p)*float64(w-elapsed)/float64(w) + float64(c)
	fits := n <= limit && est+float64(n) <= float64(limit)
	wrote := consumes(mode, fits)
	cAfter, estAfter := c, est
	if wrote {
		cAfter, estAfter = c+n, est+float64(n)
		e.win, e.cur, e.prev = idx, cAfter, p
		e.expireAt = (idx + 2) * w
	}
	resetAt := now
	if cAfter > 0 {
		resetAt = (idx + 2) * w
	} else if p > 0 {
		resetAt = (idx + 1) * w
	}
	*d = Decision{Allowed: fits, Limit: int(limit), ResetAt: time.UnixMicro(resetAt)}
	d.Remaining = int(max(0, math.Floor(float64(limit)-estAfter)))
	if !fits {
		// c and p are the counts before this call, Record included.
		switch {
		case n > limit:
			d.RetryAfter = micros(w)
		case c+n <= limit:
			// The previous window must decay: p > 0 here, since with p == 0
			// est == c and c+n <= L would have fitted.
			d.RetryAfter = micros(int64(math.Ceil(float64(w)-float64(limit-c-n)*float64(w)/float64(p))) - elapsed)
		default:
			// The next window and its decay; c >= 1 here, since n <= L < c+n.
			d.RetryAfter = micros((idx+1)*w - now + int64(math.Ceil(float64(w)-float64(limit-n)*float64(w)/float64(c))))
		}
	}
	return wrote
}

func (e *memEntry) gcra(now, w, limit, burst, n int64, mode memMode, d *Decision) bool {
	t := float64(w) / float64(limit)
	// The explicit conversions round each product on its own, forbidding
	// the fused multiply-add that Go may otherwise use for x*y+z (Lua
	// rounds every operation).
	tau := float64(float64(burst) * t)
	nowf := float64(now)
	tat := nowf
	if e.tat > nowf {
		tat = e.tat
	}
	newTat := tat + float64(float64(n)*t)
	// n <= B is checked on its own: with T < 1µs (a limit above the
	// window's µs count) the half-µs tolerance could otherwise admit B+1.
	fits := n <= burst && newTat-nowf <= tau+0.5
	wrote := consumes(mode, fits)
	tatAfter := tat
	if wrote {
		tatAfter = newTat
		e.tat = newTat
		// PX max(1, ceil((new - now) / 1000)) ms: the bucket is full by then.
		e.expireAt = floatMicros(nowf + max(1, math.Ceil((newTat-nowf)/1000))*1000)
	}
	*d = Decision{Allowed: fits, Limit: int(burst)}
	d.Remaining = int(max(0, math.Floor((tau-(tatAfter-nowf))/t+1e-6)))
	if tatAfter > nowf {
		// Truncated to whole µs, as Redis converts the script's number.
		d.ResetAt = time.UnixMicro(floatMicros(tatAfter))
	} else {
		d.ResetAt = time.UnixMicro(now)
	}
	if !fits {
		if n > burst {
			d.RetryAfter = micros(w)
		} else {
			d.RetryAfter = micros(floatMicros(math.Ceil(newTat - tau - nowf)))
		}
	}
	return wrote
}

// logAt returns the i-th oldest stored stamp.
func (e *memEntry) logAt(i int) int64 {
	j := e.logHead + i
	if j >= len(e.stamps) {
		j -= len(e.stamps)
	}
	return e.stamps[j]
}

// logDrop forgets the k oldest stamps.
func (e *memEntry) logDrop(k int) {
	if k <= 0 {
		return
	}
	e.logLen -= k
	if e.logLen == 0 {
		e.logHead = 0
		return
	}
	e.logHead += k
	if e.logHead >= len(e.stamps) {
		e.logHead -= len(e.stamps)
	}
}

// logReserve makes room for size stamps (size <= limit), doubling the ring up
// to the limit so that a key with a large limit but little traffic stays
// small, and a busy key stops allocating once its ring has grown.
func (e *memEntry) logReserve(size int, limit int64) {
	if size <= len(e.stamps) {
		return
	}
	c := max(8, 2*len(e.stamps))
	if int64(c) > limit {
		c = int(limit)
	}
	c = max(c, size)
	ns := make([]int64, c)
	for i := 0; i < e.logLen; i++ {
		ns[i] = e.logAt(i)
	}
	e.stamps, e.logHead = ns, 0
}

// logPush appends stamp (the ring has room).
func (e *memEntry) logPush(stamp int64) {
	j := e.logHead + e.logLen
	if j >= len(e.stamps) {
		j -= len(e.stamps)
	}
	e.stamps[j] = stamp
	e.logLen++
}

func (e *memEntry) slidingLog(now, w, limit, n int64, mode memMode, d *Decision) bool {
	// Stamps are ascending: binary search for the first one in the window
	// (s > now - W); older ones are out of the window but, as in the Redis
	// sorted set, only removed when a decision writes.
	cut := now - w
	lo, hi := 0, e.logLen
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if e.logAt(mid) > cut {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	first := lo
	count := int64(e.logLen - first)
	fits := n <= limit && count+n <= limit
	*d = Decision{Allowed: fits, Limit: int(limit)}
	if !fits {
		if n > limit {
			d.RetryAfter = micros(w)
		} else {
			// The (count+n-L)-th oldest in-window stamp must leave.
			sk := e.logAt(first + int(count+n-limit) - 1)
			d.RetryAfter = micros(sk + w - now)
		}
	}
	wrote := consumes(mode, fits)
	if wrote {
		e.logDrop(first)
		s0 := now
		if e.logLen > 0 {
			s0 = max(now, e.logAt(e.logLen-1)+1)
		}
		newest := s0 + n - 1
		if n >= limit {
			// Only the newest L of the new stamps survive the trim.
			e.logLen, e.logHead = 0, 0
			e.logReserve(int(limit), limit)
			for s := newest - limit + 1; s <= newest; s++ {
				e.logPush(s)
			}
		} else {
			// Keep the newest L of old + new (only Record can exceed L).
			e.logDrop(int(max(0, int64(e.logLen)+n-limit)))
			e.logReserve(e.logLen+int(n), limit)
			for s := s0; s <= newest; s++ {
				e.logPush(s)
			}
		}
		e.expireAt = newest + w
		count = int64(e.logLen)
	}
	d.Remaining = int(max(0, limit-count))
	if count > 0 {
		d.ResetAt = time.UnixMicro(e.logAt(e.logLen-1) + w)
	} else {
		d.ResetAt = time.UnixMicro(now)
	}
	return wrote
}

// Reset forgets the key's state for every algorithm.
func (m *memoryLimiter) Reset(ctx context.Context, key string) error {
	if err := validateKey(key); err != nil {
		return err
	}
	s := m.shardFor(key)
	s.mu.Lock()
	for a := memAlg(0); a < memNumAlgs; a++ {
		s.del(memKey{key: key, alg: a})
	}
	s.mu.Unlock()
	return nil
}

// memCheck is a validated check.
type memCheck struct {
	k     memKey
	shard int
	l     Limit
	n     int64
}

// AllowAll decides every check under the locks of all shards involved, taken
// in ascending shard order (so concurrent AllowAll calls cannot deadlock), and
// writes only when every check fits.
//
// Checks are evaluated in order; when two checks name the same state, the
// later one sees the earlier one's cost as taken. When the result is a
// denial, nothing is written and Decisions[i] reports check i evaluated
// without its own consumption (Remaining as Peek would report it); when it is
// allowed, Decisions[i] is the decision after consuming.
func (m *memoryLimiter) AllowAll(ctx context.Context, checks ...Check) (Result, error) {
	var buf [8]memCheck
	cs := buf[:0]
	for i, c := range checks {
		if err := validateKey(c.Key); err != nil {
			return Result{}, wrapCheck(i, c, err)
		}
		if err := c.Limit.Validate(); err != nil {
			return Result{}, wrapCheck(i, c, err)
		}
		n := c.Cost
		if n == 0 {
			n = 1
		}
		if err := validateCost(n); err != nil {
			return Result{}, wrapCheck(i, c, err)
		}
		tag := c.Tag
		if tag == "" {
			tag = c.Key
		}
		mc := memCheck{k: memKey{key: c.Key, alg: algOf(c.Limit.Algorithm)}, l: c.Limit, n: int64(n)}
		mc.shard = int(maphash.String(m.seed, tag) & (memShards - 1))
		if tag != c.Key {
			mc.k.tag = tag
		}
		cs = append(cs, mc)
	}
	res := Result{Allowed: true, Decisions: make([]Decision, len(cs))}
	if len(cs) == 0 {
		return res, nil
	}

	// Distinct shards in ascending order (insertion sort: few checks).
	var sbuf [8]int
	shards := sbuf[:0]
	for _, c := range cs {
		i := len(shards)
		dup := false
		for j, s := range shards {
			if s == c.shard {
				dup = true
				break
			}
			if s > c.shard {
				i = j
				break
			}
		}
		if dup {
			continue
		}
		shards = append(shards, 0)
		copy(shards[i+1:], shards[i:])
		shards[i] = c.shard
	}
	for _, s := range shards {
		m.shards[s].mu.Lock()
	}
	now := m.nowMicro()
	for _, s := range shards {
		m.shards[s].last = now
	}
	m.allowAllLocked(now, cs, &res)
	for i := len(shards) - 1; i >= 0; i-- {
		m.shards[shards[i]].mu.Unlock()
	}
	if m.counts != nil {
		for i, c := range cs {
			m.counts.inc(c.l.Algorithm, res.Decisions[i].Allowed && res.Allowed)
		}
	}
	return res, nil
}

func wrapCheck(i int, c Check, err error) error {
	return fmt.Errorf("check %d (%q): %w", i, c.Name, err)
}

// allowAllLocked evaluates and, when all fit, applies the checks. The caller
// holds the locks of every shard involved.
func (m *memoryLimiter) allowAllLocked(now int64, cs []memCheck, res *Result) {
	dups := false
	for i := range cs {
		for j := 0; j < i; j++ {
			if cs[i].k == cs[j].k {
				dups = true
			}
		}
	}
	if dups {
		m.allowAllShared(now, cs, res)
		return
	}
	// Phase 1: evaluate every check without writing (Peek mode takes the
	// check's cost and never writes, so it can run on the live state).
	var zero memEntry
	for i, c := range cs {
		e := m.shards[c.shard].get(c.k)
		if e == nil || e.expireAt <= now {
			e = &zero
		}
		d := &res.Decisions[i]
		e.decide(now, c.k.alg, &cs[i].l, c.n, memModePeek, d)
		if !d.Allowed {
			res.Allowed = false
			res.RetryAfter = max(res.RetryAfter, d.RetryAfter)
		}
	}
	if !res.Allowed {
		return
	}
	// Phase 2: every check fits and the states are distinct; consume.
	for i, c := range cs {
		m.shards[c.shard].decide(c.k, now, &cs[i].l, c.n, memModeAllow, &res.Decisions[i])
	}
}

// allowAllShared handles the rare AllowAll in which several checks name the
// same state: it runs the checks in order on private copies of the states
// and commits the copies only when every check fits.
func (m *memoryLimiter) allowAllShared(now int64, cs []memCheck, res *Result) {
	work := make(map[memKey]*memEntry, len(cs))
	consumed := make([]Decision, len(cs))
	for i, c := range cs {
		e := work[c.k]
		if e == nil {
			e = new(memEntry)
			if p := m.shards[c.shard].get(c.k); p != nil && p.expireAt > now {
				*e = *p
				e.stamps = append([]int64(nil), p.stamps...)
			}
			work[c.k] = e
		}
		d := &res.Decisions[i]
		e.decide(now, c.k.alg, &cs[i].l, c.n, memModePeek, d)
		if !d.Allowed {
			res.Allowed = false
			res.RetryAfter = max(res.RetryAfter, d.RetryAfter)
			continue
		}
		e.decide(now, c.k.alg, &cs[i].l, c.n, memModeAllow, &consumed[i])
	}
	if !res.Allowed {
		return
	}
	copy(res.Decisions, consumed)
	for k, e := range work {
		var shard int
		for _, c := range cs {
			if c.k == k {
				shard = c.shard
				break
			}
		}
		s := &m.shards[shard]
		if p := s.get(k); p != nil {
			*p = *e
		} else {
			s.insert(k, e, now)
		}
	}
}
