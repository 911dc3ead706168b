package realtime

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParseEventID: the Last-Event-ID parser never panics, fails only with
// ErrInvalidArgument, and what it accepts encodes back to the same id (one
// id per list of positions, so a resume cannot be confused).
func FuzzParseEventID(f *testing.F) {
	for _, s := range []string{":0", "abc:1,def:2", "AAAAAAAA:18446744073709551615", ":0,:0", "a:01", "a:-1", "a:1,", ",", "a", strings.Repeat("a:1,", 300)} {
		f.Add(s, 2)
		f.Add(s, 1)
	}
	f.Fuzz(func(t *testing.T, id string, n int) {
		ps, err := ParseEventID(id, n)
		if err != nil {
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("ParseEventID(%q, %d): %v, want ErrInvalidArgument", id, n, err)
			}
			return
		}
		if len(ps) != n {
			t.Fatalf("ParseEventID(%q, %d) = %d positions", id, n, len(ps))
		}
		if back := EncodeEventID(ps); back != id {
			t.Fatalf("ParseEventID(%q) = %v encodes as %q", id, ps, back)
		}
	})
}

// FuzzParsePayload: a Pub/Sub payload never panics the feed; an accepted
// one round-trips.
func FuzzParsePayload(f *testing.F) {
	for _, s := range []string{"1:AAAAAAAA:1700000000000:{}", "1:e:1:", "0:e:1:x", "x", "1::1:x", "1:e:x:y", "5:e:1:a:b:c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		m, err := parsePayload("ch", p)
		if err != nil {
			return
		}
		if m.Offset == 0 || m.Epoch == "" || !validEpoch(m.Epoch) {
			t.Fatalf("parsePayload(%q) accepted %+v", p, m)
		}
		back := itoa(int64(m.Offset)) + ":" + m.Epoch + ":" + itoa(m.PublishedAt.UnixMilli()) + ":" + string(m.Data)
		m2, err := parsePayload("ch", back)
		if err != nil || m2.Offset != m.Offset || m2.Epoch != m.Epoch || !m2.PublishedAt.Equal(m.PublishedAt) || string(m2.Data) != string(m.Data) {
			t.Fatalf("parsePayload(%q) = %+v does not round-trip (%q: %+v, %v)", p, m, back, m2, err)
		}
	})
}

// FuzzVerifyToken: any string given as a token is refused with
// ErrUnauthorized (or accepted as a real token of this secret), never a
// panic.
func FuzzVerifyToken(f *testing.F) {
	tk, err := NewTokens([]byte(strings.Repeat("k", 32)))
	if err != nil {
		f.Fatal(err)
	}
	good, _, err := tk.Issue("u", []string{"a"}, 3600e9)
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{good, "", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", good + "x", strings.Replace(good, ".", "..", 1)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := tk.Verify(s)
		if err != nil {
			if !errors.Is(err, ErrUnauthorized) {
				t.Fatalf("Verify(%q): %v", s, err)
			}
			return
		}
		if c.Subject == "" || len(c.Channels) == 0 {
			t.Fatalf("Verify(%q) accepted empty claims %+v", s, c)
		}
	})
}

// FuzzParsePresence: a stored presence value never panics; anything
// malformed reads as offline.
func FuzzParsePresence(f *testing.F) {
	for _, s := range []string{"online:1:2", "busy:1700000000000:1700000060000", "away:1:2", "", "::", "online:x:2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		ps := parsePresence(v)
		if checkStatus(ps.Status) != nil {
			t.Fatalf("parsePresence(%q) = %+v", v, ps)
		}
	})
}
