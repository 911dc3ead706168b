package realtime

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// sharedFeed keeps every channel of a Broker on a single Redis (or Sentinel)
// subscribed on one dedicated connection, with one goroutine for all of
// them: SUBSCRIBE and UNSUBSCRIBE are sent as channels gain their first
// local subscriber and lose their last, and messages are dispatched by
// channel from the connection's push hook. Per channel it costs two map
// entries, where a Receive per channel costs a goroutine and rueidis's
// per-call buffers (~8 KB): it is what keeps an idle SSE connection small.
//
// On Cluster, SSUBSCRIBE must go to each channel's shard, and a dedicated
// rueidis connection is bound to one slot: there feed (one Receive per
// channel) is used instead.
//
// When the connection is lost, every channel is marked not ready, the feed
// dedicates a new connection and subscribes them all again; each
// confirmation then makes the channel's subscribers repair from history
// (hubChan.markReady), so nothing published meanwhile is silently missed.
type sharedFeed struct {
	s      *redisStore
	kick   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu sync.RWMutex
	// want maps each Pub/Sub channel name to the hub entry that wants it.
	want map[string]*hubChan
	// state is each channel's subscription on the current connection.
	state map[string]subState
	// ops are the joins and leaves not yet acted on, in order.
	ops []feedOp
}

type subState uint8

const (
	subNone subState = iota
	subPending
	subConfirmed
	subLeaving
)

type feedOp struct {
	ps  string
	add bool
}

// subscribeBatch bounds the channels of one SUBSCRIBE or UNSUBSCRIBE.
const subscribeBatch = 500

func newSharedFeed(s *redisStore) *sharedFeed {
	ctx, cancel := context.WithCancel(context.Background())
	f := &sharedFeed{
		s: s, kick: make(chan struct{}, 1), ctx: ctx, cancel: cancel, done: make(chan struct{}),
		want: map[string]*hubChan{}, state: map[string]subState{},
	}
	go f.run()
	return f
}

// add makes hc's channel subscribed; hc.markReady is called once it is.
// It never blocks (the hub calls it holding its lock).
func (f *sharedFeed) add(hc *hubChan) {
	ps := f.s.keysFor(hc.name).ps
	f.mu.Lock()
	f.want[ps] = hc
	f.ops = append(f.ops, feedOp{ps: ps, add: true})
	f.mu.Unlock()
	f.wake()
}

// remove unsubscribes hc's channel unless another entry wants it by then.
func (f *sharedFeed) remove(hc *hubChan) {
	ps := f.s.keysFor(hc.name).ps
	f.mu.Lock()
	if f.want[ps] == hc {
		delete(f.want, ps)
	}
	f.ops = append(f.ops, feedOp{ps: ps})
	f.mu.Unlock()
	f.wake()
}

func (f *sharedFeed) wake() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

func (f *sharedFeed) close() {
	f.cancel()
	<-f.done
}

// onMessage runs on the connection's reading goroutine: it must not block.
func (f *sharedFeed) onMessage(msg rueidis.PubSubMessage) {
	f.mu.RLock()
	hc := f.want[msg.Channel]
	f.mu.RUnlock()
	if hc == nil {
		return // a channel being left
	}
	m, err := parsePayload(hc.name, msg.Message)
	if err != nil {
		f.s.log.Log(errorLevel, "realtime: dropped a malformed Pub/Sub message", "err", err.Error())
		return
	}
	hc.deliver(m)
}

// onSubscription runs on the connection's reading goroutine.
func (f *sharedFeed) onSubscription(p rueidis.PubSubSubscription) {
	var ready *hubChan
	f.mu.Lock()
	switch p.Kind {
	case "subscribe":
		if f.state[p.Channel] == subPending {
			f.state[p.Channel] = subConfirmed
			ready = f.want[p.Channel]
		}
	case "unsubscribe":
		if f.state[p.Channel] == subLeaving {
			delete(f.state, p.Channel)
		}
	}
	f.mu.Unlock()
	if ready != nil {
		ready.markReady()
	}
}

