// Package testutil holds the small assertion and key helpers that the
// capabilities' conformance suites share. It is imported by tests only.
package testutil

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/elevacare/eleva-redis/internal/seal"
)

// Must returns a function that fails t (naming what) when err is not nil,
// and otherwise returns v: Must[int](t, "Count")(s.Count(ctx)).
func Must[T any](t testing.TB, what string) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return v
	}
}

// WantErr fails t unless errors.Is(err, want).
func WantErr(t testing.TB, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got %v, want %v", what, err, want)
	}
}

// KeyEntry is a fixed ELEVA_ENCRYPTION_KEY entry "kid:base64" whose 32 key
// bytes are all fill.
func KeyEntry(kid string, fill byte) string {
	return kid + ":" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{fill}, seal.KeySize))
}

// Keyring parses the entries spec (as ELEVA_ENCRYPTION_KEY) or fails t.
func Keyring(t testing.TB, spec ...string) *seal.Keyring {
	t.Helper()
	k, err := seal.ParseKeys(strings.Join(spec, ","))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Call is one named call of a fail-closed check.
type Call struct {
	Name string
	Call func() error
}

// FailClosed runs every call rounds times, in order, and fails t unless each
// returns an error wrapping want within bound. It returns the slowest call's
// duration, for the test's log.
func FailClosed(t testing.TB, rounds int, calls []Call, want error, bound time.Duration) time.Duration {
	t.Helper()
	var slowest time.Duration
	for round := range rounds {
		for _, c := range calls {
			start := time.Now()
			err := c.Call()
			el := time.Since(start)
			slowest = max(slowest, el)
			if !errors.Is(err, want) {
				t.Fatalf("round %d: %s with Redis down: %v, want an error wrapping %v", round, c.Name, err, want)
			}
			if el > bound {
				t.Fatalf("%s with Redis down took %v, want within %v", c.Name, el, bound)
			}
		}
	}
	return slowest
}

// C names a call for FailClosed.
func C(name string, call func() error) Call { return Call{Name: name, Call: call} }
