package realtime

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Token limits.
const (
	// MinSecretLen is the shortest HS256 secret NewTokens accepts (256 bits).
	MinSecretLen = 32
	// MaxTokenTTL is the longest lifetime Issue accepts: subscription tokens
	// are short-lived; a browser fetches a new one through the authorised
	// API.
	MaxTokenTTL = 24 * time.Hour
	// tokenAudience keeps a subscription token from being accepted where
	// another HS256 token signed with the same secret is expected, and the
	// other way round.
	tokenAudience = "eleva-realtime"
)

// Claims are what a subscription token grants.
type Claims struct {
	// Subject is the user or browser the token was issued to.
	Subject string
	// Channels are the channels the bearer may read.
	Channels []string
	// ExpiresAt is when the token (and any stream opened with it) ends.
	ExpiresAt time.Time
}

// Allows reports whether the token grants channel.
func (c Claims) Allows(channel string) bool { return slices.Contains(c.Channels, channel) }

// Tokens issues and verifies subscription tokens: HS256 JWTs with the
// claims sub, channels, aud "eleva-realtime", iat and exp (whole seconds).
// Every instance that verifies tokens must share the secret.
type Tokens struct {
	secret []byte
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// NewTokens returns Tokens signing with secret (at least MinSecretLen
// bytes).
func NewTokens(secret []byte) (*Tokens, error) {
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("%w: token secret shorter than %d bytes", ErrInvalidArgument, MinSecretLen)
	}
	return &Tokens{secret: append([]byte(nil), secret...)}, nil
}

func (t *Tokens) now() time.Time {
	if t.Now == nil {
		return time.Now()
	}
	return t.Now()
}

type tokenClaims struct {
	Channels []string `json:"channels"`
	jwt.RegisteredClaims
}

// Issue returns a token for subject that lets its bearer read channels
// until expiresAt: ttl after now, rounded up to the whole second JWTs count
// in.
func (t *Tokens) Issue(subject string, channels []string, ttl time.Duration) (token string, expiresAt time.Time, err error) {
	if subject == "" || len(subject) > MaxSubjectLen {
		return "", time.Time{}, &FieldError{Field: "subject", Err: fmt.Errorf("%w: subject must be 1 to %d bytes", ErrInvalidArgument, MaxSubjectLen)}
	}
	if err := checkChannels(channels, nil); err != nil {
		return "", time.Time{}, &FieldError{Field: "channels", Err: err}
	}
	if ttl <= 0 || ttl > MaxTokenTTL {
		return "", time.Time{}, &FieldError{Field: "ttlMs", Err: fmt.Errorf("%w: ttl must be positive and at most %s", ErrInvalidArgument, MaxTokenTTL)}
	}
	now := t.now()
	exp := now.Add(ttl)
	if tr := exp.Truncate(time.Second); !tr.Equal(exp) {
		exp = tr.Add(time.Second)
	}
	c := tokenClaims{
		Channels: append([]string(nil), channels...),
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   subject,
			Audience:  jwt.ClaimStrings{tokenAudience},
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(exp),
		},
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(t.secret)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("realtime: signing token: %w", err)
	}
	return s, exp, nil
}

// Verify checks token's signature (HS256 only), audience and expiry and
// returns its claims. Every failure wraps ErrUnauthorized.
func (t *Tokens) Verify(token string) (Claims, error) {
	if token == "" {
		return Claims{}, fmt.Errorf("%w: no token", ErrUnauthorized)
	}
	if len(token) > 16<<10 {
		return Claims{}, fmt.Errorf("%w: token too long", ErrUnauthorized)
	}
	var c tokenClaims
	p := jwt.NewParser(jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}), jwt.WithExpirationRequired(),
		jwt.WithAudience(tokenAudience), jwt.WithTimeFunc(t.now))
	_, err := p.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return t.secret, nil })
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return Claims{}, fmt.Errorf("%w: token expired", ErrUnauthorized)
	case err != nil:
		return Claims{}, fmt.Errorf("%w: invalid token", ErrUnauthorized)
	case c.Subject == "" || len(c.Channels) == 0:
		return Claims{}, fmt.Errorf("%w: token without subject or channels", ErrUnauthorized)
	}
	return Claims{Subject: c.Subject, Channels: c.Channels, ExpiresAt: c.ExpiresAt.Time}, nil
}

// FieldError is an ErrInvalidArgument about one input field (a JSON field,
// a query parameter or a header), so that an HTTP layer can name it.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }
