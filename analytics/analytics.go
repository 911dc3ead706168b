package analytics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
)

// Sentinel errors. They are wrapped with %w; errors.Is works on every backend.
var (
	// ErrInvalidArgument: a bad metric name, member, user id, range or
	// instant, or a bad event (see Event). HTTP 400 invalid_argument.
	ErrInvalidArgument = errors.New("analytics: invalid argument")
	// ErrBackend: Redis failed or did not answer within Config.Timeout.
	// The call wrote nothing it reports (an Incr may still have been
	// applied if the answer alone was lost). HTTP 503 unavailable.
	ErrBackend = errors.New("analytics: backend unavailable")
	// ErrBufferFull: the memory backend's event buffer is at
	// Config.MemoryBufferSize; the event was dropped (and counted). HTTP
	// 503 unavailable.
	ErrBufferFull = errors.New("analytics: event buffer full")
)

// Limits on arguments. Calls outside them return ErrInvalidArgument.
const (
	// MaxNameLen is the longest metric name, event name, member, user id or
	// distinct id, in bytes.
	MaxNameLen = 200
	// MaxRangeDays is the longest range Series, Total and CountUnique read.
	MaxRangeDays = 400
	// DefaultMaxEventBytes is the default Config.MaxEventBytes: PostHog
	// rejects events over 1 MiB (posthog-python uses 900 KiB to stay under).
	DefaultMaxEventBytes = 900 << 10
	// MaxFuture is how far in the future an instant may be (clock skew).
	MaxFuture = 24 * time.Hour
	// MaxIncrement bounds the absolute value of one Incr's by (2^50), so a
	// counter cannot overflow int64 in any realistic use: Redis would refuse
	// such an increment halfway through the script.
	MaxIncrement = 1 << 50
)

// Defaults of Config.
const (
	DefaultRetention        = 90 * 24 * time.Hour
	DefaultTimeout          = 200 * time.Millisecond
	DefaultStreamCap        = 1_000_000
	DefaultDeadCap          = 100_000
	DefaultStreamTTL        = 30 * 24 * time.Hour
	DefaultMemoryBufferSize = 10_000
)

// Config configures a Store. The zero value is the documented default.
type Config struct {
	// Prefix of every Redis key; "" means "eleva:".
	Prefix string
	// KeyHashSecret, when set, HMACs metric names and user ids in key names.
	KeyHashSecret []byte
	// Retention is how long a day's counters and unique-count sketches are
	// kept after the end of that (UTC) day; 0 means 90 days.
	Retention time.Duration
	// Timeout bounds each Redis call (Incr, Capture, reads); 0 means 200ms.
	Timeout time.Duration
	// StreamCap bounds the Redis event stream (XADD MAXLEN ~): beyond it
	// the oldest events are trimmed, even unsent ones, and counted as
	// dropped; 0 means 1 000 000.
	StreamCap int
	// DeadCap bounds the dead-letter stream (MAXLEN ~); 0 means 100 000.
	DeadCap int
	// StreamTTL is the TTL of the event streams, refreshed by every write,
	// so an abandoned prefix does not stay forever; 0 means 30 days.
	StreamTTL time.Duration
	// MaxEventBytes bounds one encoded event; 0 means 900 KiB.
	MaxEventBytes int
	// MemoryBufferSize bounds the memory backend's event buffer; 0 means
	// 10 000 events. Events captured when it is full are dropped and
	// counted (ErrBufferFull).
	MemoryBufferSize int
	// Now is the clock of the memory backend (expiry) and the default
	// instant of Incr, AddUnique and Capture; nil means time.Now.
	Now func() time.Time
	// Logger receives failure logs (never event contents or user ids); nil
	// means slog.Default().
	Logger *slog.Logger
	// Registerer receives the Prometheus metrics; nil means none.
	Registerer prometheus.Registerer
}

func orDur(v, def time.Duration) time.Duration {
	if v <= 0 {
		return def
	}
	return v
}

func orInt(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

func (c Config) retention() time.Duration { return orDur(c.Retention, DefaultRetention) }
func (c Config) timeout() time.Duration   { return orDur(c.Timeout, DefaultTimeout) }
func (c Config) streamCap() int           { return orInt(c.StreamCap, DefaultStreamCap) }
func (c Config) deadCap() int             { return orInt(c.DeadCap, DefaultDeadCap) }
func (c Config) streamTTL() time.Duration { return orDur(c.StreamTTL, DefaultStreamTTL) }
func (c Config) maxEventBytes() int       { return orInt(c.MaxEventBytes, DefaultMaxEventBytes) }
func (c Config) memoryBufferSize() int    { return orInt(c.MemoryBufferSize, DefaultMemoryBufferSize) }
func (c Config) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}
func (c Config) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}

// Point is one UTC day of a series.
type Point struct {
	// Date is the day's midnight, UTC.
	Date  time.Time
	Value int64
}

// Stats describes the event buffer.
type Stats struct {
	// Buffered: events in the buffer, not yet sent (including Retrying).
	Buffered int64
	// Sent: events acknowledged by PostHog (on Redis: by every forwarder
	// sharing the buffer, over the stream's lifetime).
	Sent int64
	// Retrying: events a forwarder has read and not yet settled: in flight,
	// or waiting to be retried.
	Retrying int64
	// Dead: events in the dead-letter buffer (PostHog answered 4xx).
	Dead int64
	// Dropped: events lost before reaching PostHog: the memory buffer was
	// full, or the Redis stream trimmed them at StreamCap (this process's
	// count since start).
	Dropped int64
}

