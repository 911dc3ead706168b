package realtime

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// store is a backend: the part of a Broker that differs between memory and
// Redis. broker implements the Broker contract over it.
type store interface {
	publish(ctx context.Context, channel string, data []byte, idemKey string) (Position, error)
	history(ctx context.Context, channel string, since uint64, limit int) (History, error)
	// positions returns each channel's current position.
	positions(ctx context.Context, channels []string) ([]Position, error)
	setPresence(ctx context.Context, subject string, status Status, ttl time.Duration) (PresenceState, error)
	presence(ctx context.Context, subjects []string) (map[string]PresenceState, error)
}

type broker struct {
	cfg  Config
	kind string
	st   store
	hub  *hub
	m    *metrics

	mu     sync.Mutex
	subs   map[*Subscription]struct{}
	closed bool
}

var _ Broker = (*broker)(nil)

func (b *broker) Publish(ctx context.Context, channel string, data []byte, opts ...PublishOption) (Position, error) {
	var o publishOpts
	for _, f := range opts {
		f(&o)
	}
	if err := checkPublish(channel, data, o); err != nil {
		b.m.op(b.kind, "publish", err)
		return Position{}, err
	}
	p, err := b.st.publish(ctx, channel, data, o.idemKey)
	b.m.op(b.kind, "publish", err)
	return p, err
}

func (b *broker) History(ctx context.Context, channel string, since uint64, limit int) (History, error) {
	if err := checkChannel(channel); err != nil {
		b.m.op(b.kind, "history", err)
		return History{}, err
	}
	h, err := b.st.history(ctx, channel, since, max(limit, 0))
	b.m.op(b.kind, "history", err)
	return h, err
}

func (b *broker) SetPresence(ctx context.Context, subject string, status Status, ttl time.Duration) (PresenceState, error) {
	err := checkSubject(subject)
	if err == nil {
		err = checkStatus(status)
	}
	if err == nil && ttl < 0 {
		err = fmt.Errorf("%w: negative ttl", ErrInvalidArgument)
	}
	if err != nil {
		b.m.op(b.kind, "set_presence", err)
		return PresenceState{}, err
	}
	if ttl == 0 {
		ttl = b.cfg.presenceTTL()
	}
	ps, err := b.st.setPresence(ctx, subject, status, ttl)
	b.m.op(b.kind, "set_presence", err)
	return ps, err
}

func (b *broker) Presence(ctx context.Context, subjects []string) (map[string]PresenceState, error) {
	if len(subjects) > MaxChannels {
		err := fmt.Errorf("%w: more than %d subjects", ErrInvalidArgument, MaxChannels)
		b.m.op(b.kind, "presence", err)
		return nil, err
	}
	for _, s := range subjects {
		if err := checkSubject(s); err != nil {
			b.m.op(b.kind, "presence", err)
			return nil, err
		}
	}
	out, err := b.st.presence(ctx, subjects)
	b.m.op(b.kind, "presence", err)
	return out, err
}

func (b *broker) Close() error {
	b.mu.Lock()
	b.closed = true
	subs := b.subs
	b.subs = nil
	b.mu.Unlock()
	for s := range subs {
		_ = s.Close()
	}
	b.hub.close()
	return nil
}

