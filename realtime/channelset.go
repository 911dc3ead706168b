package realtime

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// channelSet is the channels of one dedicated Pub/Sub connection: what is
// wanted, what the server confirmed, and the joins and leaves not yet acted
// on. sharedFeed (a single Redis) and nodeFeed (one Cluster node) each run
// one; the connection's hooks call onMessage and onSubscription on its
// reading goroutine, and one goroutine calls serve.
type channelSet struct {
	s       *redisStore
	sharded bool // SSUBSCRIBE and SUNSUBSCRIBE (Cluster), else SUBSCRIBE
	kick    chan struct{}
	// moved, when not nil, takes back channels the node does not own: with
	// the owner's address from MOVED, or "" when the server ended the
	// subscription itself (the slot moved). Without it such a channel is
	// subscribed again here.
	moved func(chans []string, to map[string]string)

	mu sync.RWMutex
	// want maps each Pub/Sub channel name to the hub entry that wants it.
	want map[string]*hubChan
	// state is each channel's subscription on the current connection.
	state map[string]subState
	// ops are the joins and leaves not yet acted on, in order.
	ops  []feedOp
	dead bool // handed its channels back (takeAll): refuses adds
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

func newChannelSet(s *redisStore, sharded bool, moved func([]string, map[string]string)) *channelSet {
	return &channelSet{s: s, sharded: sharded, moved: moved, kick: make(chan struct{}, 1),
		want: map[string]*hubChan{}, state: map[string]subState{}}
}

// add makes ps subscribed for hc; false when the set was handed back.
// It never blocks.
func (cs *channelSet) add(ps string, hc *hubChan) bool {
	cs.mu.Lock()
	if cs.dead {
		cs.mu.Unlock()
		return false
	}
	cs.want[ps] = hc
	cs.ops = append(cs.ops, feedOp{ps: ps, add: true})
	cs.mu.Unlock()
	cs.wake()
	return true
}

// remove unsubscribes ps unless another entry than hc wants it by then.
func (cs *channelSet) remove(ps string, hc *hubChan) {
	cs.mu.Lock()
	if cs.want[ps] == hc {
		delete(cs.want, ps)
	}
	cs.ops = append(cs.ops, feedOp{ps: ps})
	cs.mu.Unlock()
	cs.wake()
}

func (cs *channelSet) wake() {
	select {
	case cs.kick <- struct{}{}:
	default:
	}
}

// reset starts a new connection: nothing is subscribed on it yet, and
// everything wanted is to be.
func (cs *channelSet) reset() {
	cs.mu.Lock()
	clear(cs.state)
	cs.ops = cs.ops[:0]
	for ps := range cs.want {
		cs.ops = append(cs.ops, feedOp{ps: ps, add: true})
	}
	cs.mu.Unlock()
}

// wanted returns the entries wanted.
func (cs *channelSet) wanted() []*hubChan {
	cs.mu.RLock()
	defer cs.mu.RUnlock()
	hcs := make([]*hubChan, 0, len(cs.want))
	for _, hc := range cs.want {
		hcs = append(hcs, hc)
	}
	return hcs
}

// takeAll empties the set for good and returns its channels and entries.
func (cs *channelSet) takeAll() ([]string, []*hubChan) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.dead = true
	chans := make([]string, 0, len(cs.want))
	hcs := make([]*hubChan, 0, len(cs.want))
	for ps, hc := range cs.want {
		chans = append(chans, ps)
		hcs = append(hcs, hc)
	}
	cs.want, cs.state, cs.ops = map[string]*hubChan{}, map[string]subState{}, nil
	return chans, hcs
}

// onMessage runs on the connection's reading goroutine: it must not block.
func (cs *channelSet) onMessage(msg rueidis.PubSubMessage) {
	cs.mu.RLock()
	hc := cs.want[msg.Channel]
	cs.mu.RUnlock()
	if hc == nil {
		return // a channel being left
	}
	m, err := parsePayload(hc.name, msg.Message)
	if err != nil {
		cs.s.log.Log(errorLevel, "realtime: dropped a malformed Pub/Sub message", "err", err.Error())
		return
	}
	hc.deliver(m)
}

