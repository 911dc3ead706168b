package main

// Analytics benchmarks, on the same redis-server and the same fake PostHog
// (a real HTTP server in this process that accepts every /batch/), in the
// same run:
//
//   - analytics-capture: Capture calls/s and per-call latency from
//     -analytics-goroutines goroutines for -duration per side (split in
//     -rounds alternating rounds, each after -warmup). Ours: analytics.Store
//     Capture on Redis (a durable Stream, XADD in one script) and on memory
//     (the bounded in-process buffer), each drained by our Forwarder; peer:
//     github.com/posthog/posthog-go Client.Enqueue (an in-process queue).
//     After each side the client is closed (flushed) and the events the fake
//     received are counted: delivered must equal accepted.
//   - analytics-incr: Incr/s from each -goroutines count: ours analytics
//     Incr (INCRBY + PEXPIREAT in one script, rueidis auto-pipelining), ours
//     with ForUser (two keys in the script), and go-redis v9 pipelines of
//     INCR + EXPIRE (two commands, one round trip per call), over 100
//     metrics.

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/posthog/posthog-go"
	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/analytics"
)

// Names accepted by -only.
const (
	benchAnalyticsCapture = "analytics-capture"
	benchAnalyticsIncr    = "analytics-incr"
)

var analyticsBenches = []string{benchAnalyticsCapture, benchAnalyticsIncr}

var (
	flagAnalyticsGoroutines = flag.Int("analytics-goroutines", 64, "goroutines of analytics-capture")
	flagAnalyticsDrain      = flag.Duration("analytics-drain", time.Minute, "analytics-capture: bound of each side's final flush")
)

const (
	analyticsMetrics = 100
	analyticsTimeout = 3 * time.Second // as go-redis's read timeout: wait, do not fail, under load
	fakePostHogKey   = "phc_bench"
)

type analyticsConfig struct {
	goroutines int
	drain      time.Duration
}

func analyticsFlags() (analyticsConfig, error) {
	ac := analyticsConfig{goroutines: *flagAnalyticsGoroutines, drain: *flagAnalyticsDrain}
	if ac.goroutines < 1 || ac.drain <= 0 {
		return ac, fmt.Errorf("-analytics-goroutines and -analytics-drain must be positive")
	}
	return ac, nil
}

// runAllWithAnalytics runs the analytics cells itself and everything else
// through runAllWithNotify (notifybench.go), and returns both reports.
func runAllWithAnalytics(ctx context.Context, cfg config, cc cacheConfig) (string, error) {
	ans, other := splitOnly(cfg.only, analyticsBenches)
	var out strings.Builder
	if len(other) > 0 {
		c := cfg
		c.only = other
		s, err := runAllWithNotify(ctx, c, cc)
		out.WriteString(s)
		if err != nil {
			return out.String(), err
		}
	}
	if len(ans) > 0 {
		ac, err := analyticsFlags()
		if err != nil {
			return out.String(), err
		}
		c := cfg
		c.only = ans
		res, info, err := runAnalytics(ctx, c, ac)
		if err != nil {
			return out.String(), err
		}
		if out.Len() > 0 {
			out.WriteString("\n")
		}
		out.WriteString(renderAnalytics(res, info, c, ac))
	}
	return out.String(), nil
}

// analyticsMeasure is one side of one analytics cell, summed over rounds.
type analyticsMeasure struct {
	name    string
	ours    bool
	ops     uint64 // calls that returned nil in the measured interval
	errors  uint64 // calls that returned an error (or dropped the event)
	elapsed time.Duration
	lat     []time.Duration // every call in the measured interval
	// serverCPU is redis-server's CPU time over the measured interval.
	serverCPU time.Duration
	// analytics-capture only: events accepted in total (warm-up included),
	// events the fake PostHog received, distinct uuids among them, the time
	// the final flush took.
	accepted, delivered, distinct uint64
	drain                         time.Duration
	firstErr                      error
}

func (m analyticsMeasure) perSec() float64 {
	if m.elapsed <= 0 {
		return 0
	}
	return float64(m.ops) / m.elapsed.Seconds()
}

type analyticsResult struct {
	bench string
	label string
	sides []analyticsMeasure // ours first, the peer last
}

// fakePostHog accepts every batch and counts its events and uuids.
type fakePostHog struct {
	srv    *httptest.Server
	mu     sync.Mutex
	events uint64
	uuids  map[string]struct{}
}

func newFakePostHog() *fakePostHog {
	f := &fakePostHog{uuids: make(map[string]struct{})}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Batch []struct {
				UUID string `json:"uuid"`
			} `json:"batch"`
		}
		if r.URL.Path != "/batch/" || json.NewDecoder(r.Body).Decode(&body) != nil {
			http.Error(w, "bad batch", http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		f.events += uint64(len(body.Batch))
		for _, e := range body.Batch {
			if e.UUID != "" {
				f.uuids[e.UUID] = struct{}{}
			}
		}
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":1}`))
	}))
	return f
}

