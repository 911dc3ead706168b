package testutil

import (
	"errors"
	"testing"
)

func TestKeyring(t *testing.T) {
	k := Keyring(t, KeyEntry("k2", 2), KeyEntry("k1", 1))
	if ids := k.KeyIDs(); len(ids) != 2 || ids[0] != "k2" || ids[1] != "k1" {
		t.Fatalf("key ids %v, want [k2 k1]", ids)
	}
	sealed := k.Seal([]byte("x"), []byte("ad"))
	if got, err := Keyring(t, KeyEntry("k1", 9), KeyEntry("k2", 2)).Open(sealed, []byte("ad")); err != nil || string(got) != "x" {
		t.Fatalf("open under the same k2 bytes: %q, %v", got, err)
	}
}

func TestMustAndWantErr(t *testing.T) {
	errX := errors.New("x")
	if v := Must[int](t, "ok")(7, nil); v != 7 {
		t.Fatalf("Must = %d", v)
	}
	WantErr(t, "wrapped", errors.Join(errX, errors.New("y")), errX)
}
