package main

// Notification-queue benchmarks: our notify queue (Redis backend) against
// github.com/hibiken/asynq, on the same redis-server, in the same run, with
// the same payload (a small JSON notification), the database flushed before
// every side.
//
//   - notify-enqueue: enqueues/s from -notify-goroutines goroutines for
//     -duration per side (split in -rounds alternating rounds, each after
//     -warmup): ours Queue.Enqueue, ours Queue.EnqueueMany in batches of
//     -notify-batch, asynq Client.Enqueue.
//   - notify-process: end to end, a no-op sender/handler. N items are
//     preloaded (not timed) at 1 item per user and at 10 items per user,
//     then the worker starts (ours: notify.Worker, asynq: asynq.Server, both
//     with Concurrency -notify-concurrency) and the time until the
//     sender/handler has seen every item is measured: items/s.

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/notify"
)

// Names accepted by -only.
const (
	benchNotifyEnqueue = "notify-enqueue"
	benchNotifyProcess = "notify-process"
)

var notifyBenches = []string{benchNotifyEnqueue, benchNotifyProcess}

// Targets: enqueue at least 2x asynq; processed at least 3x asynq at 1 item
// per user and 10x at 10 items per user.
const (
	targetNotifyEnqueue    = 2.0
	targetNotifyProcess1   = 3.0
	targetNotifyProcess10  = 10.0
	notifyTaskType         = "appointment.reminder"
	notifyQueueTimeout     = 3 * time.Second // as go-redis's read timeout: wait, do not fail, under load
	notifyPreloadGoroutine = 64
)

var (
	flagNotifyGoroutines  = flag.Int("notify-goroutines", 64, "goroutines of notify-enqueue")
	flagNotifyBatch       = flag.Int("notify-batch", 100, "EnqueueMany batch size of notify-enqueue")
	flagNotifyItems       = flag.Int("notify-items", 10000, "items preloaded per side of each notify-process case")
	flagNotifyConcurrency = flag.Int("notify-concurrency", 10, "Concurrency of our notify.Worker and of asynq.Server in notify-process")
	flagNotifyTimeout     = flag.Duration("notify-timeout", time.Minute, "notify-process: give up on a side that has not processed every item after this")
)

// notifyConfig holds the notify benchmarks' own settings.
type notifyConfig struct {
	goroutines  int
	batch       int
	items       int
	perUser     []int // notify-process cases: items per user
	concurrency int
	timeout     time.Duration
}

func notifyFlags() (notifyConfig, error) {
	nc := notifyConfig{goroutines: *flagNotifyGoroutines, batch: *flagNotifyBatch, items: *flagNotifyItems,
		perUser: []int{1, 10}, concurrency: *flagNotifyConcurrency, timeout: *flagNotifyTimeout}
	if nc.goroutines < 1 || nc.batch < 1 || nc.batch > notify.MaxBatch || nc.items < 10 || nc.concurrency < 1 || nc.timeout <= 0 {
		return nc, fmt.Errorf("-notify-goroutines, -notify-concurrency and -notify-timeout must be positive, -notify-batch in [1, %d], -notify-items at least 10", notify.MaxBatch)
	}
	return nc, nil
}

// runAllWithNotify runs the notify cells itself and everything else through
// runAll (cachebench.go), and returns both reports.
func runAllWithNotify(ctx context.Context, cfg config, cc cacheConfig) (string, error) {
	notifies, other := splitOnly(cfg.only, notifyBenches)
	var out strings.Builder
	if len(other) > 0 {
		c := cfg
		c.only = other
		s, err := runAll(ctx, c, cc)
		out.WriteString(s)
		if err != nil {
			return out.String(), err
		}
	}
	if len(notifies) > 0 {
		nc, err := notifyFlags()
		if err != nil {
			return out.String(), err
		}
		c := cfg
		c.only = notifies
		res, info, err := runNotify(ctx, c, nc)
		if err != nil {
			return out.String(), err
		}
		if out.Len() > 0 {
			out.WriteString("\n")
		}
		out.WriteString(renderNotify(res, info, c, nc))
	}
	return out.String(), nil
}

