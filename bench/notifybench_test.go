package main

import (
	"context"
	"github.com/elevacare/eleva-redis/bench/internal/redisserver"
	"strings"
	"testing"
	"time"
)

// TestNotifyHarness runs both notify cells tiny against a private
// redis-server (200 items per process case) and checks correctness only:
// every side enqueued without error, our worker processed every item exactly
// once, asynq every item at least once, and the counts add up. It asserts no
// timing and no target.
func TestNotifyHarness(t *testing.T) {
	srv, err := redisserver.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)

	cfg := config{
		duration: 100 * time.Millisecond,
		warmup:   20 * time.Millisecond,
		only:     notifyBenches,
		rounds:   2,
		redisURL: srv.URL(),
	}
	nc := notifyConfig{goroutines: 8, batch: 100, items: 200, perUser: []int{1, 10}, concurrency: 10, timeout: 30 * time.Second}
	results, info, err := runNotify(context.Background(), cfg, nc)
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 1+len(nc.perUser) {
		t.Fatalf("got %d cells, want %d", len(results), 1+len(nc.perUser))
	}
	for _, r := range results {
		if !r.sides[0].ours || r.sides[len(r.sides)-1].ours {
			t.Errorf("%s %s: sides not ours first, peer last", r.bench, r.label)
		}
		for _, s := range r.sides {
			where := r.bench + ", " + r.label + ", " + s.name
			if s.items == 0 || s.errors != 0 || s.firstErr != nil {
				t.Errorf("%s: items %d, errors %d (first error %v)", where, s.items, s.errors, s.firstErr)
			}
			if r.bench != benchNotifyProcess {
				continue
			}
			if s.preloaded != nc.items || s.missing != 0 || int(s.items) != s.preloaded {
				t.Errorf("%s: preloaded %d, processed %d distinct, missing %d", where, s.preloaded, s.items, s.missing)
			}
			if s.ours && s.duplicates != 0 {
				t.Errorf("%s: %d items processed more than once", where, s.duplicates)
			}
		}
	}
	if len(results[0].sides) != 3 {
		t.Errorf("notify-enqueue: %d sides, want Enqueue, EnqueueMany and asynq", len(results[0].sides))
	}
	out := renderNotify(results, info, cfg, nc)
	for _, want := range []string{
		"| notify-enqueue: eleva notify Enqueue vs hibiken/asynq Client.Enqueue (enqueues/s) | 8 goroutines |",
		"| notify-enqueue: eleva notify EnqueueMany vs hibiken/asynq Client.Enqueue (enqueues/s) | 8 goroutines |",
		"| notify-process: eleva notify Worker vs hibiken/asynq Server (processed/s) | 200 users x 1 |",
		"| notify-process: eleva notify Worker vs hibiken/asynq Server (processed/s) | 20 users x 10 |",
		"≥ 2x asynq", "≥ 3x asynq", "≥ 10x asynq",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "invalid") {
		t.Errorf("report flags a cell invalid:\n%s", out)
	}
}

func TestNotifyNamesAccepted(t *testing.T) {
	got, err := parseOnly("notify-enqueue, notify-process")
	if err != nil || strings.Join(got, ",") != strings.Join(notifyBenches, ",") {
		t.Errorf("parseOnly = %v, %v; want %v", got, err, notifyBenches)
	}
}

func TestSeenCounter(t *testing.T) {
	s := newSeenCounter(3)
	for _, i := range []int{0, 2, 2} {
		if err := s.see(i); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.see(3); err == nil {
		t.Error("see(3) of 3 items: no error")
	}
	select {
	case <-s.done:
		t.Fatal("done before every item was seen")
	default:
	}
	if err := s.see(1); err != nil {
		t.Fatal(err)
	}
	<-s.done
	var m notifyMeasure
	s.fill(&m)
	if m.items != 3 || m.duplicates != 1 || m.missing != 0 {
		t.Errorf("items %d, duplicates %d, missing %d; want 3, 1, 0", m.items, m.duplicates, m.missing)
	}
}
