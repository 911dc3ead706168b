package realtime_test

import (
	"context"
	"fmt"

	"github.com/elevacare/eleva-redis/realtime"
)

func Example() {
	ctx := context.Background()
	b := realtime.NewMemory(realtime.Config{})
	defer b.Close()

	// A browser tab follows appointment 42 from its current position.
	sub, err := b.Subscribe(ctx, []string{"appt:42"}, nil)
	if err != nil {
		panic(err)
	}
	defer sub.Close()

	// The booking service announces status changes: ids and versions only.
	for _, v := range []string{`{"status":"confirmed","version":2}`, `{"status":"started","version":3}`} {
		if _, err := b.Publish(ctx, "appt:42", []byte(v)); err != nil {
			panic(err)
		}
	}
	for range 2 {
		ev, err := sub.Next(ctx)
		if err != nil {
			panic(err)
		}
		fmt.Println(ev.Channel, ev.Position.Offset, string(ev.Message.Data))
	}

	// After a disconnect, resume from the last position seen: nothing is
	// missed and nothing is repeated.
	last := sub.Positions()
	if _, err := b.Publish(ctx, "appt:42", []byte(`{"status":"completed","version":4}`)); err != nil {
		panic(err)
	}
	again, err := b.Subscribe(ctx, []string{"appt:42"}, last)
	if err != nil {
		panic(err)
	}
	defer again.Close()
	ev, err := again.Next(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Println(ev.Channel, ev.Position.Offset, string(ev.Message.Data))
	// Output:
	// appt:42 1 {"status":"confirmed","version":2}
	// appt:42 2 {"status":"started","version":3}
	// appt:42 3 {"status":"completed","version":4}
}
