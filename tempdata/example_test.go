package tempdata_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/elevacare/eleva-redis/tempdata"
)

// An email-verification token is consumed once; the second attempt (a
// replayed link, a second tab) gets ErrNotFound.
func Example() {
	ctx := context.Background()
	store := tempdata.NewMemory(tempdata.Config{}) // tempdata.NewRedis(client, cfg) in production

	token, _, err := store.Issue(ctx, "verify-email", []byte(`{"userId":"42"}`), 24*time.Hour)
	if err != nil {
		panic(err)
	}
	fmt.Println("token length:", len(token))

	data, err := store.Consume(ctx, "verify-email", token)
	fmt.Printf("first:  %s %v\n", data, err)

	_, err = store.Consume(ctx, "verify-email", token)
	fmt.Println("second: not found =", errors.Is(err, tempdata.ErrNotFound))
	// Output:
	// token length: 43
	// first:  {"userId":"42"} <nil>
	// second: not found = true
}
