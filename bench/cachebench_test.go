package main

import (
	"context"
	"encoding/json"
	"github.com/elevacare/eleva-redis/bench/internal/redisserver"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/elevacare/eleva-redis/cache"
)

// TestCacheHarness runs every cache cell briefly against a private
// redis-server, and checks that each side was measured on the path its cell
// is about: no errors, no degraded gets, nothing loaded in the hit cells (the
// preload worked), our local-hit sides served every get from the local level,
// the peers' local hits and our shared-level hits sent no command to Redis
// (client-side caches), go-redis/cache without a local cache did, and no key
// was loaded twice by us in the zipf cell. It asserts no timing and no
// target.
func TestCacheHarness(t *testing.T) {
	srv, err := redisserver.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)

	const keys = 100
	cfg := config{
		duration: 150 * time.Millisecond,
		warmup:   20 * time.Millisecond,
		keys:     keys,
		only:     cacheBenches,
		rounds:   2,
		redisURL: srv.URL(),
	}
	cc := cacheConfig{
		goroutines:  []int{8},
		zipfS:       1.1,
		zipfWarmup:  20 * time.Millisecond,
		zipfMaxWarm: 5 * time.Second,
		loadDelay:   time.Millisecond,
	}
	results, info, err := runCache(context.Background(), cfg, cc)
	if err != nil {
		t.Fatal(err)
	}
	// cache-local-hit: uniform, zipf and one hot key at 1 and GOMAXPROCS
	// goroutines.
	localCounts := 3 * len(slices.Compact([]int{1, runtime.GOMAXPROCS(0)}))
	if want := localCounts + 1 + 1; len(results) != want {
		t.Fatalf("got %d cell results, want %d", len(results), want)
	}
	for _, res := range results {
		for i, s := range res.cell.sides {
			m := res.sides[i]
			where := res.cell.bench + ", " + s.name
			if m.Ops == 0 || m.Errors != 0 || m.Degraded != 0 {
				t.Errorf("%s: gets %d, errors %d, degraded %d (first error %v)", where, m.Ops, m.Errors, m.Degraded, m.FirstErr)
			}
			if s.ours && m.FromLocal+m.FromRedis+m.FromLoader != m.Ops {
				t.Errorf("%s: sources %d+%d+%d do not add up to %d gets", where, m.FromLocal, m.FromRedis, m.FromLoader, m.Ops)
			}
			if !servedAsWanted(s.want, m) {
				t.Errorf("%s: want every get from %q, got local %d, Redis %d, loader %d of %d",
					where, s.want, m.FromLocal, m.FromRedis, m.FromLoader, m.Ops)
			}
			switch res.cell.bench {
			case benchCacheLocalHit, benchCacheRedisHit:
				if m.Loads != 0 {
					t.Errorf("%s: %d loads in a cell whose keys were all preloaded", where, m.Loads)
				}
				// Local hits and client-side-cache hits send nothing
				// (a stray background command is tolerated).
				inProcess := res.cell.bench == benchCacheLocalHit || s.name == oursSharedHit.name ||
					s.name == rueidisAside.name || s.name == goRedisTinyLFU.name || s.name == oursBothLevels.name
				if inProcess && m.CommandsPerOp() > 0.01 {
					t.Errorf("%s: %.3f Redis commands per get, want ~0 (served in-process)", where, m.CommandsPerOp())
				}
				if s.name == goRedisNoLocal.name && m.CommandsPerOp() < 0.5 {
					t.Errorf("%s: %.3f Redis commands per get, want a GET per get (less the singleflight's sharing)", where, m.CommandsPerOp())
				}
			case benchCacheZipf:
				// Loads add up over the rounds, each of which starts cold.
				if m.Loads == 0 || m.Loads-m.DupLoads > keys*uint64(cfg.rounds) || m.LoadsMeasured > m.Loads {
					t.Errorf("%s: loads %d (measured %d, duplicates %d) over %d keys in %d rounds",
						where, m.Loads, m.LoadsMeasured, m.DupLoads, keys, cfg.rounds)
				}
				if s.ours && m.DupLoads != 0 {
					t.Errorf("%s: %d keys loaded more than once; nothing expired, so each key loads once", where, m.DupLoads)
				}
				if m.WarmUp < cc.zipfWarmup*time.Duration(cfg.rounds) {
					t.Errorf("%s: warm-up %v, below the minimum %v per round", where, m.WarmUp, cc.zipfWarmup)
				}
				if m.Unsettled > 0 {
					t.Logf("%s: %d rounds reached no steady state in %v", where, m.Unsettled, cc.zipfMaxWarm)
				}
			}
		}
	}
	rows := cacheRows(results)
	if want := localCounts*4 + 4 + 4; len(rows) != want {
		t.Errorf("got %d rows, want %d", len(rows), want)
	}
	out := renderCache(results, info, cfg, cc)
	for _, want := range []string{
		"| cache-local-hit: eleva cache, local level (Redis store) vs go-redis/cache/v9 + TinyLFU (ns/op, lower is better) | 100 random, preloaded | 1 |",
		"| cache-local-hit: eleva cache, local level (Redis store) vs rueidisaside (allocs/op) | 100 random, preloaded | 1 |",
		"| cache-local-hit [variant: our memory store]: eleva cache, local level (memory store) vs go-redis/cache/v9 + TinyLFU (ns/op, lower is better) | 100 zipf s=1.1, preloaded | 1 |",
		"≤ 100 ns/op", "0 allocs/op",
		"| cache-redis-hit: eleva cache, local level off vs go-redis/cache/v9, no local cache (gets/s) | 100 random, preloaded | 8 |",
		"| cache-redis-hit [variant: local caches on]: eleva cache, local level on vs go-redis/cache/v9 + TinyLFU (gets/s) |",
		"| cache-zipf: eleva cache, local level on vs rueidisaside (gets/s) | 100 zipf s=1.1, steady state | 8 |",
		"| cache-zipf | 100 zipf s=1.1, steady state | 8 | eleva cache, local level off |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "invalid") {
		t.Errorf("report flags a cell invalid:\n%s", out)
	}
}