func (f *fakePostHog) counts() (events, distinct uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.events, uint64(len(f.uuids))
}

// callFunc is one measured call; seq is unique across goroutines.
type callFunc func(ctx context.Context, seq uint64) error

// captureSide builds a fresh client on url sending to the fake at host: the
// call, and finish, which flushes within drain and closes.
type captureSide struct {
	name string
	ours bool
	make func(url, host string) (callFunc, func(ctx context.Context) error, error)
}

var benchEventProps = map[string]any{"expert": "expert-7", "service": "first-consultation", "amount": 6500, "currency": "EUR"}

func oursCapture(name string, redis bool) captureSide {
	return captureSide{name: name, ours: true, make: func(url, host string) (callFunc, func(context.Context) error, error) {
		quiet := slog.New(slog.DiscardHandler)
		var store analytics.Store
		var client rueidis.Client
		if redis {
			c, err := newRueidis(url)
			if err != nil {
				return nil, nil, err
			}
			client = c
			store = analytics.NewRedis(c, analytics.Config{Timeout: analyticsTimeout, Logger: quiet})
		} else {
			store = analytics.NewMemory(analytics.Config{Logger: quiet})
		}
		f, err := analytics.NewForwarder(store.Buffer(), analytics.ForwarderConfig{APIKey: fakePostHogKey, Host: host, Logger: quiet})
		if err != nil {
			return nil, nil, err
		}
		f.Start()
		call := func(ctx context.Context, seq uint64) error {
			return store.Capture(ctx, analytics.Event{Event: "appointment_booked",
				DistinctID: "patient-" + strconv.FormatUint(seq%10000, 10), Properties: benchEventProps})
		}
		finish := func(ctx context.Context) error {
			err := f.Close(ctx)
			if client != nil {
				client.Close()
			}
			return err
		}
		return call, finish, nil
	}}
}

var captureSides = []captureSide{
	oursCapture("eleva analytics Capture (redis stream)", true),
	oursCapture("eleva analytics Capture (memory buffer)", false),
	{name: "posthog/posthog-go Enqueue", make: func(_, host string) (callFunc, func(context.Context) error, error) {
		c, err := posthog.NewWithConfig(fakePostHogKey, posthog.Config{Endpoint: host, BatchSize: analytics.DefaultBatchSize,
			Logger: posthog.StdLogger(log.New(io.Discard, "", 0))})
		if err != nil {
			return nil, nil, err
		}
		call := func(_ context.Context, seq uint64) error {
			return c.Enqueue(posthog.Capture{Event: "appointment_booked", Uuid: analytics.NewUUID(),
				DistinctId: "patient-" + strconv.FormatUint(seq%10000, 10), Properties: benchEventProps})
		}
		finish := func(ctx context.Context) error {
			done := make(chan error, 1)
			go func() { done <- c.Close() }()
			select {
			case err := <-done:
				return err
			case <-ctx.Done():
				return fmt.Errorf("posthog-go Close did not return: %w", ctx.Err())
			}
		}
		return call, finish, nil
	}},
}

// incrSide builds a fresh client on url and returns the call.
type incrSide struct {
	name string
	ours bool
	make func(url string, poolSize int) (callFunc, func(), error)
}

func metricName(seq uint64) string { return "metric-" + strconv.FormatUint(seq%analyticsMetrics, 10) }

var incrSides = []incrSide{
	{name: "eleva analytics Incr", ours: true, make: func(url string, _ int) (callFunc, func(), error) {
		c, err := newRueidis(url)
		if err != nil {
			return nil, nil, err
		}
		s := analytics.NewRedis(c, analytics.Config{Timeout: analyticsTimeout, Logger: slog.New(slog.DiscardHandler)})
		return func(ctx context.Context, seq uint64) error {
			_, err := s.Incr(ctx, metricName(seq), 1, time.Time{})
			return err
		}, c.Close, nil
	}},
	{name: "eleva analytics Incr ForUser", ours: true, make: func(url string, _ int) (callFunc, func(), error) {
		c, err := newRueidis(url)
		if err != nil {
			return nil, nil, err
		}
		s := analytics.NewRedis(c, analytics.Config{Timeout: analyticsTimeout, Logger: slog.New(slog.DiscardHandler)})
		return func(ctx context.Context, seq uint64) error {
			_, err := s.Incr(ctx, metricName(seq), 1, time.Time{}, analytics.ForUser("expert-"+strconv.FormatUint(seq%1000, 10)))
			return err
		}, c.Close, nil
	}},
	{name: "go-redis INCR+EXPIRE pipeline", make: func(url string, poolSize int) (callFunc, func(), error) {
		opt, err := goredis.ParseURL(url)
		if err != nil {
			return nil, nil, err
		}
		opt.PoolSize = poolSize
		c := goredis.NewClient(opt)
		ttl := analytics.DefaultRetention + 24*time.Hour
		return func(ctx context.Context, seq uint64) error {
			key := "an:" + metricName(seq) + ":" + time.Now().UTC().Format(time.DateOnly)
			pipe := c.Pipeline()
			pipe.Incr(ctx, key)
			pipe.Expire(ctx, key, ttl)
			_, err := pipe.Exec(ctx)
			return err
		}, func() { _ = c.Close() }, nil
	}},
}

