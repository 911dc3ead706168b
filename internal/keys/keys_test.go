package keys

import (
	"strings"
	"testing"
)

func TestNewRejectsUnsafePrefix(t *testing.T) {
	for _, tc := range []struct {
		prefix string
		ok     bool
	}{
		{"", true},
		{"eleva:", true},
		{"app-1/prod.v2@x:", true},
		{"ele{va}:", false},
		{"a*", false},
		{"a?", false},
		{"a[b]", false},
		{"a b", false},
		{"a\n", false},
	} {
		_, err := New(tc.prefix, nil)
		if (err == nil) != tc.ok {
			t.Errorf("New(%q) err = %v, want ok=%v", tc.prefix, err, tc.ok)
		}
	}
	if b := MustNew("", nil); b.Prefix() != DefaultPrefix {
		t.Errorf("default prefix = %q", b.Prefix())
	}
}

func TestKeyLayout(t *testing.T) {
	b := MustNew("eleva:", nil)
	for _, tc := range []struct {
		capability, tag string
		parts           []string
		want            string
	}{
		{"rl", "user:42", []string{"gc"}, "eleva:rl:{user%3A42}:gc"},
		{"rl", "a{b}c", nil, "eleva:rl:{a%7Bb%7Dc}"},
		{"lock", "payment:appt_123", []string{"x*y", ""}, "eleva:lock:{payment%3Aappt_123}:x%2Ay:"},
		{"temp", "100%", nil, "eleva:temp:{100%25}"},
		{"temp", "", nil, "eleva:temp:{}"},
	} {
		if got := b.Key(tc.capability, tc.tag, tc.parts...); got != tc.want {
			t.Errorf("Key(%q, %q, %q) = %q, want %q", tc.capability, tc.tag, tc.parts, got, tc.want)
		}
	}
}

func TestHashedIDHidesInput(t *testing.T) {
	b := MustNew("eleva:", []byte("secret"))
	k := b.Key("rl", "patient@example.com")
	if strings.Contains(k, "patient") || strings.Contains(k, "example") {
		t.Fatalf("hashed key %q leaks the identifier", k)
	}
	if k != b.Key("rl", "patient@example.com") {
		t.Fatal("hashing is not deterministic")
	}
	if k == MustNew("eleva:", []byte("other")).Key("rl", "patient@example.com") {
		t.Fatal("different secrets give the same key")
	}
	if !b.Hashed() || MustNew("", nil).Hashed() {
		t.Fatal("Hashed() wrong")
	}
}

func TestBadCapabilityPanics(t *testing.T) {
	// The capability is a constant of the calling package, never user input:
	// a bad one is a programming error.
	defer func() {
		if recover() == nil {
			t.Fatal("no panic for capability with a brace")
		}
	}()
	MustNew("", nil).Key("r{l}", "x")
}

func TestEscapeRoundTrip(t *testing.T) {
	for _, s := range []string{"", "plain", "user@example.com", "a:b{c}*?[]%\x00\xff é"} {
		e := Escape(s)
		got, err := Unescape(e)
		if err != nil || got != s {
			t.Errorf("Unescape(Escape(%q)) = %q, %v", s, got, err)
		}
	}
	if _, err := Unescape("%4"); err == nil {
		t.Error("truncated escape accepted")
	}
	if _, err := Unescape("%zz"); err == nil {
		t.Error("bad escape accepted")
	}
}

func TestEscapeDoesNotAllocateForSafeInput(t *testing.T) {
	s := "user-42@example.com"
	if n := testing.AllocsPerRun(100, func() { _ = Escape(s) }); n != 0 {
		t.Fatalf("Escape allocated %v times for safe input", n)
	}
}

// forbidden are the bytes that must never come from user input: they would
// inject a separator, a glob pattern or a hash tag.
const forbidden = "{}*?[]: \t\r\n\x00"

// checkKey asserts the structural guarantees of a key built from user input:
// exactly one '{' and one '}', in that order, right after the capability, and
// no forbidden byte elsewhere.
func checkKey(t *testing.T, prefix, capability, key string) {
	t.Helper()
	head := prefix + capability + ":{"
	if !strings.HasPrefix(key, head) {
		t.Fatalf("key %q does not start with %q", key, head)
	}
	rest := key[len(head):]
	end := strings.IndexByte(rest, '}')
	if end < 0 {
		t.Fatalf("key %q has no closing tag brace", key)
	}
	tag, tail := rest[:end], rest[end+1:]
	if strings.ContainsAny(tag, forbidden) {
		t.Fatalf("tag %q of key %q holds a forbidden byte", tag, key)
	}
	for i, part := range strings.Split(tail, ":") {
		if i == 0 {
			if part != "" {
				t.Fatalf("key %q: bytes after the tag before a separator", key)
			}
			continue
		}
		if strings.ContainsAny(part, forbidden) {
			t.Fatalf("part %q of key %q holds a forbidden byte", part, key)
		}
	}
}

func FuzzKey(f *testing.F) {
	f.Add("user:42", "gc", "user:4", "2:gc", false)
	f.Add("{a}", "*", "{a", "}*", true)
	f.Add("a%3A", "", "a:", "", false)
	f.Add("", "", "", ":", false)
	f.Fuzz(func(t *testing.T, tag1, part1, tag2, part2 string, hashed bool) {
		var secret []byte
		if hashed {
			secret = []byte("fuzz-secret")
		}
		b := MustNew("eleva:", secret)
		k1 := b.Key("rl", tag1, part1)
		k2 := b.Key("rl", tag2, part2)
		checkKey(t, "eleva:", "rl", k1)
		checkKey(t, "eleva:", "rl", k2)
		if (tag1 != tag2 || part1 != part2) && k1 == k2 {
			t.Fatalf("distinct inputs (%q,%q) and (%q,%q) map to the same key %q", tag1, part1, tag2, part2, k1)
		}
		if tag1 == tag2 && part1 == part2 && k1 != k2 {
			t.Fatalf("same input gives different keys %q, %q", k1, k2)
		}
		// Different part counts never collide either.
		if k0 := b.Key("rl", tag1); k0 == k1 {
			t.Fatalf("key without parts equals key with part %q: %q", part1, k0)
		}
		// The escaping alone is injective and reversible.
		if u, err := Unescape(Escape(part1)); err != nil || u != part1 {
			t.Fatalf("Escape(%q) does not round-trip: %q, %v", part1, u, err)
		}
	})
}
