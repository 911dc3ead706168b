package tempdata

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/elevacare/eleva-redis/internal/seal"
)

// Store keeps temporary values, one-time tokens and idempotency records, each
// with a TTL. Every method is safe for concurrent use, and every state change
// is atomic: concurrent callers on any number of instances sharing a backend
// see each change happen once.
//
// Names (namespace, key, purpose, idempotency key) may hold any bytes; they
// are escaped or hashed before they reach a backend key, so they can never
// collide with one another or inject Redis syntax.
//
// The Store fails closed: when the backend is unreachable or slow, every
// method returns an error wrapping ErrBackend, never a guess. A value is
// never reported found, taken or consumed unless the backend said so.
type Store interface {
	// Put stores value under (namespace, key) for ttl, replacing any value
	// there, and returns when it expires.
	Put(ctx context.Context, namespace, key string, value []byte, ttl time.Duration) (expiresAt time.Time, err error)
	// PutIfAbsent is Put that stores nothing and returns ErrExists when a
	// live value is already there.
	PutIfAbsent(ctx context.Context, namespace, key string, value []byte, ttl time.Duration) (expiresAt time.Time, err error)
	// Get returns the live value of (namespace, key), or ErrNotFound.
	Get(ctx context.Context, namespace, key string) (Item, error)
	// Take returns the live value and deletes it in one atomic step: of any
	// number of concurrent callers exactly one gets the value, the others
	// ErrNotFound.
	Take(ctx context.Context, namespace, key string) ([]byte, error)
	// Delete removes the value; deleting a missing value is not an error.
	Delete(ctx context.Context, namespace, key string) error

	// Issue stores data under a new one-time token for purpose and returns
	// the token: 256 random bits from crypto/rand, base64url without
	// padding (43 characters). Only a SHA-256 hash of the token is stored,
	// so a copy of the backend's data holds no usable token.
	Issue(ctx context.Context, purpose string, data []byte, ttl time.Duration) (token string, expiresAt time.Time, err error)
	// Consume returns the token's data and invalidates the token, exactly
	// once: of any number of concurrent callers one gets the data. A token
	// that was used, has expired, was issued for another purpose, or is not
	// a well-formed token at all gets the same ErrNotFound, and a wrong
	// purpose consumes nothing.
	Consume(ctx context.Context, purpose, token string) ([]byte, error)

	// Begin starts an idempotent operation under key. The first call
	// creates an in-progress record that lasts ttl and returns State
	// Started: the caller runs the operation and then calls Complete or
	// Fail. While the record is in progress, Begin returns ErrInProgress;
	// once completed, Begin returns State Completed with the stored
	// response. When both this call's fingerprint and the record's are
	// non-empty and differ, Begin returns ErrFingerprintMismatch (the key
	// was reused for another request); that check comes first.
	//
	// An in-progress record is a lease: if its owner crashes, or runs past
	// ttl, the record expires and the key may begin again, so the operation
	// may run twice. Pick ttl above the operation's longest run.
	Begin(ctx context.Context, key, fingerprint string, ttl time.Duration) (Record, error)
	// Complete stores response in the in-progress record of key and marks
	// it completed, keeping it for ttl from now (0 keeps the TTL Begin
	// set). It returns ErrNotFound when there is no record (it expired, or
	// Fail removed it) and ErrExists when the record is already completed.
	// Complete runs even when ctx is already cancelled (a finished operation
	// must be recorded), under its own Config.Timeout.
	Complete(ctx context.Context, key string, response []byte, ttl time.Duration) error
	// Fail deletes the in-progress record of key, so that the key may begin
	// again (a retry runs the operation afresh). A missing record is not an
	// error; a completed one is left alone and Fail returns ErrExists. Fail
	// runs even when ctx is already cancelled.
	Fail(ctx context.Context, key string) error
}

// Item is a stored value and its expiry.
type Item struct {
	Value     []byte
	ExpiresAt time.Time
}

// State is the state of an idempotency record.
type State string

const (
	// Started: this Begin created the record; the caller owns the operation.
	Started State = "started"
	// Completed: the operation finished earlier; Response is what it stored.
	Completed State = "completed"
)

// Record is the result of Begin.
type Record struct {
	State State
	// Response is the stored response of a Completed record; nil when Started.
	Response []byte
	// ExpiresAt is when the record expires: the end of the lease for
	// Started, the end of the retention for Completed.
	ExpiresAt time.Time
}