// runAnalytics measures the selected analytics cells.
func runAnalytics(ctx context.Context, cfg config, ac analyticsConfig) ([]analyticsResult, machineInfo, error) {
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
	rounds := max(cfg.rounds, 1)
	slice := max(cfg.duration/time.Duration(rounds), time.Millisecond)
	var seq atomic.Uint64
	var out []analyticsResult

	if slices.Contains(cfg.only, benchAnalyticsCapture) {
		fmt.Fprintf(progress, "bench: %s, %d goroutines", benchAnalyticsCapture, ac.goroutines)
		r := analyticsResult{bench: benchAnalyticsCapture, label: fmt.Sprintf("%d goroutines", ac.goroutines)}
		r.sides = make([]analyticsMeasure, len(captureSides))
		for i, s := range captureSides {
			r.sides[i].name, r.sides[i].ours = s.name, s.ours
		}
		for round := 0; round < rounds; round++ {
			order := []int{len(captureSides) - 1, 0, 1} // peer first, then ours
			if round%2 == 1 {
				slices.Reverse(order)
			}
			for _, i := range order {
				if err := flush(); err != nil {
					return nil, info, err
				}
				fake := newFakePostHog()
				call, finish, err := captureSides[i].make(cfg.redisURL, fake.srv.URL)
				if err != nil {
					fake.srv.Close()
					return nil, info, fmt.Errorf("bench: %s: %w", captureSides[i].name, err)
				}
				m := measureCalls(ctx, ac.goroutines, cfg.warmup, slice, &seq, call, admin)
				dctx, cancel := context.WithTimeout(ctx, ac.drain)
				start := time.Now()
				ferr := finish(dctx)
				m.drain = time.Since(start)
				cancel()
				m.delivered, m.distinct = fake.counts()
				fake.srv.Close()
				if ferr != nil && m.firstErr == nil {
					m.firstErr = ferr
				}
				r.sides[i].add(m)
				if m.ops == 0 {
					return nil, info, fmt.Errorf("bench: %s captured nothing in %s (first error: %v)", captureSides[i].name, slice, m.firstErr)
				}
			}
			fmt.Fprint(progress, ".")
		}
		fmt.Fprintln(progress, " done")
		out = append(out, r)
	}

	if slices.Contains(cfg.only, benchAnalyticsIncr) {
		for _, g := range cfg.goroutines {
			fmt.Fprintf(progress, "bench: %s, %d goroutines", benchAnalyticsIncr, g)
			r := analyticsResult{bench: benchAnalyticsIncr, label: fmt.Sprintf("%d goroutines", g)}
			r.sides = make([]analyticsMeasure, len(incrSides))
			for i, s := range incrSides {
				r.sides[i].name, r.sides[i].ours = s.name, s.ours
			}
			for round := 0; round < rounds; round++ {
				order := []int{len(incrSides) - 1, 0, 1}
				if round%2 == 1 {
					slices.Reverse(order)
				}
				for _, i := range order {
					if err := flush(); err != nil {
						return nil, info, err
					}
					call, closeFn, err := incrSides[i].make(cfg.redisURL, max(g, 10))
					if err != nil {
						return nil, info, fmt.Errorf("bench: %s: %w", incrSides[i].name, err)
					}
					m := measureCalls(ctx, g, cfg.warmup, slice, &seq, call, admin)
					closeFn()
					r.sides[i].add(m)
					if m.ops == 0 {
						return nil, info, fmt.Errorf("bench: %s made no increment in %s (first error: %v)", incrSides[i].name, slice, m.firstErr)
					}
				}
				fmt.Fprint(progress, ".")
			}
			fmt.Fprintln(progress, " done")
			out = append(out, r)
		}
	}
	return out, info, nil
}