func (b *broker) Subscribe(ctx context.Context, channels []string, since []Position, opts ...SubscribeOption) (*Subscription, error) {
	o := subOpts{queue: b.cfg.queueSize()}
	for _, f := range opts {
		f(&o)
	}
	if err := checkChannels(channels, since); err != nil {
		b.m.op(b.kind, "subscribe", err)
		return nil, err
	}
	for _, p := range since {
		if p.Epoch == "" && p.Offset != 0 {
			err := fmt.Errorf("%w: an offset without an epoch", ErrInvalidArgument)
			b.m.op(b.kind, "subscribe", err)
			return nil, err
		}
	}
	s := &Subscription{
		b:          b,
		channels:   append([]string(nil), channels...),
		state:      make(map[string]*subChan, len(channels)),
		inbox:      make(chan *Message, max(o.queue, 1)),
		wake:       make(chan struct{}, 1),
		closed:     make(chan struct{}),
		disconnect: o.disconnect,
		notify:     o.notify,
	}
	for _, ch := range channels {
		s.state[ch] = &subChan{}
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, ErrClosed
	}
	if b.subs == nil {
		b.subs = map[*Subscription]struct{}{}
	}
	b.subs[s] = struct{}{}
	b.mu.Unlock()

	err := s.start(ctx, since)
	if err != nil {
		_ = s.Close()
	}
	b.m.op(b.kind, "subscribe", err)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Subscription delivers the events of its channels. Next must not be
// called concurrently; Close may be called at any time.
type Subscription struct {
	b          *broker
	channels   []string
	state      map[string]*subChan
	inbox      chan *Message
	wake       chan struct{}
	closed     chan struct{}
	closeOnce  sync.Once
	disconnect bool
	// notify, when not nil, is called (without blocking, on the backend's
	// delivery path) after every change that lets Next return: a message
	// queued, a repair or an overflow flagged, Close.
	notify func()

	dirty      atomic.Bool // some channel's repair flag is set
	lagged     atomic.Bool // the queue overflowed: every channel repairs
	overflowed atomic.Bool // the queue overflowed with disconnect set

	pending []Event
	joined  int // channels joined in the hub (for Close)
}

// subChan is one channel's delivery state.
type subChan struct {
	pos       Position    // the last position queued in pending; Next's goroutine only
	delivered Position    // the last position Next returned; Next's goroutine only
	repair    atomic.Bool // repair from history before the next message
}

func (s *Subscription) start(ctx context.Context, since []Position) error {
	readies := make([]<-chan struct{}, len(s.channels))
	for i, ch := range s.channels {
		readies[i] = s.b.hub.join(ch, s)
		s.joined = i + 1
	}
	for _, r := range readies {
		select {
		case <-r:
		case <-ctx.Done():
			return fmt.Errorf("%w: subscribing: %w", ErrBackend, ctx.Err())
		case <-s.closed:
			return ErrClosed
		}
	}
	if since != nil {
		for i, ch := range s.channels {
			s.state[ch].pos = since[i]
			s.state[ch].delivered = since[i]
			s.state[ch].repair.Store(true)
		}
		s.dirty.Store(true)
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, s.b.cfg.timeout())
	defer cancel()
	ps, err := s.b.st.positions(pctx, s.channels)
	if err != nil {
		return err
	}
	for i, ch := range s.channels {
		s.state[ch].pos = ps[i]
		s.state[ch].delivered = ps[i]
	}
	return nil
}

// Channels returns the subscribed channels, in Subscribe's order.
func (s *Subscription) Channels() []string { return append([]string(nil), s.channels...) }

// Positions returns each channel's position after the last event Next
// returned (Subscribe's order). Call it from Next's goroutine only.
func (s *Subscription) Positions() []Position {
	out := make([]Position, len(s.channels))
	for i, ch := range s.channels {
		out[i] = s.state[ch].delivered
	}
	return out
}

// Close ends the Subscription. Next returns ErrClosed afterwards.
func (s *Subscription) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		if s.notify != nil {
			s.notify()
		}
		for _, ch := range s.channels[:s.joined] {
			s.b.hub.leave(ch, s)
		}
		s.b.mu.Lock()
		delete(s.b.subs, s)
		s.b.mu.Unlock()
	})
	return nil
}

// push queues m without blocking (it runs on the backend's delivery path).
func (s *Subscription) push(m *Message) {
	select {
	case s.inbox <- m:
		if s.notify != nil {
			s.notify()
		}
	default:
		if s.disconnect {
			s.overflowed.Store(true)
		} else {
			s.lagged.Store(true)
		}
		s.b.m.event(s.b.kind, "overflow", 1)
		s.signal()
	}
}

func (s *Subscription) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
	if s.notify != nil {
		s.notify()
	}
}

// markRepair makes the subscription repair channel from history.
func (s *Subscription) markRepair(channel string) {
	if c := s.state[channel]; c != nil {
		c.repair.Store(true)
		s.dirty.Store(true)
		s.signal()
	}
}

// Next returns the next event, blocking until there is one, ctx ends or the
// Subscription is closed. Events of one channel come in order: each message
// follows the previous one's offset by exactly 1, or an EventReset comes
// first. A backend error during a repair is returned (wrapping ErrBackend);
// the Subscription stays usable and the next call retries the repair.
func (s *Subscription) Next(ctx context.Context) (Event, error) {
	return s.next(ctx, true)
}

// TryNext is Next without blocking: ok is false when no event is ready.
func (s *Subscription) TryNext(ctx context.Context) (ev Event, ok bool, err error) {
	ev, err = s.next(ctx, false)
	if errors.Is(err, errNoEvent) {
		return Event{}, false, nil
	}
	return ev, err == nil, err
}

