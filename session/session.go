package session

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/elevacare/eleva-redis/internal/seal"
)

// Store keeps login sessions, shared by every instance using the same
// backend. Every method is safe for concurrent use.
//
// A session is a set of fields that change independently — roles, device
// info, preferences, last activity — so concurrent updates of different
// fields never overwrite one another. It expires after its idle timeout
// without activity (Touch, Update) and at its absolute expiry whatever the
// activity, whichever comes first.
//
// Session ids are chosen by the caller (a random token of at least 128 bits
// is the caller's job). Ids, user ids and roles may hold any valid UTF-8;
// they are escaped or hashed before they reach a backend key.
//
// The Store fails closed: when the backend is unreachable or slow, every
// method returns an error wrapping ErrBackend, never a guess (see
// docs/sessions.md for the one exception a local cache implies).
type Store interface {
	// Create stores a session under id and returns it. A session already
	// stored under id is replaced (ids come from the caller: PUT
	// semantics). s.TTL is the absolute lifetime from now, s.IdleTimeout
	// the idle timeout; 0 means the Config defaults.
	Create(ctx context.Context, id string, s NewSession) (Session, error)
	// Get returns the live session id, or ErrNotFound. It always asks the
	// backend (no local cache), so a session revoked or deleted on any
	// instance is not found as soon as that call has returned.
	Get(ctx context.Context, id string) (Session, error)
	// Update replaces the fields u sets and leaves the others as they
	// are; concurrent updates of different fields all survive. An update
	// is activity: it also sets the last activity to now and extends the
	// idle timeout (the write happens anyway). An Update that sets no
	// field writes nothing and returns the session as Get does.
	Update(ctx context.Context, id string, u Update) (Session, error)
	// Touch records activity: it sets the last activity to now and
	// extends the idle timeout, at most once per Config.TouchInterval per
	// session across every instance (and at least every half idle
	// timeout), because every write invalidates every instance's cached
	// copy. A Touch within the interval writes nothing and, when this
	// instance's cached copy already shows it, costs no round trip. It
	// returns ErrNotFound when there is no live session.
	Touch(ctx context.Context, id string) error
	// HasRole reports whether the live session id has role, from this
	// instance's local cache of the session when it has one. The cache is
	// kept coherent across instances by the backend (a write anywhere
	// invalidates it everywhere, asynchronously: see docs/sessions.md). It
	// returns ErrNotFound when there is no live session.
	HasRole(ctx context.Context, id, role string) (bool, error)
	// Delete removes the session (logout). Deleting a missing session is
	// not an error. Delete runs even when ctx is already cancelled, under
	// its own Config.Timeout: a logout must not be lost to a client that
	// went away.
	Delete(ctx context.Context, id string) error
	// Rotate moves the session oldID to newID (on login and on privilege
	// change, against session fixation) and returns it: every field is
	// kept, the last activity is set to now, and oldID is not found
	// afterwards. It returns ErrNotFound when oldID has no live session
	// (also when it is deleted, revoked or replaced while Rotate runs: the
	// copy is then removed too), ErrExists when newID holds another live session,
	// and ErrConflict when oldID kept changing under concurrent updates.
	// Rotate runs even when ctx is already cancelled.
	Rotate(ctx context.Context, oldID, newID string) (Session, error)
	// List returns the user's live sessions, oldest first.
	List(ctx context.Context, userID string) ([]Session, error)
	// RevokeUser deletes every session of the user ("log out
	// everywhere") and returns how many it deleted. Once it has returned,
	// Get of any of them is ErrNotFound on every instance. RevokeUser runs
	// even when ctx is already cancelled.
	RevokeUser(ctx context.Context, userID string) (revoked int, err error)
	// SetUserRoles replaces the roles of every live session of the user
	// and returns how many it updated. Sessions keep their expiry (a role
	// change is not activity). It runs even when ctx is already
	// cancelled.
	SetUserRoles(ctx context.Context, userID string, roles []string) (updated int, err error)
}

