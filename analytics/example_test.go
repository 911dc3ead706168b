package analytics_test

import (
	"context"
	"fmt"
	"time"

	"github.com/elevacare/eleva-redis/analytics"
)

func Example() {
	ctx := context.Background()
	a := analytics.NewMemory(analytics.Config{})
	monday := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -2)
	tuesday := monday.AddDate(0, 0, 1)

	_, _ = a.Incr(ctx, "appointments.booked", 1, monday, analytics.ForUser("expert-7"))
	_, _ = a.Incr(ctx, "appointments.booked", 2, tuesday)
	points, _ := a.Series(ctx, "appointments.booked", monday, tuesday.AddDate(0, 0, 1))
	for i, p := range points {
		fmt.Println("day", i, p.Value)
	}
	mine, _ := a.Total(ctx, "appointments.booked", monday, tuesday, analytics.ForUser("expert-7"))
	fmt.Println("expert-7:", mine)

	_ = a.AddUnique(ctx, "active.patients", "patient-1", monday)
	_ = a.AddUnique(ctx, "active.patients", "patient-2", tuesday)
	_ = a.AddUnique(ctx, "active.patients", "patient-1", tuesday)
	n, _ := a.CountUnique(ctx, "active.patients", monday, tuesday)
	fmt.Println("unique:", n)

	// Events wait in the buffer until a Forwarder sends them to PostHog
	// (NewForwarder(a.Buffer(), ForwarderConfig{APIKey: ...}).Start()).
	_ = a.Capture(ctx, analytics.Event{Event: "appointment_booked", DistinctID: "patient-1"})
	st, _ := a.Stats(ctx)
	fmt.Println("buffered:", st.Buffered)
	// Output:
	// day 0 1
	// day 1 2
	// day 2 0
	// expert-7: 1
	// unique: 2
	// buffered: 1
}
