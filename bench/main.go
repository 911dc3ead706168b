// Command bench compares eleva-redis's rate limiters with peer libraries on
// the same redis-server, in the same run, with the same key space, and prints
// a markdown table with ratios (see README.md).
//
//	go run . [-duration 2s] [-only gcra,fixed-window,memory]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/ratelimit"
)

// Names accepted by -only.
const (
	benchGCRA        = "gcra"
	benchFixedWindow = "fixed-window"
	benchMemory      = "memory"
)

var allBenches = []string{benchGCRA, benchFixedWindow, benchMemory}

// Targets of the acceptance item 7.
const (
	targetGCRARatio   = 2.0 // ours/redis_rate decisions/s at targetGoroutines
	targetGoroutines  = 128
	targetMemNsPerOp  = 150.0
	targetMemAllocsOp = 0.0
)

type config struct {
	duration   time.Duration
	warmup     time.Duration
	goroutines []int
	keys       int
	hot        bool
	only       []string
	redisURL   string
	progress   io.Writer
}

// comparison is one benchmark: our side against a peer.
type comparison struct {
	bench  string
	memory bool
	ours   side
	peer   side
}

func comparisons(only []string) []comparison {
	all := []comparison{
		{bench: benchGCRA, ours: oursRedis(ratelimit.GCRA), peer: redisRateSide},
		{bench: benchFixedWindow, ours: oursRedis(ratelimit.FixedWindow), peer: ululeSide},
		{bench: benchMemory, memory: true, ours: oursMemory(ratelimit.GCRA), peer: sethvargoSide},
		{bench: benchMemory, memory: true, ours: oursMemory(ratelimit.FixedWindow), peer: sethvargoSide},
	}
	var out []comparison
	for _, c := range all {
		if slices.Contains(only, c.bench) {
			out = append(out, c)
		}
	}
	return out
}

// row is one measured cell.
type row struct {
	Bench      string
	OursName   string
	PeerName   string
	Memory     bool
	KeySpace   string
	Goroutines int
	Ours, Peer measurement
}

func main() {
	var (
		cfg        config
		only       string
		goroutines string
	)
	flag.DurationVar(&cfg.duration, "duration", 2*time.Second, "measured interval of each side of each cell")
	flag.DurationVar(&cfg.warmup, "warmup", 500*time.Millisecond, "warm-up before each measured interval (not counted)")
	flag.StringVar(&goroutines, "goroutines", "1,16,128", "goroutine counts of the Redis benchmarks (memory benchmarks use GOMAXPROCS)")
	flag.IntVar(&cfg.keys, "keys", 10000, "size of the key space; each decision picks a key uniformly at random")
	flag.BoolVar(&cfg.hot, "hot", true, "also run a hot-key variant (every decision on one key)")
	flag.StringVar(&only, "only", strings.Join(allBenches, ","), "comma-separated benchmarks to run: "+strings.Join(allBenches, ", "))
	flag.StringVar(&cfg.redisURL, "redis-url", os.Getenv("ELEVA_BENCH_REDIS_URL"),
		"use this Redis instead of a private redis-server (default $ELEVA_BENCH_REDIS_URL); its database is FLUSHED between runs")
	flag.Parse()

	var err error
	if cfg.goroutines, err = parseInts(goroutines); err != nil {
		fatalf(2, "bench: -goroutines: %v", err)
	}
	if cfg.only, err = parseOnly(only); err != nil {
		fatalf(2, "bench: -only: %v", err)
	}
	if cfg.keys < 1 || cfg.duration <= 0 || cfg.warmup < 0 {
		fatalf(2, "bench: -keys must be positive, -duration positive, -warmup not negative")
	}
	cfg.progress = os.Stderr

	var srv *redisServer
	if cfg.redisURL == "" && needsRedis(cfg.only) {
		if srv, err = startRedis(); err != nil {
			fatalf(1, "%v", err)
		}
		cfg.redisURL = srv.url()
		// Kill the private server on Ctrl-C too (Pdeathsig covers crashes).
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		go func() { <-sig; srv.stop(); os.Exit(130) }()
	}
	rows, info, err := run(context.Background(), cfg)
	srv.stop()
	if err != nil {
		fatalf(1, "%v", err)
	}
	fmt.Print(render(rows, info, cfg))
}

