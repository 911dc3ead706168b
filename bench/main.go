// Command bench compares eleva-redis's rate limiters and locks with peer
// libraries on the same redis-server, in the same run, with the same key
// space, and prints a markdown table with ratios (see README.md).
//
//	go run . [-duration 2s] [-only gcra,fixed-window,memory,lock,lock-contended]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/elevacare/eleva-redis/bench/internal/redisserver"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
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

var allBenches = []string{benchGCRA, benchFixedWindow, benchMemory, benchLock, benchLockContended,
	benchCacheLocalHit, benchCacheRedisHit, benchCacheZipf, benchNotifyEnqueue, benchNotifyProcess,
	benchAnalyticsCapture, benchAnalyticsIncr}

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
	rounds     int
	goroutines []int
	keys       int
	hot        bool
	only       []string
	redisURL   string
	progress   io.Writer
	// Lock benchmarks.
	lockGoroutines   []int
	lockHot          int           // names shared by all goroutines in lock-contended
	lockInstances    int           // independent lockers (clients) per side, goroutines spread over them
	redislockBackoff time.Duration // redislock's LinearBackoff while waiting
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
	Lock       bool
	KeySpace   string
	Goroutines int
	Ours, Peer measurement
}

func main() {
	var (
		cfg            config
		only           string
		goroutines     string
		lockGoroutines string
		cpuProfile     string
	)
	flag.DurationVar(&cfg.duration, "duration", 2*time.Second, "measured interval of each side of each cell")
	flag.DurationVar(&cfg.warmup, "warmup", 500*time.Millisecond, "warm-up before each measured interval (not counted)")
	flag.DurationVar(&flushDelay, "max-flush-delay", 0, "rueidis MaxFlushDelay of our clients (0: rueidis default, flush at once)")
	flag.IntVar(&redisConns, "redis-connections", 0, "pipelined connections of our rueidis clients, as elevaredis.Config.RedisConnections (0: its default, one per two CPUs)")
	flag.IntVar(&cfg.rounds, "rounds", 3, "split each side's -duration into this many rounds, alternating peer and ours, so background load hits both alike")
	flag.StringVar(&goroutines, "goroutines", "1,16,128", "goroutine counts of the Redis benchmarks (memory benchmarks use GOMAXPROCS)")
	flag.IntVar(&cfg.keys, "keys", 10000, "size of the key space; each decision picks a key uniformly at random")
	flag.BoolVar(&cfg.hot, "hot", true, "also run a hot-key variant (every decision on one key)")
	flag.StringVar(&lockGoroutines, "lock-goroutines", "1,16,64", "goroutine counts of the lock benchmarks")
	flag.IntVar(&cfg.lockHot, "lock-contended-names", 1, "lock names shared by all goroutines in lock-contended")
	flag.IntVar(&cfg.lockInstances, "lock-instances", 1, "independent lockers, each with its own client, per side of a lock cell (goroutine i uses locker i mod n), like n processes")
	flag.DurationVar(&cfg.redislockBackoff, "redislock-backoff", defaultRedislockBackoff, "bsm/redislock's LinearBackoff between tries while waiting (lock-contended)")
	flag.StringVar(&only, "only", strings.Join(allBenches, ","), "comma-separated benchmarks to run: "+strings.Join(allBenches, ", "))
	flag.StringVar(&cfg.redisURL, "redis-url", os.Getenv("ELEVA_BENCH_REDIS_URL"),
		"use this Redis instead of a private redis-server (default $ELEVA_BENCH_REDIS_URL); its database is FLUSHED between runs")
	flag.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to this file (for `go tool pprof`)")
	flag.Parse()

	var err error
	if cfg.goroutines, err = parseInts(goroutines); err != nil {
		fatalf(2, "bench: -goroutines: %v", err)
	}
	if cfg.lockGoroutines, err = parseInts(lockGoroutines); err != nil {
		fatalf(2, "bench: -lock-goroutines: %v", err)
	}
	if cfg.only, err = parseOnly(only); err != nil {
		fatalf(2, "bench: -only: %v", err)
	}
	if cfg.keys < 1 || cfg.duration <= 0 || cfg.warmup < 0 || cfg.rounds < 1 || cfg.lockHot < 1 || cfg.lockInstances < 1 || cfg.redislockBackoff <= 0 {
		fatalf(2, "bench: -keys, -duration, -rounds, -lock-contended-names, -lock-instances and -redislock-backoff must be positive, -warmup not negative")
	}
	cfg.progress = os.Stderr
	cc, err := cacheFlags() // cachebench.go
	if err != nil {
		fatalf(2, "bench: %v", err)
	}

	var srv *redisserver.Server
	if cfg.redisURL == "" && needsRedis(cfg.only) {
		if srv, err = redisserver.Start(); err != nil {
			fatalf(1, "%v", err)
		}
		cfg.redisURL = srv.URL()
		// Kill the private server on Ctrl-C too (Pdeathsig covers crashes).
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		go func() { <-sig; srv.Stop(); os.Exit(130) }()
	}
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			fatalf(1, "bench: -cpuprofile: %v", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fatalf(1, "bench: -cpuprofile: %v", err)
		}
	}
	out, err := runAllWithAnalytics(context.Background(), cfg, cc) // run + render, the cache cells (cachebench.go), the notify cells (notifybench.go), the analytics cells (analyticsbench.go)
	if cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	srv.Stop()
	fmt.Print(out)
	if err != nil {
		fatalf(1, "%v", err)
	}
}

