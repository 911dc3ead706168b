package notify

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// NewMemory returns a Queue kept in this process: the same semantics as the
// Redis backend (the conformance suite runs on both), on Config.Now, but not
// durable and not shared between processes. It is for development, tests
// and single-process deployments. Claim looks at every user, so it suits
// thousands of users, not millions.
func NewMemory(cfg Config) Queue {
	b := newMemoryBackend(cfg)
	return &queue{cfg: cfg, b: b, m: newMetrics(cfg.Registerer), kind: "memory"}
}

// mItem is one stored notification; the fields after n mirror the meta of
// the Redis backend (common.lua).
type mItem struct {
	n     Notification // immutable fields only
	st    byte         // 'q' queued, 'f' leased, 'd' dead
	seq   uint64
	band  int
	due   int64 // ms; for a dead item, the time of death
	sched int64
	exp   int64 // 0: none
	att   int
	err   string
}

type mUser struct {
	items    map[string]*mItem
	token    string // lease token; "" when not leased
	leaseExp int64
}

type mRef struct{ user, id string }

type memoryBackend struct {
	mu           sync.Mutex
	now          func() time.Time
	lease        time.Duration
	deadCap      int
	deliveredCap int
	users        map[string]*mUser
	dead         map[mRef]int64 // ref -> time of death
	done         map[mRef]int64
	doneOrder    []mRef
	seq          uint64
	delivered    int64
	deadDropped  int64
}

var _ backend = (*memoryBackend)(nil)

func newMemoryBackend(cfg Config) *memoryBackend {
	return &memoryBackend{
		now:          cfg.now(),
		lease:        cfg.lease(),
		deadCap:      cfg.deadCap(),
		deliveredCap: cfg.deliveredCap(),
		users:        map[string]*mUser{},
		dead:         map[mRef]int64{},
		done:         map[mRef]int64{},
	}
}

func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	return nil
}

func (m *memoryBackend) nowMs() int64 { return m.now().UnixMilli() }

func (it *mItem) meta() meta {
	return meta{st: it.st, band: it.band, due: it.due, sched: it.sched, expires: it.exp, attempts: it.att, maxAttempt: it.n.MaxAttempts, lastError: it.err}
}

func (it *mItem) view(now int64) Notification {
	n := it.n
	n.ScheduledFor = msTime(it.sched)
	n.ExpiresAt = msTime(it.exp)
	n.Attempts = it.att
	n.State = it.meta().state(now)
	n.LastError = it.err
	return n
}

// due returns the user's due score: the lease expiry while leased, else
// the earliest due time of its queued items; ok false when it has none.
func (u *mUser) dueScore() (int64, bool) {
	if u.token != "" {
		return u.leaseExp, true
	}
	var best int64
	ok := false
	for _, it := range u.items {
		if it.st == 'q' && (!ok || it.due < best) {
			best, ok = it.due, true
		}
	}
	return best, ok
}

// queued returns the user's queued items due by now in delivery order.
func (u *mUser) queued(now int64) []*mItem {
	var out []*mItem
	for _, it := range u.items {
		if it.st == 'q' && it.due <= now {
			out = append(out, it)
		}
	}
	slices.SortFunc(out, func(a, b *mItem) int {
		return cmp.Or(cmp.Compare(a.band, b.band), cmp.Compare(a.due, b.due), cmp.Compare(a.seq, b.seq))
	})
	return out
}

func (m *memoryBackend) gc(user string) {
	if u := m.users[user]; u != nil && len(u.items) == 0 && u.token == "" {
		delete(m.users, user)
	}
}

func (m *memoryBackend) enqueue(ctx context.Context, items []item) ([]Result, error) {
	if err := ctxErr(ctx); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.nowMs()
	out := make([]Result, len(items))
	for i, x := range items {
		n := x.n
		ref := mRef{n.UserID, n.ID}
		u := m.users[n.UserID]
		if u != nil {
			if it := u.items[n.ID]; it != nil {
				out[i] = Result{ID: n.ID, State: it.meta().state(now)}
				continue
			}
		}
		if _, ok := m.done[ref]; ok {
			out[i] = Result{ID: n.ID, State: StateDelivered}
			continue
		}
		if u == nil {
			u = &mUser{items: map[string]*mItem{}}
			m.users[n.UserID] = u
		}
		m.seq++
		due := now
		if !n.ScheduledFor.IsZero() {
			due = n.ScheduledFor.UnixMilli()
		}
		var exp int64
		if !n.ExpiresAt.IsZero() {
			exp = n.ExpiresAt.UnixMilli()
		}
		stored := Notification{ID: n.ID, UserID: n.UserID, Type: n.Type, Title: n.Title, Message: n.Message,
			Data: n.Data, Priority: n.Priority, MaxAttempts: n.MaxAttempts}
		it := &mItem{n: stored, st: 'q', seq: m.seq, band: n.Priority.band(), due: due, sched: due, exp: exp}
		u.items[n.ID] = it
		out[i] = Result{ID: n.ID, State: it.meta().state(now), Created: true}
	}
	return out, nil
}

