package seal

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// testKey returns a fresh random key and its entry "kid:base64" in enc.
func testKey(t testing.TB, kid string, enc *base64.Encoding) ([]byte, string) {
	t.Helper()
	key := make([]byte, KeySize)
	_, _ = rand.Read(key)
	return key, kid + ":" + enc.EncodeToString(key)
}

func mustParse(t testing.TB, s string) *Keyring {
	t.Helper()
	k, err := ParseKeys(s)
	if err != nil {
		t.Fatalf("ParseKeys: %v", err)
	}
	return k
}

func TestParseKeysAccepts(t *testing.T) {
	_, k1 := testKey(t, "k1", base64.StdEncoding)
	_, k2 := testKey(t, "k2", base64.RawURLEncoding)
	_, k3 := testKey(t, "2025-01_a.b", base64.URLEncoding)
	_, k4 := testKey(t, "x", base64.RawStdEncoding)
	for _, c := range []struct {
		spec    string
		current string
		ids     []string
	}{
		{k1, "k1", []string{"k1"}},
		{k2 + "," + k1, "k2", []string{"k2", "k1"}},
		{" " + k3 + " , " + k1 + " ,  " + k4, "2025-01_a.b", []string{"2025-01_a.b", "k1", "x"}},
	} {
		k := mustParse(t, c.spec)
		if k.CurrentKeyID() != c.current || strings.Join(k.KeyIDs(), ",") != strings.Join(c.ids, ",") || !k.Enabled() {
			t.Errorf("ParseKeys: current %q ids %v, want %q %v", k.CurrentKeyID(), k.KeyIDs(), c.current, c.ids)
		}
	}
}

func TestParseKeysRejects(t *testing.T) {
	key, k1 := testKey(t, "k1", base64.StdEncoding)
	short := base64.StdEncoding.EncodeToString(key[:16])
	long := base64.StdEncoding.EncodeToString(append(key, 0))
	secret := base64.StdEncoding.EncodeToString(key)
	for _, spec := range []string{
		"",
		"   ",
		"k1",                                   // no colon
		":" + secret,                           // empty kid
		"k 1:" + secret,                        // space in kid
		"k{1}:" + secret,                       // brace in kid
		strings.Repeat("k", 33) + ":" + secret, // kid too long
		"k1:" + short,                          // 16-byte key
		"k1:" + long,                           // 33-byte key
		"k1:not base64!!",                      // not base64
		"k1:",                                  // no key
		k1 + "," + k1,                          // duplicate id
		k1 + ",",                               // trailing empty entry
		k1 + ",,k2:" + secret,                  // empty entry
	} {
		k, err := ParseKeys(spec)
		if !errors.Is(err, ErrInvalidKeyring) || k != nil {
			t.Errorf("ParseKeys(%q) = %v, %v; want nil, ErrInvalidKeyring", spec, k, err)
			continue
		}
		if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), short) || strings.Contains(err.Error(), long) {
			t.Errorf("ParseKeys(%q): error %q reveals key material", spec, err)
		}
	}
}

func TestKeyringNeverPrintsKeys(t *testing.T) {
	key, spec := testKey(t, "k1", base64.StdEncoding)
	k := mustParse(t, spec)
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		out := fmt.Sprintf(verb, k)
		if strings.Contains(out, base64.StdEncoding.EncodeToString(key)) || bytes.Contains([]byte(out), key) || !strings.Contains(out, "k1") {
			t.Errorf("Sprintf(%s) = %q: want key ids only", verb, out)
		}
	}
}

