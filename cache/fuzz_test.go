package cache

import (
	"slices"
	"testing"
)

// FuzzParseEntry: any bytes in a value key (a foreign writer, a truncated
// value) parse to an entry or an error, never a panic; a well-formed entry
// round-trips.
func FuzzParseEntry(f *testing.F) {
	f.Add([]byte("v|1700000000000|1700000060000|1700000120000|12\n{\"a\":1}"))
	f.Add([]byte("neleva:ctag:{x} 17|1|2|3|0\n"))
	f.Add([]byte("v||||\n"))
	f.Add([]byte("x"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		e, err := parseEntry(raw)
		if err != nil {
			return
		}
		if raw[0] != 'v' && raw[0] != 'n' {
			t.Fatalf("accepted kind %q", raw[0])
		}
		_, _, _ = parseTagspec(e.tagspec)
	})
}

// FuzzTagspec: tagspec and parseTagspec are inverse for the keys the key
// builder makes.
func FuzzTagspec(f *testing.F) {
	f.Add("expert:7", "experts", uint64(1), uint64(1700000000000000))
	f.Fuzz(func(t *testing.T, a, b string, va, vb uint64) {
		s := NewMemoryStore(StoreConfig{})
		if a == "" || b == "" || len(a) > MaxKeyLen || len(b) > MaxKeyLen {
			return
		}
		ks, err := s.tagKeys([]string{a, b})
		if err != nil {
			t.Fatal(err)
		}
		vs := []uint64{va, vb}[:len(ks)]
		gotK, gotV, err := parseTagspec(tagspec(ks, vs))
		if err != nil || !slices.Equal(gotK, ks) || !slices.Equal(gotV, vs) {
			t.Fatalf("round trip of %q %v: %q %v %v", ks, vs, gotK, gotV, err)
		}
	})
}

// FuzzLease: any lease string splits or is rejected; a joined one
// round-trips.
func FuzzLease(f *testing.F) {
	f.Add("tok", uint64(3))
	f.Fuzz(func(t *testing.T, s string, v uint64) {
		_, _, _, _ = splitLease(s)
		tok := newToken()
		got, vs, with, err := splitLease(joinLease(tok, []uint64{v, v + 1}))
		if err != nil || got != tok || !with || !slices.Equal(vs, []uint64{v, v + 1}) {
			t.Fatalf("round trip: %q %v %v %v", got, vs, with, err)
		}
	})
}