// NewSession is what Create stores.
type NewSession struct {
	// UserID owns the session (required).
	UserID string
	// Roles are the session's roles; nil or empty means none. Duplicates
	// are dropped, the first occurrence kept.
	Roles []string
	// DeviceInfo and Preferences are opaque values (the HTTP API stores
	// JSON), sealed at rest when Config.Keyring is set; nil means empty.
	DeviceInfo  []byte
	Preferences []byte
	// TTL is the absolute lifetime from now; 0 means Config.TTL.
	TTL time.Duration
	// IdleTimeout is how long the session lives without activity; 0 means
	// Config.IdleTimeout.
	IdleTimeout time.Duration
}

// Update is what Update changes. A nil field is left as it is; a non-nil
// one replaces the stored field (an empty, non-nil Roles removes every
// role; an empty, non-nil DeviceInfo clears it).
type Update struct {
	Roles       []string
	DeviceInfo  []byte
	Preferences []byte
}

// Session is a stored session.
type Session struct {
	ID     string
	UserID string
	// Roles, never nil.
	Roles []string
	// DeviceInfo and Preferences are nil when empty.
	DeviceInfo  []byte
	Preferences []byte
	// CreatedAt is when Create stored the session (kept by Rotate).
	CreatedAt time.Time
	// LastActivityAt is the last recorded activity (Create, Update, a
	// Touch that wrote, Rotate).
	LastActivityAt time.Time
	// ExpiresAt is when the session ends unless there is activity before:
	// the earlier of LastActivityAt+IdleTimeout and AbsoluteExpiresAt.
	ExpiresAt time.Time
	// IdleTimeout is the session's idle timeout.
	IdleTimeout time.Duration
	// AbsoluteExpiresAt is the end of the session's absolute lifetime.
	AbsoluteExpiresAt time.Time
}

// HasRole reports whether s has role.
func (s Session) HasRole(role string) bool {
	for _, r := range s.Roles {
		if r == role {
			return true
		}
	}
	return false
}

// Limits on arguments. Calls outside them return ErrInvalidArgument and write
// nothing. Ids, user ids and roles must also be valid UTF-8.
const (
	// MaxIDLen is the longest session id, in bytes.
	MaxIDLen = 512
	// MaxUserIDLen is the longest user id, in bytes.
	MaxUserIDLen = 512
	// MaxRoleLen is the longest role, in bytes.
	MaxRoleLen = 128
	// MaxRoles is the largest number of roles of a session (after
	// duplicates are dropped).
	MaxRoles = 64
	// MaxFieldSize is the largest DeviceInfo or Preferences, in bytes,
	// before encryption (64 KiB).
	MaxFieldSize = 64 << 10
	// MinTTL is the shortest lifetime or idle timeout: backends keep times
	// in whole milliseconds.
	MinTTL = time.Millisecond
	// MaxTTL is the longest lifetime or idle timeout (30 days).
	MaxTTL = 30 * 24 * time.Hour
)

// Defaults of Config.
const (
	// DefaultTTL is the absolute lifetime when neither the call nor Config
	// sets one.
	DefaultTTL = 24 * time.Hour
	// DefaultIdleTimeout is the idle timeout when neither the call nor
	// Config sets one.
	DefaultIdleTimeout = 30 * time.Minute
	// DefaultTouchInterval is the least time between two activity writes
	// of one session.
	DefaultTouchInterval = time.Minute
	// DefaultCacheTTL caps how long a locally cached session may be used
	// without the backend's invalidation (HasRole, Touch).
	DefaultCacheTTL = 30 * time.Second
	// DefaultTimeout bounds each call.
	DefaultTimeout = 500 * time.Millisecond
)