// notifyMeasure is one side of one notify cell.
type notifyMeasure struct {
	name    string
	ours    bool
	items   uint64        // enqueued (enqueue) or processed (process)
	errors  uint64        // failed enqueues or deliveries
	elapsed time.Duration // measured time
	// notify-process only.
	preloaded int
	// serverCPU is redis-server's CPU time (INFO cpu) over the measured
	// interval.
	serverCPU  time.Duration
	duplicates int // items the sender/handler saw more than once
	missing    int // items it never saw
	firstErr   error
}

func (m notifyMeasure) perSec() float64 {
	if m.elapsed <= 0 {
		return 0
	}
	return float64(m.items) / m.elapsed.Seconds()
}

// notifyResult is one cell: its sides, ours first, the peer last.
type notifyResult struct {
	bench   string
	label   string // "64 goroutines" or "10,000 users x 1"
	perUser int    // notify-process only
	sides   []notifyMeasure
}

type notifyPayload struct {
	UserID  string `json:"userId"`
	Type    string `json:"type"`
	Title   string `json:"title"`
	Message string `json:"message"`
	Index   int    `json:"index"`
}

func notifyItem(user string, i int) notify.Notification {
	return notify.Notification{
		ID:      strconv.Itoa(i),
		UserID:  user,
		Type:    notifyTaskType,
		Title:   "Appointment tomorrow",
		Message: "Your appointment with Dr. Expert is tomorrow at 10:00 (Europe/Lisbon).",
	}
}

func asynqTask(user string, i int) *asynq.Task {
	n := notifyItem(user, i)
	b, _ := json.Marshal(notifyPayload{UserID: n.UserID, Type: n.Type, Title: n.Title, Message: n.Message, Index: i})
	return asynq.NewTask(notifyTaskType, b)
}

func newNotifyQueue(url string) (notify.Queue, rueidis.Client, error) {
	c, err := newRueidis(url)
	if err != nil {
		return nil, nil, err
	}
	return notify.NewRedis(c, notify.Config{Timeout: notifyQueueTimeout}), c, nil
}

func newAsynqClient(url string) (*asynq.Client, asynq.RedisConnOpt, error) {
	opt, err := asynq.ParseRedisURI(url)
	if err != nil {
		return nil, nil, fmt.Errorf("bench: asynq: parse %q: %w", url, err)
	}
	return asynq.NewClient(opt), opt, nil
}

// runNotify measures the selected notify cells.
func runNotify(ctx context.Context, cfg config, nc notifyConfig) ([]notifyResult, machineInfo, error) {
	progress := cfg.progress
	if progress == nil {
		progress = io.Discard
	}
	admin, err := newRueidis(cfg.redisURL)
	if err != nil {
		return nil, machineInfo{}, fmt.Errorf("bench: connect %s: %w", cfg.redisURL, err)
	}
	defer admin.Close()
	info := collectMachineInfo(ctx, admin, 0)
	flush := func() error {
		if err := admin.Do(ctx, admin.B().Flushdb().Build()).Error(); err != nil {
			return fmt.Errorf("bench: FLUSHDB: %w", err)
		}
		return nil
	}
	// resetStats marks the start of a measured interval, readStats its end.
	var cpu0 time.Duration
	resetStats := func() (err error) {
		cpu0, err = serverCPU(ctx, admin, nil)
		return err
	}
	readStats := func(m *notifyMeasure) error {
		cpu, err := serverCPU(ctx, admin, nil)
		if err != nil {
			return err
		}
		m.serverCPU += cpu - cpu0
		return nil
	}
	var out []notifyResult
	if slices.Contains(cfg.only, benchNotifyEnqueue) {
		fmt.Fprintf(progress, "bench: %s, %d goroutines", benchNotifyEnqueue, nc.goroutines)
		r, err := runNotifyEnqueue(ctx, cfg, nc, flush, resetStats, readStats, progress)
		if err != nil {
			return nil, info, err
		}
		fmt.Fprintln(progress, " done")
		out = append(out, r)
	}
	if slices.Contains(cfg.only, benchNotifyProcess) {
		for _, per := range nc.perUser {
			users := max(nc.items/per, 1)
			fmt.Fprintf(progress, "bench: %s, %d users x %d items", benchNotifyProcess, users, per)
			r := notifyResult{bench: benchNotifyProcess, label: fmt.Sprintf("%s users x %d", thousands(float64(users)), per), perUser: per}
			for _, ours := range []bool{false, true} { // peer first
				if err := flush(); err != nil {
					return nil, info, err
				}
				var m notifyMeasure
				if ours {
					m, err = processOurs(ctx, cfg.redisURL, users, per, nc, resetStats, readStats)
				} else {
					m, err = processAsynq(ctx, cfg.redisURL, users, per, nc, resetStats, readStats)
				}
				if err != nil {
					return nil, info, err
				}
				r.sides = append(r.sides, m)
				fmt.Fprint(progress, ".")
			}
			r.sides[0], r.sides[1] = r.sides[1], r.sides[0] // ours first
			fmt.Fprintln(progress, " done")
			out = append(out, r)
		}
	}
	return out, info, nil
}

