package notify

import (
	"testing"
	"time"

	"github.com/elevacare/eleva-redis/internal/clock"
	"github.com/elevacare/eleva-redis/internal/testutil"
)

// TestMemoryWeekAheadBecomesDue: with the injected fake clock, a
// notification scheduled 7 days ahead is scheduled until then and due
// after, for Pending and Claim alike.
func TestMemoryWeekAheadBecomesDue(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC))
	q := NewMemory(Config{Now: clk.Now})
	n := note("u", "in-a-week")
	n.ScheduledFor = clk.Now().Add(7 * 24 * time.Hour)
	testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, n))

	clk.Advance(7*24*time.Hour - time.Millisecond)
	if got := testutil.Must[[]Notification](t, "Pending")(q.Pending(ctxb, "u", 10)); len(got) != 0 {
		t.Fatalf("due a millisecond early: %v", ids(got))
	}
	if st := testutil.Must[Stats](t, "Stats")(q.Stats(ctxb)); st != (Stats{Scheduled: 1}) {
		t.Fatalf("Stats %+v", st)
	}
	clk.Advance(time.Millisecond)
	got := testutil.Must[[]Notification](t, "Pending")(q.Pending(ctxb, "u", 10))
	if len(got) != 1 || got[0].State != StatePending || !got[0].ScheduledFor.Equal(n.ScheduledFor) {
		t.Fatalf("after 7 days: %+v", got)
	}
	bs := testutil.Must[[]Batch](t, "Claim")(q.Claim(ctxb, 1, 1))
	if len(bs) != 1 || bs[0].Items[0].ID != "in-a-week" {
		t.Fatalf("Claim after 7 days: %+v", bs)
	}
	if !bs[0].ExpiresAt.Equal(clk.Now().Add(DefaultLease)) {
		t.Fatalf("lease expiry %v, want now + %v", bs[0].ExpiresAt, DefaultLease)
	}
}

// TestMemoryLeaseExpiryMakesDue: an expired lease makes the user due again
// at exactly its expiry, with no recoverer.
func TestMemoryLeaseExpiryMakesDue(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC))
	q := NewMemory(Config{Now: clk.Now, Lease: time.Second})
	testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, note("u", "a")))
	testutil.Must[[]Batch](t, "Claim")(q.Claim(ctxb, 1, 1))
	clk.Advance(time.Second - time.Millisecond)
	if bs := testutil.Must[[]Batch](t, "Claim")(q.Claim(ctxb, 1, 1)); len(bs) != 0 {
		t.Fatal("claimed before the lease expired")
	}
	clk.Advance(time.Millisecond)
	if bs := testutil.Must[[]Batch](t, "Claim")(q.Claim(ctxb, 1, 1)); len(bs) != 1 || bs[0].Items[0].Attempts != 2 {
		t.Fatalf("claim at the lease expiry: %+v", bs)
	}
}

// TestMemoryExpiresOnInjectedClock: ExpiresAt is checked against the
// injected clock, not the wall clock, and expiry follows it.
func TestMemoryExpiresOnInjectedClock(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(time.Now().Add(-30 * 24 * time.Hour))
	q := NewMemory(Config{Now: clk.Now})
	n := note("u", "a")
	n.ExpiresAt = clk.Now().Add(time.Hour) // in the wall clock's past
	if r := testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, n)); r.State != StatePending {
		t.Fatalf("state %s", r.State)
	}
	clk.Advance(time.Hour)
	if bs := testutil.Must[[]Batch](t, "Claim")(q.Claim(ctxb, 1, 1)); len(bs) != 0 {
		t.Fatal("claimed at its expiry")
	}
	if d := testutil.Must[[]Notification](t, "ListDead")(q.ListDead(ctxb, 1)); len(d) != 1 || d[0].LastError != ReasonExpired {
		t.Fatalf("ListDead %+v", d)
	}
}