func fatalf(code int, format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(code)
}

func needsRedis(only []string) bool {
	return slices.ContainsFunc(only, func(b string) bool { return b != benchMemory })
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
	if len(cfg.lockGoroutines) > 0 {
		maxG = max(maxG, slices.Max(cfg.lockGoroutines))
	}
	e := &env{redisURL: cfg.redisURL, poolSize: max(maxG, 10*runtime.GOMAXPROCS(0)), redislockBackoff: cfg.redislockBackoff}
	if e.redislockBackoff <= 0 {
		e.redislockBackoff = defaultRedislockBackoff
	}

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

	rounds := max(cfg.rounds, 1)
	measureSide := func(s side, g int, keys []string, memory bool, d time.Duration) (measurement, error) {
		if !memory {
			if err := admin.Do(ctx, admin.B().Flushdb().Build()).Error(); err != nil {
				return measurement{}, fmt.Errorf("bench: FLUSHDB: %w", err)
			}
			if err := admin.Do(ctx, admin.B().ConfigResetstat().Build()).Error(); err != nil {
				return measurement{}, fmt.Errorf("bench: CONFIG RESETSTAT: %w", err)
			}
		}
		fn, closeFn, err := s.make(e, g)
		if err != nil {
			return measurement{}, fmt.Errorf("bench: %s: %w", s.name, err)
		}
		defer closeFn()
		m := measure(ctx, g, cfg.warmup, d, keys, fn)
		if !memory {
			// Read before closeFn, but after the load stopped. The
			// admin client's own INFO is not yet counted in its reply.
			s, err := admin.Do(ctx, admin.B().Info().Section("commandstats").Build()).ToString()
			if err != nil {
				return m, fmt.Errorf("bench: INFO commandstats: %w", err)
			}
			m.ServerCalls, m.ServerUsec = parseCommandStats(s)
		}
		if m.Ops == 0 {
			return m, fmt.Errorf("bench: %s with %d goroutines made no decision in %s (first error: %v)", s.name, g, d, m.FirstErr)
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
				fmt.Fprintf(progress, "bench: %s, %s keys, %d goroutines: %s vs %s", c.bench, ks.name, g, c.ours.name, c.peer.name)
				// Each round measures both sides for duration/rounds,
				// alternating which goes first, so a burst of background
				// load does not land on one side only. Every side of every
				// round starts on a flushed database with a fresh client.
				slice := max(cfg.duration/time.Duration(rounds), time.Millisecond)
				for i := 0; i < rounds; i++ {
					order := []struct {
						s   side
						acc *measurement
					}{{c.peer, &r.Peer}, {c.ours, &r.Ours}}
					if i%2 == 1 {
						order[0], order[1] = order[1], order[0]
					}
					for _, o := range order {
						m, err := measureSide(o.s, g, ks.keys, c.memory, slice)
						if err != nil {
							return nil, info, err
						}
						o.acc.add(m)
					}
					fmt.Fprint(progress, ".")
				}
				fmt.Fprintln(progress, " done")
				rows = append(rows, r)
			}
		}
	}
	lockRows, err := runLocks(ctx, cfg, admin, e, progress)
	if err != nil {
		return nil, info, err
	}
	rows = append(rows, lockRows...)
	if len(rows) == 0 {
		return nil, info, errors.New("bench: nothing to run")
	}
	return rows, info, nil
}

// parseCommandStats sums calls and usec of the script commands (EVAL,
// EVALSHA and their _RO forms, FCALL) in an INFO commandstats reply
// ("cmdstat_evalsha:calls=3,usec=40,..."). Every decision of every side is
// one script call; commands run inside scripts have lines of their own,
// already included in the script's usec, so they are left out.
func parseCommandStats(info string) (calls, usec uint64) {
	for _, line := range strings.Split(info, "\n") {
		name, fields, ok := strings.Cut(strings.TrimSpace(line), ":")
		switch name {
		case "cmdstat_eval", "cmdstat_evalsha", "cmdstat_eval_ro", "cmdstat_evalsha_ro", "cmdstat_fcall", "cmdstat_fcall_ro":
		default:
			continue
		}
		if !ok {
			continue
		}
		for _, f := range strings.Split(fields, ",") {
			k, v, _ := strings.Cut(f, "=")
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				continue
			}
			switch k {
			case "calls":
				calls += n
			case "usec":
				usec += n
			}
		}
	}
	return calls, usec
}
