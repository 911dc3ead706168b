package notify

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Queue is a per-user notification queue shared by every instance using the
// same backend. Every method is safe for concurrent use, and every state
// change is one atomic step of the backend (one Lua script on Redis).
//
// Two ways to consume it:
//
//   - Apps that deliver themselves read Pending and then Remove what they
//     sent (the original API).
//   - Workers Claim due users, deliver, and Ack or Nack each item. A claim
//     leases the user's batch: at most one lease per user, fenced by a token,
//     and an expired lease simply makes the user due again (no recoverer).
//
// Notification ids are chosen by the caller for idempotency (or generated)
// and are unique per user: the same (user, id) enqueued twice is stored once.
//
// When the backend is unreachable or slower than Config.Timeout, every
// method returns an error wrapping ErrBackend: nothing is silently dropped.
type Queue interface {
	// Enqueue stores n for n.UserID. n.ID empty means a random id is
	// generated; n.Priority zero means normal; n.ScheduledFor zero means
	// now; n.MaxAttempts 0 means Config.MaxAttempts. n.Attempts, n.State
	// and n.LastError are ignored. When (user, id) is already stored (in
	// any state, or delivered within the bounded delivered record), it is
	// not queued again: the result has Created false and the stored state.
	Enqueue(ctx context.Context, n Notification) (Result, error)
	// EnqueueMany is Enqueue for many notifications in one pipeline. The
	// results are in the order of ns, each with its own Err; the error
	// result is for the call as a whole (ErrInvalidArgument for too many
	// items). Invalid items get ErrInvalidArgument in their Result and are
	// not stored; the others are.
	EnqueueMany(ctx context.Context, ns []Notification) ([]Result, error)
	// Pending returns up to limit of the user's due notifications, high
	// before normal before low, then oldest (by due time) first, without
	// claiming them. Items leased by a worker are not returned; items past
	// ExpiresAt it meets go to the dead set ("expired") instead, as Claim
	// would send them. limit 0 means 10; at most MaxPendingLimit.
	Pending(ctx context.Context, userID string, limit int) ([]Notification, error)
	// Remove deletes the user's queued (not leased, not dead) notifications
	// ids, counts them as delivered and returns how many it removed.
	Remove(ctx context.Context, userID string, ids ...string) (int, error)
	// Cancel deletes one notification in any state, or returns ErrNotFound.
	// A leased one may already be being delivered; its worker's Ack then
	// changes nothing.
	Cancel(ctx context.Context, userID, id string) error
	// Stats counts notifications per state across the queue.
	Stats(ctx context.Context) (Stats, error)
	// ListDead returns up to limit dead notifications (most recent first),
	// with LastError. limit 0 means 100; at most MaxDeadLimit.
	ListDead(ctx context.Context, limit int) ([]Notification, error)
	// RequeueDead puts a dead notification back in the queue, due now, with
	// its attempts reset; ErrNotFound when it is not dead.
	RequeueDead(ctx context.Context, userID, id string) error

	// Claim leases up to maxUsers due users, with up to perUser of each
	// one's due notifications (0 means Config.BatchSize), in Pending's
	// order, for Config.Lease. Each claimed item's Attempts counts this
	// delivery. Items past ExpiresAt go to the dead set with LastError
	// "expired" instead of being claimed. It returns no batch (and no
	// error) when nothing is due. maxUsers 0 means 1.
	Claim(ctx context.Context, maxUsers, perUser int) ([]Batch, error)
	// Ack records ids of b as delivered and returns how many it removed.
	// When b's lease was taken over (it expired and another Claim took the
	// user, or the batch was finished), it returns ErrLeaseLost and changes
	// nothing. A lease that expired without being taken over still works.
	// When every item of the lease is acked or nacked, the lease ends and
	// the user's next items are due at once. Ack runs even when ctx is
	// already cancelled (under its own Config.Timeout).
	Ack(ctx context.Context, b Batch, ids ...string) (int, error)
	// Nack records failed deliveries of items of b: each one is retried
	// after an exponential backoff with full jitter (random in [0,
	// min(BackoffCap, BackoffBase·2^(attempts-1))]), or RetryAfter when
	// set, or goes to the dead set with its error when it has had
	// MaxAttempts deliveries or the failure is Permanent. It returns how
	// many items it moved. Fenced like Ack (ErrLeaseLost, nothing changed);
	// runs even when ctx is already cancelled.
	Nack(ctx context.Context, b Batch, failures ...Failure) (int, error)
	// Extend renews b's lease for Config.Lease from now and updates
	// b.ExpiresAt; ErrLeaseLost when it was taken over.
	Extend(ctx context.Context, b *Batch) error
}

// Priority of a notification. The zero value is PriorityNormal.
type Priority int8

// Priorities, in delivery order high, normal, low.
const (
	PriorityNormal Priority = 0
	PriorityHigh   Priority = 1
	PriorityLow    Priority = 2
)

