package realtime

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
)

// Errors. Every error a Broker returns wraps one of these (errors.Is), on
// every backend.
var (
	// ErrInvalidArgument reports bad input: an empty or oversized channel
	// name, too many channels, an unknown presence status, a bad TTL.
	ErrInvalidArgument = errors.New("realtime: invalid argument")
	// ErrBackend reports that Redis failed or did not answer in time.
	ErrBackend = errors.New("realtime: backend error")
	// ErrClosed is returned by a Subscription (or Broker) after Close.
	ErrClosed = errors.New("realtime: closed")
	// ErrUnauthorized reports a missing, malformed, wrongly signed or
	// expired subscription token.
	ErrUnauthorized = errors.New("realtime: unauthorized")
	// ErrForbidden reports a valid token that does not list a requested
	// channel.
	ErrForbidden = errors.New("realtime: channel not allowed by the token")
	// ErrOverflow ends a Subscription made with WithDisconnectOnOverflow
	// (the SSE gateway's) whose consumer fell more than its queue behind.
	ErrOverflow = errors.New("realtime: subscriber queue overflow")
)

// Defaults of Config (the zero value of each field means the default).
const (
	DefaultTimeout        = 2 * time.Second
	DefaultHistorySize    = 1000
	DefaultHistoryTTL     = 24 * time.Hour
	DefaultIdempotencyTTL = 5 * time.Minute
	DefaultPresenceTTL    = 60 * time.Second
	DefaultQueueSize      = 256
	// MaxChannelLen is the longest channel name, in bytes.
	MaxChannelLen = 256
	// MaxChannels is the most channels one Subscription (and one SSE
	// connection) may hold.
	MaxChannels = 256
	// MaxSubjectLen is the longest presence subject, in bytes.
	MaxSubjectLen = 200
	// MaxIdempotencyKeyLen bounds WithIdempotencyKey.
	MaxIdempotencyKeyLen = 256
	// MaxDataLen bounds a message's data (64 KiB): messages carry ids and
	// versions, not documents.
	MaxDataLen = 64 << 10
	// historyPage is the page size of gap repair reads.
	historyPage = 500
)

// Position is a place in one channel's sequence. Offsets start at 1 and
// increase by exactly 1 per published message; Epoch names the sequence:
// when a channel's state is lost (its TTL ran out, Redis restarted without
// persistence) the next Publish starts a new epoch at offset 1, and positions
// of the old epoch cannot be resumed. The zero Position (Epoch "") means
// "nothing published yet": every message of any epoch follows it.
type Position struct {
	Epoch  string
	Offset uint64
}

// Message is one published message. Messages are shared between the
// subscribers that receive them: do not modify Data.
type Message struct {
	Channel     string
	Epoch       string
	Offset      uint64
	Data        []byte
	PublishedAt time.Time

	sse sseCache // the encoded SSE data line, built once (sse.go)
}

// Position returns the message's position.
func (m *Message) Position() Position { return Position{Epoch: m.Epoch, Offset: m.Offset} }

// EventKind tells a message from a reset.
type EventKind int

const (
	// EventMessage carries the next message of a channel.
	EventMessage EventKind = iota + 1
	// EventReset says that messages of Channel were lost beyond recovery
	// (the gap is older than the history, or the channel's epoch changed):
	// the consumer must reload what it shows from the authorised API.
	// Delivery continues after Position.
	EventReset
)

// Event is what a Subscription delivers, in order per channel.
type Event struct {
	Kind    EventKind
	Channel string
	// Position is the channel's position after this event: the message's
	// own position, or after a reset the position delivery continues from.
	Position Position
	// Message is set for EventMessage.
	Message *Message
}

// History is the answer of Broker.History.
type History struct {
	// Epoch of the channel; "" when nothing was published (or everything
	// expired).
	Epoch string
	// Top is the offset of the latest message (0 when none).
	Top uint64
	// Messages are those after the asked offset, oldest first; their
	// offsets are contiguous. When the first one is not since+1 the
	// messages in between are no longer in history.
	Messages []*Message
}

// Status is a presence status.
type Status string

// Presence statuses. A subject whose heartbeat expired is StatusOffline.
const (
	StatusOnline  Status = "online"
	StatusBusy    Status = "busy"
	StatusOffline Status = "offline"
)

// PresenceState is a subject's current presence.
type PresenceState struct {
	Status Status
	// UpdatedAt is when the status was set; zero when the subject is
	// offline because it never set one or its heartbeat expired.
	UpdatedAt time.Time
	// ExpiresAt is when the status lapses to offline unless refreshed; zero
	// when offline.
	ExpiresAt time.Time
}

