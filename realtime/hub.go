package realtime

import (
	"context"
	"sync"
	"time"
)

// hub fans a Broker's incoming messages out to its local Subscriptions: one
// entry per channel with at least one local subscriber, whatever their
// number. On a single Redis every entry is a channel of the broker's one
// Pub/Sub connection (shared); on Cluster each entry owns one sharded
// Pub/Sub subscription (feed); the memory backend delivers into the hub
// directly and has neither.
//
// Delivery into a Subscription never blocks (the Redis feed runs on the
// client's reading goroutine): a full queue is an overflow, handled by the
// Subscription (repair from history, or disconnect).
type hub struct {
	// feed, when not nil, keeps channel subscribed on the backend until ctx
	// ends, calling hc.markReady each time the subscription is confirmed.
	feed   func(ctx context.Context, hc *hubChan)
	shared *sharedFeed
	linger time.Duration
	m      *metrics

	mu    sync.RWMutex
	chans map[string]*hubChan
	// closing holds, per channel, the done channel of a feed that is
	// unsubscribing: a new feed of the channel waits for it, so that the
	// old UNSUBSCRIBE cannot cancel the new SUBSCRIBE on a shared
	// connection.
	closing map[string]chan struct{}
}

// hubChan is one channel's entry. Its fields are guarded by hub.mu.
type hubChan struct {
	h    *hub
	name string
	subs []*Subscription
	// ready is closed while the backend subscription is confirmed; replaced
	// by a new open channel when it is lost.
	ready     chan struct{}
	readyDone bool
	confirmed int // times the backend subscription was confirmed
	cancel    context.CancelFunc
	done      chan struct{}
	lingerT   *time.Timer
}

func newHub(feed func(context.Context, *hubChan), m *metrics) *hub {
	return &hub{feed: feed, linger: time.Second, m: m, chans: map[string]*hubChan{}, closing: map[string]chan struct{}{}}
}

// join adds s to channel's subscribers and returns the channel that is
// closed once the backend delivers the channel's messages.
func (h *hub) join(channel string, s *Subscription) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	hc := h.chans[channel]
	if hc == nil {
		hc = &hubChan{h: h, name: channel, ready: make(chan struct{}), done: make(chan struct{})}
		h.chans[channel] = hc
		switch {
		case h.shared != nil:
			close(hc.done) // no goroutine of its own
			h.shared.add(hc)
		case h.feed == nil:
			hc.readyDone = true
			close(hc.ready)
			close(hc.done)
		default:
			ctx, cancel := context.WithCancel(context.Background())
			hc.cancel = cancel
			prev := h.closing[channel]
			go h.run(ctx, hc, prev)
		}
	}
	if hc.lingerT != nil {
		hc.lingerT.Stop()
		hc.lingerT = nil
	}
	hc.subs = append(hc.subs, s)
	return hc.ready
}

// leave removes s from channel's subscribers; the backend subscription ends
// a linger after the last one left (reconnecting browsers do not churn it).
func (h *hub) leave(channel string, s *Subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	hc := h.chans[channel]
	if hc == nil {
		return
	}
	for i, x := range hc.subs {
		if x == s {
			last := len(hc.subs) - 1
			hc.subs[i] = hc.subs[last]
			hc.subs[last] = nil
			hc.subs = hc.subs[:last]
			break
		}
	}
	if len(hc.subs) > 0 {
		return
	}
	if h.feed == nil && h.shared == nil {
		delete(h.chans, channel)
		return
	}
	hc.lingerT = time.AfterFunc(h.linger, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if len(hc.subs) > 0 || h.chans[channel] != hc {
			return
		}
		delete(h.chans, channel)
		if h.shared != nil {
			h.shared.remove(hc) // ordered after any SUBSCRIBE on the one connection
			return
		}
		h.closing[channel] = hc.done
		hc.cancel()
	})
}

func (h *hub) run(ctx context.Context, hc *hubChan, prev chan struct{}) {
	defer func() {
		h.mu.Lock()
		if h.closing[hc.name] == hc.done {
			delete(h.closing, hc.name)
		}
		h.mu.Unlock()
		close(hc.done)
	}()
	if prev != nil {
		select {
		case <-prev:
		case <-ctx.Done():
			return
		}
	}
	h.feed(ctx, hc)
}

// deliver hands m to every local subscriber of its channel.
func (h *hub) deliver(m *Message) {
	h.mu.RLock()
	if hc := h.chans[m.Channel]; hc != nil {
		for _, s := range hc.subs {
			s.push(m)
		}
	}
	h.mu.RUnlock()
}

// deliverTo is deliver for a feed that knows its entry.
func (hc *hubChan) deliver(m *Message) {
	hc.h.mu.RLock()
	for _, s := range hc.subs {
		s.push(m)
	}
	hc.h.mu.RUnlock()
}

// markReady records a confirmed backend subscription. After the first, every
// confirmation follows a lost subscription: messages published meanwhile
// were not received, so every subscriber repairs the channel from history.
func (hc *hubChan) markReady() {
	h := hc.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if !hc.readyDone {
		hc.readyDone = true
		close(hc.ready)
	}
	hc.confirmed++
	if hc.confirmed > 1 {
		h.m.event("redis", "resubscribed", 1)
		for _, s := range hc.subs {
			s.markRepair(hc.name)
		}
	}
}

// markNotReady opens a new ready channel after the subscription was lost;
// it reports whether it had been confirmed.
func (hc *hubChan) markNotReady() bool {
	h := hc.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if !hc.readyDone {
		return false
	}
	hc.readyDone = false
	hc.ready = make(chan struct{})
	return true
}

// close cancels every feed (Broker.Close).
func (h *hub) close() {
	if h.shared != nil {
		defer h.shared.close() // not under h.mu: the feed may be marking a channel ready
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for name, hc := range h.chans {
		if hc.cancel != nil {
			hc.cancel()
		}
		if hc.lingerT != nil {
			hc.lingerT.Stop()
		}
		delete(h.chans, name)
	}
}
