package cache

import (
	"errors"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/elevacare/eleva-redis/internal/seal"
)

// Source says where GetOrLoad or Get found a value.
type Source string

const (
	// SourceLocal: this process's cache of decoded values (the first level).
	SourceLocal Source = "local"
	// SourceRedis: the shared level — Redis, or the memory Store's shared
	// map when the Store is in-process.
	SourceRedis Source = "redis"
	// SourceLoader: the loader ran for this call (or for a call this one
	// joined).
	SourceLoader Source = "loader"
)

// Meta describes a value returned by Get or GetOrLoad.
type Meta struct {
	// CachedAt is when the value was written to the shared level (the
	// backend's clock: Redis TIME). For a value straight from the loader it
	// is the time the load finished.
	CachedAt time.Time
	// ExpiresAt is when the value leaves the shared level (soft TTL plus
	// the stale window). Zero when the value was not cached.
	ExpiresAt time.Time
	// Source is where this call found the value.
	Source Source
	// Stale: the value is past its TTL and inside its StaleFor window; a
	// refresh runs in the background and this call did not wait for it.
	Stale bool
	// Degraded: the shared level failed (or is in its short back-off after
	// a failure), so the value comes from the loader and was not cached.
	Degraded bool
}

// Limits on arguments. Calls outside them return ErrInvalidArgument and write
// nothing.
const (
	// MaxKeyLen is the longest key or tag, in bytes.
	MaxKeyLen = 1024
	// MaxValueSize is the largest encoded value, in bytes (8 MiB).
	MaxValueSize = 8 << 20
	// MaxTTL is the longest TTL plus stale window (30 days). Tag versions
	// live longer than this, which is what makes tag invalidation exact.
	MaxTTL = 30 * 24 * time.Hour
	// MaxTags is the largest number of tags on one key.
	MaxTags = 16
)

// Sentinel errors. They are wrapped with %w; errors.Is works on every backend.
var (
	// ErrNotFound: Get found nothing, or the loader reported the value does
	// not exist (return an error wrapping ErrNotFound from the loader to have
	// it cached as not-found for NegativeTTL). HTTP 404 not_found.
	ErrNotFound = errors.New("cache: not found")
	// ErrInvalidArgument: an empty or too long key or tag, too many tags, a
	// TTL outside (0, MaxTTL], a value over MaxValueSize, a nil loader.
	// HTTP 400 invalid_argument.
	ErrInvalidArgument = errors.New("cache: invalid argument")
	// ErrBackend: the shared level failed or timed out. GetOrLoad never
	// returns it (it falls through to the loader and sets Meta.Degraded);
	// Set, Invalidate, InvalidateTags and the lease calls do. HTTP 503.
	ErrBackend = errors.New("cache: backend unavailable")
	// ErrLeaseLost: a Fill whose lease was taken away — the key was
	// invalidated or set since the lease was given, so the value, loaded
	// from data older than that change, was not written. HTTP 409
	// lease_lost.
	ErrLeaseLost = errors.New("cache: lease lost")
	// ErrCodec: the codec could not encode or decode a value. A stored value
	// that cannot be decoded (for example after an incompatible change of
	// type) counts as a miss for GetOrLoad, which loads and overwrites it.
	ErrCodec = errors.New("cache: codec")
)

// Codec turns values into bytes and back. It must be safe for concurrent use.
type Codec[T any] interface {
	Encode(v T) ([]byte, error)
	Decode(data []byte) (T, error)
}

// Config configures a typed Cache. The zero value is the documented default
// (except Namespace, which names the cache and should be set).
type Config[T any] struct {
	// Namespace separates this cache's keys from other caches on the same
	// Store ("" means "default"). Tags are shared across namespaces, so one
	// InvalidateTags reaches every cache.
	Namespace string
	// TTL is the default time a value stays fresh; 0 means 5 minutes.
	TTL time.Duration
	// Jitter shortens each TTL by a random fraction in [0, Jitter), so keys
	// written together do not expire together; 0 means 0.1, a negative
	// value turns jitter off.
	Jitter float64
	// NegativeTTL is how long a not-found (a loader error wrapping
	// ErrNotFound) is cached; 0 means 30 seconds, negative turns negative
	// caching off.
	NegativeTTL time.Duration
	// LoadTimeout bounds a load and is the lease's lifetime: another
	// instance takes over a load whose holder died after this long; 0 means
	// 10 seconds.
	LoadTimeout time.Duration
	// LocalSize is the largest number of decoded values kept in this
	// process; 0 means 10 000, negative turns the local level off.
	LocalSize int
	// LocalTTL caps how long a value stays in the local level; 0 means 1
	// minute. When the Store invalidates by Pub/Sub (no CLIENT TRACKING)
	// the cap is Store's PubSubLocalTTL instead, if lower.
	LocalTTL time.Duration
	// Codec encodes values; nil means JSON.
	Codec Codec[T]
}

// Defaults of Config.
const (
	DefaultTTL         = 5 * time.Minute
	DefaultJitter      = 0.1
	DefaultNegativeTTL = 30 * time.Second
	DefaultLoadTimeout = 10 * time.Second
	DefaultLocalSize   = 10_000
	DefaultLocalTTL    = time.Minute
)