// band is the priority's rank in delivery order (0 first), or -1.
func (p Priority) band() int {
	switch p {
	case PriorityHigh:
		return 0
	case PriorityNormal:
		return 1
	case PriorityLow:
		return 2
	}
	return -1
}

func priorityOfBand(b int) Priority {
	switch b {
	case 0:
		return PriorityHigh
	case 2:
		return PriorityLow
	}
	return PriorityNormal
}

// String returns "high", "normal" or "low" (the HTTP API's names).
func (p Priority) String() string {
	switch p {
	case PriorityHigh:
		return "high"
	case PriorityNormal:
		return "normal"
	case PriorityLow:
		return "low"
	}
	return "invalid"
}

// ParsePriority parses "high", "normal" or "low"; "" is normal. Anything
// else is ErrInvalidArgument.
func ParsePriority(s string) (Priority, error) {
	switch s {
	case "high":
		return PriorityHigh, nil
	case "normal", "":
		return PriorityNormal, nil
	case "low":
		return PriorityLow, nil
	}
	return 0, errors.Join(ErrInvalidArgument, errors.New("notify: priority must be high, normal or low"))
}

// State of a notification (the HTTP API's names).
type State string

// States.
const (
	// StateScheduled: not yet due, never attempted.
	StateScheduled State = "scheduled"
	// StatePending: due, waiting for a worker (or for Pending/Remove).
	StatePending State = "pending"
	// StateInflight: leased by a worker.
	StateInflight State = "inflight"
	// StateRetrying: failed, waiting for its backoff.
	StateRetrying State = "retrying"
	// StateDead: in the dead set (MaxAttempts reached, permanent failure or
	// expired), with LastError.
	StateDead State = "dead"
	// StateDelivered: acked or removed. Only Enqueue's Result reports it,
	// for an id delivered within the bounded delivered record.
	StateDelivered State = "delivered"
)

// Notification is one queued notification.
type Notification struct {
	// ID is unique per user; empty on Enqueue means a random id.
	ID string
	// UserID is the recipient (required).
	UserID string
	// Type names the notification (the Novu workflow, say; required).
	Type    string
	Title   string
	Message string
	// Data is an optional JSON value passed through unchanged.
	Data     json.RawMessage
	Priority Priority
	// ScheduledFor is when it becomes due; zero on Enqueue means now.
	// Backends keep whole milliseconds.
	ScheduledFor time.Time
	// ExpiresAt, when set, is when it stops being worth sending (a
	// reminder after the appointment): it then goes to the dead set with
	// LastError "expired" instead of being delivered.
	ExpiresAt time.Time
	// Attempts counts deliveries started (claims).
	Attempts int
	// MaxAttempts is the number of deliveries before it goes to the dead
	// set; 0 on Enqueue means Config.MaxAttempts.
	MaxAttempts int
	// State when it was read.
	State State
	// LastError is the error of the last failed delivery ("expired" for an
	// expired one).
	LastError string
}

// Result is the outcome of one Enqueue.
type Result struct {
	ID string
	// State is the notification's state after the call.
	State State
	// Created is false when (user, id) was already stored or delivered.
	Created bool
	// Err is the item's error (EnqueueMany only); nil otherwise.
	Err error
}

// Stats counts notifications per state. Inflight includes the items of
// leases that have expired but not yet been claimed again (the next Claim
// of the user makes them pending again).
type Stats struct {
	Scheduled, Pending, Inflight, Retrying, Dead int64
	// Delivered counts acked and removed notifications since the data was
	// created (a counter, not a record).
	Delivered int64
	// DeadDropped counts dead notifications dropped because the dead set
	// was full (the oldest go first).
	DeadDropped int64
}

// Batch is one claimed user's notifications, leased to the claimer.
type Batch struct {
	UserID string
	Items  []Notification
	// Token fences the lease: Ack, Nack and Extend with a token that is no
	// longer the user's lease change nothing (ErrLeaseLost).
	Token string
	// ExpiresAt is when the lease expires, on the backend's clock (Redis
	// TIME).
	ExpiresAt time.Time
}

// Failure is one failed delivery for Nack.
type Failure struct {
	ID string
	// Err is recorded as LastError (its message, truncated to
	// MaxErrorLen bytes).
	Err error
	// RetryAfter, when positive, replaces the backoff (a Retry-After
	// header, say).
	RetryAfter time.Duration
	// Permanent sends the item to the dead set at once (a 4xx that no
	// retry will fix).
	Permanent bool
}

// Limits on arguments. Calls outside them return ErrInvalidArgument and
// write nothing. Ids, user ids and types must be valid UTF-8.
const (
	MaxIDLen     = 256
	MaxUserIDLen = 512
	MaxTypeLen   = 256
	// MaxPayloadSize bounds Type, Title, Message and Data together (64 KiB).
	MaxPayloadSize = 64 << 10
	// MaxAttemptsLimit is the largest MaxAttempts.
	MaxAttemptsLimit = 100
	// MaxBatch is the largest EnqueueMany, Remove or Ack/Nack list.
	MaxBatch = 10000
	// MaxPendingLimit is the largest Pending limit.
	MaxPendingLimit = 1000
	// MaxDeadLimit is the largest ListDead limit.
	MaxDeadLimit = 1000
	// MaxClaimUsers is the largest maxUsers of Claim; MaxPerUser the
	// largest perUser.
	MaxClaimUsers = 1000
	MaxPerUser    = 1000
	// MaxShards is the largest Config.Shards (the number of Cluster
	// slots).
	MaxShards = 16384
	// MaxErrorLen is the longest LastError kept, in bytes.
	MaxErrorLen = 1024
	// ReasonExpired is the LastError of a notification that expired.
	ReasonExpired = "expired"
)