func fatalf(code int, format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(code)
}

func needsRedis(only []string) bool {
	return slices.Contains(only, benchGCRA) || slices.Contains(only, benchFixedWindow)
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("want positive integers, got %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func parseOnly(s string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if !slices.Contains(allBenches, f) {
			return nil, fmt.Errorf("unknown benchmark %q (want %s)", f, strings.Join(allBenches, ", "))
		}
		out = append(out, f)
	}
	return out, nil
}

// run measures every selected cell, each side on a freshly flushed database
// with a fresh client, and returns the rows and the machine description.
func run(ctx context.Context, cfg config) ([]row, machineInfo, error) {
	progress := cfg.progress
	if progress == nil {
		progress = io.Discard
	}
	maxG := slices.Max(cfg.goroutines)
	e := &env{redisURL: cfg.redisURL, poolSize: max(maxG, 10*runtime.GOMAXPROCS(0))}

	var admin rueidis.Client
	if needsRedis(cfg.only) {
		var err error
		if admin, err = newRueidis(cfg.redisURL); err != nil {
			return nil, machineInfo{}, fmt.Errorf("bench: connect %s: %w", cfg.redisURL, err)
		}
		defer admin.Close()
	}
	info := collectMachineInfo(ctx, admin, e.poolSize)

	randomKeys := make([]string, cfg.keys)
	for i := range randomKeys {
		randomKeys[i] = "user:" + strconv.Itoa(i)
	}
	keySpaces := []struct {
		name string
		keys []string
	}{{fmt.Sprintf("%d random", cfg.keys), randomKeys}}
	if cfg.hot {
		keySpaces = append(keySpaces, struct {
			name string
			keys []string
		}{"1 hot", []string{"hot"}})
	}

	measureSide := func(s side, g int, keys []string, memory bool) (measurement, error) {
		if !memory {
			if err := admin.Do(ctx, admin.B().Flushdb().Build()).Error(); err != nil {
				return measurement{}, fmt.Errorf("bench: FLUSHDB: %w", err)
			}
		}
		fn, closeFn, err := s.make(e, g)
		if err != nil {
			return measurement{}, fmt.Errorf("bench: %s: %w", s.name, err)
		}
		defer closeFn()
		m := measure(ctx, g, cfg.warmup, cfg.duration, keys, fn)
		if m.Ops == 0 {
			return m, fmt.Errorf("bench: %s with %d goroutines made no decision in %s (first error: %v)", s.name, g, cfg.duration, m.FirstErr)
		}
		return m, nil
	}

	var rows []row
	for _, c := range comparisons(cfg.only) {
		counts := cfg.goroutines
		if c.memory {
			// Parallel like testing.B.RunParallel: one goroutine per P.
			counts = []int{runtime.GOMAXPROCS(0)}
		}
		for _, ks := range keySpaces {
			for _, g := range counts {
				r := row{Bench: c.bench, OursName: c.ours.name, PeerName: c.peer.name, Memory: c.memory, KeySpace: ks.name, Goroutines: g}
				fmt.Fprintf(progress, "bench: %s, %s keys, %d goroutines: %s ... ", c.bench, ks.name, g, c.peer.name)
				var err error
				// Peer first, then ours: neither side gets a warmer
				// server, as each starts on a flushed database.
				if r.Peer, err = measureSide(c.peer, g, ks.keys, c.memory); err != nil {
					return nil, info, err
				}
				fmt.Fprintf(progress, "%s ... ", c.ours.name)
				if r.Ours, err = measureSide(c.ours, g, ks.keys, c.memory); err != nil {
					return nil, info, err
				}
				fmt.Fprintln(progress, "done")
				rows = append(rows, r)
			}
		}
	}
	if len(rows) == 0 {
		return nil, info, errors.New("bench: nothing to run")
	}
	return rows, info, nil
}
