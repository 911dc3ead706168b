// Package seal encrypts values at rest with AES-256-GCM under a keyring whose
// keys carry ids, so keys can be rotated without losing values sealed under
// an older key.
//
// A Keyring holds one current key, used by Seal, and any number of older keys
// that Open still accepts. ParseKeys reads it from ELEVA_ENCRYPTION_KEY:
//
//	ELEVA_ENCRYPTION_KEY="k2:<base64 of 32 bytes>,k1:<base64 of 32 bytes>"
//
// The first entry is the current key. To rotate: put a new key first and keep
// the old ones after it until every value sealed under them has expired (for
// tempdata, the longest TTL in use), then drop them.
//
// Sealed format (Version 1), all lengths in bytes:
//
//	offset 0            1 byte   marker, always Version1 (0xE1)
//	offset 1            1 byte   n = length of the key id (1..MaxKeyIDLen)
//	offset 2            n bytes  key id (ASCII, see ParseKeys)
//	offset 2+n          12 bytes GCM nonce, random per Seal
//	offset 14+n         rest     ciphertext followed by the 16-byte GCM tag
//
// The GCM additional data is the header (marker, n, key id) followed by the
// caller's additional data, so neither the key id nor the context a value was
// sealed for can be changed without Open failing. Callers pass the logical
// identity of the value (for example its namespace and key) as additional
// data: a ciphertext copied to another key then fails to open.
//
// A nil *Keyring is valid and means "no encryption": Seal returns the
// plaintext unchanged and Open returns its input unchanged. That makes
// encryption a configuration choice that code paths need not test for.
//
// Nonces are random (96 bits), so one key must not seal more than about 2^32
// values (the NIST SP 800-38D bound for random nonces): at 1 000 seals per
// second that is 136 years, but rotate keys long before then anyway.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Version1 is the marker byte that starts every sealed value.
const Version1 byte = 0xE1

// KeySize is the size of an AES-256 key.
const KeySize = 32

// MaxKeyIDLen is the longest accepted key id.
const MaxKeyIDLen = 32

const (
	nonceSize = 12
	tagSize   = 16
)

// Overhead returns how many bytes Seal adds to a plaintext for a key id of
// length kidLen.
func Overhead(kidLen int) int { return 2 + kidLen + nonceSize + tagSize }

var (
	// ErrInvalidKeyring reports a keyring specification ParseKeys cannot
	// accept. The message names the entry by position and key id, never the
	// key material.
	ErrInvalidKeyring = errors.New("seal: invalid keyring")
	// ErrUnknownKey reports a sealed value whose key id is not in the
	// keyring (a key removed before the values sealed under it expired).
	ErrUnknownKey = errors.New("seal: unknown key id")
	// ErrCorrupt reports a value that is not a well-formed sealed value, or
	// that fails authentication: tampered with, truncated, sealed under other
	// additional data, or sealed with a different key of the same id.
	ErrCorrupt = errors.New("seal: corrupt or tampered value")
)

// Keyring holds the keys. It is safe for concurrent use and immutable once
// built. A nil *Keyring means no encryption (see the package doc).
type Keyring struct {
	current string
	ids     []string // in the order given; ids[0] == current
	aeads   map[string]cipher.AEAD
}

// ParseKeys parses a comma-separated list of "kid:key" entries, where kid is
// 1 to MaxKeyIDLen characters from [A-Za-z0-9._-] and key is the base64
// (standard or URL alphabet, padded or not) of exactly KeySize random bytes,
// for example from `openssl rand -base64 32`. Spaces around entries are
// ignored. The first entry is the current key; the others only open values
// sealed earlier. Key ids must be distinct.
//
// An empty or blank s is an error: a caller with no key configured should not
// call ParseKeys, and use a nil *Keyring (no encryption) instead.
func ParseKeys(s string) (*Keyring, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("%w: no keys given (want kid:base64key[,kid:base64key...])", ErrInvalidKeyring)
	}
	k := &Keyring{aeads: make(map[string]cipher.AEAD)}
	for i, entry := range strings.Split(s, ",") {
		entry = strings.TrimSpace(entry)
		kid, enc, ok := strings.Cut(entry, ":")
		if !ok {
			return nil, fmt.Errorf("%w: entry %d: want kid:base64key", ErrInvalidKeyring, i+1)
		}
		kid, enc = strings.TrimSpace(kid), strings.TrimSpace(enc)
		if err := validKeyID(kid); err != nil {
			return nil, fmt.Errorf("%w: entry %d: %v", ErrInvalidKeyring, i+1, err)
		}
		if _, dup := k.aeads[kid]; dup {
			return nil, fmt.Errorf("%w: entry %d: key id %q appears twice", ErrInvalidKeyring, i+1, kid)
		}
		key, err := decodeKey(enc)
		if err != nil {
			return nil, fmt.Errorf("%w: entry %d (key id %q): %v", ErrInvalidKeyring, i+1, kid, err)
		}
		aead, err := newAEAD(key)
		if err != nil {
			return nil, fmt.Errorf("%w: entry %d (key id %q): %v", ErrInvalidKeyring, i+1, kid, err)
		}
		k.aeads[kid] = aead
		k.ids = append(k.ids, kid)
	}
	k.current = k.ids[0]
	return k, nil
}