// Limits on arguments. Calls outside them return ErrInvalidArgument and write
// nothing.
const (
	// MaxTTL is the longest accepted TTL (30 days).
	MaxTTL = 30 * 24 * time.Hour
	// MinTTL is the shortest accepted TTL: backends keep expiries in whole
	// milliseconds.
	MinTTL = time.Millisecond
	// MaxValueSize is the largest value, token data or idempotency response,
	// in bytes, before encryption (1 MiB).
	MaxValueSize = 1 << 20
	// MaxNameLen is the longest namespace, key, purpose or idempotency key,
	// in bytes.
	MaxNameLen = 1024
)

// Sentinel errors. Backends wrap them with %w; errors.Is works across
// backends.
var (
	// ErrNotFound: no live value, token or record (never stored, expired,
	// taken, consumed, deleted; for tokens also a wrong purpose or a
	// malformed token). HTTP 404 not_found.
	ErrNotFound = errors.New("tempdata: not found")
	// ErrExists: PutIfAbsent found a live value; Complete or Fail found a
	// completed record. HTTP 409 already_exists.
	ErrExists = errors.New("tempdata: already exists")
	// ErrInProgress: Begin found an in-progress record. HTTP 409 in_progress.
	ErrInProgress = errors.New("tempdata: in progress")
	// ErrFingerprintMismatch: Begin found a record made with another
	// fingerprint. HTTP 422 fingerprint_mismatch.
	ErrFingerprintMismatch = errors.New("tempdata: idempotency key reused with a different request")
	// ErrInvalidArgument: an empty or too long name, a TTL outside
	// [MinTTL, MaxTTL] (Complete also accepts 0), a value above
	// MaxValueSize. HTTP 400 invalid_argument.
	ErrInvalidArgument = errors.New("tempdata: invalid argument")
	// ErrBackend: the backend failed, timed out or is misconfigured. The
	// operation may or may not have happened: a Take or Consume that timed
	// out may have removed the value without returning it. HTTP 503
	// unavailable.
	ErrBackend = errors.New("tempdata: backend unavailable")
	// ErrUnreadable: a stored value could not be decrypted: sealed under a
	// key no longer in the keyring (the error also wraps
	// seal.ErrUnknownKey), tampered with, copied from another key, or
	// written with encryption off (seal.ErrCorrupt). A server-side problem:
	// HTTP 500. A Take or Consume that hits it has removed the value.
	ErrUnreadable = errors.New("tempdata: stored value cannot be decrypted")
)

// ParseKeyring parses an ELEVA_ENCRYPTION_KEY specification for
// Config.Keyring: comma-separated "kid:base64key" entries, the first being
// the current key (see internal/seal.ParseKeys). It lets code outside this
// module, which cannot import internal/seal, turn encryption on. Errors wrap
// seal.ErrInvalidKeyring and never contain key material.
func ParseKeyring(spec string) (*seal.Keyring, error) {
	return seal.ParseKeys(spec)
}

// Config configures a Store. The zero value is the documented default.
type Config struct {
	// Prefix of every Redis key; "" means "eleva:".
	Prefix string
	// KeyHashSecret, when set, HMACs namespaces, keys, purposes and
	// idempotency keys (and idempotency fingerprints) so that identifiers
	// never appear in Redis key names. Changing it makes existing entries
	// unreachable (they expire).
	KeyHashSecret []byte
	// Keyring, when set, seals values, token data and idempotency
	// responses with AES-256-GCM, bound to their logical key (see
	// internal/seal; ParseKeyring reads ELEVA_ENCRYPTION_KEY). nil means
	// no encryption. Values written while
	// encryption was off cannot be read once it is on (ErrCorrupt) and vice
	// versa; they are temporary and expire.
	Keyring *seal.Keyring
	// Timeout bounds each backend call; 0 means 500ms. A call that does
	// not finish in time returns ErrBackend.
	Timeout time.Duration
	// Registerer receives the Prometheus metrics; nil means none are
	// registered.
	Registerer prometheus.Registerer
	// Logger receives backend failure logs (never names or values); nil
	// means slog.Default().
	Logger *slog.Logger
	// Now is the clock of the memory backend; nil means time.Now. The Redis
	// backend always uses Redis TIME and Redis key expiry.
	Now func() time.Time
}

// DefaultTimeout is the backend call timeout when Config.Timeout is 0.
const DefaultTimeout = 500 * time.Millisecond

func (c Config) timeout() time.Duration {
	if c.Timeout <= 0 {
		return DefaultTimeout
	}
	return c.Timeout
}

func (c Config) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}

func (c Config) now() func() time.Time {
	if c.Now != nil {
		return c.Now
	}
	return time.Now
}
