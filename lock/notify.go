package lock

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// notifier turns release messages into wake-ups of a Locker's waiters.
//
// release.lua publishes on the lock's release channel (PUBLISH, or SPUBLISH
// on Cluster, where a sharded channel lives on its slot's node only instead
// of being broadcast to every node). A Locker subscribes to the channel of a
// lock while at least one of its Acquire calls waits for that lock: one
// subscription per (Locker, lock), whatever the number of waiters, kept for
// a short linger after the last waiter leaves so that a busy lock is not
// subscribed and unsubscribed on every hand-off.
//
// Pub/Sub delivery is at-most-once: a message published while a subscription
// is being (re)established is lost. Waiters therefore also poll, with
// jittered backoff, and try again when the holder's lease runs out.
//
// rueidis multiplexes Pub/Sub on the client's command connection (RESP3) and
// tracks subscriptions per connection: when two Lockers built on one client
// wait for the same lock and one unsubscribes, the other's subscription ends
// too. It subscribes again after a short pause; its waiters poll meanwhile.
type notifier struct {
	client  rueidis.Client
	sharded bool // SSUBSCRIBE/SUNSUBSCRIBE (Cluster), else SUBSCRIBE/UNSUBSCRIBE
	timeout time.Duration
	linger  time.Duration
	queue   *waitQueue
	m       *metrics
	log     *logLimiter

	mu   sync.Mutex
	subs map[string]*subscription // by channel
	// closing holds, per channel, the done channel of a subscription that is
	// unsubscribing: a new subscription of that channel waits for it, so the
	// old UNSUBSCRIBE cannot cancel the new SUBSCRIBE on a shared connection.
	closing map[string]chan struct{}
}

// subscription is one channel's subscription. Its fields are guarded by
// notifier.mu.
type subscription struct {
	channel string
	name    string // the lock name: the waitQueue key
	refs    int
	// ready is closed once the server confirmed the subscription; replaced by
	// a new open channel when the subscription ends and is retried.
	ready      chan struct{}
	readyDone  bool
	cancel     context.CancelFunc
	done       chan struct{} // closed when the goroutine has returned
	lingerTime *time.Timer
}

const defaultLinger = time.Second

func newNotifier(client rueidis.Client, sharded bool, timeout time.Duration, q *waitQueue, m *metrics, log *logLimiter) *notifier {
	return &notifier{
		client: client, sharded: sharded, timeout: timeout, linger: defaultLinger,
		queue: q, m: m, log: log,
		subs: make(map[string]*subscription), closing: make(map[string]chan struct{}),
	}
}

// join subscribes to channel (the release channel of lock name) if this
// Locker is not subscribed yet. ready is closed once messages flow; leave
// must be called once.
func (n *notifier) join(channel, name string) (ready <-chan struct{}, leave func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.subs[channel]
	if s == nil {
		ctx, cancel := context.WithCancel(context.Background())
		s = &subscription{channel: channel, name: name, ready: make(chan struct{}), cancel: cancel, done: make(chan struct{})}
		n.subs[channel] = s
		go n.run(ctx, s, n.closing[channel])
	}
	s.refs++
	if s.lingerTime != nil {
		s.lingerTime.Stop()
		s.lingerTime = nil
	}
	var once sync.Once
	return s.ready, func() { once.Do(func() { n.leave(s) }) }
}

// joinIfReady is join when channel's subscription is confirmed already;
// otherwise it does nothing and reports false.
func (n *notifier) joinIfReady(channel string) (leave func(), ok bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.subs[channel]
	if s == nil || !s.readyDone {
		return nil, false
	}
	s.refs++
	if s.lingerTime != nil {
		s.lingerTime.Stop()
		s.lingerTime = nil
	}
	var once sync.Once
	return func() { once.Do(func() { n.leave(s) }) }, true
}

// ready reports whether channel's subscription is confirmed.
func (n *notifier) ready(channel string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.subs[channel]
	return s != nil && s.readyDone
}

