package lock

import (
	"context"
	"sync"
	"time"
)

// waitQueue holds the waiting Acquire calls of one Locker, per lock name, in
// arrival order. A release wakes one waiter, not all: only one can win the
// lock, so waking every waiter of every instance would cost a round trip per
// waiter per hand-off for nothing. Each instance wakes its oldest waiter, so
// one try per instance races for the freed lock.
//
// A wake is never lost inside the queue: it goes to the first waiter that has
// no wake pending, and a waiter that leaves with a wake pending (it gave up,
// or acquired meanwhile) passes it on. Wakes lost outside (a Pub/Sub message
// dropped on a reconnect) are covered by the waiters' polling.
//
// The queue also serves local direct hand-offs (docs/locks.md): a release
// claims the oldest waiter that can take a lease, transfers the lock to it in
// one script, and delivers the lease through grant. handoffs counts the
// consecutive hand-offs per name, so that after handoffCap of them a normal
// release lets other instances' waiters compete.
//
// holders records, per name, the last lease this Locker obtained, until it is
// released or lost: a new waiter of a name held here needs no try of its own
// (the holder's release hands the lock over, or wakes it), only a timer for
// the lease's expiry.
type waitQueue struct {
	mu       sync.Mutex
	m        map[string][]*waiter
	handoffs map[string]int
	holders  map[string]*Lease
	// holdersSweepAt is the size of holders at which setHolder sweeps.
	holdersSweepAt int
}

// waiter is one waiting Acquire call. ch holds at most one pending wake.
// grant, when not nil, receives a lease handed off to this waiter; the other
// fields are set at join and then guarded by waitQueue.mu.
type waiter struct {
	ch    chan struct{}
	grant chan *Lease // capacity 1; nil: hand-offs not accepted

	ctx      context.Context
	ttl      time.Duration
	deadline time.Time
	claimed  bool // a hand-off to this waiter is in flight
	granted  bool // a lease was put in grant
	gone     bool // the Acquire call has returned (or is returning)
}

func newWaitQueue() *waitQueue {
	return &waitQueue{m: make(map[string][]*waiter), handoffs: make(map[string]int), holders: make(map[string]*Lease), holdersSweepAt: holdersSweepMin}
}

// setHolder records le as this Locker's lease of its name; now is the
// backend's clock. A lease that is
// never released (its holder let it expire) is forgotten by a sweep: when an
// insert takes the map past holdersSweepAt, every expired or lost lease is
// dropped and the threshold becomes twice the live size, so the map stays
// proportional to the leases held and sweeping costs O(1) amortised.
func (q *waitQueue) setHolder(le *Lease, now time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.holders[le.Name]; !ok && len(q.holders) >= q.holdersSweepAt {
		for name, h := range q.holders {
			if !now.Before(h.expiresAt()) || h.isLost() {
				delete(q.holders, name)
			}
		}
		q.holdersSweepAt = max(holdersSweepMin, 2*len(q.holders))
	}
	q.holders[le.Name] = le
}

// holdersSweepMin is the smallest sweep threshold of waitQueue.holders.
const holdersSweepMin = 64

// clearHolder forgets the lease of name with token, if it is the recorded one.
func (q *waitQueue) clearHolder(name, token string) {
	q.mu.Lock()
	if le := q.holders[name]; le != nil && le.Token == token {
		delete(q.holders, name)
	}
	q.mu.Unlock()
}

// heldHere reports how long this Locker's recorded lease of name has left,
// or 0 when none is recorded, or it expired or was lost (then it is
// forgotten).
func (q *waitQueue) heldHere(name string, now time.Time) time.Duration {
	q.mu.Lock()
	defer q.mu.Unlock()
	le := q.holders[name]
	if le == nil {
		return 0
	}
	left := le.expiresAt().Sub(now)
	if left <= 0 || le.isLost() {
		delete(q.holders, name)
		return 0
	}
	return left
}

// join appends a waiter for name that accepts no hand-off.
func (q *waitQueue) join(name string) *waiter {
	w := &waiter{ch: make(chan struct{}, 1)}
	q.add(name, w)
	return w
}

// joinGrant appends a waiter for name that accepts a hand-off of a lock with
// ttl while ctx is live and before deadline.
func (q *waitQueue) joinGrant(ctx context.Context, name string, ttl time.Duration, deadline time.Time) *waiter {
	w := &waiter{ch: make(chan struct{}, 1), grant: make(chan *Lease, 1), ctx: ctx, ttl: ttl, deadline: deadline}
	q.add(name, w)
	return w
}

func (q *waitQueue) add(name string, w *waiter) {
	q.mu.Lock()
	q.m[name] = append(q.m[name], w)
	q.mu.Unlock()
}

// live reports whether w can still use a lease. The caller holds q.mu.
func (w *waiter) live() bool {
	return !w.gone && w.ctx.Err() == nil && time.Now().Before(w.deadline)
}

// claim picks the oldest live waiter of name that accepts a hand-off, unless
// limit consecutive hand-offs of name were made already; nil when none.
func (q *waitQueue) claim(name string, limit int) *waiter {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.handoffs[name] >= limit {
		return nil
	}
	for _, w := range q.m[name] {
		if w.grant != nil && !w.claimed && !w.granted && w.live() {
			w.claimed = true
			return w
		}
	}
	return nil
}

// deliver ends the claim of w: with le, the lock now held for w, it gives w
// the lease and counts the hand-off, or, when w can no longer use it,
// reports false (the caller releases le). With le nil (the transfer failed)
// it only unclaims.
func (q *waitQueue) deliver(name string, w *waiter, le *Lease) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	w.claimed = false
	if le == nil || !w.live() {
		return false
	}
	w.granted = true
	w.grant <- le // never blocks: one grant per waiter
	q.handoffs[name]++
	return true
}

// released records a normal release of name: the hand-off count restarts.
func (q *waitQueue) released(name string) {
	q.mu.Lock()
	delete(q.handoffs, name)
	q.mu.Unlock()
}

// leave removes w, passing on a wake it did not consume. It returns a lease
// handed off to w that w did not take; the caller must release it.
func (q *waitQueue) leave(name string, w *waiter) *Lease {
	q.mu.Lock()
	defer q.mu.Unlock()
	w.gone = true
	var unclaimed *Lease
	if w.grant != nil {
		select {
		case unclaimed = <-w.grant:
		default:
		}
	}
	ws := q.m[name]
	for i, x := range ws {
		if x == w {
			copy(ws[i:], ws[i+1:])
			ws[len(ws)-1] = nil
			ws = ws[:len(ws)-1]
			break
		}
	}
	if len(ws) == 0 {
		delete(q.m, name)
	} else {
		q.m[name] = ws
	}
	select {
	case <-w.ch:
		q.wakeLocked(name)
	default:
	}
	return unclaimed
}

// wake wakes the oldest waiter of name that has no wake pending.
func (q *waitQueue) wake(name string) {
	q.mu.Lock()
	q.wakeLocked(name)
	q.mu.Unlock()
}

func (q *waitQueue) wakeLocked(name string) {
	for _, w := range q.m[name] {
		select {
		case w.ch <- struct{}{}:
			return
		default:
		}
	}
}

// len reports the number of waiters of name (for tests).
func (q *waitQueue) len(name string) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.m[name])
}