// enqueueSide builds a fresh client and returns a function that enqueues
// for user and reports how many items it stored.
type enqueueSide struct {
	name string
	ours bool
	make func(url string, batch int) (func(ctx context.Context, user string, seq uint64) (int, error), func(), error)
}

var enqueueSides = []enqueueSide{
	{name: "eleva notify Enqueue", ours: true, make: func(url string, _ int) (func(context.Context, string, uint64) (int, error), func(), error) {
		q, c, err := newNotifyQueue(url)
		if err != nil {
			return nil, nil, err
		}
		return func(ctx context.Context, user string, seq uint64) (int, error) {
			_, err := q.Enqueue(ctx, notifyItem(user, int(seq)))
			if err != nil {
				return 0, err
			}
			return 1, nil
		}, c.Close, nil
	}},
	{name: "eleva notify EnqueueMany", ours: true, make: func(url string, batch int) (func(context.Context, string, uint64) (int, error), func(), error) {
		q, c, err := newNotifyQueue(url)
		if err != nil {
			return nil, nil, err
		}
		return func(ctx context.Context, user string, seq uint64) (int, error) {
			ns := make([]notify.Notification, batch)
			for i := range ns {
				// One user per item, as Enqueue: batch of a fan-out.
				ns[i] = notifyItem(user+"-"+strconv.Itoa(i), int(seq))
			}
			res, err := q.EnqueueMany(ctx, ns)
			if err != nil {
				return 0, err
			}
			n := 0
			for _, r := range res {
				if r.Err != nil {
					return n, r.Err
				}
				n++
			}
			return n, nil
		}, c.Close, nil
	}},
	{name: "hibiken/asynq Client.Enqueue", make: func(url string, _ int) (func(context.Context, string, uint64) (int, error), func(), error) {
		c, _, err := newAsynqClient(url)
		if err != nil {
			return nil, nil, err
		}
		return func(ctx context.Context, user string, seq uint64) (int, error) {
			if _, err := c.EnqueueContext(ctx, asynqTask(user, int(seq))); err != nil {
				return 0, err
			}
			return 1, nil
		}, func() { _ = c.Close() }, nil
	}},
}

