package session

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/elevacare/eleva-redis/internal/clock"
	"github.com/elevacare/eleva-redis/internal/testutil"
)

var t0 = time.Unix(1_700_000_000, 0)

func newFakeMemory(cfg Config) (*store, *memoryBackend, *clock.Fake) {
	clk := clock.NewFake(t0)
	cfg.Now = clk.Now
	s := NewMemory(quiet(cfg)).(*store)
	return s, s.b.(*memoryBackend), clk
}

// TestMemoryExpiryIsExact checks, on a fake clock, the expiry arithmetic both
// backends implement: a session lives until min(lastActivity + idle,
// absolute expiry), to the millisecond.
func TestMemoryExpiryIsExact(t *testing.T) {
	tests := []struct {
		name      string
		ttl, idle time.Duration
		// touchAt: offsets of touches (interval 1ms, so each writes).
		touchAt []time.Duration
		// lastLive: the last offset at which the session is found.
		lastLive time.Duration
	}{
		{"idle without activity", time.Hour, 10 * time.Second, nil, 10*time.Second - time.Millisecond},
		{"absolute before idle", 5 * time.Second, 10 * time.Second, nil, 5*time.Second - time.Millisecond},
		{"touch extends idle", time.Hour, 10 * time.Second, []time.Duration{8 * time.Second}, 18*time.Second - time.Millisecond},
		{"touches never pass the absolute expiry", 12 * time.Second, 10 * time.Second,
			[]time.Duration{8 * time.Second, 11 * time.Second}, 12*time.Second - time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _, clk := newFakeMemory(Config{TouchInterval: time.Millisecond})
			got := testutil.Must[Session](t, "Create")(s.Create(ctxb, "s", NewSession{UserID: "u", TTL: tc.ttl, IdleTimeout: tc.idle}))
			if !got.CreatedAt.Equal(t0) || !got.AbsoluteExpiresAt.Equal(t0.Add(tc.ttl)) || !got.ExpiresAt.Equal(t0.Add(min(tc.ttl, tc.idle))) {
				t.Fatalf("Create = %+v", got)
			}
			for _, at := range tc.touchAt {
				clk.Set(t0.Add(at))
				if err := s.Touch(ctxb, "s"); err != nil {
					t.Fatalf("Touch at %v: %v", at, err)
				}
			}
			clk.Set(t0.Add(tc.lastLive))
			got = testutil.Must[Session](t, "Get at the last live millisecond")(s.Get(ctxb, "s"))
			if !got.ExpiresAt.Equal(t0.Add(tc.lastLive + time.Millisecond)) {
				t.Fatalf("ExpiresAt = %v, want %v", got.ExpiresAt, t0.Add(tc.lastLive+time.Millisecond))
			}
			clk.Advance(time.Millisecond)
			_, err := s.Get(ctxb, "s")
			testutil.WantErr(t, "Get at the expiry", err, ErrNotFound)
		})
	}
}

// TestMemoryTouchThrottle checks the throttle to the millisecond: a touch
// writes only when the interval (at most half the idle timeout) has passed
// since the last activity.
func TestMemoryTouchThrottle(t *testing.T) {
	tests := []struct {
		name     string
		interval time.Duration
		idle     time.Duration
		every    time.Duration // the effective interval
	}{
		{"interval", time.Minute, time.Hour, time.Minute},
		{"half the idle timeout", time.Minute, 30 * time.Second, 15 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, b, clk := newFakeMemory(Config{TouchInterval: tc.interval})
			testutil.Must[Session](t, "Create")(s.Create(ctxb, "s", NewSession{UserID: "u", IdleTimeout: tc.idle}))
			writes := 0
			b.onWrite = func(string) { writes++ }
			clk.Set(t0.Add(tc.every - time.Millisecond))
			if err := s.Touch(ctxb, "s"); err != nil {
				t.Fatal(err)
			}
			if writes != 0 {
				t.Fatalf("a touch %v after the last activity wrote", tc.every-time.Millisecond)
			}
			clk.Set(t0.Add(tc.every))
			if err := s.Touch(ctxb, "s"); err != nil {
				t.Fatal(err)
			}
			got := testutil.Must[Session](t, "Get")(s.Get(ctxb, "s"))
			if writes != 1 || !got.LastActivityAt.Equal(t0.Add(tc.every)) {
				t.Fatalf("a touch %v after the last activity: %d writes, activity %v", tc.every, writes, got.LastActivityAt)
			}
		})
	}
}

// TestMemorySweep: sessions that expire and are never looked up again do
// not accumulate.
func TestMemorySweep(t *testing.T) {
	s, b, clk := newFakeMemory(Config{})
	for round := range 20 {
		for i := range 100 {
			testutil.Must[Session](t, "Create")(s.Create(ctxb, fmt.Sprint(round, "-", i), NewSession{UserID: fmt.Sprint("u", i), IdleTimeout: time.Second}))
		}
		clk.Advance(2 * time.Second)
	}
	// 2000 created, at most the last 100 live: the map holds at most about
	// twice the live size plus one round.
	if n := b.size(); n > 300 {
		t.Fatalf("%d sessions stored after 2000 creations of short sessions", n)
	}
	b.mu.Lock()
	users := len(b.users)
	b.mu.Unlock()
	if users > 100 {
		t.Fatalf("%d user indexes kept", users)
	}
}

// TestOutcomes: errors are classified for the metrics.
func TestOutcomes(t *testing.T) {
	for err, want := range map[error]string{
		nil:                     outcomeOK,
		ErrNotFound:             outcomeNotFound,
		ErrExists:               outcomeExists,
		ErrConflict:             outcomeConflict,
		ErrInvalidArgument:      outcomeInvalid,
		ErrBackend:              outcomeBackend,
		ErrUnreadable:           outcomeUnreadable,
		errors.New("something"): outcomeOther,
	} {
		if got := outcomeOf(err); got != want {
			t.Errorf("outcomeOf(%v) = %s, want %s", err, got, want)
		}
	}
}