func (m *memoryBackend) pending(ctx context.Context, userID string, limit int) ([]Notification, error) {
	if err := ctxErr(ctx); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.nowMs()
	u := m.users[userID]
	if u == nil {
		return nil, nil
	}
	var out []Notification
	budget := limit + 1000
	for _, it := range u.queued(now) {
		if len(out) == limit || budget == 0 {
			break
		}
		budget--
		if it.exp == 0 || it.exp > now {
			out = append(out, it.view(now))
		} else {
			m.toDead(u, it, now, ReasonExpired)
		}
	}
	return out, nil
}

func (m *memoryBackend) markDelivered(ref mRef, now int64) {
	if _, ok := m.done[ref]; !ok {
		m.doneOrder = append(m.doneOrder, ref)
	}
	m.done[ref] = now
	for len(m.done) > m.deliveredCap && len(m.doneOrder) > 0 {
		old := m.doneOrder[0]
		m.doneOrder = m.doneOrder[1:]
		delete(m.done, old)
	}
	m.delivered++
}

func (m *memoryBackend) remove(ctx context.Context, userID string, ids []string) (int, error) {
	if err := ctxErr(ctx); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.nowMs()
	u := m.users[userID]
	if u == nil {
		return 0, nil
	}
	n := 0
	for _, id := range ids {
		if it := u.items[id]; it != nil && it.st == 'q' {
			delete(u.items, id)
			m.markDelivered(mRef{userID, id}, now)
			n++
		}
	}
	m.gc(userID)
	return n, nil
}

func (m *memoryBackend) cancel(ctx context.Context, userID, id string) (bool, error) {
	if err := ctxErr(ctx); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	u := m.users[userID]
	if u == nil || u.items[id] == nil {
		return false, nil
	}
	delete(u.items, id)
	delete(m.dead, mRef{userID, id})
	m.gc(userID)
	return true, nil
}