// onSubscription runs on the connection's reading goroutine.
func (cs *channelSet) onSubscription(p rueidis.PubSubSubscription) {
	sub, unsub := "subscribe", "unsubscribe"
	if cs.sharded {
		sub, unsub = "ssubscribe", "sunsubscribe"
	}
	var ready, ended *hubChan
	cs.mu.Lock()
	switch p.Kind {
	case sub:
		if cs.state[p.Channel] == subPending {
			cs.state[p.Channel] = subConfirmed
			ready = cs.want[p.Channel]
		}
	case unsub:
		switch cs.state[p.Channel] {
		case subLeaving:
			delete(cs.state, p.Channel)
		case subPending, subConfirmed:
			// Not asked for: on Cluster, the slot moved to another node.
			delete(cs.state, p.Channel)
			if ended = cs.want[p.Channel]; ended != nil && cs.moved != nil {
				delete(cs.want, p.Channel)
			} else if ended != nil {
				cs.ops = append(cs.ops, feedOp{ps: p.Channel, add: true})
			}
		}
	}
	cs.mu.Unlock()
	if ready != nil {
		ready.markReady()
	}
	if ended != nil {
		ended.markNotReady()
		if cs.moved != nil {
			// Not on the reading goroutine: moved takes the router's lock.
			go cs.moved([]string{p.Channel}, nil)
		} else {
			cs.wake()
		}
	}
}

// serve acts on ops until the connection is lost (its error) or ctx ends
// (nil).
func (cs *channelSet) serve(ctx context.Context, dc rueidis.DedicatedClient, lost <-chan error) error {
	for {
		if err := cs.apply(ctx, dc); err != nil {
			return err
		}
		select {
		case <-cs.kick:
		case err := <-lost:
			if err == nil {
				err = errors.New("connection closed")
			}
			return err
		case <-ctx.Done():
			return nil
		}
	}
}

// apply sends the (S)SUBSCRIBE and (S)UNSUBSCRIBE that the queued ops need,
// one command per channel (on Cluster, channels of different slots cannot
// share one), pipelined. Channels the node does not own (MOVED) go to moved
// with the owner's address.
func (cs *channelSet) apply(ctx context.Context, dc rueidis.DedicatedClient) error {
	cs.mu.Lock()
	var cmds rueidis.Commands
	var subs []string // the channel of each SUBSCRIBE, "" for an UNSUBSCRIBE
	var ready []*hubChan
	for _, op := range cs.ops {
		hc, st := cs.want[op.ps], cs.state[op.ps]
		switch {
		case op.add && hc != nil && st == subConfirmed:
			// A new entry of a channel still subscribed: its old entry left
			// and the new one joined before the leave was acted on (the
			// leave's op then finds the new entry and unsubscribes nothing).
			ready = append(ready, hc)
		case hc != nil && (st == subNone || st == subLeaving):
			cs.state[op.ps] = subPending
			if cs.sharded {
				cmds = append(cmds, dc.B().Ssubscribe().Channel(op.ps).Build())
			} else {
				cmds = append(cmds, dc.B().Subscribe().Channel(op.ps).Build())
			}
			subs = append(subs, op.ps)
		case hc == nil && (st == subPending || st == subConfirmed):
			cs.state[op.ps] = subLeaving
			if cs.sharded {
				cmds = append(cmds, dc.B().Sunsubscribe().Channel(op.ps).Build())
			} else {
				cmds = append(cmds, dc.B().Unsubscribe().Channel(op.ps).Build())
			}
			subs = append(subs, "")
		}
	}
	cs.ops = cs.ops[:0]
	cs.mu.Unlock()
	for _, hc := range ready {
		hc.markReady()
	}
	if len(cmds) == 0 {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, max(cs.s.cfg.timeout(), time.Duration(len(cmds))*time.Millisecond))
	defer cancel()
	var moved []string
	movedTo := map[string]string{}
	for i, res := range dc.DoMulti(cctx, cmds...) {
		err := res.Error()
		if err == nil {
			continue
		}
		var re *rueidis.RedisError
		if cs.moved != nil && errors.As(err, &re) && subs[i] != "" {
			if addr, ok := re.IsMoved(); ok {
				moved = append(moved, subs[i])
				movedTo[subs[i]] = addr
				continue
			}
		}
		return err
	}
	if len(moved) > 0 {
		cs.mu.Lock()
		for _, ps := range moved {
			delete(cs.want, ps)
			delete(cs.state, ps)
		}
		cs.mu.Unlock()
		cs.moved(moved, movedTo)
	}
	return nil
}

// rueidisHooks are the connection hooks that feed cs.
func rueidisHooks(cs *channelSet) rueidis.PubSubHooks {
	return rueidis.PubSubHooks{OnMessage: cs.onMessage, OnSubscription: cs.onSubscription}
}

func errString(err error) string {
	if err == nil {
		return "connection closed"
	}
	return err.Error()
}