func TestParseAllCommandStats(t *testing.T) {
	tests := []struct {
		name string
		info string
		want uint64
	}{
		{"empty", "", 0},
		{"gets and scripts count", "# Commandstats\r\ncmdstat_get:calls=10,usec=20,usec_per_call=2.00\r\ncmdstat_evalsha:calls=3,usec=9\r\n", 13},
		{"client caching counts, tracking does not", "cmdstat_client|caching:calls=4,usec=1\r\ncmdstat_client|tracking:calls=2,usec=1\r\n", 4},
		{"harness commands excluded", "cmdstat_info:calls=5,usec=1\r\ncmdstat_config|resetstat:calls=1,usec=1\r\ncmdstat_flushdb:calls=1,usec=9\r\ncmdstat_hello:calls=2,usec=1\r\ncmdstat_ping:calls=7,usec=1\r\ncmdstat_set:calls=1,usec=1\r\n", 1},
		{"malformed lines ignored", "cmdstat_get\r\ncmdstat_get:calls=x\r\nnot_a_stat:calls=5\r\n", 0},
	}
	for _, tt := range tests {
		if got := parseAllCommandStats(tt.info); got != tt.want {
			t.Errorf("%s: parseAllCommandStats = %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestKeyIndex(t *testing.T) {
	tests := []struct {
		key     string
		want    int
		wantErr bool
	}{
		{cacheKey(0), 0, false},
		{cacheKey(99), 99, false},
		{cacheKey(100), 0, true}, // outside the key space
		{"expert:-1", 0, true},
		{"user:5", 0, true},
		{"expert:", 0, true},
	}
	for _, tt := range tests {
		got, err := keyIndex(tt.key, 100)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("keyIndex(%q) = %d, %v; want %d, error %v", tt.key, got, err, tt.want, tt.wantErr)
		}
	}
}

// TestProfile checks the cached value: about 300 bytes of JSON, and a round
// trip through JSON (what every side does) gives it back unchanged.
func TestProfile(t *testing.T) {
	for _, i := range []int{0, 1234, 9999} {
		p := profileFor(i)
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) < 250 || len(b) > 400 {
			t.Errorf("profile %d encodes to %d bytes, want ~300", i, len(b))
		}
		var back expertProfile
		if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, p) {
			t.Errorf("profile %d: JSON round trip gave %+v, %v", i, back, err)
		}
	}
}

func TestLoadCounterDuplicates(t *testing.T) {
	l := newLoadCounter([]expertProfile{profileFor(0), profileFor(1), profileFor(2)}, 0)
	for _, i := range []int{0, 1, 1, 2, 2, 2} {
		if got := l.load(i); got.ID != cacheKey(i) {
			t.Fatalf("load(%d) returned %q", i, got.ID)
		}
	}
	if got := l.total.Load(); got != 6 {
		t.Errorf("total = %d, want 6", got)
	}
	if got := l.duplicates(); got != 3 {
		t.Errorf("duplicates = %d, want 3 (key 1 once more, key 2 twice more)", got)
	}
}

func TestCacheNamesAccepted(t *testing.T) {
	got, err := parseOnly("cache-local-hit, cache-redis-hit,cache-zipf")
	if err != nil || strings.Join(got, ",") != strings.Join(cacheBenches, ",") {
		t.Errorf("parseOnly = %v, %v; want %v", got, err, cacheBenches)
	}
	if servedAsWanted(cache.SourceLocal, cacheMeasure{measurement: measurement{Ops: 2}, FromLocal: 1, FromRedis: 1}) {
		t.Error("servedAsWanted: one of two gets from Redis passed as all local")
	}
}