func runNotifyEnqueue(ctx context.Context, cfg config, nc notifyConfig, flush, resetStats func() error,
	readStats func(*notifyMeasure) error, progress io.Writer) (notifyResult, error) {
	r := notifyResult{bench: benchNotifyEnqueue, label: fmt.Sprintf("%d goroutines", nc.goroutines)}
	r.sides = make([]notifyMeasure, len(enqueueSides))
	for i, s := range enqueueSides {
		r.sides[i].name, r.sides[i].ours = s.name, s.ours
	}
	rounds := max(cfg.rounds, 1)
	slice := max(cfg.duration/time.Duration(rounds), time.Millisecond)
	var seq atomic.Uint64 // unique ids across rounds and sides
	for round := 0; round < rounds; round++ {
		order := []int{len(enqueueSides) - 1, 0, 1} // peer first, then ours
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, i := range order {
			if err := flush(); err != nil {
				return r, err
			}
			fn, closeFn, err := enqueueSides[i].make(cfg.redisURL, nc.batch)
			if err != nil {
				return r, fmt.Errorf("bench: %s: %w", enqueueSides[i].name, err)
			}
			m := measureEnqueue(ctx, nc.goroutines, cfg.warmup, slice, &seq, fn, resetStats)
			closeFn()
			if m.firstErr == nil {
				m.firstErr = readStats(&m)
			}
			acc := &r.sides[i]
			acc.serverCPU += m.serverCPU
			acc.items += m.items
			acc.errors += m.errors
			acc.elapsed += m.elapsed
			if acc.firstErr == nil {
				acc.firstErr = m.firstErr
			}
			if m.items == 0 {
				return r, fmt.Errorf("bench: %s enqueued nothing in %s (first error: %v)", enqueueSides[i].name, slice, m.firstErr)
			}
		}
		fmt.Fprint(progress, ".")
	}
	return r, nil
}

// measureEnqueue runs fn from g goroutines: warmup (not counted), then d,
// counting the calls that complete in d (at steady state, the throughput).
func measureEnqueue(ctx context.Context, g int, warmup, d time.Duration, seq *atomic.Uint64,
	fn func(ctx context.Context, user string, seq uint64) (int, error), atStart func() error) notifyMeasure {
	var (
		phase atomic.Int32
		mu    sync.Mutex
		total notifyMeasure
		wg    sync.WaitGroup
	)
	for i := 0; i < g; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var items, errs uint64
			var first error
			for phase.Load() != phaseStop {
				s := seq.Add(1)
				n, err := fn(ctx, "user:"+strconv.FormatUint(s%10000, 10), s)
				// Count the calls that complete in the measured interval:
				// an EnqueueMany takes long enough that counting only
				// calls started in it would leave its start out.
				if phase.Load() != phaseMeasure {
					continue
				}
				items += uint64(n)
				if err != nil {
					errs++
					if first == nil {
						first = err
					}
				}
			}
			mu.Lock()
			total.items += items
			total.errors += errs
			if total.firstErr == nil {
				total.firstErr = first
			}
			mu.Unlock()
		}()
	}
	time.Sleep(warmup)
	resetErr := atStart()
	start := time.Now()
	phase.Store(phaseMeasure)
	time.Sleep(d)
	phase.Store(phaseStop)
	total.elapsed = time.Since(start)
	wg.Wait()
	if total.firstErr == nil && resetErr != nil {
		total.firstErr = resetErr
	}
	return total
}

// seenCounter counts, per item index, how often the sender/handler saw it.
type seenCounter struct {
	counts []atomic.Int32
	total  atomic.Int64
	done   chan struct{}
	once   sync.Once
	end    atomic.Int64 // UnixNano when the last item was seen
}

func newSeenCounter(n int) *seenCounter {
	return &seenCounter{counts: make([]atomic.Int32, n), done: make(chan struct{})}
}

func (s *seenCounter) see(i int) error {
	if i < 0 || i >= len(s.counts) {
		return fmt.Errorf("bench: unexpected item index %d", i)
	}
	if s.counts[i].Add(1) == 1 && s.total.Add(1) == int64(len(s.counts)) {
		s.end.Store(time.Now().UnixNano())
		s.once.Do(func() { close(s.done) })
	}
	return nil
}

func (s *seenCounter) fill(m *notifyMeasure) {
	m.items = uint64(s.total.Load())
	for i := range s.counts {
		switch c := s.counts[i].Load(); {
		case c == 0:
			m.missing++
		case c > 1:
			m.duplicates += int(c - 1)
		}
	}
}

// preload enqueues users*per items from notifyPreloadGoroutine goroutines;
// item i belongs to user i/per.
func preload(ctx context.Context, n int, enqueue func(ctx context.Context, i int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, notifyPreloadGoroutine)
	for g := 0; g < notifyPreloadGoroutine; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := enqueue(ctx, i); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	return <-errc
}

