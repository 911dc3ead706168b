package notify

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// maxAckBatch is the most users one ack.lua call carries, so that a call
// stays short (about 25µs of server time per user), like maxClaimBatch.
const maxAckBatch = 32

// ackCallsInFlight is how many ack.lua rounds a backend keeps in flight
// before further Acks wait to share the next one.
const ackCallsInFlight = 2

// ackCombiner merges concurrent Acks into shared ack.lua calls. An Ack
// that finds fewer than ackCallsInFlight rounds in flight is sent at once
// (with whatever Acks are waiting): an idle queue's ack costs one round
// trip, as before. Acks that arrive while every round is in flight wait,
// and the first round to finish takes them all. Under load a worker's acks
// thus share a call's fixed cost (EVALSHA, TIME, the round trip's system
// calls on both sides): ten users' acks in one call took about half the
// server time of ten calls (docs/notify.md).
//
// A waiting Ack gives up after Config.Timeout from its start, as a lone
// call would, so combining never doubles the wait; when a round had
// already taken it, its ack may still be applied, as a timed-out call's
// may be.
type ackCombiner struct {
	mu       sync.Mutex
	inFlight int       // rounds being sent, or elected and about to be
	queue    []*ackReq // Acks waiting for a round
}

// ackReq is one Ack in the combiner.
type ackReq struct {
	u     userKeys
	token string
	ids   []string
	n     int   // its result: items acked, -1 lease lost
	err   error // or its call's failure
	done  chan struct{}
	lead  chan struct{} // closed when this Ack is to send the next round
	led   bool          // lead was closed (under the combiner's lock)
}

func (r *redisBackend) ack(ctx context.Context, b Batch, ids []string) (int, error) {
	req := &ackReq{u: r.user(b.UserID), token: b.Token, ids: ids, done: make(chan struct{}), lead: make(chan struct{})}
	c := &r.acks
	c.mu.Lock()
	c.queue = append(c.queue, req)
	if c.inFlight < ackCallsInFlight {
		c.inFlight++
		c.elect(req)
	}
	c.mu.Unlock()
	giveUp := time.NewTimer(r.timeout)
	defer giveUp.Stop()
	select {
	case <-req.lead:
		r.sendAcks(ctx) // req is among the Acks it sends
		<-req.done
	case <-req.done:
	case <-giveUp.C:
		if c.abandon(req) {
			return 0, r.fail(ctx, "ack", fmt.Errorf("%w: waited %s for an ack round", context.DeadlineExceeded, r.timeout))
		}
		return 0, r.fail(ctx, "ack", fmt.Errorf("%w: no reply within %s", context.DeadlineExceeded, r.timeout))
	}
	if req.err != nil {
		return 0, req.err
	}
	if req.n < 0 {
		return 0, leaseLost("ack")
	}
	return req.n, nil
}

// elect makes req the sender of the next round (c.mu held).
func (c *ackCombiner) elect(req *ackReq) {
	req.led = true
	close(req.lead)
}

// next hands a finished turn to the first waiting Ack, or gives the turn
// up (c.mu held).
func (c *ackCombiner) next() {
	// A waiting Ack that has a turn takes the whole queue when it runs.
	if len(c.queue) > 0 && !slices.ContainsFunc(c.queue, func(q *ackReq) bool { return q.led }) {
		c.elect(c.queue[0])
		return
	}
	c.inFlight--
}

// abandon takes req out of the queue if no round has taken it yet and
// reports whether it did (nothing of req was sent); a turn req was given
// and will not use is handed on.
func (c *ackCombiner) abandon(req *ackReq) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := slices.Index(c.queue, req)
	if i >= 0 {
		c.queue = slices.Delete(c.queue, i, i+1)
	}
	if req.led {
		c.next()
	}
	return i >= 0
}

// sendAcks sends every waiting Ack in one round (calls as groupCalls
// allows, in one pipeline), then hands its turn on.
func (r *redisBackend) sendAcks(ctx context.Context) {
	c := &r.acks
	c.mu.Lock()
	reqs := c.queue
	c.queue = nil
	if len(reqs) == 0 {
		// Another round took them, this turn's Ack too.
		c.next()
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()

	groups := r.groupCalls(len(reqs), maxAckBatch, func(i int) string { return reqs[i].u.tag })
	calls := make([]call, len(groups))
	for j, g := range groups {
		ks := make([]string, 0, 7*len(g))
		args := []string{strconv.Itoa(r.deliveredCap)}
		for _, i := range g {
			q := reqs[i]
			u := q.u
			ks = append(ks, u.due, u.queue, u.inflight, u.lease, u.data, u.statsKey, u.done)
			args = append(args, u.uid, q.token, strconv.Itoa(len(q.ids)))
			args = append(args, q.ids...)
		}
		calls[j] = call{s: scriptAck, keys: ks, args: args}
	}
	// run's error is the first call's failure; each call's own is below.
	res, _ := r.run(ctx, "ack", calls)
	for j, g := range groups {
		v, err := r.ackResult(ctx, res[j], len(g))
		for k, i := range g {
			q := reqs[i]
			if err != nil {
				q.err = err
			} else {
				q.n = int(v[k])
			}
			close(q.done)
		}
	}

	c.mu.Lock()
	c.next()
	c.mu.Unlock()
}

// ackResult is one ack.lua call's per-user results.
func (r *redisBackend) ackResult(ctx context.Context, x rueidis.RedisResult, users int) ([]int64, error) {
	if err := x.Error(); err != nil {
		return nil, r.fail(ctx, "ack", err)
	}
	v, err := x.AsIntSlice()
	if err == nil && len(v) != users {
		err = fmt.Errorf("%d results for %d users", len(v), users)
	}
	if err != nil {
		return nil, r.bad(ctx, "ack", err)
	}
	return v, nil
}