func TestSealOpenRoundTrip(t *testing.T) {
	k := mustParse(t, mustEntry(t, "k1"))
	ad := []byte("tmp\x00setup\x00user-42")
	for _, pt := range [][]byte{nil, {}, []byte("x"), []byte(`{"step":3,"email":"jane@example.com"}`), bytes.Repeat([]byte{0, 0xff}, 1<<16)} {
		s1 := k.Seal(pt, ad)
		s2 := k.Seal(pt, ad)
		if len(s1) != len(pt)+Overhead(2) {
			t.Errorf("sealed length %d, want %d", len(s1), len(pt)+Overhead(2))
		}
		if bytes.Equal(s1, s2) {
			t.Errorf("two seals of the same plaintext are identical: nonces repeat")
		}
		if len(pt) >= 8 && bytes.Contains(s1, pt[:8]) {
			t.Errorf("sealed value contains the plaintext")
		}
		for _, s := range [][]byte{s1, s2} {
			got, err := k.Open(s, ad)
			if err != nil || !bytes.Equal(got, pt) || got == nil {
				t.Fatalf("Open = %q, %v; want %q (non-nil)", got, err, pt)
			}
		}
	}
}

func mustEntry(t testing.TB, kid string) string {
	_, e := testKey(t, kid, base64.StdEncoding)
	return e
}

func TestOpenRejectsTampering(t *testing.T) {
	k := mustParse(t, mustEntry(t, "k1"))
	ad := []byte("ad")
	sealed := k.Seal([]byte("patient 123 prefers mornings"), ad)
	// Flip one bit in every byte position in turn: the header, the nonce,
	// the ciphertext and the tag are all authenticated.
	for i := range sealed {
		bad := bytes.Clone(sealed)
		bad[i] ^= 0x01
		if got, err := k.Open(bad, ad); err == nil {
			t.Fatalf("Open with byte %d flipped = %q, want an error", i, got)
		} else if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("Open with byte %d flipped: %v, want ErrCorrupt or ErrUnknownKey", i, err)
		}
	}
	for _, bad := range [][]byte{nil, {}, {Version1}, {Version1, 0}, sealed[:len(sealed)-1], sealed[:20], append(bytes.Clone(sealed), 0), []byte("plain text, never sealed")} {
		if _, err := k.Open(bad, ad); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Open(%q): %v, want ErrCorrupt", bad, err)
		}
	}
}

func TestOpenRejectsOtherAdditionalData(t *testing.T) {
	k := mustParse(t, mustEntry(t, "k1"))
	sealed := k.Seal([]byte("v"), []byte("tmp\x00ns\x00key-a"))
	for _, ad := range [][]byte{nil, []byte("tmp\x00ns\x00key-b"), []byte("tmp\x00ns\x00key-a\x00"), []byte("tok\x00ns\x00key-a")} {
		if _, err := k.Open(sealed, ad); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Open with additional data %q: %v, want ErrCorrupt", ad, err)
		}
	}
}

func TestRotation(t *testing.T) {
	e1, e2 := mustEntry(t, "k1"), mustEntry(t, "k2")
	old := mustParse(t, e1)
	ad := []byte("ad")
	sealedOld := old.Seal([]byte("sealed under k1"), ad)

	rotated := mustParse(t, e2+","+e1)
	if got, err := rotated.Open(sealedOld, ad); err != nil || string(got) != "sealed under k1" {
		t.Fatalf("after rotation, Open of a k1 value = %q, %v", got, err)
	}
	sealedNew := rotated.Seal([]byte("sealed under k2"), ad)
	if kid := string(sealedNew[2 : 2+sealedNew[1]]); kid != "k2" {
		t.Fatalf("after rotation, Seal used key id %q, want k2", kid)
	}
	// The old keyring does not know k2; the retired keyring does not know k1.
	if _, err := old.Open(sealedNew, ad); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("old keyring opening a k2 value: %v, want ErrUnknownKey", err)
	}
	retired := mustParse(t, e2)
	if _, err := retired.Open(sealedOld, ad); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("keyring without k1 opening a k1 value: %v, want ErrUnknownKey", err)
	}
	// Same id, different key: authentication fails.
	impostor := mustParse(t, mustEntry(t, "k1"))
	if _, err := impostor.Open(sealedOld, ad); !errors.Is(err, ErrCorrupt) {
		t.Errorf("another key under id k1: %v, want ErrCorrupt", err)
	}
}