func processOurs(ctx context.Context, url string, users, per int, nc notifyConfig,
	resetStats func() error, readStats func(*notifyMeasure) error) (notifyMeasure, error) {
	n := users * per
	m := notifyMeasure{name: "eleva notify Worker", ours: true, preloaded: n}
	q, c, err := newNotifyQueue(url)
	if err != nil {
		return m, err
	}
	defer c.Close()
	// Preload in EnqueueMany batches of one user's items (not timed).
	err = preload(ctx, users, func(ctx context.Context, u int) error {
		ns := make([]notify.Notification, per)
		for j := range ns {
			ns[j] = notifyItem("user:"+strconv.Itoa(u), u*per+j)
		}
		res, err := q.EnqueueMany(ctx, ns)
		if err != nil {
			return err
		}
		for _, r := range res {
			if r.Err != nil || !r.Created {
				return fmt.Errorf("bench: preload %s: created %v, %v", r.ID, r.Created, r.Err)
			}
		}
		return nil
	})
	if err != nil {
		return m, fmt.Errorf("bench: %s: preload: %w", m.name, err)
	}
	seen := newSeenCounter(n)
	var errs atomic.Uint64
	sender := notify.SenderFunc(func(_ context.Context, _ string, items []notify.Notification) []notify.Delivery {
		out := make([]notify.Delivery, len(items))
		for k, it := range items {
			i, err := strconv.Atoi(it.ID)
			if err == nil {
				err = seen.see(i)
			}
			if err != nil {
				errs.Add(1)
			}
			out[k] = notify.Delivered()
		}
		return out
	})
	w := notify.NewWorker(q, sender, notify.WorkerConfig{Concurrency: nc.concurrency, Logger: quietLogger()})
	wctx, cancel := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	if err := resetStats(); err != nil {
		cancel()
		return m, err
	}
	start := time.Now()
	go func() { runErr <- w.Run(wctx) }()
	timedOut := false
	select {
	case <-seen.done:
	case <-time.After(nc.timeout):
		timedOut = true
	}
	statsErr := readStats(&m)
	cancel()
	if err := <-runErr; err != nil {
		return m, fmt.Errorf("bench: %s: Run: %w", m.name, err)
	}
	m.elapsed = time.Duration(seen.end.Load() - start.UnixNano())
	seen.fill(&m)
	m.errors = errs.Load()
	if statsErr != nil {
		return m, statsErr
	}
	if timedOut {
		m.elapsed = nc.timeout
		return m, fmt.Errorf("bench: %s processed %d of %d items in %s", m.name, m.items, n, nc.timeout)
	}
	return m, nil
}

func processAsynq(ctx context.Context, url string, users, per int, nc notifyConfig,
	resetStats func() error, readStats func(*notifyMeasure) error) (notifyMeasure, error) {
	n := users * per
	m := notifyMeasure{name: "hibiken/asynq Server", preloaded: n}
	client, opt, err := newAsynqClient(url)
	if err != nil {
		return m, err
	}
	err = preload(ctx, n, func(ctx context.Context, i int) error {
		_, err := client.EnqueueContext(ctx, asynqTask("user:"+strconv.Itoa(i/per), i))
		return err
	})
	_ = client.Close()
	if err != nil {
		return m, fmt.Errorf("bench: %s: preload: %w", m.name, err)
	}
	seen := newSeenCounter(n)
	var errs atomic.Uint64
	srv := asynq.NewServer(opt, asynq.Config{Concurrency: nc.concurrency, LogLevel: asynq.ErrorLevel})
	handler := asynq.HandlerFunc(func(_ context.Context, t *asynq.Task) error {
		var p notifyPayload
		err := json.Unmarshal(t.Payload(), &p)
		if err == nil {
			err = seen.see(p.Index)
		}
		if err != nil {
			errs.Add(1)
		}
		return nil
	})
	if err := resetStats(); err != nil {
		return m, err
	}
	start := time.Now()
	if err := srv.Start(handler); err != nil {
		return m, fmt.Errorf("bench: %s: Start: %w", m.name, err)
	}
	timedOut := false
	select {
	case <-seen.done:
	case <-time.After(nc.timeout):
		timedOut = true
	}
	statsErr := readStats(&m)
	srv.Shutdown()
	m.elapsed = time.Duration(seen.end.Load() - start.UnixNano())
	seen.fill(&m)
	m.errors = errs.Load()
	if statsErr != nil {
		return m, statsErr
	}
	if timedOut {
		m.elapsed = nc.timeout
		return m, fmt.Errorf("bench: %s processed %d of %d items in %s", m.name, m.items, n, nc.timeout)
	}
	return m, nil
}

