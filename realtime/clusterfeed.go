package realtime

import (
	"context"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// clusterFeed is sharedFeed for Redis Cluster: sharded Pub/Sub (SSUBSCRIBE)
// must reach the node that owns each channel's slot, and a dedicated rueidis
// connection of the cluster client is bound to one slot. So the broker keeps
// one dedicated connection per node (a nodeFeed, over the node's own client
// from Client.Nodes) and a router that sends each channel to its slot's
// node: learned from MOVED replies (which name the owner), guessed before.
//
// When a node's connection is lost, or the server ends a subscription
// itself (its slot moved to another node), the channels go back to the
// router, which subscribes them where their slot now lives; their
// confirmation makes the subscribers repair from history, as on a single
// Redis. One goroutine per node plus the router, whatever the number of
// channels.
type clusterFeed struct {
	s      *redisStore
	ctx    context.Context
	cancel context.CancelFunc
	kick   chan struct{}
	wg     sync.WaitGroup

	mu      sync.Mutex
	want    map[string]*hubChan  // Pub/Sub channel name -> entry
	on      map[string]*nodeFeed // channel -> the node feed it is given to
	nodes   map[string]*nodeFeed // address -> feed
	slots   map[uint16]string    // slot -> owner's address, from MOVED
	pending map[string]bool      // channels to route
	lost    bool                 // a node feed ended: back off before routing
}

func newClusterFeed(s *redisStore) *clusterFeed {
	ctx, cancel := context.WithCancel(context.Background())
	f := &clusterFeed{
		s: s, ctx: ctx, cancel: cancel, kick: make(chan struct{}, 1),
		want: map[string]*hubChan{}, on: map[string]*nodeFeed{}, nodes: map[string]*nodeFeed{},
		slots: map[uint16]string{}, pending: map[string]bool{},
	}
	f.wg.Add(1)
	go f.route()
	return f
}

func (f *clusterFeed) add(hc *hubChan) {
	ps := f.s.keysFor(hc.name).ps
	f.mu.Lock()
	f.want[ps] = hc
	f.pending[ps] = true
	f.mu.Unlock()
	f.wake()
}

func (f *clusterFeed) remove(hc *hubChan) {
	ps := f.s.keysFor(hc.name).ps
	f.mu.Lock()
	if f.want[ps] == hc {
		delete(f.want, ps)
		delete(f.pending, ps)
		if nf := f.on[ps]; nf != nil {
			delete(f.on, ps)
			nf.cs.remove(ps, hc)
		}
	}
	f.mu.Unlock()
}

func (f *clusterFeed) wake() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

func (f *clusterFeed) close() {
	f.cancel()
	f.wg.Wait()
}

// reroute takes channels back from nf (its connection was lost, or the
// server moved them): the router subscribes them again where they now live.
func (f *clusterFeed) reroute(nf *nodeFeed, chans []string, movedTo map[string]string, lost bool) {
	f.mu.Lock()
	for _, ps := range chans {
		if f.on[ps] == nf {
			delete(f.on, ps)
		}
		if _, ok := f.want[ps]; ok {
			f.pending[ps] = true
		}
		if addr := movedTo[ps]; addr != "" {
			f.slots[slotOf(ps)] = addr
		} else {
			delete(f.slots, slotOf(ps)) // ask again
		}
	}
	if lost {
		if f.nodes[nf.addr] == nf {
			delete(f.nodes, nf.addr)
		}
		f.lost = true
	}
	f.mu.Unlock()
	f.wake()
}

// route is the router's goroutine.
func (f *clusterFeed) route() {
	defer f.wg.Done()
	defer func() {
		f.mu.Lock()
		nodes := f.nodes
		f.nodes = map[string]*nodeFeed{}
		f.mu.Unlock()
		for _, nf := range nodes {
			nf.stop()
		}
	}()
	backoff := 20 * time.Millisecond
	for {
		select {
		case <-f.kick:
		case <-f.ctx.Done():
			return
		}
		f.mu.Lock()
		lost := f.lost
		f.lost = false
		f.mu.Unlock()
		if lost {
			if !sleepCtx(f.ctx, jitter(backoff)) {
				return
			}
			backoff = min(2*backoff, 2*time.Second)
		} else {
			backoff = 20 * time.Millisecond
		}
		var clients map[string]rueidis.Client
		f.mu.Lock()
		for ps := range f.pending {
			hc := f.want[ps]
			if hc == nil {
				delete(f.pending, ps)
				continue
			}
			addr := f.slots[slotOf(ps)]
			nf := f.nodes[addr]
			if nf == nil {
				if clients == nil {
					clients = f.s.client.Nodes()
				}
				if _, ok := clients[addr]; !ok {
					if addr != "" {
						// MOVED named a node the client does not know yet:
						// a keyed command through the cluster client makes
						// it learn the topology; meanwhile back off.
						f.lost = true
						go f.s.client.Do(f.ctx, f.s.client.B().Exists().Key(ps).Build())
						break
					}
					addr = anyAddr(clients)
				}
				if nf = f.nodes[addr]; nf == nil {
					c := clients[addr]
					if c == nil {
						f.lost = true // no node known yet: try again
						break
					}
					nf = newNodeFeed(f, addr, c)
					f.nodes[addr] = nf
				}
			}
			if !nf.cs.add(ps, hc) {
				// That feed just ended: a new one for its node, after the
				// backoff (its channels come back through reroute).
				if f.nodes[nf.addr] == nf {
					delete(f.nodes, nf.addr)
				}
				f.lost = true
				break
			}
			delete(f.pending, ps)
			f.on[ps] = nf
		}
		again := f.lost || len(f.pending) > 0
		f.mu.Unlock()
		if again {
			f.wake()
		}
	}
}

func anyAddr(m map[string]rueidis.Client) string {
	for a := range m {
		return a
	}
	return ""
}

func jitter(d time.Duration) time.Duration { return d/2 + rand.N(d/2+1) }

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// nodeFeed is one node's dedicated Pub/Sub connection: the channels the
// router gave it (a channelSet of sharded subscriptions), one goroutine.
// When its connection is lost it hands its channels back and ends.
type nodeFeed struct {
	f      *clusterFeed
	addr   string
	client rueidis.Client
	cs     *channelSet
	done   chan struct{}
	quit   chan struct{}
	once   sync.Once
}

func newNodeFeed(f *clusterFeed, addr string, c rueidis.Client) *nodeFeed {
	nf := &nodeFeed{f: f, addr: addr, client: c, done: make(chan struct{}), quit: make(chan struct{})}
	nf.cs = newChannelSet(f.s, true, func(chans []string, to map[string]string) { f.reroute(nf, chans, to, false) })
	go nf.run()
	return nf
}

func (nf *nodeFeed) stop() {
	nf.once.Do(func() { close(nf.quit) })
	<-nf.done
}

func (nf *nodeFeed) run() {
	defer close(nf.done)
	ctx, cancel := context.WithCancel(nf.f.ctx)
	defer cancel()
	go func() {
		select {
		case <-nf.quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	dc, release := nf.client.Dedicate()
	lost := dc.SetPubSubHooks(rueidisHooks(nf.cs))
	err := nf.cs.serve(ctx, dc, lost)
	dc.Close()
	release()
	if ctx.Err() != nil {
		return // the broker is closing
	}
	nf.f.s.m.event("redis", "subscription_lost", 1)
	nf.f.s.log.Log(warnLevel, "realtime: Pub/Sub connection to a Cluster node lost; resubscribing, then repairing from history",
		"node", nf.addr, "err", errString(err))
	// From now on the router's adds fail and go to a new feed.
	chans, hcs := nf.cs.takeAll()
	for _, hc := range hcs {
		hc.markNotReady()
	}
	nf.f.reroute(nf, chans, nil, true)
}

// slotOf is the Cluster slot of a key: CRC16 (XMODEM) of its hash tag.
func slotOf(key string) uint16 {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for k := 0; k < len(key); k++ {
		crc ^= uint16(key[k]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc % 16384
}
