package notify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/elevacare/eleva-redis/internal/promreg"
)

// WorkerConfig configures a Worker. The zero value is the documented
// default.
type WorkerConfig struct {
	// Concurrency is how many batches (users) are sent at once; 0 means 4.
	Concurrency int
	// BatchSize is how many items of one user a claim takes; 0 means
	// DefaultBatchSize (5).
	BatchSize int
	// MaxUsers is how many users one Claim takes at most; 0 means
	// Concurrency.
	MaxUsers int
	// Prefetch is how many claimed users may wait for a free send slot,
	// their leases renewed meanwhile; 0 means Concurrency; negative means
	// none (a claim takes at most the free send slots). Prefetching keeps
	// the senders busy while the next claim is on its way.
	Prefetch int
	// IdleWait is the longest an idle worker waits without a wake-up (an
	// enqueue, a due time); 0 means 30s. It only matters when a wake-up
	// message was lost (a Pub/Sub disconnect).
	IdleWait time.Duration
	// StopTimeout is how long sends in flight may take after Run's ctx is
	// cancelled before their ctx is cancelled too; 0 means 10s.
	StopTimeout time.Duration
	// ExtendEvery is how often the lease of a batch being sent is renewed;
	// 0 means a third of the queue's lease; negative means never (a
	// worker that stalls, in tests).
	ExtendEvery time.Duration
	// MaxPause bounds one 429 pause; 0 means 5 minutes.
	MaxPause time.Duration
	// Logger receives the worker's logs (ids, types, outcomes, errors;
	// never payloads); nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives eleva_notify_deliveries_total; nil means none.
	Registerer prometheus.Registerer
}

// ErrWorkerRunning: Run was called on a Worker that is already running.
var ErrWorkerRunning = errors.New("notify: worker already running")

// ErrSenderResults: the Sender returned fewer results than items; the
// items without one are retried.
var ErrSenderResults = errors.New("notify: sender returned no result for the item")

const metricDeliveries = "eleva_notify_deliveries_total"

// Worker delivers a Queue's notifications through a Sender: it claims due
// users, sends each user's batch, acks what was delivered, nacks what
// failed (retry with backoff or Retry-After, or dead), renews the lease
// while a send is slow, and pauses every send on a 429 without using an
// attempt.
//
// Several workers, in one process or many, can serve one queue: a user's
// batch is leased to one of them at a time. Delivery is at least once
// (a crashed worker's batch is sent again when its lease expires), so the
// Sender must pass the notification id as an idempotency key.
type Worker struct {
	q      Queue
	s      Sender
	cfg    WorkerConfig
	log    *slog.Logger
	lease  time.Duration // 0: unknown (a Queue of another package)
	m      *prometheus.CounterVec
	run    atomic.Bool
	mu     sync.Mutex
	pauseT time.Time // sends are paused until then

	// onIdle (tests) is called when the claim loop starts an idle wait;
	// subscribed is whether the wake-up subscription is up.
	onIdle     func(subscribed bool)
	subscribed atomic.Bool
}

// NewWorker returns a Worker for q and s.
func NewWorker(q Queue, s Sender, cfg WorkerConfig) *Worker {
	cfg.Concurrency = orInt(cfg.Concurrency, 4)
	cfg.BatchSize = min(orInt(cfg.BatchSize, DefaultBatchSize), MaxPerUser)
	cfg.MaxUsers = min(orInt(cfg.MaxUsers, cfg.Concurrency), MaxClaimUsers)
	switch {
	case cfg.Prefetch == 0:
		cfg.Prefetch = cfg.Concurrency
	case cfg.Prefetch < 0:
		cfg.Prefetch = 0
	}
	cfg.IdleWait = orDur(cfg.IdleWait, 30*time.Second)
	cfg.StopTimeout = orDur(cfg.StopTimeout, 10*time.Second)
	cfg.MaxPause = orDur(cfg.MaxPause, 5*time.Minute)
	w := &Worker{q: q, s: s, cfg: cfg, log: cfg.Logger}
	if w.log == nil {
		w.log = slog.Default()
	}
	if qq, ok := q.(*queue); ok {
		w.lease = qq.cfg.lease()
	}
	if cfg.Registerer != nil {
		w.m = promreg.Register(cfg.Registerer, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricDeliveries,
			Help: "Notifications handled by workers, by outcome: delivered (acked), retried (nacked for a retry), dead (nacked to the " +
				"dead set), paused (a 429: sent again after the pause, no attempt used), lease_lost (the ack or nack found the lease " +
				"taken over: another worker sends it), error (the ack or nack failed: sent again after the lease), abandoned (left " +
				"leased at shutdown: sent again after the lease); bulk_sent counts the items sent in bulk requests (also counted " +
				"by their outcome).",
		}, []string{"outcome"}))
	}
	return w
}

