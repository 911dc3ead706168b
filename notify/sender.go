package notify

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"
)

// Sender delivers one user's claimed notifications (a Worker calls it with
// each batch). It returns one Delivery per item, in the order of items;
// a missing or zero Delivery counts as a retry. Send must honour ctx, and it
// must not log or return in errors the titles, messages or data of the
// notifications (health data): ids, types and status codes only.
//
// Delivery is at least once: a batch can be sent again after a crash or a
// lost lease, so a Sender should pass the notification id to the receiver
// as an idempotency key (NovuSender and WebhookSender do).
type Sender interface {
	Send(ctx context.Context, userID string, items []Notification) []Delivery
}

// BulkSender is a Sender that can also deliver many users' notifications
// in one request (Novu's bulk trigger). When one Claim brings at least
// BulkSize items, the Worker sends them in full chunks of exactly BulkSize
// items, across users, through SendBulk, and the rest of each user's batch
// through Send; each item's Delivery is then acked or nacked with its own
// user's lease, as usual. A BulkSize below 2 turns bulk sending off.
type BulkSender interface {
	Sender
	BulkSize() int
	// SendBulk returns one Delivery per item, in the order of items.
	SendBulk(ctx context.Context, items []BulkItem) []Delivery
}

// BulkItem is one notification of a bulk send, with its user.
type BulkItem struct {
	UserID string
	Notification
}

// SenderFunc adapts a function to Sender.
type SenderFunc func(ctx context.Context, userID string, items []Notification) []Delivery

// Send calls f.
func (f SenderFunc) Send(ctx context.Context, userID string, items []Notification) []Delivery {
	return f(ctx, userID, items)
}

// Outcome of one delivery.
type Outcome uint8

// Outcomes. The zero Outcome is invalid (a retry), so that a Sender that
// forgets a result never marks an item delivered.
const (
	// OutcomeDelivered: the receiver has it; the Worker acks it.
	OutcomeDelivered Outcome = iota + 1
	// OutcomeRetry: a transient failure (5xx, timeout); the Worker nacks
	// it: retried after Delivery.After, or the queue's backoff when zero,
	// or dead after MaxAttempts.
	OutcomeRetry
	// OutcomePermanent: no retry can help (a 4xx); it goes to the dead set
	// with Delivery.Err.
	OutcomePermanent
	// OutcomePause: the receiver asked us to slow down (429). The Worker
	// pauses every send for Delivery.After and then sends the item again
	// under the same lease: no attempt is used.
	OutcomePause
)

// String returns delivered, retry, permanent, pause or invalid.
func (o Outcome) String() string {
	switch o {
	case OutcomeDelivered:
		return "delivered"
	case OutcomeRetry:
		return "retry"
	case OutcomePermanent:
		return "permanent"
	case OutcomePause:
		return "pause"
	}
	return "invalid"
}

// Delivery is the result of sending one notification.
type Delivery struct {
	Outcome Outcome
	// Err says why it failed (recorded as LastError; no payloads).
	Err error
	// After is the retry delay of OutcomeRetry (0: the queue's backoff)
	// or the pause of OutcomePause (0: DefaultPause).
	After time.Duration
}

// Delivered is a successful Delivery.
func Delivered() Delivery { return Delivery{Outcome: OutcomeDelivered} }

// Retry is a transient failure, retried after after (0: the backoff).
func Retry(err error, after time.Duration) Delivery {
	return Delivery{Outcome: OutcomeRetry, Err: err, After: after}
}

// Permanent is a failure that sends the item to the dead set.
func Permanent(err error) Delivery { return Delivery{Outcome: OutcomePermanent, Err: err} }

// Pause asks the Worker to stop sending for d and send the item again
// without using an attempt.
func Pause(err error, d time.Duration) Delivery {
	return Delivery{Outcome: OutcomePause, Err: err, After: d}
}

// DefaultPause is the pause of a 429 without a usable Retry-After.
const DefaultPause = time.Second