// New builds a keyring from raw keys: current seals, and keys (which must
// contain current) open. It is ParseKeys for callers that hold key bytes
// rather than a configuration string.
func New(current string, keys map[string][]byte) (*Keyring, error) {
	if _, ok := keys[current]; !ok {
		return nil, fmt.Errorf("%w: current key id %q has no key", ErrInvalidKeyring, current)
	}
	k := &Keyring{current: current, ids: []string{current}, aeads: make(map[string]cipher.AEAD, len(keys))}
	for kid, key := range keys {
		if err := validKeyID(kid); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidKeyring, err)
		}
		if len(key) != KeySize {
			return nil, fmt.Errorf("%w: key id %q: key is %d bytes, want %d", ErrInvalidKeyring, kid, len(key), KeySize)
		}
		aead, err := newAEAD(key)
		if err != nil {
			return nil, fmt.Errorf("%w: key id %q: %v", ErrInvalidKeyring, kid, err)
		}
		k.aeads[kid] = aead
		if kid != current {
			k.ids = append(k.ids, kid)
		}
	}
	slices.Sort(k.ids[1:]) // map order is random; KeyIDs is deterministic
	return k, nil
}

func validKeyID(kid string) error {
	if kid == "" {
		return errors.New("empty key id")
	}
	if len(kid) > MaxKeyIDLen {
		return fmt.Errorf("key id longer than %d characters", MaxKeyIDLen)
	}
	for i := 0; i < len(kid); i++ {
		c := kid[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("key id %q: character %q not in [A-Za-z0-9._-]", kid, c)
		}
	}
	return nil
}

// decodeKey accepts the four base64 variants. The error never echoes the
// input: it is key material.
func decodeKey(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		b, err := enc.Strict().DecodeString(s)
		if err != nil {
			continue
		}
		if len(b) != KeySize {
			return nil, fmt.Errorf("key decodes to %d bytes, want %d", len(b), KeySize)
		}
		return b, nil
	}
	return nil, errors.New("key is not valid base64")
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// Enabled reports whether k encrypts: false for a nil keyring.
func (k *Keyring) Enabled() bool { return k != nil }

// CurrentKeyID returns the id of the key Seal uses; "" for a nil keyring.
func (k *Keyring) CurrentKeyID() string {
	if k == nil {
		return ""
	}
	return k.current
}

// KeyIDs returns every key id, the current one first; nil for a nil keyring.
func (k *Keyring) KeyIDs() []string {
	if k == nil {
		return nil
	}
	return append([]string(nil), k.ids...)
}

// String describes the keyring by key ids only, so that printing or logging a
// Keyring (%v, %+v, %#v) never reveals key material.
func (k *Keyring) String() string {
	if k == nil {
		return "seal.Keyring(none)"
	}
	return fmt.Sprintf("seal.Keyring(current=%s, keys=%s)", k.current, strings.Join(k.ids, ","))
}

// GoString is String, for %#v.
func (k *Keyring) GoString() string { return k.String() }

// Seal encrypts plaintext under the current key, bound to additionalData, and
// returns a new slice in the format of the package doc. With a nil keyring
// it returns plaintext itself.
func (k *Keyring) Seal(plaintext, additionalData []byte) []byte {
	if k == nil {
		return plaintext
	}
	kid := k.current
	aead := k.aeads[kid]
	hdrLen := 2 + len(kid)
	out := make([]byte, hdrLen+nonceSize, hdrLen+nonceSize+len(plaintext)+tagSize)
	out[0] = Version1
	out[1] = byte(len(kid))
	copy(out[2:], kid)
	// crypto/rand.Read never fails (it crashes the program if the OS
	// generator does, rather than returning predictable bytes).
	_, _ = rand.Read(out[hdrLen : hdrLen+nonceSize])
	return aead.Seal(out, out[hdrLen:hdrLen+nonceSize], plaintext, adFor(out[:hdrLen], additionalData))
}

// Open authenticates and decrypts a value made by Seal with the same
// additionalData, under whichever key of the keyring sealed it. It returns
// ErrUnknownKey when that key is not in the keyring, and ErrCorrupt for
// anything else that is wrong. With a nil keyring it returns sealed itself.
func (k *Keyring) Open(sealed, additionalData []byte) ([]byte, error) {
	if k == nil {
		return sealed, nil
	}
	if len(sealed) < 2 || sealed[0] != Version1 {
		return nil, fmt.Errorf("%w: not a sealed value", ErrCorrupt)
	}
	n := int(sealed[1])
	hdrLen := 2 + n
	if n == 0 || n > MaxKeyIDLen || len(sealed) < hdrLen+nonceSize+tagSize {
		return nil, fmt.Errorf("%w: truncated", ErrCorrupt)
	}
	kid := string(sealed[2:hdrLen])
	aead, ok := k.aeads[kid]
	if !ok {
		if validKeyID(kid) != nil {
			return nil, fmt.Errorf("%w: malformed key id", ErrCorrupt)
		}
		return nil, fmt.Errorf("%w %q", ErrUnknownKey, kid)
	}
	nonce := sealed[hdrLen : hdrLen+nonceSize]
	pt, err := aead.Open(nil, nonce, sealed[hdrLen+nonceSize:], adFor(sealed[:hdrLen], additionalData))
	if err != nil {
		return nil, fmt.Errorf("%w: authentication failed (key id %q)", ErrCorrupt, kid)
	}
	if pt == nil {
		pt = []byte{}
	}
	return pt, nil
}

// adFor is the GCM additional data: the header, then the caller's data. The
// header has a self-describing length, so the concatenation is unambiguous.
func adFor(header, additionalData []byte) []byte {
	ad := make([]byte, 0, len(header)+len(additionalData))
	ad = append(ad, header...)
	return append(ad, additionalData...)
}
