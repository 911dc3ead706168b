package main

import (
	"context"
	"github.com/elevacare/eleva-redis/bench/internal/redisserver"
	"strings"
	"testing"
	"time"
)

// TestAnalyticsHarness runs both analytics cells tiny against a private
// redis-server and checks correctness only: every side made calls, the
// Redis sides made no error, and after each side's flush the fake PostHog
// received every event a Capture accepted (once per uuid: distinct ==
// delivered == accepted). It asserts no timing and no ratio.
func TestAnalyticsHarness(t *testing.T) {
	srv, err := redisserver.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	cfg := config{
		duration:   100 * time.Millisecond,
		warmup:     20 * time.Millisecond,
		only:       analyticsBenches,
		rounds:     2,
		goroutines: []int{4},
		redisURL:   srv.URL(),
	}
	ac := analyticsConfig{goroutines: 4, drain: 30 * time.Second}
	res, info, err := runAnalytics(context.Background(), cfg, ac)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 {
		t.Fatalf("got %d cells, want capture and incr at 4 goroutines", len(res))
	}
	for _, r := range res {
		if !r.sides[0].ours || r.sides[len(r.sides)-1].ours {
			t.Errorf("%s: sides not ours first, peer last", r.bench)
		}
		for _, s := range r.sides {
			where := r.bench + ", " + s.name
			if s.ops == 0 || s.firstErr != nil && !strings.Contains(s.name, "memory") {
				t.Errorf("%s: %d calls, first error %v", where, s.ops, s.firstErr)
			}
			if r.bench == benchAnalyticsCapture && (s.accepted == 0 || s.delivered != s.accepted || s.distinct != s.accepted) {
				t.Errorf("%s: accepted %d, delivered %d, distinct uuids %d", where, s.accepted, s.delivered, s.distinct)
			}
		}
	}
	out := renderAnalytics(res, info, cfg, ac)
	for _, want := range []string{
		"### analytics-capture: Capture vs posthog-go Enqueue, same fake PostHog | 4 goroutines |",
		"| eleva analytics Capture (redis stream) |", "| posthog/posthog-go Enqueue |",
		"### analytics-incr: Incr (counter + TTL, one script) vs go-redis INCR+EXPIRE pipeline | 4 goroutines |",
		"| eleva analytics Incr |", "| go-redis INCR+EXPIRE pipeline |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

func TestAnalyticsNamesAccepted(t *testing.T) {
	got, err := parseOnly("analytics-capture, analytics-incr")
	if err != nil || strings.Join(got, ",") != strings.Join(analyticsBenches, ",") {
		t.Errorf("parseOnly = %v, %v; want %v", got, err, analyticsBenches)
	}
}
