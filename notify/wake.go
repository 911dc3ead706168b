package notify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// Wake-ups of idle workers (see Worker): an idle worker waits for one of
//
//   - an enqueue (or RequeueDead) through a Queue of this process: the
//     queue's hub signals every watcher at once (both backends);
//   - on Redis, an enqueue by any other instance: Enqueue publishes on the
//     channel <prefix>nq:{wake} after its script, and every worker
//     subscribes to it (plain Pub/Sub, which Redis Cluster forwards to
//     every node);
//   - the earliest due time (NextDue: a scheduled item, a retry after its
//     backoff, an expired lease), with a timer;
//   - WorkerConfig.IdleWait, the safety net for a lost Pub/Sub message.

// DueReader is implemented by the Queues of NewMemory and NewRedis.
type DueReader interface {
	// NextDue returns how long until the earliest user of the queue is due
	// (0 when one is due now), on the backend's clock: its earliest
	// queued item, or the expiry of its lease while it is leased. ok is
	// false when nothing is queued or leased.
	NextDue(ctx context.Context) (wait time.Duration, ok bool, err error)
}

var _ DueReader = (*queue)(nil)

// hub fans a wake-up out to every watcher; the zero value is ready. A
// watcher's channel holds at most one token, so a wake-up that arrives
// while the watcher is busy is kept until it next waits.
type hub struct {
	mu   sync.Mutex
	subs map[chan struct{}]struct{}
}

func (h *hub) subscribe() (chan struct{}, func()) {
	c := make(chan struct{}, 1)
	h.mu.Lock()
	if h.subs == nil {
		h.subs = map[chan struct{}]struct{}{}
	}
	h.subs[c] = struct{}{}
	h.mu.Unlock()
	return c, func() {
		h.mu.Lock()
		delete(h.subs, c)
		h.mu.Unlock()
	}
}

func (h *hub) signal() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.subs {
		poke(c)
	}
}

// poke leaves one token in c unless one is already there.
func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// woke is called after an Enqueue, EnqueueMany or RequeueDead that queued
// something.
func (q *queue) woke() {
	q.hub.signal()
	if r, ok := q.b.(*redisBackend); ok {
		r.publishWake()
	}
}

func (q *queue) NextDue(ctx context.Context) (time.Duration, bool, error) {
	if q.cfgErr != nil {
		return 0, false, q.cfgErr
	}
	switch b := q.b.(type) {
	case *memoryBackend:
		if err := ctxErr(ctx); err != nil {
			return 0, false, err
		}
		d, ok := b.nextDue()
		return d, ok, nil
	case *redisBackend:
		return b.nextDue(ctx)
	}
	return 0, false, fmt.Errorf("%w: no NextDue on this backend", ErrBackend)
}

// watch returns a channel that receives a token whenever idle workers of q
// should look again, until ctx is done. On Redis it also subscribes to the
// wake channel; subscribed (may be nil) is called each time the
// subscription is (re)established, after which a token is sent too, since
// messages may have been missed while it was down.
func (q *queue) watch(ctx context.Context, log *slog.Logger, subscribed func()) <-chan struct{} {
	c, unsub := q.hub.subscribe()
	r, isRedis := q.b.(*redisBackend)
	if !isRedis || q.cfgErr != nil {
		if subscribed != nil {
			subscribed()
		}
		context.AfterFunc(ctx, unsub)
		return c
	}
	go func() {
		defer unsub()
		hook := rueidis.WithOnSubscriptionHook(ctx, func(s rueidis.PubSubSubscription) {
			if s.Kind == "subscribe" {
				if subscribed != nil {
					subscribed()
				}
				poke(c)
			}
		})
		pause := 50 * time.Millisecond
		for ctx.Err() == nil {
			err := r.client.Receive(hook, r.client.B().Subscribe().Channel(r.wakeChannel()).Build(), func(rueidis.PubSubMessage) { poke(c) })
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				log.Warn("notify: worker wake-up subscription failed; retrying", "err", err.Error())
			}
			poke(c)
			t := time.NewTimer(pause)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			pause = min(2*pause, 5*time.Second)
		}
	}()
	return c
}