func (w *Worker) count(outcome string, n int) {
	if w.m != nil && n > 0 {
		w.m.WithLabelValues(outcome).Add(float64(n))
	}
}

// Run delivers until ctx is cancelled, then returns nil once the sends in
// flight are done. Shutdown: no new claim starts; a send in flight runs on
// (on a context that is not ctx's, for at most StopTimeout, so that an HTTP
// call is not cut off after the receiver accepted it) and its results are
// acked or nacked; items it could not finish (its ctx cancelled after
// StopTimeout, or waiting out a 429 pause) are left leased and delivered
// again, by any worker, when the lease expires.
func (w *Worker) Run(ctx context.Context) error {
	if !w.run.CompareAndSwap(false, true) {
		return ErrWorkerRunning
	}
	defer w.run.Store(false)
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	var wake <-chan struct{}
	if qq, ok := w.q.(*queue); ok {
		wake = qq.watch(wctx, w.log, func() { w.subscribed.Store(true) })
	} else {
		w.subscribed.Store(true)
	}
	sendCtx, cancelSends := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSends()

	// Concurrency senders take claimed batches from todo. The claim loop
	// keeps up to Prefetch more users claimed than are being sent, so a
	// sender that finishes starts the next batch at once instead of
	// waiting for a claim's round trips, and claims are not cut to the
	// one or two slots that happen to be free.
	limit := w.cfg.Concurrency + w.cfg.Prefetch
	todo := make(chan claimed, limit)
	freed := make(chan struct{}, 1)
	var open atomic.Int64 // users claimed and not yet settled
	var wg sync.WaitGroup
	for range w.cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range todo {
				w.handle(ctx, c)
				open.Add(-1)
				poke(freed)
			}
		}()
	}
	errWait := time.Duration(0)
	for ctx.Err() == nil {
		room := limit - int(open.Load())
		if room <= 0 {
			select {
			case <-freed:
			case <-ctx.Done():
			}
			continue
		}
		if d := w.pausedFor(); d > 0 {
			w.sleep(ctx, d)
			continue
		}
		drain(wake)
		drain(freed)
		batches, err := w.q.Claim(ctx, min(w.cfg.MaxUsers, room), w.cfg.BatchSize)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			errWait = min(max(2*errWait, 100*time.Millisecond), 5*time.Second)
			w.log.Warn("notify: worker claim failed; backing off", "err", err.Error(), "wait", errWait)
			w.sleep(ctx, errWait)
			continue
		}
		errWait = 0
		if len(batches) == 0 {
			w.idle(ctx, wake, freed)
			continue
		}
		pre := w.sendBulk(ctx, sendCtx, batches)
		open.Add(int64(len(batches)))
		for i, b := range batches {
			// The lease is renewed from the claim on, while the batch
			// waits for a sender too.
			bctx, cancel := context.WithCancel(sendCtx)
			todo <- claimed{b: b, pre: pre[i], ctx: bctx, cancel: cancel, stop: w.keepLease(bctx, b, cancel)}
		}
	}
	// Batches claimed but not yet started are sent too (under the same
	// StopTimeout): they are leased to this worker.
	close(todo)
	stop := time.AfterFunc(w.cfg.StopTimeout, cancelSends)
	wg.Wait()
	stop.Stop()
	return nil
}

func drain(c <-chan struct{}) {
	select {
	case <-c:
	default:
	}
}

// sleep waits d or until ctx is done.
func (w *Worker) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// idle waits for a wake-up: an enqueue, a finished batch, the earliest
// due time, IdleWait, or ctx.
func (w *Worker) idle(ctx context.Context, wake, freed <-chan struct{}) {
	wait := w.cfg.IdleWait
	if dr, ok := w.q.(DueReader); ok {
		d, has, err := dr.NextDue(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			w.log.Warn("notify: worker could not read the next due time", "err", err.Error())
			wait = min(wait, time.Second)
		case has && d > 0:
			// A millisecond more: due times are whole milliseconds.
			wait = min(wait, d+time.Millisecond)
		case has:
			// Due now, yet the claim found nothing (another worker was
			// first): look again soon, without spinning.
			wait = min(wait, 5*time.Millisecond)
		}
	}
	if w.onIdle != nil {
		w.onIdle(w.subscribed.Load())
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-wake:
	case <-freed:
	case <-t.C:
	case <-ctx.Done():
	}
}