// run owns the connection: it dedicates one, subscribes what is wanted,
// acts on joins and leaves, and starts over when the connection is lost.
func (f *sharedFeed) run() {
	defer close(f.done)
	backoff := 20 * time.Millisecond
	for f.ctx.Err() == nil {
		dc, release := f.s.client.Dedicate()
		lost := dc.SetPubSubHooks(rueidis.PubSubHooks{OnMessage: f.onMessage, OnSubscription: f.onSubscription})
		// Everything wanted is to be subscribed on this connection.
		f.mu.Lock()
		clear(f.state)
		f.ops = f.ops[:0]
		for ps := range f.want {
			f.ops = append(f.ops, feedOp{ps: ps, add: true})
		}
		f.mu.Unlock()
		started := time.Now()
		err := f.serve(dc, lost)
		dc.Close() // never back to the pool with subscriptions on it
		release()
		if f.ctx.Err() != nil {
			return
		}
		f.s.m.event("redis", "subscription_lost", 1)
		f.s.log.Log(warnLevel, "realtime: Pub/Sub connection lost; resubscribing, then repairing from history", "err", errString(err))
		f.mu.Lock()
		hcs := make([]*hubChan, 0, len(f.want))
		for _, hc := range f.want {
			hcs = append(hcs, hc)
		}
		f.mu.Unlock()
		for _, hc := range hcs {
			hc.markNotReady()
		}
		if time.Since(started) > 5*time.Second {
			backoff = 20 * time.Millisecond // it worked for a while
		}
		t := time.NewTimer(backoff/2 + rand.N(backoff/2+1))
		select {
		case <-t.C:
		case <-f.ctx.Done():
			t.Stop()
			return
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// serve acts on ops until the connection is lost (its error) or the feed
// closes (nil).
func (f *sharedFeed) serve(dc rueidis.DedicatedClient, lost <-chan error) error {
	for {
		if err := f.apply(dc); err != nil {
			return err
		}
		select {
		case <-f.kick:
		case err := <-lost:
			if err == nil {
				err = errors.New("connection closed")
			}
			return err
		case <-f.ctx.Done():
			return nil
		}
	}
}

// apply sends the SUBSCRIBE and UNSUBSCRIBE that the queued ops need.
func (f *sharedFeed) apply(dc rueidis.DedicatedClient) error {
	f.mu.Lock()
	var sub, unsub []string
	var ready []*hubChan
	for _, op := range f.ops {
		hc, st := f.want[op.ps], f.state[op.ps]
		switch {
		case op.add && hc != nil && st == subConfirmed:
			// A new entry of a channel still subscribed: its old entry left
			// and the new one joined before the leave was acted on (the
			// leave's op then finds the new entry and unsubscribes nothing).
			ready = append(ready, hc)
		case hc != nil && (st == subNone || st == subLeaving):
			f.state[op.ps] = subPending
			sub = append(sub, op.ps)
		case hc == nil && (st == subPending || st == subConfirmed):
			f.state[op.ps] = subLeaving
			unsub = append(unsub, op.ps)
		}
	}
	f.ops = f.ops[:0]
	f.mu.Unlock()
	for _, hc := range ready {
		hc.markReady()
	}
	for len(unsub) > 0 {
		n := min(len(unsub), subscribeBatch)
		if err := f.do(dc, dc.B().Unsubscribe().Channel(unsub[:n]...).Build()); err != nil {
			return err
		}
		unsub = unsub[n:]
	}
	for len(sub) > 0 {
		n := min(len(sub), subscribeBatch)
		if err := f.do(dc, dc.B().Subscribe().Channel(sub[:n]...).Build()); err != nil {
			return err
		}
		sub = sub[n:]
	}
	return nil
}

func (f *sharedFeed) do(dc rueidis.DedicatedClient, cmd rueidis.Completed) error {
	ctx, cancel := context.WithTimeout(f.ctx, f.s.cfg.timeout())
	defer cancel()
	return dc.Do(ctx, cmd).Error()
}

func errString(err error) string {
	if err == nil {
		return "connection closed"
	}
	return err.Error()
}