func (m *memoryBackend) nextDue() (time.Duration, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var best int64
	ok := false
	for _, u := range m.users {
		if s, has := u.dueScore(); has && (!ok || s < best) {
			best, ok = s, true
		}
	}
	if !ok {
		return 0, false
	}
	return time.Duration(max(0, best-m.nowMs())) * time.Millisecond, true
}

func (r *redisBackend) wakeChannel() string { return r.kb.RawKey(keyCapability, "wake") }

// publishWake tells the workers of every instance that something was
// queued, without waiting: the PUBLISH is sent by wakePublisher, at most
// one at a time per queue, so concurrent enqueues share one (each
// enqueue's item is in Redis before the PUBLISH that follows it is sent).
// It is best effort: the enqueue already happened, and a lost wake-up only
// delays delivery to the next timer or IdleWait.
func (r *redisBackend) publishWake() { r.wake.request(r.sendWake) }

func (r *redisBackend) sendWake() {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	err := r.client.Do(ctx, r.client.B().Publish().Channel(r.wakeChannel()).Message("1").Build()).Error()
	if err != nil {
		r.log.Log(slog.LevelWarn, "notify: wake-up publish failed (workers find the item on their next timer)", "err", err.Error())
	}
}

// wakePublisher coalesces wake-ups: request starts a sender goroutine
// unless one is running, in which case it only marks another send as
// needed; the goroutine sends again while that mark is set, then exits.
// So a request is always followed by a send that starts after it, and
// under load one PUBLISH in flight carries many enqueues' wake-ups.
type wakePublisher struct {
	mu      sync.Mutex
	running bool
	again   bool
}

func (w *wakePublisher) request(send func()) {
	w.mu.Lock()
	if w.running {
		w.again = true
		w.mu.Unlock()
		return
	}
	w.running = true
	w.mu.Unlock()
	go func() {
		for {
			send()
			w.mu.Lock()
			if !w.again {
				w.running = false
				w.mu.Unlock()
				return
			}
			w.again = false
			w.mu.Unlock()
		}
	}()
}

// nextDue reads the earliest score of every shard's due index and Redis
// TIME in one pipeline.
func (r *redisBackend) nextDue(ctx context.Context) (time.Duration, bool, error) {
	cctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	// TIME first, on its own (a Cluster pipeline cannot mix keyless and
	// keyed commands): the wait is at most a round trip too long.
	tr := r.client.Do(cctx, r.client.B().Time().Build())
	if err := tr.Error(); err != nil {
		return 0, false, r.fail(ctx, "next_due", err)
	}
	cmds := make(rueidis.Commands, 0, r.shards)
	for s := range r.shards {
		cmds = append(cmds, r.client.B().Zrange().Key(r.shard(s).due).Min("0").Max("0").Withscores().Build())
	}
	res := r.client.DoMulti(cctx, cmds...)
	for _, x := range res {
		if err := x.Error(); err != nil {
			return 0, false, r.fail(ctx, "next_due", err)
		}
	}
	t, err := tr.AsStrSlice()
	if err != nil || len(t) != 2 {
		return 0, false, r.bad(ctx, "next_due", errors.Join(errors.New("TIME"), err))
	}
	sec, err1 := strconv.ParseInt(t[0], 10, 64)
	usec, err2 := strconv.ParseInt(t[1], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false, r.bad(ctx, "next_due", fmt.Errorf("TIME %q", t))
	}
	now := sec*1000 + usec/1000
	var best int64
	ok := false
	for _, x := range res {
		zs, err := x.AsZScores()
		if err != nil {
			return 0, false, r.bad(ctx, "next_due", err)
		}
		if len(zs) > 0 && (!ok || int64(zs[0].Score) < best) {
			best, ok = int64(zs[0].Score), true
		}
	}
	if !ok {
		return 0, false, nil
	}
	return time.Duration(max(0, best-now)) * time.Millisecond, true, nil
}
