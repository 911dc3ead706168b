package tempdata

import (
	"encoding/base64"
	"errors"
	"testing"
	"time"
)

// FuzzParseToken checks that token parsing never panics and accepts only the
// canonical spelling of 32 bytes.
func FuzzParseToken(f *testing.F) {
	f.Add("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	f.Add("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB") // non-canonical last char
	f.Add("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
	f.Add("")
	f.Add("é")
	f.Fuzz(func(t *testing.T, tok string) {
		_, ok := parseToken(tok)
		if !ok {
			return
		}
		raw, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil || len(raw) != tokenBytes || base64.RawURLEncoding.EncodeToString(raw) != tok {
			t.Fatalf("accepted %q, which is not the canonical spelling of %d bytes", tok, tokenBytes)
		}
	})
}

// FuzzConsume checks that Consume never panics on any purpose and token and
// only ever returns the issued token's data for the issued token.
func FuzzConsume(f *testing.F) {
	s := NewMemory(quiet(Config{}))
	tok, _, err := s.Issue(ctxb, "p", []byte("data"), time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	f.Add("p", tok[:42]+"A")
	f.Add("p", "not a token")
	f.Add("", "")
	f.Add("p\x00", "{p}")
	f.Fuzz(func(t *testing.T, purpose, token string) {
		d, err := s.Consume(ctxb, purpose, token)
		switch {
		case err == nil:
			if purpose != "p" || token != tok || string(d) != "data" {
				t.Fatalf("Consume(%q, %q) = %q: a token that was never issued", purpose, token, d)
			}
		case errors.Is(err, ErrNotFound), errors.Is(err, ErrInvalidArgument):
		default:
			t.Fatalf("Consume(%q, %q): %v", purpose, token, err)
		}
	})
}