// StoreConfig configures a Store. The zero value is the documented default.
type StoreConfig struct {
	// Prefix of every Redis key; "" means "eleva:".
	Prefix string
	// KeyHashSecret, when set, HMACs keys, namespaces and tags so that
	// identifiers never appear in Redis key names.
	KeyHashSecret []byte
	// Timeout bounds each call to the shared level; 0 means 200ms.
	// GetOrLoad falls through to the loader when it runs out.
	Timeout time.Duration
	// Tracker, when set, is the rueidis OnInvalidations hook of the Store's
	// client (see Tracker): the Store then keeps local copies coherent by
	// server-assisted client-side caching. When nil, or when Invalidation
	// is "pubsub", it uses Pub/Sub invalidation messages and caps local
	// copies at PubSubLocalTTL. Ignored by the memory Store.
	Tracker *Tracker
	// Invalidation forces a mode: "" (automatic: tracking when Tracker is
	// set), "tracking" or "pubsub".
	Invalidation string
	// PubSubLocalTTL caps the local TTL in Pub/Sub mode, bounding the
	// staleness a lost message could cause; 0 means 2 seconds.
	PubSubLocalTTL time.Duration
	// BackOff is how long GetOrLoad skips the shared level after it failed,
	// so an outage costs one timeout, not one per call; 0 means 250ms.
	BackOff time.Duration
	// Keyring, when set, seals stored values with AES-256-GCM, bound to
	// their Redis key (see internal/seal; ParseKeyring reads
	// ELEVA_ENCRYPTION_KEY), so query results holding health data are not
	// readable in Redis, its persistence files or its replicas. A value that
	// does not open (sealed under a key no longer in the keyring, copied from
	// another key, or written while encryption was off) is a miss and is
	// loaded again. Local copies are decoded values in process memory, as
	// without it. nil means no encryption.
	Keyring *seal.Keyring
	// Registerer receives Prometheus metrics; nil registers none.
	Registerer prometheus.Registerer
	// Logger receives failure logs (never keys or values); nil means
	// slog.Default().
	Logger *slog.Logger
	// Now is the clock of the memory Store and of the local level's
	// freshness checks; nil means time.Now for the memory Store and, for
	// the local level, a coarse clock that reads the time once a
	// millisecond (so a local copy may be served up to about 1ms past its
	// expiry, in exchange for local hits that never read the time).
	Now func() time.Time
}

// ParseKeyring parses an ELEVA_ENCRYPTION_KEY specification for
// StoreConfig.Keyring: comma-separated "kid:base64key" entries, the first
// being the current key (see internal/seal.ParseKeys). It lets code outside
// this module, which cannot import internal/seal, turn encryption on. Errors
// never contain key material.
func ParseKeyring(spec string) (*seal.Keyring, error) { return seal.ParseKeys(spec) }

// Defaults of StoreConfig.
const (
	DefaultTimeout        = 200 * time.Millisecond
	DefaultPubSubLocalTTL = 2 * time.Second
	DefaultBackOff        = 250 * time.Millisecond
)

// Option adjusts one call of GetOrLoad, Get, Set or Lease.
type Option func(*options)

type options struct {
	ttl, negTTL, stale, localTTL, loadTimeout time.Duration
	jitter, beta                              float64
	tags                                      []string
}

// TTL sets how long the value stays fresh (before jitter).
func TTL(d time.Duration) Option { return func(o *options) { o.ttl = d } }

// NegativeTTL sets how long a not-found is cached (negative: not at all).
func NegativeTTL(d time.Duration) Option { return func(o *options) { o.negTTL = d } }

// StaleFor keeps a value for d past its TTL: a read in that window gets it at
// once, with Meta.Stale, while one refresh for the whole fleet runs in the
// background (stale-while-revalidate).
func StaleFor(d time.Duration) Option { return func(o *options) { o.stale = d } }

// EarlyRefresh turns on probabilistic early refresh (XFetch, Vattani et al.,
// VLDB 2015) with parameter beta (1 is optimal; higher refreshes earlier): a
// read refreshes in the background when now − δ·beta·ln(rand) ≥ expiry,
// where δ is how long the last load took, so expensive values are reloaded
// before they expire and no caller waits for them.
func EarlyRefresh(beta float64) Option { return func(o *options) { o.beta = beta } }

// Jitter overrides Config.Jitter for this call.
func Jitter(f float64) Option { return func(o *options) { o.jitter = f } }

// LocalTTL overrides Config.LocalTTL for this call (negative: do not keep the
// value locally).
func LocalTTL(d time.Duration) Option { return func(o *options) { o.localTTL = d } }

// LoadTimeout overrides Config.LoadTimeout for this call.
func LoadTimeout(d time.Duration) Option { return func(o *options) { o.loadTimeout = d } }

// Tags attaches tags to the value written (by a load, Set or Fill):
// InvalidateTags of any of them makes it a miss everywhere. The value
// records its tags, so reads need not repeat them.
func Tags(tags ...string) Option {
	return func(o *options) { o.tags = append(o.tags, tags...) }
}