func notifyTarget(r notifyResult) (float64, string) {
	if r.bench == benchNotifyEnqueue {
		return targetNotifyEnqueue, "≥ 2x asynq"
	}
	if r.perUser >= 10 {
		return targetNotifyProcess10, "≥ 10x asynq"
	}
	return targetNotifyProcess1, "≥ 3x asynq"
}

func renderNotify(results []notifyResult, info machineInfo, cfg config, nc notifyConfig) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Notification queue results (%s)\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "- CPU: %s (%d logical CPUs), GOMAXPROCS %d, %s, %s\n", info.CPU, info.NumCPU, info.GOMAXPROCS, info.GoVersion, info.OSArch)
	fmt.Fprintf(&b, "- redis-server %s on loopback, client and server on the same machine; database flushed before every side\n", info.RedisVersion)
	fmt.Fprintf(&b, "- notify-enqueue: %s per side in %d alternating rounds, each after a %s warm-up; notify-process: %s items preloaded per side, worker Concurrency %d, no-op sender/handler, timed from worker start to the last item seen\n",
		cfg.duration, max(cfg.rounds, 1), cfg.warmup, thousands(float64(nc.items)), nc.concurrency)
	fmt.Fprintf(&b, "- load average (1/5/15 min) before: %s, after: %s\n", info.LoadBefore, loadAvg())
	b.WriteString("\n| benchmark | case | ours | peer | ratio (ours/peer) | target met? |\n")
	b.WriteString("|---|---|---:|---:|---:|---|\n")
	unit := map[string]string{benchNotifyEnqueue: "enqueues/s", benchNotifyProcess: "processed/s"}
	for _, r := range results {
		peer := r.sides[len(r.sides)-1]
		target, what := notifyTarget(r)
		for _, s := range r.sides[:len(r.sides)-1] {
			ratio := s.perSec() / peer.perSec()
			clean := s.errors == 0 && peer.errors == 0 && s.duplicates == 0 && s.missing == 0 && peer.missing == 0
			v := "**NOT met**: " + what
			switch {
			case !clean:
				v = "invalid (errors, missing or duplicate items): " + what
			case ratio >= target:
				v = "met: " + what
			}
			fmt.Fprintf(&b, "| %s: %s vs %s (%s) | %s | %s/s | %s/s | %.2f | %s |\n",
				r.bench, s.name, peer.name, unit[r.bench], r.label, thousands(s.perSec()), thousands(peer.perSec()), ratio, v)
		}
	}
	b.WriteString("\n| benchmark | case | side | items | errors | duplicates | missing | measured | redis-server CPU µs/item |\n")
	b.WriteString("|---|---|---|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range results {
		for _, s := range r.sides {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %d | %d | %d | %s | %s |\n",
				r.bench, r.label, s.name, thousands(float64(s.items)), s.errors, s.duplicates, s.missing, s.elapsed.Round(time.Millisecond),
				ratioStr(float64(s.serverCPU.Microseconds()), float64(s.items)))
		}
	}
	for _, r := range results {
		for _, s := range r.sides {
			if s.firstErr != nil {
				fmt.Fprintf(&b, "\nfirst error (%s, %s, %s): %v\n", r.bench, r.label, s.name, s.firstErr)
			}
		}
	}
	return b.String()
}

// quietLogger drops our worker's logs below Error.
func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}
