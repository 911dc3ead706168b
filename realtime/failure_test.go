package realtime

import (
	"context"
	"testing"
	"time"

	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/internal/testutil"
)

// Redis stops: calls fail with ErrBackend within the timeout (nothing is
// published on a guess); after a restart without persistence the channel's
// state is gone, and a subscriber is told so with a reset instead of
// silently missing what it had not received.
func TestRedisDownAndRestart(t *testing.T) {
	t.Parallel()
	srv := redistest.NewServer(t)
	b, err := NewRedis(redistest.Client(t, srv.URL()), quiet(Config{Prefix: redistest.Prefix(t), Timeout: 300 * time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for range 3 {
		testutil.Must[Position](t, "Publish")(b.Publish(ctxb, "appt:9", []byte("x")))
	}
	s := testutil.Must[*Subscription](t, "Subscribe")(b.Subscribe(ctxb, []string{"appt:9"}, nil))
	defer s.Close()
	if p := s.Positions()[0]; p.Offset != 3 {
		t.Fatalf("position %+v", p)
	}

	srv.Stop(t)
	testutil.FailClosed(t, 2, []testutil.Call{
		testutil.C("Publish", func() error { _, err := b.Publish(ctxb, "appt:9", []byte("y")); return err }),
		testutil.C("History", func() error { _, err := b.History(ctxb, "appt:9", 0, 10); return err }),
		testutil.C("SetPresence", func() error { _, err := b.SetPresence(ctxb, "e", StatusOnline, 0); return err }),
		testutil.C("Presence", func() error { _, err := b.Presence(ctxb, []string{"e"}); return err }),
		testutil.C("Subscribe", func() error {
			ctx, cancel := context.WithTimeout(ctxb, 300*time.Millisecond)
			defer cancel()
			_, err := b.Subscribe(ctx, []string{"other"}, nil)
			return err
		}),
	}, ErrBackend, 5*time.Second)

	srv.Start(t)
	// The subscription comes back by itself and reports the lost state.
	ev := next(t, s)
	if ev.Kind != EventReset || ev.Position != (Position{}) {
		t.Fatalf("after the restart: %+v, want a reset to the empty position", ev)
	}
	p := testutil.Must[Position](t, "Publish")(b.Publish(ctxb, "appt:9", []byte("z")))
	if p.Offset != 1 {
		t.Fatalf("first publish after the restart: %+v, want offset 1 of a new epoch", p)
	}
	wantMessage(t, next(t, s), "appt:9", 1, "z")
}
