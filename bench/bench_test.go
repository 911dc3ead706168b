package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/elevacare/eleva-redis/bench/internal/redisserver"
	"strings"
	"testing"
	"time"
)

// TestHarness runs every cell for about a tenth of a second against a private
// redis-server and checks that each side made clean, allowed decisions (for
// locks: clean acquire+release cycles, none refused) and that every cell
// reaches the table. It proves the harness works; it asserts no timing and no
// target.
func TestHarness(t *testing.T) {
	srv, err := redisserver.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)

	cfg := config{
		duration:   150 * time.Millisecond,
		warmup:     20 * time.Millisecond,
		goroutines: []int{1, 16, 128},
		keys:       100,
		hot:        true,
		only:       allBenches,
		rounds:     2,
		redisURL:   srv.URL(),

		lockGoroutines:   []int{1, 16, 64},
		lockHot:          1,
		redislockBackoff: defaultRedislockBackoff,
	}
	rows, info, err := run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	// gcra and fixed-window: 3 goroutine counts x 2 key spaces; memory: two
	// algorithms x 2 key spaces; lock and lock-contended: 2 peers x 3
	// goroutine counts.
	if want := 2*3*2 + 2*2 + 2*2*3; len(rows) != want {
		t.Fatalf("got %d rows, want %d", len(rows), want)
	}
	for _, r := range rows {
		if r.Lock {
			checkLockRow(t, r)
			continue
		}
		for _, s := range []struct {
			name string
			m    measurement
		}{{r.OursName, r.Ours}, {r.PeerName, r.Peer}} {
			if s.m.Ops == 0 || s.m.Errors != 0 || s.m.Degraded != 0 || (!r.Memory && s.m.ServerCalls == 0) {
				t.Errorf("%s %s %d goroutines %s: ops %d errors %d degraded %d script calls %d (first error %v)",
					r.Bench, r.KeySpace, r.Goroutines, s.name, s.m.Ops, s.m.Errors, s.m.Degraded, s.m.ServerCalls, s.m.FirstErr)
			}
			// Limits are meant to be high enough that both sides write.
			if s.m.Allowed*100 < s.m.Ops*99 {
				t.Errorf("%s %s %d goroutines %s: only %d of %d allowed", r.Bench, r.KeySpace, r.Goroutines, s.name, s.m.Allowed, s.m.Ops)
			}
		}
	}
	if !strings.HasPrefix(info.RedisVersion, "7") && !strings.HasPrefix(info.RedisVersion, "8") {
		t.Errorf("redis version %q not read from INFO", info.RedisVersion)
	}
	out := render(rows, info, cfg)
	for _, want := range []string{
		"| eleva gcra vs go-redis/redis_rate/v10 (decisions/s) | 100 random | 128 |",
		"| eleva fixed-window vs ulule/limiter/v3 (redis store) (decisions/s) | 1 hot | 16 |",
		"| eleva memory gcra vs sethvargo/go-limiter memorystore (allocs/op) | 100 random |",
		"≥ 2x redis_rate", "≤ 150 ns/op", "0 allocs/op",
		"| lock eleva lock vs bsm/redislock (acquire+release/s) | 100, disjoint per goroutine | 64 |",
		"| lock-contended eleva lock vs rueidislock (acquire+release/s) | 1 shared | 16 |",
		"≥ 1.5x redislock",
		"| lock-contended | 1 shared | 64 | eleva lock |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

// checkLockRow checks one lock cell: every counted cycle acquired and
// released cleanly (uncontended: no acquire refused, which proves the names of
// different goroutines are disjoint; contended: no wait ran out), the server
// saw script calls, and hand-offs are recorded in the contended scenario only.
func checkLockRow(t *testing.T, r row) {
	t.Helper()
	for _, s := range []struct {
		name string
		m    measurement
		ours bool
	}{{r.OursName, r.Ours, true}, {r.PeerName, r.Peer, false}} {
		m := s.m
		where := func() string {
			return fmt.Sprintf("%s, %s, %d goroutines, %s", r.Bench, r.KeySpace, r.Goroutines, s.name)
		}
		errs := m.Errors
		if s.name == rueidislockSide.name && errors.Is(m.FirstErr, context.DeadlineExceeded) {
			// rueidislock bounds each SET by its TryNextAfter (20ms by
			// default), which a loaded machine under the test harness can
			// exceed: a property of the peer, not of the harness.
			t.Logf("%s: %d rueidislock attempts timed out (%v)", where(), errs, m.FirstErr)
			errs = 0
		}
		if m.Allowed == 0 || errs != 0 || m.NotAcquired != 0 || m.Allowed+m.Errors != m.Ops || m.ServerCalls == 0 {
			t.Errorf("%s: cycles %d of %d, errors %d, not acquired %d, script calls %d (first error %v)",
				where(), m.Allowed, m.Ops, m.Errors, m.NotAcquired, m.ServerCalls, m.FirstErr)
		}
		if len(m.AcquireLat) != int(m.Allowed) {
			t.Errorf("%s: %d acquire latencies for %d cycles", where(), len(m.AcquireLat), m.Allowed)
		}
		contended := r.Bench == benchLockContended
		switch {
		case !contended && (m.HandOffs != 0 || len(m.HandOffLat) != 0):
			t.Errorf("%s: uncontended cell recorded %d hand-offs", where(), m.HandOffs)
		case uint64(len(m.HandOffLat)) > m.HandOffs || m.HandOffs > m.Allowed:
			t.Errorf("%s: %d hand-off latencies, %d hand-offs, %d cycles", where(), len(m.HandOffLat), m.HandOffs, m.Allowed)
		case contended && r.Goroutines == 1 && m.HandOffs != 0:
			t.Errorf("%s: a single goroutine cannot hand off, got %d hand-offs", where(), m.HandOffs)
		case contended && s.ours && r.Goroutines > 1 && m.HandOffs == 0:
			// Ours wakes its oldest waiter on every release: with several
			// goroutines on one name, the lock changes hands.
			t.Errorf("%s: no hand-off recorded in %d cycles", where(), m.Allowed)
		}
	}
}

func TestLockNames(t *testing.T) {
	tests := []struct {
		keys, g int
		wantPer int
	}{{10000, 1, 10000}, {10000, 64, 156}, {100, 16, 6}, {10, 64, 1}}
	for _, tt := range tests {
		names := lockNames(tt.keys, tt.g, false, 1)
		seen := map[string]int{}
		for i := 0; i < tt.g; i++ {
			own := names(i)
			if len(own) != tt.wantPer {
				t.Errorf("keys %d, g %d: goroutine %d has %d names, want %d", tt.keys, tt.g, i, len(own), tt.wantPer)
			}
			for _, n := range own {
				if j, dup := seen[n]; dup {
					t.Errorf("keys %d, g %d: %q belongs to goroutines %d and %d", tt.keys, tt.g, n, j, i)
				}
				seen[n] = i
			}
		}
	}
	hot := lockNames(100, 8, true, 3)
	if a, b := hot(0), hot(7); len(a) != 3 || strings.Join(a, ",") != strings.Join(b, ",") {
		t.Errorf("contended names: goroutine 0 %v, goroutine 7 %v; want the same 3", a, b)
	}
}

func TestLatencyQuantile(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 100; i++ {
		ds = append(ds, time.Duration(101-i)*100*time.Microsecond) // 10ms down to 100µs
	}
	for _, tt := range []struct {
		q    float64
		want string
	}{{0.50, "5.00 ms"}, {0.99, "9.90 ms"}, {0.01, "100 µs"}, {1, "10.00 ms"}} {
		if got := latency(ds, tt.q); got != tt.want {
			t.Errorf("latency(q=%v) = %q, want %q", tt.q, got, tt.want)
		}
	}
	if got := latency(nil, 0.5); got != "—" {
		t.Errorf("latency(nil) = %q, want —", got)
	}
	if ds[0] != 10*time.Millisecond {
		t.Error("latency sorted its input in place")
	}
}

func TestParseServerCPU(t *testing.T) {
	info := "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\nused_cpu_sys_children:9.000000\r\nused_cpu_sys_main_thread:1.4\r\n"
	if got, want := parseServerCPU(info), 3750*time.Millisecond; got != want {
		t.Errorf("parseServerCPU = %v, want %v (sys + user of the server, not its children)", got, want)
	}
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		only    string
		want    []string
		wantErr bool
	}{
		{"gcra", []string{"gcra"}, false},
		{"memory, fixed-window", []string{"memory", "fixed-window"}, false},
		{"lock,lock-contended", []string{"lock", "lock-contended"}, false},
		{"gcra,sliding-log", nil, true},
		{"", nil, true},
	}
	for _, tt := range tests {
		got, err := parseOnly(tt.only)
		if (err != nil) != tt.wantErr || strings.Join(got, ",") != strings.Join(tt.want, ",") {
			t.Errorf("parseOnly(%q) = %v, %v; want %v, error %v", tt.only, got, err, tt.want, tt.wantErr)
		}
	}
	if got, err := parseInts("1, 16,128"); err != nil || len(got) != 3 || got[2] != 128 {
		t.Errorf("parseInts = %v, %v", got, err)
	}
	for _, bad := range []string{"0", "1,x", ""} {
		if _, err := parseInts(bad); err == nil {
			t.Errorf("parseInts(%q): want an error", bad)
		}
	}
}

func TestThousands(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 123456.6: "123,457", 1234567: "1,234,567"} {
		if got := thousands(in); got != want {
			t.Errorf("thousands(%v) = %q, want %q", in, got, want)
		}
	}
}

func TestParseCommandStats(t *testing.T) {
	info := "# Commandstats\r\n" +
		"cmdstat_evalsha:calls=10,usec=150,usec_per_call=15.00,rejected_calls=0,failed_calls=0\r\n" +
		"cmdstat_eval:calls=1,usec=50,usec_per_call=50.00,rejected_calls=0,failed_calls=0\r\n" +
		"cmdstat_get:calls=10,usec=20,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n" +
		"cmdstat_flushdb:calls=1,usec=900,usec_per_call=900.00,rejected_calls=0,failed_calls=0\r\n"
	calls, usec := parseCommandStats(info)
	if calls != 11 || usec != 200 {
		t.Errorf("parseCommandStats = %d calls, %d usec; want 11, 200 (script commands only)", calls, usec)
	}
}