// Sender errors, wrapped with the receiver and status.
var (
	// ErrSendRejected: the receiver refused the notification for good
	// (OutcomePermanent).
	ErrSendRejected = errors.New("notify: send rejected")
	// ErrSendFailed: a transient failure (OutcomeRetry).
	ErrSendFailed = errors.New("notify: send failed")
	// ErrRateLimited: the receiver answered 429 (OutcomePause).
	ErrRateLimited = errors.New("notify: rate limited")
)

// LogSender is the development Sender: it logs each notification's id,
// type, priority and attempt (never the user id, title, message or data)
// and reports it delivered.
type LogSender struct {
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Send logs items and returns Delivered for each.
func (s LogSender) Send(ctx context.Context, _ string, items []Notification) []Delivery {
	log := s.Logger
	if log == nil {
		log = slog.Default()
	}
	out := make([]Delivery, len(items))
	for i, n := range items {
		log.LogAttrs(ctx, slog.LevelInfo, "notify: delivered (log sender)",
			slog.String("id", n.ID), slog.String("type", n.Type),
			slog.String("priority", n.Priority.String()), slog.Int("attempt", n.Attempts))
		out[i] = Delivered()
	}
	return out
}

// defaultHTTPClient is the client of the HTTP senders when none is given.
func defaultHTTPClient() *http.Client { return &http.Client{Timeout: 10 * time.Second} }

// maxRetryAfter bounds a Retry-After.
const maxRetryAfter = 24 * time.Hour

// retryAfter parses a Retry-After header (seconds or an HTTP date); 0 when
// absent or unusable.
func retryAfter(h string, now time.Time) time.Duration {
	if h == "" {
		return 0
	}
	if s, err := strconv.Atoi(h); err == nil {
		if s < 0 {
			return 0
		}
		return min(time.Duration(min(s, 24*3600))*time.Second, maxRetryAfter)
	}
	if t, err := http.ParseTime(h); err == nil {
		return min(max(0, t.Sub(now)), maxRetryAfter)
	}
	return 0
}

// byStatus maps an HTTP status to a Delivery the way both HTTP senders
// do: 2xx delivered; 429 pause (Retry-After); 408 and 5xx retry (with
// Retry-After when the receiver sent one); other 4xx permanent when
// permanent(code) says so, else retry; anything else retry.
func byStatus(what string, code int, header http.Header, now time.Time, permanent func(int) bool) Delivery {
	ra := retryAfter(header.Get("Retry-After"), now)
	switch {
	case code >= 200 && code < 300:
		return Delivered()
	case code == http.StatusTooManyRequests:
		return Pause(statusErr(ErrRateLimited, what, code), ra)
	case code >= 400 && code < 500 && code != http.StatusRequestTimeout && permanent(code):
		return Permanent(statusErr(ErrSendRejected, what, code))
	}
	return Retry(statusErr(ErrSendFailed, what, code), ra)
}

func statusErr(kind error, what string, code int) error {
	return &statusError{kind: kind, what: what, code: code}
}

// statusError is a sender's HTTP failure: the status only, never the body
// (a receiver may echo the payload in its error).
type statusError struct {
	kind error
	what string
	code int
}

func (e *statusError) Error() string {
	return e.kind.Error() + ": " + e.what + ": HTTP " + strconv.Itoa(e.code) + " " + http.StatusText(e.code)
}

func (e *statusError) Unwrap() error { return e.kind }

// transportErr is a request that got no response (a timeout, a refused
// connection): retried.
func transportErr(what string, err error) Delivery {
	var msg string
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		msg = "timeout"
	case errors.Is(err, context.Canceled):
		msg = "canceled"
	default:
		var te interface{ Timeout() bool }
		if errors.As(err, &te) && te.Timeout() {
			msg = "timeout"
		} else {
			msg = "no response"
		}
	}
	return Retry(&wrapped{kind: ErrSendFailed, msg: what + ": " + msg, err: err}, 0)
}

type wrapped struct {
	kind error
	msg  string
	err  error
}

func (e *wrapped) Error() string   { return e.kind.Error() + ": " + e.msg }
func (e *wrapped) Unwrap() []error { return []error{e.kind, e.err} }
