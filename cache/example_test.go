package cache_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/elevacare/eleva-redis/cache"
)

type Profile struct {
	Name   string
	Events []string
}

// An expert profile is loaded once, served from the local level after that,
// and reloaded after its tag is invalidated (the expert edited an event).
func Example() {
	ctx := context.Background()
	store := cache.NewMemoryStore(cache.StoreConfig{}) // cache.NewRedisStore(client, cfg) in production
	profiles := cache.New[Profile](store, cache.Config[Profile]{Namespace: "profile", TTL: 10 * time.Minute})

	events := []string{"Intro call"}
	load := func(ctx context.Context) (Profile, error) { // SELECT ... in real code
		return Profile{Name: "Dr. Ana", Events: events}, nil
	}
	for range 3 {
		p, meta, _ := profiles.GetOrLoad(ctx, "expert:7", load, cache.Tags("expert:7"))
		fmt.Println(meta.Source, p.Events)
	}

	events = []string{"Intro call", "Follow-up"} // UPDATE ... then:
	_ = store.InvalidateTags(ctx, "expert:7")
	p, meta, _ := profiles.GetOrLoad(ctx, "expert:7", load, cache.Tags("expert:7"))
	fmt.Println(meta.Source, p.Events)

	// A missing row is cached briefly as not-found; errors are never cached.
	_, _, err := profiles.GetOrLoad(ctx, "expert:404", func(context.Context) (Profile, error) {
		return Profile{}, fmt.Errorf("expert 404: %w", cache.ErrNotFound)
	})
	fmt.Println("not found:", errors.Is(err, cache.ErrNotFound))
	// Output:
	// loader [Intro call]
	// redis [Intro call]
	// local [Intro call]
	// loader [Intro call Follow-up]
	// not found: true
}