// Sentinel errors. Backends wrap them with %w; errors.Is works across
// backends.
var (
	// ErrNotFound: no live session (never created, expired, deleted,
	// revoked, rotated away). HTTP 404 not_found.
	ErrNotFound = errors.New("session: not found")
	// ErrExists: Rotate's newID holds another live session. HTTP 409
	// already_exists.
	ErrExists = errors.New("session: already exists")
	// ErrConflict: Rotate gave up because the session kept changing under
	// concurrent updates; nothing is lost, retry it.
	ErrConflict = errors.New("session: concurrent update, retry")
	// ErrInvalidArgument: an empty, too long or non-UTF-8 id, user id or
	// role, too many roles, a field above MaxFieldSize, a TTL or idle
	// timeout outside [MinTTL, MaxTTL]. HTTP 400 invalid_argument.
	ErrInvalidArgument = errors.New("session: invalid argument")
	// ErrBackend: the backend failed, timed out or is misconfigured. A
	// write that timed out may or may not have happened. HTTP 503
	// unavailable.
	ErrBackend = errors.New("session: backend unavailable")
	// ErrUnreadable: a stored DeviceInfo or Preferences could not be
	// decrypted: sealed under a key no longer in the keyring (the error
	// also wraps seal.ErrUnknownKey), tampered with, copied from another
	// session, or written with encryption off (seal.ErrCorrupt). HTTP 500.
	ErrUnreadable = errors.New("session: stored value cannot be decrypted")
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
	// KeyHashSecret, when set, HMACs session ids and user ids so that they
	// never appear in Redis key names. Changing it makes existing sessions
	// unreachable (they expire).
	KeyHashSecret []byte
	// Keyring, when set, seals DeviceInfo and Preferences with AES-256-GCM,
	// bound to the session id and the field (see internal/seal;
	// ParseKeyring reads ELEVA_ENCRYPTION_KEY). nil means no encryption.
	// Sessions written while encryption was off cannot be read once it is
	// on (ErrUnreadable) and vice versa; they expire.
	Keyring *seal.Keyring
	// TTL is the default absolute lifetime; 0 means DefaultTTL (24h).
	TTL time.Duration
	// IdleTimeout is the default idle timeout; 0 means DefaultIdleTimeout
	// (30m).
	IdleTimeout time.Duration
	// TouchInterval is the least time between two activity writes of one
	// session (Touch); 0 means DefaultTouchInterval (1m). A session's
	// effective interval is at most half its idle timeout, so throttling
	// never lets an active session expire.
	TouchInterval time.Duration
	// CacheTTL caps how long this instance uses its local copy of a session
	// (HasRole, Touch) without hearing from Redis; 0 means DefaultCacheTTL
	// (30s). Invalidation normally ends it much sooner; the cap matters
	// only when invalidations are lost (a network partition the client has
	// not noticed yet). Redis backend only.
	CacheTTL time.Duration
	// Timeout bounds each call, all its round trips together; 0 means
	// DefaultTimeout (500ms). A call that does not finish in time returns
	// ErrBackend.
	Timeout time.Duration
	// Registerer receives the Prometheus metrics; nil means none are
	// registered.
	Registerer prometheus.Registerer
	// Logger receives backend failure logs (never ids, user ids, roles or
	// values); nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock of the memory backend; nil means time.Now. The Redis
	// backend always uses Redis TIME and Redis key expiry.
	Now func() time.Time
}

func orDefault(v, def time.Duration) time.Duration {
	if v <= 0 {
		return def
	}
	return v
}

func (c Config) ttl() time.Duration         { return orDefault(c.TTL, DefaultTTL) }
func (c Config) idleTimeout() time.Duration { return orDefault(c.IdleTimeout, DefaultIdleTimeout) }
func (c Config) touchInterval() time.Duration {
	return orDefault(c.TouchInterval, DefaultTouchInterval)
}
func (c Config) cacheTTL() time.Duration { return orDefault(c.CacheTTL, DefaultCacheTTL) }
func (c Config) timeout() time.Duration  { return orDefault(c.Timeout, DefaultTimeout) }

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