// pausedFor is how long sends are still paused.
func (w *Worker) pausedFor() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return time.Until(w.pauseT)
}

func (w *Worker) pause(d time.Duration) {
	if d <= 0 {
		d = DefaultPause
	}
	d = min(d, w.cfg.MaxPause)
	w.mu.Lock()
	defer w.mu.Unlock()
	if t := time.Now().Add(d); t.After(w.pauseT) {
		w.pauseT = t
	}
}

// extendEvery is the lease renewal period, or 0 for never.
func (w *Worker) extendEvery(b Batch) time.Duration {
	switch {
	case w.cfg.ExtendEvery < 0:
		return 0
	case w.cfg.ExtendEvery > 0:
		return w.cfg.ExtendEvery
	case w.lease > 0:
		return max(w.lease/3, time.Millisecond)
	}
	return max(time.Until(b.ExpiresAt)/3, time.Millisecond)
}

// keepLease renews b's lease until the returned stop is called. When the
// lease is lost it cancels the send (another worker sends the batch).
func (w *Worker) keepLease(ctx context.Context, b Batch, cancelSend context.CancelFunc) (stop func()) {
	every := w.extendEvery(b)
	if every == 0 {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			err := w.q.Extend(ctx, &b)
			switch {
			case errors.Is(err, ErrLeaseLost):
				w.log.Warn("notify: worker lost a lease while sending; another worker sends the batch", "items", len(b.Items))
				cancelSend()
				return
			case err != nil && ctx.Err() == nil:
				w.log.Warn("notify: worker could not extend a lease", "err", err.Error())
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// sendBulk sends, when the Sender is a BulkSender and the claimed batches
// hold at least its BulkSize items, full chunks of BulkSize items across
// users through SendBulk, renewing every batch's lease meanwhile. It
// returns, per batch, the Deliveries of its items that were in a chunk
// (nil for none); handle sends the others and settles them all.
func (w *Worker) sendBulk(runCtx, sendCtx context.Context, batches []Batch) []map[string]Delivery {
	pre := make([]map[string]Delivery, len(batches))
	bs, ok := w.s.(BulkSender)
	if !ok || len(batches) < 2 {
		return pre
	}
	size := bs.BulkSize()
	total := 0
	for _, b := range batches {
		total += len(b.Items)
	}
	if size < 2 || total < size || w.pausedFor() > 0 || runCtx.Err() != nil {
		return pre
	}
	type ref struct{ batch, item int }
	var chunk []BulkItem
	var refs []ref
	bctx, cancel := context.WithCancel(sendCtx)
	defer cancel()
	// A lost lease does not cancel the chunk (other users' items are in
	// it): that user's Ack finds the lease lost and changes nothing.
	for _, b := range batches {
		defer w.keepLease(bctx, b, func() {})()
	}
	full := total / size * size
	for bi, b := range batches {
		for ii, n := range b.Items {
			if len(refs) == full {
				break
			}
			chunk = append(chunk, BulkItem{UserID: b.UserID, Notification: n})
			refs = append(refs, ref{bi, ii})
		}
	}
	for start := 0; start < len(chunk); start += size {
		res := bs.SendBulk(bctx, chunk[start:start+size])
		for k := range size {
			d := Retry(ErrSenderResults, 0)
			if k < len(res) && res[k].Outcome != 0 {
				d = res[k]
			}
			r := refs[start+k]
			if pre[r.batch] == nil {
				pre[r.batch] = map[string]Delivery{}
			}
			pre[r.batch][batches[r.batch].Items[r.item].ID] = d
		}
	}
	w.count("bulk_sent", len(chunk))
	return pre
}

// claimed is a batch waiting for a sender: its send ctx, cancelled when the
// lease is lost, and the stop of its lease renewal.
type claimed struct {
	b      Batch
	pre    map[string]Delivery
	ctx    context.Context
	cancel context.CancelFunc
	stop   func()
}

// handle sends one batch until every item is acked or nacked, or left
// leased (shutdown, lost lease). pre holds the Deliveries of items that
// sendBulk has sent already; they are not sent again in the first round.
func (w *Worker) handle(runCtx context.Context, c claimed) {
	defer c.cancel()
	defer c.stop()
	b, pre, bctx := c.b, c.pre, c.ctx
	items := b.Items
	for first := true; len(items) > 0; first = false {
		waited := false
		if d := w.pausedFor(); d > 0 {
			w.sleep(runCtx, d)
			waited = true
		}
		// After a pause, not once Run is stopping: the items stay leased.
		if (!first || waited) && (runCtx.Err() != nil || bctx.Err() != nil) {
			w.count("abandoned", len(items))
			return
		}
		res := w.send(bctx, b.UserID, items, pre)
		pre = nil
		interrupted := bctx.Err() != nil // shutdown timeout or lost lease
		var acks []string
		var fails []Failure
		var held []Notification
		var retried, dead, paused, abandoned int
		var pauseFor time.Duration
		for i, n := range items {
			d := Retry(ErrSenderResults, 0)
			if i < len(res) && res[i].Outcome != 0 {
				d = res[i]
			}
			switch d.Outcome {
			case OutcomeDelivered:
				acks = append(acks, n.ID)
				continue
			case OutcomePause:
				held = append(held, n)
				paused++
				pauseFor = max(pauseFor, d.After)
				continue
			}
			if interrupted {
				// Our cancellation, not the receiver's failure: no
				// attempt is charged beyond the claim's.
				abandoned++
				continue
			}
			f := Failure{ID: n.ID, Err: d.Err, Permanent: d.Outcome == OutcomePermanent}
			if d.Outcome == OutcomeRetry {
				f.RetryAfter = max(d.After, 0)
			}
			if f.Err == nil {
				f.Err = fmt.Errorf("%w: %s", ErrSendFailed, d.Outcome)
			}
			if f.Permanent || n.MaxAttempts > 0 && n.Attempts >= n.MaxAttempts {
				dead++
			} else {
				retried++
			}
			fails = append(fails, f)
		}
		if len(acks) > 0 {
			_, err := w.q.Ack(runCtx, b, acks...)
			if w.settled("ack", err, len(acks)) {
				w.count("delivered", len(acks))
			}
			if errors.Is(err, ErrLeaseLost) {
				return
			}
		}
		if len(fails) > 0 {
			_, err := w.q.Nack(runCtx, b, fails...)
			if w.settled("nack", err, len(fails)) {
				w.count("retried", retried)
				w.count("dead", dead)
				for _, f := range fails {
					w.log.Info("notify: delivery failed", "id", f.ID, "permanent", f.Permanent, "err", f.Err.Error())
				}
			}
			if errors.Is(err, ErrLeaseLost) {
				return
			}
		}
		if abandoned > 0 {
			w.count("abandoned", abandoned)
			w.log.Info("notify: send interrupted; items stay leased and are sent again after the lease", "items", abandoned)
		}
		if len(held) > 0 {
			w.count("paused", paused)
			w.pause(pauseFor)
			w.log.Warn("notify: receiver rate-limited us; pausing sends", "items", paused, "pause", min(max(pauseFor, DefaultPause), w.cfg.MaxPause))
		}
		items = held
	}
}

// send is the Sender's Send of items, except those with a Delivery in pre.
func (w *Worker) send(ctx context.Context, userID string, items []Notification, pre map[string]Delivery) []Delivery {
	if len(pre) == 0 {
		return w.s.Send(ctx, userID, items)
	}
	out := make([]Delivery, len(items))
	var rest []Notification
	var at []int
	for i, n := range items {
		if d, ok := pre[n.ID]; ok {
			out[i] = d
			continue
		}
		rest = append(rest, n)
		at = append(at, i)
	}
	if len(rest) > 0 {
		res := w.s.Send(ctx, userID, rest)
		for k, i := range at {
			if k < len(res) {
				out[i] = res[k]
			}
		}
	}
	return out
}

// settled reports whether an ack or nack of n items succeeded, logging
// and counting a failure.
func (w *Worker) settled(op string, err error, n int) bool {
	switch {
	case err == nil:
		return true
	case errors.Is(err, ErrLeaseLost):
		w.count("lease_lost", n)
		w.log.Warn("notify: worker "+op+" found its lease taken over; another worker sends the batch", "items", n)
	default:
		w.count("error", n)
		w.log.Error("notify: worker "+op+" failed; the items are sent again after the lease", "items", n, "err", err.Error())
	}
	return false
}
