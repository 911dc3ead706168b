package notify_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/elevacare/eleva-redis/notify"
)

// A worker claims a patient's due notifications (high priority first),
// delivers them, acks what was sent and nacks what failed, to be retried
// after a backoff.
func Example() {
	ctx := context.Background()
	q := notify.NewMemory(notify.Config{}) // notify.NewRedis(client, cfg) in production

	for _, n := range []notify.Notification{
		{ID: "welcome", UserID: "patient-42", Type: "welcome", Title: "Welcome to Eleva"},
		{ID: "reminder", UserID: "patient-42", Type: "appointment-reminder", Title: "Your session starts in 1 hour",
			Priority: notify.PriorityHigh, Data: []byte(`{"appointmentId":"appt-7"}`)},
		{ID: "newsletter", UserID: "patient-42", Type: "newsletter", Priority: notify.PriorityLow},
	} {
		if _, err := q.Enqueue(ctx, n); err != nil {
			panic(err)
		}
	}
	// The same id again is not queued twice.
	r, _ := q.Enqueue(ctx, notify.Notification{ID: "welcome", UserID: "patient-42", Type: "welcome"})
	fmt.Println("welcome queued again:", r.Created)

	batches, err := q.Claim(ctx, 10, 5)
	if err != nil {
		panic(err)
	}
	for _, b := range batches {
		for _, n := range b.Items {
			fmt.Printf("deliver %s (%s) to %s\n", n.ID, n.Priority, b.UserID)
		}
		// The newsletter provider was down: retry it later.
		if _, err := q.Nack(ctx, b, notify.Failure{ID: "newsletter", Err: errors.New("provider: 503")}); err != nil {
			panic(err)
		}
		if _, err := q.Ack(ctx, b, "reminder", "welcome"); err != nil {
			panic(err)
		}
	}
	st, _ := q.Stats(ctx)
	fmt.Printf("delivered %d, retrying or pending %d\n", st.Delivered, st.Retrying+st.Pending)
	// Output:
	// welcome queued again: false
	// deliver reminder (high) to patient-42
	// deliver welcome (normal) to patient-42
	// deliver newsletter (low) to patient-42
	// delivered 2, retrying or pending 1
}
