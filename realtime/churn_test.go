package realtime

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// Channels gain their first local subscriber and lose their last all the
// time (browsers come and go): on Redis that is a SUBSCRIBE or UNSUBSCRIBE
// each time, on one shared connection on a single Redis. Whatever the
// interleaving of joins, leaves and the linger that delays an UNSUBSCRIBE,
// a Subscribe that returned receives every message published after it.
func TestSubscriptionChurn(t *testing.T) {
	forEach(t, func(t *testing.T, e env) {
		bs := e.brokers(Config{}, 2)
		for _, b := range bs {
			// Short enough that leaves really unsubscribe during the test.
			b.(*broker).hub.linger = 2 * time.Millisecond
		}
		chans := []string{"churn:a", "churn:b", "churn:c"}
		const workers, rounds = 8, 25
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sub, pub := bs[w%2], bs[(w+1)%2]
				for r := range rounds {
					ch := chans[(w+r)%len(chans)]
					if err := churnRound(sub, pub, ch, fmt.Sprintf("w%d-r%d", w, r)); err != nil {
						errs <- fmt.Errorf("worker %d round %d on %s: %w", w, r, ch, err)
						return
					}
					// Vary the gap so that some joins find the channel
					// subscribed, some lingering and some unsubscribed (or
					// being unsubscribed): not a wait for anything.
					time.Sleep(time.Duration(r%4) * time.Millisecond)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

// churnRound subscribes on sub, publishes marker on pub and waits for it.
func churnRound(sub, pub Broker, ch, marker string) error {
	ctx, cancel := context.WithTimeout(ctxb, 20*time.Second)
	defer cancel()
	s, err := sub.Subscribe(ctx, []string{ch}, nil)
	if err != nil {
		return err
	}
	defer s.Close()
	data := fmt.Sprintf("%q", marker)
	if _, err := pub.Publish(ctx, ch, []byte(data)); err != nil {
		return err
	}
	for {
		ev, err := s.Next(ctx)
		if err != nil {
			return fmt.Errorf("waiting for the message published after Subscribe: %w", err)
		}
		if ev.Kind == EventReset {
			return fmt.Errorf("unexpected reset %+v", ev)
		}
		if string(ev.Message.Data) == data {
			return nil
		}
	}
}