// Store is the analytics port: day counters, unique counts and the event
// buffer. Both backends (NewMemory, NewRedis) implement it with the same
// semantics; it is safe for concurrent use.
type Store interface {
	// Incr adds by (which may be negative) to metric's counter for the UTC
	// day of at (zero at means now) and, with ForUser, to that user's
	// counter for the day; both get their TTL (end of the day plus
	// Config.Retention) in the same atomic step. It returns the day's total
	// after the increment. ErrInvalidArgument for a bad name, an at older
	// than the retention or more than MaxFuture ahead, a by beyond
	// ±MaxIncrement; ErrBackend.
	Incr(ctx context.Context, metric string, by int64, at time.Time, opts ...Option) (int64, error)
	// Series returns one Point per UTC day from from's day to to's day,
	// inclusive, zeros included; with ForUser, that user's counts.
	// ErrInvalidArgument when to is before from or the range exceeds
	// MaxRangeDays.
	Series(ctx context.Context, metric string, from, to time.Time, opts ...Option) ([]Point, error)
	// Total is the sum of Series.
	Total(ctx context.Context, metric string, from, to time.Time, opts ...Option) (int64, error)
	// AddUnique records member as seen for metric on at's UTC day (zero at
	// means now), in a HyperLogLog with the counters' TTL.
	AddUnique(ctx context.Context, metric, member string, at time.Time) error
	// CountUnique estimates the number of distinct members over the days
	// of the range (the union, ~0.81% standard error on Redis; exact on
	// memory).
	CountUnique(ctx context.Context, metric string, from, to time.Time) (int64, error)
	// Capture validates ev, fills in its UUID (a UUIDv7) and Timestamp
	// (now) when empty, and appends it to the durable buffer within
	// Config.Timeout: it never waits for PostHog. ErrInvalidArgument,
	// ErrBackend, ErrBufferFull; every failure is counted.
	Capture(ctx context.Context, ev Event) error
	// CaptureMany is Capture for several events in one round trip. It
	// returns how many were buffered (a prefix of events on error).
	CaptureMany(ctx context.Context, evs []Event) (int, error)
	// Buffer is the event buffer that a Forwarder drains.
	Buffer() Buffer
	// Stats describes the event buffer.
	Stats(ctx context.Context) (Stats, error)
}

// Option is a per-call option of Incr, Series and Total.
type Option func(*options)

type options struct {
	user    string
	hasUser bool
}

// ForUser makes Incr also count for userID, and Series and Total read that
// user's counts.
func ForUser(userID string) Option {
	return func(o *options) { o.user, o.hasUser = userID, true }
}

func resolve(opts []Option) (options, error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	if o.hasUser {
		if err := checkName("user id", o.user); err != nil {
			return o, err
		}
	}
	return o, nil
}

// checkName validates a metric name, member or id: 1..MaxNameLen bytes of
// valid UTF-8 without control characters.
func checkName(what, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: empty %s", ErrInvalidArgument, what)
	case len(s) > MaxNameLen:
		return fmt.Errorf("%w: %s longer than %d bytes", ErrInvalidArgument, what, MaxNameLen)
	case !utf8.ValidString(s):
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalidArgument, what)
	case strings.IndexFunc(s, unicode.IsControl) >= 0:
		return fmt.Errorf("%w: %s contains a control character", ErrInvalidArgument, what)
	}
	return nil
}

// checkBy validates an increment.
func checkBy(by int64) error {
	if by > MaxIncrement || by < -MaxIncrement {
		return fmt.Errorf("%w: increment %d outside ±%d", ErrInvalidArgument, by, int64(MaxIncrement))
	}
	return nil
}

// CheckMetric reports whether metric is a valid metric name (an error
// wrapping ErrInvalidArgument if not).
func CheckMetric(metric string) error { return checkName("metric", metric) }

const day = 24 * time.Hour

// dayOf is t's UTC midnight.
func dayOf(t time.Time) time.Time { return t.UTC().Truncate(day) }

// dayString is the bucket name of a day: YYYY-MM-DD.
func dayString(d time.Time) string { return d.Format(time.DateOnly) }

// bucket resolves and checks an instant: its UTC day and the day's expiry
// (end of the day plus retention).
func (c Config) bucket(at time.Time) (time.Time, time.Time, error) {
	now := c.now()
	if at.IsZero() {
		at = now
	}
	d := dayOf(at)
	exp := d.Add(day + c.retention())
	switch {
	case !exp.After(now):
		return d, exp, fmt.Errorf("%w: at %s is older than the retention", ErrInvalidArgument, dayString(d))
	case at.After(now.Add(MaxFuture)):
		return d, exp, fmt.Errorf("%w: at is more than %v in the future", ErrInvalidArgument, MaxFuture)
	}
	return d, exp, nil
}

// days lists the UTC days of [from, to].
func days(from, to time.Time) ([]time.Time, error) {
	f, t := dayOf(from), dayOf(to)
	if from.IsZero() || to.IsZero() {
		return nil, fmt.Errorf("%w: from and to are required", ErrInvalidArgument)
	}
	if t.Before(f) {
		return nil, fmt.Errorf("%w: to is before from", ErrInvalidArgument)
	}
	n := int(t.Sub(f)/day) + 1
	if n > MaxRangeDays {
		return nil, fmt.Errorf("%w: range of %d days (max %d)", ErrInvalidArgument, n, MaxRangeDays)
	}
	out := make([]time.Time, n)
	for i := range out {
		out[i] = f.Add(time.Duration(i) * day)
	}
	return out, nil
}

func sum(ps []Point) int64 {
	var n int64
	for _, p := range ps {
		n += p.Value
	}
	return n
}