func (m *analyticsMeasure) add(o analyticsMeasure) {
	m.ops += o.ops
	m.errors += o.errors
	m.elapsed += o.elapsed
	m.lat = append(m.lat, o.lat...)
	m.serverCPU += o.serverCPU
	m.accepted += o.accepted
	m.delivered += o.delivered
	m.distinct += o.distinct
	m.drain += o.drain
	if m.firstErr == nil {
		m.firstErr = o.firstErr
	}
}

// measureCalls runs fn from g goroutines: warmup (not counted), then d,
// counting and timing the calls that complete in d. accepted counts every
// successful call, warm-up included (what a flush must deliver).
func measureCalls(ctx context.Context, g int, warmup, d time.Duration, seq *atomic.Uint64, fn callFunc, admin rueidis.Client) analyticsMeasure {
	var (
		phase atomic.Int32
		mu    sync.Mutex
		total analyticsMeasure
		wg    sync.WaitGroup
	)
	for i := 0; i < g; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ops, errs, accepted uint64
			var first error
			lat := make([]time.Duration, 0, 4096)
			for phase.Load() != phaseStop {
				s := seq.Add(1)
				start := time.Now()
				err := fn(ctx, s)
				el := time.Since(start)
				if err == nil {
					accepted++
				}
				if phase.Load() != phaseMeasure {
					continue
				}
				lat = append(lat, el)
				if err != nil {
					errs++
					if first == nil {
						first = err
					}
					continue
				}
				ops++
			}
			mu.Lock()
			total.ops += ops
			total.errors += errs
			total.accepted += accepted
			total.lat = append(total.lat, lat...)
			if total.firstErr == nil {
				total.firstErr = first
			}
			mu.Unlock()
		}()
	}
	time.Sleep(warmup)
	cpu0, cerr := serverCPU(ctx, admin, nil)
	start := time.Now()
	phase.Store(phaseMeasure)
	time.Sleep(d)
	phase.Store(phaseStop)
	total.elapsed = time.Since(start)
	cpu1, cerr := serverCPU(ctx, admin, cerr)
	wg.Wait()
	total.serverCPU = cpu1 - cpu0
	if total.firstErr == nil && cerr != nil {
		total.firstErr = cerr
	}
	return total
}

// renderAnalytics writes the analytics report: one table per family, ours
// and the peer side by side, with the ratio ours/peer of calls per second.
func renderAnalytics(res []analyticsResult, info machineInfo, cfg config, ac analyticsConfig) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Analytics\n\n")
	fmt.Fprintf(&b, "Machine: %s, %d CPUs (GOMAXPROCS %d), %s %s, redis-server %s, load before %s. "+
		"%v per side in %d alternating rounds after %v warm-up each.\n\n",
		info.CPU, info.NumCPU, info.GOMAXPROCS, info.GoVersion, info.OSArch, info.RedisVersion, info.LoadBefore,
		cfg.duration, max(cfg.rounds, 1), cfg.warmup)
	for _, r := range res {
		peer := r.sides[len(r.sides)-1]
		switch r.bench {
		case benchAnalyticsCapture:
			fmt.Fprintf(&b, "### %s: Capture vs posthog-go Enqueue, same fake PostHog | %s |\n\n", r.bench, r.label)
			b.WriteString("| side | calls/s | ratio vs posthog-go | p50 | p99 | p99.9 | errors | accepted | delivered (distinct uuids) | final flush | redis CPU |\n")
			b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
			for _, s := range r.sides {
				ratio := "—"
				if s.ours {
					ratio = ratioStr(s.perSec(), peer.perSec())
				}
				fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %d | %d | %d (%d) | %s | %s |\n", s.name, thousands(s.perSec()), ratio,
					latency(s.lat, 0.5), latency(s.lat, 0.99), latency(s.lat, 0.999), s.errors, s.accepted, s.delivered, s.distinct,
					s.drain.Round(time.Millisecond), share(s.serverCPU, s.elapsed, "%"))
			}
		case benchAnalyticsIncr:
			fmt.Fprintf(&b, "### %s: Incr (counter + TTL, one script) vs go-redis INCR+EXPIRE pipeline | %s |\n\n", r.bench, r.label)
			b.WriteString("| side | increments/s | ratio vs go-redis | p50 | p99 | errors | redis CPU |\n")
			b.WriteString("|---|---:|---:|---:|---:|---:|---:|\n")
			for _, s := range r.sides {
				ratio := "—"
				if s.ours {
					ratio = ratioStr(s.perSec(), peer.perSec())
				}
				fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %d | %s |\n", s.name, thousands(s.perSec()), ratio,
					latency(s.lat, 0.5), latency(s.lat, 0.99), s.errors, share(s.serverCPU, s.elapsed, "%"))
			}
		}
		for _, s := range r.sides {
			if s.firstErr != nil {
				fmt.Fprintf(&b, "\n%s: first error: %v\n", s.name, s.firstErr)
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}