// maxTime is the latest ScheduledFor or ExpiresAt (scores must stay exact).
var maxTime = time.UnixMilli(9_000_000_000_000) // year 2255

// Defaults of Config.
const (
	DefaultTimeout     = 500 * time.Millisecond
	DefaultShards      = 256
	DefaultLease       = 15 * time.Second
	DefaultBatchSize   = 5
	DefaultMaxAttempts = 10
	DefaultBackoffBase = 5 * time.Second
	DefaultBackoffCap  = time.Hour
	// DefaultDeadCap: the dead set keeps at most this many notifications
	// (on Redis, DeadCap/Shards per shard, rounded up); the oldest are
	// dropped, record and all.
	DefaultDeadCap = 10000
	// DefaultDeliveredCap: how many delivered ids are remembered so that
	// enqueueing one again is not queued twice (on Redis, per shard,
	// DeliveredCap/Shards rounded up); ids only, no payloads.
	DefaultDeliveredCap = 100000
)

// Sentinel errors. Backends wrap them with %w; errors.Is works across
// backends.
var (
	// ErrNotFound: no such notification (Cancel), or not dead
	// (RequeueDead). HTTP 404.
	ErrNotFound = errors.New("notify: not found")
	// ErrInvalidArgument: bad input; nothing was written. HTTP 400.
	ErrInvalidArgument = errors.New("notify: invalid argument")
	// ErrLeaseLost: the batch's lease was taken over or finished; the call
	// changed nothing.
	ErrLeaseLost = errors.New("notify: lease lost")
	// ErrBackend: the backend failed, timed out or is misconfigured. A
	// write that timed out may or may not have happened. HTTP 503.
	ErrBackend = errors.New("notify: backend unavailable")
)

// Config configures a Queue. The zero value is the documented default.
type Config struct {
	// Prefix of every Redis key; "" means "eleva:".
	Prefix string
	// KeyHashSecret, when set, HMACs user ids in key names (they still
	// appear in the stored records).
	KeyHashSecret []byte
	// Timeout bounds each call; 0 means DefaultTimeout (500ms).
	Timeout time.Duration
	// Shards is the number of due-index shards on Redis; 0 means
	// DefaultShards (256), at most MaxShards. Every instance must use the
	// same value: changing it makes queued notifications unreachable.
	// More shards make each claim read more due indexes (4096 measured
	// 10x fewer items/s than 256, bench/README.md): raise it only for a
	// Cluster whose nodes it must spread over.
	Shards int
	// Lease is how long a claim holds a user; 0 means DefaultLease (15s).
	Lease time.Duration
	// BatchSize is Claim's perUser default; 0 means DefaultBatchSize (5).
	BatchSize int
	// MaxAttempts is the default MaxAttempts; 0 means DefaultMaxAttempts.
	MaxAttempts int
	// BackoffBase and BackoffCap shape the retry delay; 0 means 5s and 1h.
	BackoffBase, BackoffCap time.Duration
	// DeadCap bounds the dead set; 0 means DefaultDeadCap.
	DeadCap int
	// DeliveredCap bounds the delivered-id record; 0 means
	// DefaultDeliveredCap.
	DeliveredCap int
	// Now is the memory backend's clock; nil means time.Now. The Redis
	// backend uses Redis TIME.
	Now func() time.Time
	// Logger receives backend failure logs (never payloads); nil means
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

func (c Config) timeout() time.Duration { return orDur(c.Timeout, DefaultTimeout) }
func (c Config) lease() time.Duration {
	return max(orDur(c.Lease, DefaultLease), time.Millisecond)
}
func (c Config) backoffBase() time.Duration { return orDur(c.BackoffBase, DefaultBackoffBase) }
func (c Config) backoffCap() time.Duration  { return orDur(c.BackoffCap, DefaultBackoffCap) }
func (c Config) shards() int                { return min(orInt(c.Shards, DefaultShards), MaxShards) }
func (c Config) batchSize() int             { return min(orInt(c.BatchSize, DefaultBatchSize), MaxPerUser) }
func (c Config) maxAttempts() int {
	return min(orInt(c.MaxAttempts, DefaultMaxAttempts), MaxAttemptsLimit)
}
func (c Config) deadCap() int      { return orInt(c.DeadCap, DefaultDeadCap) }
func (c Config) deliveredCap() int { return orInt(c.DeliveredCap, DefaultDeliveredCap) }

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
