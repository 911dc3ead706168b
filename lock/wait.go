package lock

import "sync"

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
type waitQueue struct {
	mu sync.Mutex
	m  map[string][]*waiter
}

// waiter is one waiting Acquire call. ch holds at most one pending wake.
type waiter struct {
	ch chan struct{}
}

func newWaitQueue() *waitQueue {
	return &waitQueue{m: make(map[string][]*waiter)}
}

// join appends a waiter for name.
func (q *waitQueue) join(name string) *waiter {
	w := &waiter{ch: make(chan struct{}, 1)}
	q.mu.Lock()
	q.m[name] = append(q.m[name], w)
	q.mu.Unlock()
	return w
}

// leave removes w, passing on a wake it did not consume.
func (q *waitQueue) leave(name string, w *waiter) {
	q.mu.Lock()
	defer q.mu.Unlock()
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
