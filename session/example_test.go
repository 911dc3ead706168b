package session_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/elevacare/eleva-redis/session"
)

// A login creates a session; each request checks a role and records
// activity; "log out everywhere" revokes every session of the user.
func Example() {
	ctx := context.Background()
	store := session.NewMemory(session.Config{}) // session.NewRedis(client, cfg) in production

	s, err := store.Create(ctx, "3f1c9a7e-session-token", session.NewSession{
		UserID:      "user-42",
		Roles:       []string{"patient"},
		DeviceInfo:  []byte(`{"ua":"Safari"}`),
		IdleTimeout: 30 * time.Minute,
	})
	if err != nil {
		panic(err)
	}
	fmt.Println("expires after idle:", s.ExpiresAt.Sub(s.LastActivityAt))

	// On every request.
	ok, _ := store.HasRole(ctx, "3f1c9a7e-session-token", "patient")
	fmt.Println("patient:", ok)
	_ = store.Touch(ctx, "3f1c9a7e-session-token") // writes at most once a minute

	// Preferences change without touching the other fields.
	s, _ = store.Update(ctx, "3f1c9a7e-session-token", session.Update{Preferences: []byte(`{"lang":"pt"}`)})
	fmt.Printf("device %s, preferences %s\n", s.DeviceInfo, s.Preferences)

	n, _ := store.RevokeUser(ctx, "user-42")
	_, err = store.Get(ctx, "3f1c9a7e-session-token")
	fmt.Println("revoked:", n, "then not found:", errors.Is(err, session.ErrNotFound))
	// Output:
	// expires after idle: 30m0s
	// patient: true
	// device {"ua":"Safari"}, preferences {"lang":"pt"}
	// revoked: 1 then not found: true
}