func (n *notifier) leave(s *subscription) {
	n.mu.Lock()
	defer n.mu.Unlock()
	s.refs--
	if s.refs > 0 {
		return
	}
	s.lingerTime = time.AfterFunc(n.linger, func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		if s.refs > 0 || n.subs[s.channel] != s {
			return // a waiter came back meanwhile
		}
		delete(n.subs, s.channel)
		n.closing[s.channel] = s.done
		s.cancel()
	})
}

// markReady closes the current ready channel (the server confirmed).
func (n *notifier) markReady(s *subscription) {
	n.mu.Lock()
	if !s.readyDone {
		s.readyDone = true
		close(s.ready)
	}
	n.mu.Unlock()
}

// markNotReady opens a new ready channel after the subscription ended, and
// reports whether it had been confirmed.
func (n *notifier) markNotReady(s *subscription) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !s.readyDone {
		return false
	}
	s.readyDone = false
	s.ready = make(chan struct{})
	return true
}

// run keeps s subscribed until ctx is cancelled (the last waiter left and
// the linger passed), then unsubscribes. prev, when not nil, is the done
// channel of the previous subscription of the same channel.
func (n *notifier) run(ctx context.Context, s *subscription, prev chan struct{}) {
	defer func() {
		n.mu.Lock()
		if n.closing[s.channel] == s.done {
			delete(n.closing, s.channel)
		}
		n.mu.Unlock()
		close(s.done)
	}()
	if prev != nil {
		select {
		case <-prev:
		case <-ctx.Done():
			return
		}
	}
	subKind := "subscribe"
	if n.sharded {
		subKind = "ssubscribe"
	}
	backoff := 50 * time.Millisecond
	for attempt := 0; ; attempt++ {
		resubscribed := attempt > 0
		rctx := rueidis.WithOnSubscriptionHook(ctx, func(p rueidis.PubSubSubscription) {
			// Runs on the connection's reading goroutine: no blocking here.
			if p.Kind == subKind && p.Channel == s.channel {
				n.markReady(s)
				if resubscribed {
					// Releases during the gap went unheard: let one
					// waiter look now.
					n.queue.wake(s.name)
				}
			}
		})
		rctx = rueidis.WithOnReceiveReturnHook(rctx, func(err error, c rueidis.CommandClient) error {
			// Receive returns on cancellation without telling the server;
			// unsubscribe on the same connection, or the server keeps
			// sending this channel's messages to it for good.
			if ctx.Err() != nil {
				uctx, cancel := context.WithTimeout(context.Background(), n.timeout)
				defer cancel()
				cmd := c.B().Unsubscribe().Channel(s.channel).Build()
				if n.sharded {
					cmd = c.B().Sunsubscribe().Channel(s.channel).Build()
				}
				_ = c.Do(uctx, cmd).Error()
			}
			return err
		})
		cmd := n.client.B().Subscribe().Channel(s.channel).Build()
		if n.sharded {
			cmd = n.client.B().Ssubscribe().Channel(s.channel).Build()
		}
		err := n.client.Receive(rctx, cmd, func(rueidis.PubSubMessage) { n.queue.wake(s.name) })
		if n.markNotReady(s) {
			backoff = 50 * time.Millisecond // it worked for a while
		}
		if ctx.Err() != nil || errors.Is(err, rueidis.ErrClosing) {
			return // the client is closed: nothing to subscribe again on
		}
		// The subscription ended by itself: connection lost, slot migrated,
		// server down. Waiters poll meanwhile; subscribe again after a pause.
		if err != nil {
			n.m.backendError()
			n.log.warn("lock: release notifications interrupted; waiters poll until resubscribed", "err", err.Error())
		}
		t := time.NewTimer(backoff/2 + rand.N(backoff/2))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// subscribed reports the number of channels this notifier is subscribed to
// or lingering on (for tests).
func (n *notifier) subscribed() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.subs)
}