// PresenceChannel is the channel on which SetPresence publishes subject's
// status changes.
func PresenceChannel(subject string) string { return "presence:" + subject }

// Broker publishes messages, keeps their history and delivers them to
// subscribers. Implementations are safe for concurrent use. Several Brokers
// over one Redis (several application instances) see one sequence per
// channel.
type Broker interface {
	// Publish numbers data as the channel's next message, appends it to
	// the channel's history (at most Config.HistorySize messages, kept
	// Config.HistoryTTL after the last publish) and delivers it to every
	// subscriber of every Broker on the backend. With WithIdempotencyKey, a
	// second Publish with the same key within Config.IdempotencyTTL
	// publishes nothing and returns the first call's position. An error
	// means the message may or may not have been published; retrying with
	// an idempotency key is safe.
	Publish(ctx context.Context, channel string, data []byte, opts ...PublishOption) (Position, error)
	// History returns the channel's messages with offsets greater than
	// since, oldest first, at most limit (limit <= 0: none, only Epoch and
	// Top).
	History(ctx context.Context, channel string, since uint64, limit int) (History, error)
	// Subscribe delivers the events of channels in order per channel.
	// since, when not nil, holds one Position per channel (same order):
	// delivery resumes after it, from history, with an EventReset if it
	// cannot be resumed; a nil since starts every channel at its current
	// position (delivery is what is published after Subscribe returns).
	// Subscribe returns once every channel's delivery is established.
	Subscribe(ctx context.Context, channels []string, since []Position, opts ...SubscribeOption) (*Subscription, error)
	// SetPresence records subject's status for ttl (0: Config.PresenceTTL)
	// and publishes it on PresenceChannel(subject), as JSON
	// {"subject","status","updatedAt","expiresAt"} (Unix ms).
	SetPresence(ctx context.Context, subject string, status Status, ttl time.Duration) (PresenceState, error)
	// Presence returns the status of each subject; subjects without a live
	// heartbeat are StatusOffline.
	Presence(ctx context.Context, subjects []string) (map[string]PresenceState, error)
	// Close ends every Subscription of this Broker. It does not close the
	// Redis client.
	Close() error
}

// Config configures a Broker. The zero value is the documented default.
type Config struct {
	// Prefix of every Redis key; "" means "eleva:".
	Prefix string
	// KeyHashSecret, when set, HMACs channel names and subjects in key
	// names.
	KeyHashSecret []byte
	// Timeout bounds each Redis call; 0 means DefaultTimeout (2s).
	Timeout time.Duration
	// HistorySize is the most messages kept per channel; 0 means
	// DefaultHistorySize (1000).
	HistorySize int
	// HistoryTTL is how long a channel's history and position survive its
	// last publish; 0 means DefaultHistoryTTL (24h). After it a channel
	// starts a new epoch.
	HistoryTTL time.Duration
	// IdempotencyTTL is how long an idempotency key is remembered; 0 means
	// DefaultIdempotencyTTL (5m).
	IdempotencyTTL time.Duration
	// PresenceTTL is SetPresence's default ttl; 0 means DefaultPresenceTTL
	// (60s).
	PresenceTTL time.Duration
	// QueueSize is the default queue of a Subscription, in messages; 0 means
	// DefaultQueueSize (256).
	QueueSize int
	// Now is the memory backend's clock; nil means time.Now. Redis uses
	// Redis TIME.
	Now func() time.Time
	// Logger receives failure logs (never payloads); nil means
	// slog.Default().
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

func (c Config) timeout() time.Duration        { return orDur(c.Timeout, DefaultTimeout) }
func (c Config) historySize() int              { return orInt(c.HistorySize, DefaultHistorySize) }
func (c Config) historyTTL() time.Duration     { return orDur(c.HistoryTTL, DefaultHistoryTTL) }
func (c Config) idempotencyTTL() time.Duration { return orDur(c.IdempotencyTTL, DefaultIdempotencyTTL) }
func (c Config) presenceTTL() time.Duration    { return orDur(c.PresenceTTL, DefaultPresenceTTL) }
func (c Config) queueSize() int                { return orInt(c.QueueSize, DefaultQueueSize) }
func (c Config) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.Default()
	}
	return c.Logger
}
func (c Config) now() time.Time {
	if c.Now == nil {
		return time.Now()
	}
	return c.Now()
}

// PublishOption varies one Publish.
type PublishOption func(*publishOpts)

type publishOpts struct{ idemKey string }

// WithIdempotencyKey makes Publish publish at most once per key and channel
// within Config.IdempotencyTTL.
func WithIdempotencyKey(key string) PublishOption {
	return func(o *publishOpts) { o.idemKey = key }
}

// SubscribeOption varies one Subscribe.
type SubscribeOption func(*subOpts)

