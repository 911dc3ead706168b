package realtime

import (
	"sync"
	"time"
)

// hub fans a Broker's incoming messages out to its local Subscriptions: one
// entry per channel with at least one local subscriber, whatever their
// number. On Redis a feeder keeps the entries' channels subscribed — on a
// single Redis all on one Pub/Sub connection (sharedFeed), on Cluster on one
// connection per node (clusterFeed) — without a goroutine per channel; the
// memory backend delivers into the hub directly and has no feeder.
//
// Delivery into a Subscription never blocks (the feeders deliver on the
// connection's reading goroutine): a full queue is an overflow, handled by
// the Subscription (repair from history, or disconnect).
type hub struct {
	shared feeder // nil on memory
	linger time.Duration
	m      *metrics

	mu    sync.RWMutex
	chans map[string]*hubChan
}

// feeder keeps the channels of a broker's entries subscribed on the backend
// (sharedFeed, clusterFeed). add and remove never block: the hub calls them
// holding its lock. The feeder calls markReady on each confirmed
// subscription and markNotReady when one is lost.
type feeder interface {
	add(hc *hubChan)
	remove(hc *hubChan)
	close()
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
	lingerT   *time.Timer
}

func newHub(m *metrics) *hub {
	return &hub{linger: time.Second, m: m, chans: map[string]*hubChan{}}
}

// join adds s to channel's subscribers and returns the channel that is
// closed once the backend delivers the channel's messages.
func (h *hub) join(channel string, s *Subscription) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	hc := h.chans[channel]
	if hc == nil {
		hc = &hubChan{h: h, name: channel, ready: make(chan struct{})}
		h.chans[channel] = hc
		if h.shared != nil {
			h.shared.add(hc)
		} else {
			hc.readyDone = true
			close(hc.ready)
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
	if h.shared == nil {
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
		h.shared.remove(hc) // ordered after its SUBSCRIBE by the feeder
	})
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

// deliver is hub.deliver for a feeder that knows its entry.
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

// markNotReady opens a new ready channel after the subscription was lost.
func (hc *hubChan) markNotReady() {
	h := hc.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if hc.readyDone {
		hc.readyDone = false
		hc.ready = make(chan struct{})
	}
}

// close stops the feeder and the lingering entries (Broker.Close).
func (h *hub) close() {
	if h.shared != nil {
		defer h.shared.close() // not under h.mu: the feeder may be marking an entry ready
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for name, hc := range h.chans {
		if hc.lingerT != nil {
			hc.lingerT.Stop()
		}
		delete(h.chans, name)
	}
}