func TestNilKeyringPassesThrough(t *testing.T) {
	var k *Keyring
	pt := []byte("plain")
	if got := k.Seal(pt, []byte("ad")); !bytes.Equal(got, pt) {
		t.Errorf("nil Seal = %q, want the plaintext", got)
	}
	// Open returns its input, whatever it is: a nil keyring cannot tell a
	// sealed value from a plain one, and does not try.
	for _, in := range [][]byte{pt, {Version1, 2, 'k', '1'}} {
		got, err := k.Open(in, []byte("other ad"))
		if err != nil || !bytes.Equal(got, in) {
			t.Errorf("nil Open(%q) = %q, %v; want the input unchanged", in, got, err)
		}
	}
	if k.Enabled() || k.CurrentKeyID() != "" || k.KeyIDs() != nil || k.String() != "seal.Keyring(none)" {
		t.Errorf("nil keyring: Enabled %v, current %q, ids %v, %s", k.Enabled(), k.CurrentKeyID(), k.KeyIDs(), k)
	}
}

func TestNew(t *testing.T) {
	a, b := make([]byte, KeySize), make([]byte, KeySize)
	b[0] = 1
	k, err := New("b", map[string][]byte{"a": a, "b": b, "c": a})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(k.KeyIDs(), ","); got != "b,a,c" {
		t.Errorf("KeyIDs = %s, want b,a,c", got)
	}
	// Interoperates with ParseKeys over the same bytes.
	p := mustParse(t, "a:"+base64.StdEncoding.EncodeToString(a))
	if got, err := p.Open(mustNew(t, "a", a).Seal([]byte("x"), nil), nil); err != nil || string(got) != "x" {
		t.Errorf("ParseKeys keyring opening a New keyring's value: %q, %v", got, err)
	}
	for _, c := range []struct {
		current string
		keys    map[string][]byte
	}{
		{"missing", map[string][]byte{"a": a}},
		{"a", map[string][]byte{"a": a[:31]}},
		{"a", map[string][]byte{"a": a, "b/c": b}},
	} {
		if _, err := New(c.current, c.keys); !errors.Is(err, ErrInvalidKeyring) {
			t.Errorf("New(%q, ...) = %v, want ErrInvalidKeyring", c.current, err)
		}
	}
}

func mustNew(t *testing.T, kid string, key []byte) *Keyring {
	t.Helper()
	k, err := New(kid, map[string][]byte{kid: key})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// FuzzOpen checks that Open never panics and never accepts anything but a
// value sealed by the keyring with the same additional data.
func FuzzOpen(f *testing.F) {
	k := mustParse(f, "k1:"+base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, KeySize))+
		",k0:"+base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, KeySize)))
	good := k.Seal([]byte("hello"), []byte("ad"))
	f.Add(good, []byte("ad"))
	f.Add(good[:len(good)-1], []byte("ad"))
	f.Add([]byte{}, []byte{})
	f.Add([]byte{Version1}, []byte("ad"))
	f.Add([]byte{Version1, 2, 'k', '1'}, []byte("ad"))
	f.Add([]byte{Version1, 255, 'k'}, []byte("ad"))
	f.Add([]byte{Version1, 2, 'k', '9', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, []byte{})
	f.Fuzz(func(t *testing.T, sealed, ad []byte) {
		pt, err := k.Open(sealed, ad)
		if err != nil {
			if pt != nil || !(errors.Is(err, ErrCorrupt) || errors.Is(err, ErrUnknownKey)) {
				t.Fatalf("Open = %q, %v: want nil and ErrCorrupt or ErrUnknownKey", pt, err)
			}
			return
		}
		// Only a genuine value opens: the one sealed for the seed corpus (by
		// whichever process built it: the keys are fixed, the nonce is not).
		if len(sealed) != len(good) || !bytes.Equal(sealed[:4], good[:4]) || string(ad) != "ad" || string(pt) != "hello" {
			t.Fatalf("Open accepted a value it did not seal: %x (ad %q) -> %q", sealed, ad, pt)
		}
	})
}