type subOpts struct {
	queue      int
	disconnect bool
	notify     func()
}

// WithQueueSize sets the Subscription's queue (messages received but not
// yet taken by Next).
func WithQueueSize(n int) SubscribeOption { return func(o *subOpts) { o.queue = n } }

// WithDisconnectOnOverflow ends the Subscription with ErrOverflow when its
// queue overflows. Without it an overflow is a gap like any other: repaired
// from history (or reset) when the consumer catches up.
func WithDisconnectOnOverflow() SubscribeOption { return func(o *subOpts) { o.disconnect = true } }

// withNotify makes the Subscription call f, without blocking, whenever Next
// may have something to return (the SSE gateway's writer runs only then).
func withNotify(f func()) SubscribeOption { return func(o *subOpts) { o.notify = f } }

// CheckChannel reports whether ch is a valid channel name (an error wrapping
// ErrInvalidArgument when not), so that an HTTP layer can name the field.
func CheckChannel(ch string) error { return checkChannel(ch) }

// CheckSubject is CheckChannel for a presence subject.
func CheckSubject(s string) error { return checkSubject(s) }

// checkChannel validates a channel name: 1 to MaxChannelLen bytes of valid
// UTF-8 without control characters or commas (the SSE gateway's separator).
func checkChannel(ch string) error {
	if ch == "" {
		return fmt.Errorf("%w: empty channel name", ErrInvalidArgument)
	}
	if len(ch) > MaxChannelLen {
		return fmt.Errorf("%w: channel name longer than %d bytes", ErrInvalidArgument, MaxChannelLen)
	}
	if !utf8.ValidString(ch) {
		return fmt.Errorf("%w: channel name is not valid UTF-8", ErrInvalidArgument)
	}
	for _, r := range ch {
		if r < 0x20 || r == 0x7f || r == ',' {
			return fmt.Errorf("%w: channel name contains %q (control characters and commas are not allowed)", ErrInvalidArgument, r)
		}
	}
	return nil
}

func checkSubject(s string) error {
	if s == "" || len(s) > MaxSubjectLen {
		return fmt.Errorf("%w: subject must be 1 to %d bytes", ErrInvalidArgument, MaxSubjectLen)
	}
	return checkChannel(PresenceChannel(s))
}

func checkStatus(s Status) error {
	switch s {
	case StatusOnline, StatusBusy, StatusOffline:
		return nil
	}
	return fmt.Errorf("%w: status must be online, busy or offline", ErrInvalidArgument)
}

func checkPublish(channel string, data []byte, o publishOpts) error {
	if err := checkChannel(channel); err != nil {
		return err
	}
	if len(data) > MaxDataLen {
		return fmt.Errorf("%w: data larger than %d bytes", ErrInvalidArgument, MaxDataLen)
	}
	if len(o.idemKey) > MaxIdempotencyKeyLen {
		return fmt.Errorf("%w: idempotency key longer than %d bytes", ErrInvalidArgument, MaxIdempotencyKeyLen)
	}
	return nil
}

func checkChannels(channels []string, since []Position) error {
	if len(channels) == 0 {
		return fmt.Errorf("%w: no channels", ErrInvalidArgument)
	}
	if len(channels) > MaxChannels {
		return fmt.Errorf("%w: more than %d channels", ErrInvalidArgument, MaxChannels)
	}
	if since != nil && len(since) != len(channels) {
		return fmt.Errorf("%w: %d positions for %d channels", ErrInvalidArgument, len(since), len(channels))
	}
	seen := make(map[string]struct{}, len(channels))
	for _, ch := range channels {
		if err := checkChannel(ch); err != nil {
			return err
		}
		if _, dup := seen[ch]; dup {
			return fmt.Errorf("%w: channel %q listed twice", ErrInvalidArgument, ch)
		}
		seen[ch] = struct{}{}
	}
	for _, p := range since {
		if !validEpoch(p.Epoch) {
			return fmt.Errorf("%w: malformed epoch", ErrInvalidArgument)
		}
	}
	return nil
}

// newEpoch returns a random epoch: 8 base64url characters (48 bits).
func newEpoch() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// validEpoch: "" or up to 32 base64url characters.
func validEpoch(e string) bool {
	if len(e) > 32 {
		return false
	}
	for i := 0; i < len(e); i++ {
		c := e[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

const (
	errorLevel = slog.LevelError
	warnLevel  = slog.LevelWarn
)

// backendErr wraps a Redis error as ErrBackend, keeping context errors
// visible to errors.Is.
func backendErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrInvalidArgument) || errors.Is(err, ErrBackend) {
		return err
	}
	return fmt.Errorf("%w: %s: %w", ErrBackend, op, err)
}
