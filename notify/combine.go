package notify

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"
)

// roundsInFlight is how many rounds a combiner keeps in flight before
// further calls wait to share the next one.
const roundsInFlight = 2

// Why a combiner's call did not complete (see combiner.do).
var (
	// errWaited: no round took the call before its time was up; nothing
	// of it was sent.
	errWaited = errors.New("waited for a shared round")
	// errNoReply: a round took the call but did not finish in time; it
	// may still be applied, as a timed-out lone call may.
	errNoReply = errors.New("no reply")
)

// combiner merges concurrent calls of one kind (acks; single enqueues)
// into shared rounds of script calls. A call that finds fewer than
// roundsInFlight rounds in flight is sent at once (with whatever calls are
// waiting): on an idle queue it costs one round trip, as a lone call does.
// Calls that arrive while every round is in flight wait, and the first
// round to finish hands its turn to one of them, which sends them all.
// Under load the calls thus share a script call's fixed cost (EVALSHA,
// TIME, the round trip's system calls on both sides), which is about half
// of a small call's server time (docs/notify.md).
//
// T is the call (a pointer: send writes its result into it).
type combiner[T any] struct {
	mu       sync.Mutex
	inFlight int           // rounds being sent, or elected and about to be
	queue    []*waiting[T] // calls waiting for a round
}

// waiting is one call in a combiner.
type waiting[T any] struct {
	call T
	done chan struct{} // closed when its round has finished
	lead chan struct{} // closed when this call is to send the next round
	led  bool          // lead was closed (under the combiner's lock)
}

// do adds call and returns once a round has sent it: nil when send has
// written its result. It gives up after timeout from its start (or when
// ctx ends) with errWaited, or ctx's error, when no round took the call,
// and with errNoReply when one took it but has not finished: waiting for a
// round never doubles a call's time limit.
//
// send gets every waiting call of a round, at least one, and must write
// each one's result (or error); it runs on the goroutine of the call whose
// turn it is, without that call's cancellation (the round carries other
// callers' calls too), so it must bound itself.
func (c *combiner[T]) do(ctx context.Context, call T, timeout time.Duration, send func(ctx context.Context, calls []T)) error {
	w := &waiting[T]{call: call, done: make(chan struct{}), lead: make(chan struct{})}
	c.mu.Lock()
	c.queue = append(c.queue, w)
	if c.inFlight < roundsInFlight {
		c.inFlight++
		c.elect(w)
	}
	c.mu.Unlock()
	giveUp := time.NewTimer(timeout)
	defer giveUp.Stop()
	select {
	case <-w.lead:
		c.round(context.WithoutCancel(ctx), send) // w is among the calls it sends
		<-w.done
		return nil
	case <-w.done:
		return nil
	case <-giveUp.C:
		if c.abandon(w) {
			return errWaited
		}
		return errNoReply
	case <-ctx.Done():
		if c.abandon(w) {
			return ctx.Err()
		}
		return errNoReply
	}
}

// elect makes w the sender of the next round (c.mu held).
func (c *combiner[T]) elect(w *waiting[T]) {
	w.led = true
	close(w.lead)
}

// next hands a finished turn to the first waiting call, or gives the turn
// up (c.mu held).
func (c *combiner[T]) next() {
	// A waiting call that has a turn takes the whole queue when it runs.
	if len(c.queue) > 0 && !slices.ContainsFunc(c.queue, func(w *waiting[T]) bool { return w.led }) {
		c.elect(c.queue[0])
		return
	}
	c.inFlight--
}

// abandon takes w out of the queue if no round has taken it yet and
// reports whether it did (nothing of w was sent); a turn w was given and
// will not use is handed on.
func (c *combiner[T]) abandon(w *waiting[T]) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := slices.Index(c.queue, w)
	if i >= 0 {
		c.queue = slices.Delete(c.queue, i, i+1)
	}
	if w.led {
		c.next()
	}
	return i >= 0
}

// round sends every waiting call in one round, then hands its turn on.
func (c *combiner[T]) round(ctx context.Context, send func(ctx context.Context, calls []T)) {
	c.mu.Lock()
	ws := c.queue
	c.queue = nil
	c.mu.Unlock()
	if len(ws) > 0 {
		calls := make([]T, len(ws))
		for i, w := range ws {
			calls[i] = w.call
		}
		send(ctx, calls)
		for _, w := range ws {
			close(w.done)
		}
	}
	// An empty queue: another round took them, this turn's call too.
	c.mu.Lock()
	c.next()
	c.mu.Unlock()
}