func (m *memoryBackend) stats(ctx context.Context) (Stats, error) {
	if err := ctxErr(ctx); err != nil {
		return Stats{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.nowMs()
	var s Stats
	for _, u := range m.users {
		for _, it := range u.items {
			switch it.meta().state(now) {
			case StateScheduled:
				s.Scheduled++
			case StatePending:
				s.Pending++
			case StateInflight:
				s.Inflight++
			case StateRetrying:
				s.Retrying++
			case StateDead:
				s.Dead++
			}
		}
	}
	s.Delivered, s.DeadDropped = m.delivered, m.deadDropped
	return s, nil
}

func (m *memoryBackend) listDead(ctx context.Context, limit int) ([]Notification, error) {
	if err := ctxErr(ctx); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.nowMs()
	refs := m.deadByAge()
	slices.Reverse(refs)
	out := make([]Notification, 0, min(limit, len(refs)))
	for _, r := range refs[:min(limit, len(refs))] {
		out = append(out, m.users[r.user].items[r.id].view(now))
	}
	return out, nil
}

// deadByAge returns the dead refs, oldest first, ties by id (the order in
// which both backends drop them and, reversed, list them).
func (m *memoryBackend) deadByAge() []mRef {
	refs := make([]mRef, 0, len(m.dead))
	for r := range m.dead {
		refs = append(refs, r)
	}
	slices.SortFunc(refs, func(a, b mRef) int {
		return cmp.Or(cmp.Compare(m.dead[a], m.dead[b]), cmp.Compare(a.id, b.id), cmp.Compare(a.user, b.user))
	})
	return refs
}

func (m *memoryBackend) toDead(u *mUser, it *mItem, now int64, reason string) {
	it.st, it.err, it.due = 'd', reason, now
	m.dead[mRef{it.n.UserID, it.n.ID}] = now
	if len(m.dead) > m.deadCap {
		refs := m.deadByAge()
		for _, r := range refs[:len(refs)-m.deadCap] {
			delete(m.dead, r)
			delete(m.users[r.user].items, r.id)
			m.deadDropped++
			if r.user != it.n.UserID {
				m.gc(r.user)
			}
		}
	}
	_ = u
}

func (m *memoryBackend) requeueDead(ctx context.Context, userID, id string) (bool, error) {
	if err := ctxErr(ctx); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	u := m.users[userID]
	if u == nil || u.items[id] == nil || u.items[id].st != 'd' {
		return false, nil
	}
	it := u.items[id]
	delete(m.dead, mRef{userID, id})
	it.st, it.att, it.due = 'q', 0, m.nowMs()
	return true, nil
}

func (m *memoryBackend) claim(ctx context.Context, maxUsers, perUser int) ([]Batch, error) {
	if err := ctxErr(ctx); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.nowMs()
	type cand struct {
		user  string
		score int64
	}
	var cands []cand
	for name, u := range m.users {
		if s, ok := u.dueScore(); ok && s <= now {
			cands = append(cands, cand{name, s})
		}
	}
	slices.SortFunc(cands, func(a, b cand) int { return cmp.Or(cmp.Compare(a.score, b.score), cmp.Compare(a.user, b.user)) })
	var out []Batch
	for _, c := range cands[:min(len(cands), maxUsers)] {
		if b, ok := m.claimUser(c.user, now, perUser); ok {
			out = append(out, b)
		}
	}
	return out, nil
}

// claimUser is claim.lua for one due user.
func (m *memoryBackend) claimUser(name string, now int64, per int) (Batch, bool) {
	u := m.users[name]
	// An expired lease: its items are queued again.
	for _, it := range u.items {
		if it.st == 'f' {
			it.st = 'q'
		}
	}
	u.token = ""
	var items []Notification
	budget := per + 100
	for _, it := range u.queued(now) {
		if len(items) == per || budget == 0 {
			break
		}
		budget--
		switch {
		case it.exp > 0 && it.exp <= now:
			m.toDead(u, it, now, ReasonExpired)
		case it.att >= it.n.MaxAttempts:
			m.toDead(u, it, now, "lease expired on the last attempt")
		default:
			it.att++
			it.st = 'f'
			items = append(items, it.view(now))
		}
	}
	if len(items) == 0 {
		m.gc(name)
		return Batch{}, false
	}
	u.token = newToken()
	u.leaseExp = now + m.lease.Milliseconds()
	return Batch{UserID: name, Items: items, Token: u.token, ExpiresAt: time.UnixMilli(u.leaseExp)}, true
}

// leased returns the user when token is its lease, else nil.
func (m *memoryBackend) leased(b Batch) *mUser {
	u := m.users[b.UserID]
	if u == nil || u.token == "" || u.token != b.Token {
		return nil
	}
	return u
}

func (m *memoryBackend) releaseIfDone(name string, u *mUser) {
	for _, it := range u.items {
		if it.st == 'f' {
			return
		}
	}
	u.token = ""
	m.gc(name)
}

func (m *memoryBackend) ack(ctx context.Context, b Batch, ids []string) (int, error) {
	if err := ctxErr(ctx); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	u := m.leased(b)
	if u == nil {
		return 0, leaseLost("ack")
	}
	now := m.nowMs()
	n := 0
	for _, id := range ids {
		if it := u.items[id]; it != nil && it.st == 'f' {
			delete(u.items, id)
			m.markDelivered(mRef{b.UserID, id}, now)
			n++
		}
	}
	m.releaseIfDone(b.UserID, u)
	return n, nil
}

func (m *memoryBackend) nack(ctx context.Context, b Batch, fails []nackItem) (int, error) {
	if err := ctxErr(ctx); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	u := m.leased(b)
	if u == nil {
		return 0, leaseLost("nack")
	}
	now := m.nowMs()
	n := 0
	for _, f := range fails {
		it := u.items[f.id]
		if it == nil || it.st != 'f' {
			continue
		}
		n++
		if f.permanent || it.att >= it.n.MaxAttempts {
			m.toDead(u, it, now, f.err)
			continue
		}
		it.st, it.due, it.err = 'q', now+f.delay.Milliseconds(), f.err
	}
	m.releaseIfDone(b.UserID, u)
	return n, nil
}

func (m *memoryBackend) extend(ctx context.Context, b *Batch) error {
	if err := ctxErr(ctx); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	u := m.leased(*b)
	if u == nil {
		return leaseLost("extend")
	}
	u.leaseExp = m.nowMs() + m.lease.Milliseconds()
	b.ExpiresAt = time.UnixMilli(u.leaseExp)
	return nil
}