var errNoEvent = errors.New("realtime: no event ready")

func (s *Subscription) next(ctx context.Context, block bool) (Event, error) {
	for {
		if len(s.pending) > 0 {
			e := s.pending[0]
			s.state[e.Channel].delivered = e.Position
			s.pending[0] = Event{}
			s.pending = s.pending[1:]
			if len(s.pending) == 0 {
				s.pending = nil // let a large repair's array go
			}
			return e, nil
		}
		select {
		case <-s.closed:
			return Event{}, ErrClosed
		default:
		}
		if s.overflowed.Load() {
			return Event{}, ErrOverflow
		}
		if s.lagged.Swap(false) {
			for _, c := range s.state {
				c.repair.Store(true)
			}
			s.dirty.Store(true)
		}
		if s.dirty.Swap(false) {
			if err := s.repairAll(ctx); err != nil {
				return Event{}, err
			}
			continue
		}
		if !block {
			select {
			case m := <-s.inbox:
				if err := s.handle(ctx, m); err != nil {
					return Event{}, err
				}
				continue
			case <-s.wake:
				continue
			default:
				return Event{}, errNoEvent
			}
		}
		select {
		case m := <-s.inbox:
			if err := s.handle(ctx, m); err != nil {
				return Event{}, err
			}
		case <-s.wake:
		case <-s.closed:
			return Event{}, ErrClosed
		case <-ctx.Done():
			return Event{}, ctx.Err()
		}
	}
}

func (s *Subscription) repairAll(ctx context.Context) error {
	for _, ch := range s.channels {
		c := s.state[ch]
		if !c.repair.Swap(false) {
			continue
		}
		if err := s.repair(ctx, ch, c); err != nil {
			c.repair.Store(true)
			s.dirty.Store(true)
			return err
		}
	}
	return nil
}

// handle applies one received message.
func (s *Subscription) handle(ctx context.Context, m *Message) error {
	c := s.state[m.Channel]
	if c == nil {
		return nil
	}
	p := c.pos
	switch {
	case p.Epoch != "" && m.Epoch != p.Epoch:
		// Either an older epoch's message still in flight, or the channel
		// restarted: history decides.
	case m.Offset <= p.Offset:
		s.b.m.event(s.b.kind, "duplicate", 1)
		return nil // already delivered (from history, or resent)
	case m.Offset == p.Offset+1:
		c.pos = m.Position()
		s.pending = append(s.pending, Event{Kind: EventMessage, Channel: m.Channel, Position: c.pos, Message: m})
		s.b.m.event(s.b.kind, "delivered", 1)
		return nil
	}
	if err := s.repair(ctx, m.Channel, c); err != nil {
		c.repair.Store(true)
		s.dirty.Store(true)
		return err
	}
	return nil
}

// repair brings channel up to its current position from history: the
// missing messages in order, or a reset when they are gone.
func (s *Subscription) repair(ctx context.Context, channel string, c *subChan) error {
	for {
		hctx, cancel := context.WithTimeout(ctx, s.b.cfg.timeout())
		h, err := s.b.st.history(hctx, channel, c.pos.Offset, historyPage)
		cancel()
		if err != nil {
			return err
		}
		p := c.pos
		switch {
		case h.Epoch == "":
			if p != (Position{}) {
				s.reset(channel, c, Position{})
			}
			return nil
		case p.Epoch != "" && h.Epoch != p.Epoch, p.Offset > h.Top:
			s.reset(channel, c, Position{Epoch: h.Epoch, Offset: h.Top})
			return nil
		case p.Offset == h.Top:
			c.pos.Epoch = h.Epoch
			return nil
		case len(h.Messages) == 0 || h.Messages[0].Offset != p.Offset+1:
			s.reset(channel, c, Position{Epoch: h.Epoch, Offset: h.Top})
			return nil
		}
		n := 0
		for _, m := range h.Messages {
			if m.Offset != c.pos.Offset+1 {
				break
			}
			c.pos = m.Position()
			s.pending = append(s.pending, Event{Kind: EventMessage, Channel: channel, Position: c.pos, Message: m})
			n++
		}
		s.b.m.event(s.b.kind, "recovered", n)
		if n == 0 || c.pos.Offset >= h.Top {
			return nil
		}
	}
}

func (s *Subscription) reset(channel string, c *subChan, to Position) {
	c.pos = to
	s.pending = append(s.pending, Event{Kind: EventReset, Channel: channel, Position: to})
	s.b.m.event(s.b.kind, "reset", 1)
}
