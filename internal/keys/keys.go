// Package keys builds Redis key names from a configured prefix and user input.
//
// Every user-supplied part (user ids, emails, lock names, cache keys) goes through
// Escape or, when a KeyHashSecret is configured, through an HMAC, so that user input
// can never inject a separator (':'), a glob character ('*', '?', '[', ']') or a
// Redis Cluster hash tag ('{', '}'). The only braces in a key are the ones this
// package adds around the hash tag, so every key a capability builds for one tag
// lands in one Cluster slot.
//
// Key layout:
//
//	<prefix><capability>:{<tag>}[:<part>]...
//
// for example "eleva:rl:{user%3A42}:gc". The mapping is injective: distinct
// (capability, tag, parts) inputs never yield the same key (fuzz-tested).
package keys

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// DefaultPrefix is the prefix used when Config.Prefix is empty.
const DefaultPrefix = "eleva:"

// ErrInvalidPrefix is returned by New for a prefix that contains a character that
// could inject a hash tag or a glob pattern.
var ErrInvalidPrefix = errors.New("keys: invalid prefix")

// Builder builds keys. The zero value is not usable; call New.
type Builder struct {
	prefix string
	secret []byte
}

// New returns a Builder. An empty prefix means DefaultPrefix. A non-empty secret
// turns on HMAC-SHA256 of identifiers (see Builder.ID): use it in production so
// that emails and patient ids never appear in key names.
//
// The prefix may contain letters, digits and "._-:/@" only; anything else
// (notably '{', '}', '*', '?', '[', ']', whitespace) is rejected with
// ErrInvalidPrefix, because it would change the hash slot of every key or make
// the key a glob pattern.
func New(prefix string, secret []byte) (Builder, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	for i := 0; i < len(prefix); i++ {
		c := prefix[i]
		if !(isAlnum(c) || strings.IndexByte("._-:/@", c) >= 0) {
			return Builder{}, fmt.Errorf("%w: %q contains %q (allowed: letters, digits and ._-:/@)", ErrInvalidPrefix, prefix, c)
		}
	}
	return Builder{prefix: prefix, secret: append([]byte(nil), secret...)}, nil
}

// MustNew is New for constants in tests and examples; it panics on a bad prefix.
func MustNew(prefix string, secret []byte) Builder {
	b, err := New(prefix, secret)
	if err != nil {
		panic(err)
	}
	return b
}

// Prefix returns the configured prefix.
func (b Builder) Prefix() string { return b.prefix }

// Hashed reports whether identifiers are HMACed.
func (b Builder) Hashed() bool { return len(b.secret) > 0 }

// ID maps a user-supplied identifier to a key-safe string: its HMAC-SHA256
// (base64url, 43 characters) when a secret is configured, otherwise Escape(s).
// Both forms contain only [A-Za-z0-9._@+=%-], so no separator, glob character
// or brace can appear.
func (b Builder) ID(s string) string {
	if len(b.secret) == 0 {
		return Escape(s)
	}
	m := hmac.New(sha256.New, b.secret)
	m.Write([]byte(s))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// Key returns <prefix><capability>:{ID(tag)}[:part]... . The capability must be
// a constant of the calling package (it is not escaped, but it is checked).
// Parts are escaped with Escape, not hashed: pass identifiers through ID first
// when they may hold PHI.
func (b Builder) Key(capability, tag string, parts ...string) string {
	return b.RawKey(capability, b.ID(tag), parts...)
}

// RawKey is Key with a tag that has already been made key-safe by ID or
// Escape (so one HMAC can serve several keys). Passing an unescaped tag breaks
// the guarantees of this package.
func (b Builder) RawKey(capability, safeTag string, parts ...string) string {
	if !safeConstant(capability) {
		panic(fmt.Sprintf("keys: capability %q must be [a-z0-9-]+", capability))
	}
	n := len(b.prefix) + len(capability) + len(safeTag) + 3
	for _, p := range parts {
		n += len(p) + 1
	}
	var sb strings.Builder
	sb.Grow(n)
	sb.WriteString(b.prefix)
	sb.WriteString(capability)
	sb.WriteString(":{")
	sb.WriteString(safeTag)
	sb.WriteByte('}')
	for _, p := range parts {
		sb.WriteByte(':')
		sb.WriteString(Escape(p))
	}
	return sb.String()
}

// Escape percent-encodes every byte outside [A-Za-z0-9._@+=-] (including '%'
// itself), so the result never contains ':', '{', '}', '*', '?', '[', ']',
// whitespace or control bytes, and distinct inputs give distinct outputs.
// Inputs made only of safe bytes are returned unchanged without allocating.
func Escape(s string) string {
	i := 0
	for i < len(s) && safe(s[i]) {
		i++
	}
	if i == len(s) {
		return s
	}
	const hex = "0123456789ABCDEF"
	var sb strings.Builder
	sb.Grow(len(s) + 2*(len(s)-i))
	sb.WriteString(s[:i])
	for ; i < len(s); i++ {
		c := s[i]
		if safe(c) {
			sb.WriteByte(c)
			continue
		}
		sb.WriteByte('%')
		sb.WriteByte(hex[c>>4])
		sb.WriteByte(hex[c&15])
	}
	return sb.String()
}

// Unescape reverses Escape. It is used by tests and tools that list keys.
func Unescape(s string) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			sb.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", fmt.Errorf("keys: truncated escape in %q", s)
		}
		hi, ok1 := unhex(s[i+1])
		lo, ok2 := unhex(s[i+2])
		if !ok1 || !ok2 {
			return "", fmt.Errorf("keys: bad escape in %q", s)
		}
		sb.WriteByte(hi<<4 | lo)
		i += 2
	}
	return sb.String(), nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

func safe(c byte) bool {
	return isAlnum(c) || c == '.' || c == '_' || c == '@' || c == '+' || c == '=' || c == '-'
}

func safeConstant(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
