package realtime

import (
	"context"
	"time"
)

// sharedFeed keeps every channel of a Broker on a single Redis (or Sentinel)
// subscribed on one dedicated connection, with one goroutine for all of
// them: SUBSCRIBE and UNSUBSCRIBE are sent as channels gain their first
// local subscriber and lose their last, and messages are dispatched by
// channel from the connection's push hook (channelSet). Per channel it
// costs two map entries, where a Receive per channel costs a goroutine and
// rueidis's per-call buffers (~8 KB): it is what keeps an idle SSE
// connection small. Cluster has clusterFeed, one such connection per node.
//
// When the connection is lost, every channel is marked not ready, the feed
// dedicates a new connection and subscribes them all again; each
// confirmation then makes the channel's subscribers repair from history
// (hubChan.markReady), so nothing published meanwhile is silently missed.
type sharedFeed struct {
	s      *redisStore
	cs     *channelSet
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

func newSharedFeed(s *redisStore) *sharedFeed {
	ctx, cancel := context.WithCancel(context.Background())
	f := &sharedFeed{s: s, cs: newChannelSet(s, false, nil), ctx: ctx, cancel: cancel, done: make(chan struct{})}
	go f.run()
	return f
}

// add makes hc's channel subscribed; hc.markReady is called once it is.
// It never blocks (the hub calls it holding its lock).
func (f *sharedFeed) add(hc *hubChan) { f.cs.add(f.s.keysFor(hc.name).ps, hc) }

// remove unsubscribes hc's channel unless another entry wants it by then.
func (f *sharedFeed) remove(hc *hubChan) { f.cs.remove(f.s.keysFor(hc.name).ps, hc) }

func (f *sharedFeed) close() {
	f.cancel()
	<-f.done
}

// run owns the connection: it dedicates one, subscribes what is wanted,
// acts on joins and leaves, and starts over when the connection is lost.
func (f *sharedFeed) run() {
	defer close(f.done)
	backoff := 20 * time.Millisecond
	for f.ctx.Err() == nil {
		dc, release := f.s.client.Dedicate()
		lost := dc.SetPubSubHooks(rueidisHooks(f.cs))
		f.cs.reset()
		started := time.Now()
		err := f.cs.serve(f.ctx, dc, lost)
		dc.Close() // never back to the pool with subscriptions on it
		release()
		if f.ctx.Err() != nil {
			return
		}
		f.s.m.event("redis", "subscription_lost", 1)
		f.s.log.Log(warnLevel, "realtime: Pub/Sub connection lost; resubscribing, then repairing from history", "err", errString(err))
		for _, hc := range f.cs.wanted() {
			hc.markNotReady()
		}
		if time.Since(started) > 5*time.Second {
			backoff = 20 * time.Millisecond // it worked for a while
		}
		if !sleepCtx(f.ctx, jitter(backoff)) {
			return
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}
