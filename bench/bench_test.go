package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestHarness runs every cell for about a tenth of a second against a private
// redis-server and checks that each side made clean, allowed decisions and
// that every cell reaches the table. It proves the harness works; it asserts
// no timing and no target.
func TestHarness(t *testing.T) {
	srv, err := startRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.stop)

	cfg := config{
		duration:   150 * time.Millisecond,
		warmup:     20 * time.Millisecond,
		goroutines: []int{1, 16, 128},
		keys:       100,
		hot:        true,
		only:       allBenches,
		rounds:     2,
		redisURL:   srv.url(),
	}
	rows, info, err := run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	// gcra and fixed-window: 3 goroutine counts x 2 key spaces; memory: two
	// algorithms x 2 key spaces.
	if want := 2*3*2 + 2*2; len(rows) != want {
		t.Fatalf("got %d rows, want %d", len(rows), want)
	}
	for _, r := range rows {
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
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
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
