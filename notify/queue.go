package notify

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"time"
	"unicode/utf8"
)

// item is a validated notification ready for a backend.
type item struct {
	n       Notification // ID filled in; ScheduledFor zero means "backend now"
	payload []byte       // the immutable part, encoded (see payload)
}

// payload is the immutable part of a stored notification, as JSON. The
// mutable part (state, due time, attempts, last error) is kept by the
// backend beside it.
type payload struct {
	U string          `json:"u"`
	T string          `json:"t"`
	H string          `json:"h,omitempty"`
	M string          `json:"m,omitempty"`
	D json.RawMessage `json:"d,omitempty"`
}

// nackItem is a validated Failure.
type nackItem struct {
	id        string
	delay     time.Duration // -1: the backend computes the backoff from attempts
	permanent bool
	err       string
}

// backend is what memory.go and redis.go implement. Inputs are validated.
type backend interface {
	enqueue(ctx context.Context, items []item) ([]Result, error)
	pending(ctx context.Context, userID string, limit int) ([]Notification, error)
	remove(ctx context.Context, userID string, ids []string) (int, error)
	cancel(ctx context.Context, userID, id string) (bool, error)
	stats(ctx context.Context) (Stats, error)
	listDead(ctx context.Context, limit int) ([]Notification, error)
	requeueDead(ctx context.Context, userID, id string) (bool, error)
	claim(ctx context.Context, maxUsers, perUser int) ([]Batch, error)
	ack(ctx context.Context, b Batch, ids []string) (int, error)
	nack(ctx context.Context, b Batch, fails []nackItem) (int, error)
	extend(ctx context.Context, b *Batch) error
}

// queue is the Queue of both backends: validation, defaults, metrics.
type queue struct {
	cfg    Config
	b      backend
	m      *metrics
	kind   string
	cfgErr error
	hub    hub // wakes idle workers (wake.go)
}

var _ Queue = (*queue)(nil)

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidArgument}, args...)...)
}

func checkUser(userID string) error {
	switch {
	case userID == "":
		return invalid("empty user id")
	case len(userID) > MaxUserIDLen:
		return invalid("user id longer than %d bytes", MaxUserIDLen)
	case !utf8.ValidString(userID):
		return invalid("user id is not valid UTF-8")
	}
	return nil
}

func checkID(id string) error {
	switch {
	case id == "":
		return invalid("empty id")
	case len(id) > MaxIDLen:
		return invalid("id longer than %d bytes", MaxIDLen)
	case !utf8.ValidString(id):
		return invalid("id is not valid UTF-8")
	}
	return nil
}

func checkIDs(ids []string) error {
	if len(ids) > MaxBatch {
		return invalid("more than %d ids", MaxBatch)
	}
	for _, id := range ids {
		if err := checkID(id); err != nil {
			return err
		}
	}
	return nil
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func newToken() string { return newID() }

// prepare validates n and fills in the defaults; now is Config.Now (the
// caller's clock on Redis), used only to check ExpiresAt when ScheduledFor
// is zero.
func (q *queue) prepare(n Notification, now time.Time) (item, error) {
	if err := checkUser(n.UserID); err != nil {
		return item{}, err
	}
	if n.ID == "" {
		n.ID = newID()
	} else if err := checkID(n.ID); err != nil {
		return item{}, err
	}
	switch {
	case n.Type == "":
		return item{}, invalid("empty type")
	case len(n.Type) > MaxTypeLen:
		return item{}, invalid("type longer than %d bytes", MaxTypeLen)
	case !utf8.ValidString(n.Type):
		return item{}, invalid("type is not valid UTF-8")
	case n.Priority.band() < 0:
		return item{}, invalid("priority %d is not high, normal or low", n.Priority)
	case n.MaxAttempts < 0 || n.MaxAttempts > MaxAttemptsLimit:
		return item{}, invalid("maxAttempts %d outside [1, %d]", n.MaxAttempts, MaxAttemptsLimit)
	case len(n.Data) > 0 && !json.Valid(n.Data):
		return item{}, invalid("data is not valid JSON")
	case len(n.Type)+len(n.Title)+len(n.Message)+len(n.Data) > MaxPayloadSize:
		return item{}, invalid("type, title, message and data larger than %d bytes", MaxPayloadSize)
	case !utf8.ValidString(n.Title) || !utf8.ValidString(n.Message):
		return item{}, invalid("title or message is not valid UTF-8")
	}
	if !n.ScheduledFor.IsZero() && (n.ScheduledFor.UnixMilli() <= 0 || n.ScheduledFor.After(maxTime)) {
		return item{}, invalid("scheduledFor out of range")
	}
	if !n.ExpiresAt.IsZero() {
		start := n.ScheduledFor
		if start.IsZero() {
			start = now
		}
		if n.ExpiresAt.After(maxTime) {
			return item{}, invalid("expiresAt out of range")
		}
		if !n.ExpiresAt.After(start) {
			return item{}, invalid("expiresAt is not after scheduledFor")
		}
	}
	if n.MaxAttempts == 0 {
		n.MaxAttempts = q.cfg.maxAttempts()
	}
	if len(n.Data) > 0 {
		n.Data = append(json.RawMessage(nil), n.Data...)
	} else {
		n.Data = nil
	}
	p, err := json.Marshal(payload{U: n.UserID, T: n.Type, H: n.Title, M: n.Message, D: n.Data})
	if err != nil {
		return item{}, invalid("data: %v", err)
	}
	n.Attempts, n.State, n.LastError = 0, "", ""
	return item{n: n, payload: p}, nil
}

// done records the outcome of op and returns err.
func (q *queue) done(op string, err error) error {
	q.m.op(q.kind, op, err)
	return err
}

func (q *queue) Enqueue(ctx context.Context, n Notification) (Result, error) {
	if q.cfgErr != nil {
		return Result{}, q.done("enqueue", q.cfgErr)
	}
	it, err := q.prepare(n, q.cfg.now()())
	if err != nil {
		return Result{}, q.done("enqueue", err)
	}
	res, err := q.b.enqueue(ctx, []item{it})
	if err != nil {
		return Result{}, q.done("enqueue", err)
	}
	r := res[0]
	if r.Err != nil {
		return Result{}, q.done("enqueue", r.Err)
	}
	q.m.enqueued(q.kind, r.Created)
	if r.Created {
		q.woke()
	}
	return r, q.done("enqueue", nil)
}

func (q *queue) EnqueueMany(ctx context.Context, ns []Notification) ([]Result, error) {
	if q.cfgErr != nil {
		return nil, q.done("enqueue_many", q.cfgErr)
	}
	if len(ns) > MaxBatch {
		return nil, q.done("enqueue_many", invalid("more than %d notifications", MaxBatch))
	}
	out := make([]Result, len(ns))
	items := make([]item, 0, len(ns))
	idx := make([]int, 0, len(ns))
	now := q.cfg.now()()
	for i, n := range ns {
		it, err := q.prepare(n, now)
		if err != nil {
			out[i] = Result{ID: n.ID, Err: err}
			continue
		}
		items = append(items, it)
		idx = append(idx, i)
	}
	if len(items) > 0 {
		res, err := q.b.enqueue(ctx, items)
		if err != nil {
			return nil, q.done("enqueue_many", err)
		}
		created := false
		for j, r := range res {
			out[idx[j]] = r
			if r.Err == nil {
				q.m.enqueued(q.kind, r.Created)
				created = created || r.Created
			}
		}
		if created {
			q.woke()
		}
	}
	return out, q.done("enqueue_many", nil)
}

func (q *queue) Pending(ctx context.Context, userID string, limit int) ([]Notification, error) {
	if q.cfgErr != nil {
		return nil, q.done("pending", q.cfgErr)
	}
	if err := checkUser(userID); err != nil {
		return nil, q.done("pending", err)
	}
	if limit < 0 || limit > MaxPendingLimit {
		return nil, q.done("pending", invalid("limit %d outside [0, %d]", limit, MaxPendingLimit))
	}
	if limit == 0 {
		limit = 10
	}
	out, err := q.b.pending(ctx, userID, limit)
	return out, q.done("pending", err)
}

func (q *queue) Remove(ctx context.Context, userID string, ids ...string) (int, error) {
	if q.cfgErr != nil {
		return 0, q.done("remove", q.cfgErr)
	}
	if err := checkUser(userID); err != nil {
		return 0, q.done("remove", err)
	}
	if err := checkIDs(ids); err != nil {
		return 0, q.done("remove", err)
	}
	if len(ids) == 0 {
		return 0, q.done("remove", nil)
	}
	n, err := q.b.remove(ctx, userID, ids)
	if err == nil {
		q.m.count(q.kind, "delivered", n)
	}
	return n, q.done("remove", err)
}

func (q *queue) Cancel(ctx context.Context, userID, id string) error {
	if q.cfgErr != nil {
		return q.done("cancel", q.cfgErr)
	}
	if err := checkUser(userID); err != nil {
		return q.done("cancel", err)
	}
	if err := checkID(id); err != nil {
		return q.done("cancel", err)
	}
	ok, err := q.b.cancel(ctx, userID, id)
	if err == nil && !ok {
		err = fmt.Errorf("%w: notification %q of the user", ErrNotFound, id)
	}
	return q.done("cancel", err)
}

func (q *queue) Stats(ctx context.Context) (Stats, error) {
	if q.cfgErr != nil {
		return Stats{}, q.done("stats", q.cfgErr)
	}
	s, err := q.b.stats(ctx)
	return s, q.done("stats", err)
}

func (q *queue) ListDead(ctx context.Context, limit int) ([]Notification, error) {
	if q.cfgErr != nil {
		return nil, q.done("list_dead", q.cfgErr)
	}
	if limit < 0 || limit > MaxDeadLimit {
		return nil, q.done("list_dead", invalid("limit %d outside [0, %d]", limit, MaxDeadLimit))
	}
	if limit == 0 {
		limit = 100
	}
	out, err := q.b.listDead(ctx, limit)
	return out, q.done("list_dead", err)
}

func (q *queue) RequeueDead(ctx context.Context, userID, id string) error {
	if q.cfgErr != nil {
		return q.done("requeue_dead", q.cfgErr)
	}
	if err := checkUser(userID); err != nil {
		return q.done("requeue_dead", err)
	}
	if err := checkID(id); err != nil {
		return q.done("requeue_dead", err)
	}
	ok, err := q.b.requeueDead(ctx, userID, id)
	if err == nil && !ok {
		err = fmt.Errorf("%w: no dead notification %q of the user", ErrNotFound, id)
	}
	if err == nil {
		q.woke()
	}
	return q.done("requeue_dead", err)
}

func (q *queue) Claim(ctx context.Context, maxUsers, perUser int) ([]Batch, error) {
	if q.cfgErr != nil {
		return nil, q.done("claim", q.cfgErr)
	}
	if maxUsers < 0 || maxUsers > MaxClaimUsers {
		return nil, q.done("claim", invalid("maxUsers %d outside [0, %d]", maxUsers, MaxClaimUsers))
	}
	if perUser < 0 || perUser > MaxPerUser {
		return nil, q.done("claim", invalid("perUser %d outside [0, %d]", perUser, MaxPerUser))
	}
	maxUsers = max(maxUsers, 1)
	if perUser == 0 {
		perUser = q.cfg.batchSize()
	}
	bs, err := q.b.claim(ctx, maxUsers, perUser)
	if err == nil {
		n := 0
		for _, b := range bs {
			n += len(b.Items)
		}
		q.m.count(q.kind, "claimed", n)
	}
	return bs, q.done("claim", err)
}

func checkBatch(b Batch) error {
	if err := checkUser(b.UserID); err != nil {
		return err
	}
	if b.Token == "" {
		return invalid("batch without a lease token")
	}
	return nil
}

// detach keeps ctx's values but not its cancellation: acks must not be lost
// to a caller that went away. The backend adds Config.Timeout.
func detach(ctx context.Context) context.Context { return context.WithoutCancel(ctx) }

func (q *queue) Ack(ctx context.Context, b Batch, ids ...string) (int, error) {
	if q.cfgErr != nil {
		return 0, q.done("ack", q.cfgErr)
	}
	if err := checkBatch(b); err != nil {
		return 0, q.done("ack", err)
	}
	if err := checkIDs(ids); err != nil {
		return 0, q.done("ack", err)
	}
	n, err := q.b.ack(detach(ctx), b, ids)
	if err == nil {
		q.m.count(q.kind, "delivered", n)
	}
	return n, q.done("ack", err)
}

func (q *queue) Nack(ctx context.Context, b Batch, failures ...Failure) (int, error) {
	if q.cfgErr != nil {
		return 0, q.done("nack", q.cfgErr)
	}
	if err := checkBatch(b); err != nil {
		return 0, q.done("nack", err)
	}
	if len(failures) > MaxBatch {
		return 0, q.done("nack", invalid("more than %d failures", MaxBatch))
	}
	attempts := make(map[string]int, len(b.Items))
	for _, it := range b.Items {
		attempts[it.ID] = it.Attempts
	}
	fails := make([]nackItem, 0, len(failures))
	for _, f := range failures {
		if err := checkID(f.ID); err != nil {
			return 0, q.done("nack", err)
		}
		if f.RetryAfter < 0 {
			return 0, q.done("nack", invalid("negative RetryAfter"))
		}
		msg := "failed"
		if f.Err != nil {
			msg = f.Err.Error()
		}
		fails = append(fails, nackItem{id: f.ID, delay: q.retryDelay(f, attempts[f.ID]), permanent: f.Permanent, err: truncate(msg, MaxErrorLen)})
	}
	if len(fails) == 0 {
		return 0, q.done("nack", nil)
	}
	n, err := q.b.nack(detach(ctx), b, fails)
	if err == nil {
		q.m.count(q.kind, "failed", n)
	}
	return n, q.done("nack", err)
}

// retryDelay is f.RetryAfter, or the full-jitter exponential backoff of the
// attempts the item had when it was claimed.
func (q *queue) retryDelay(f Failure, attempts int) time.Duration {
	if f.RetryAfter > 0 {
		return f.RetryAfter
	}
	return backoff(q.cfg.backoffBase(), q.cfg.backoffCap(), attempts, mrand.Int64N)
}

// backoff is a random duration in [0, min(limit, base·2^(attempts-1))]
// (full jitter); rnd(n) returns a number in [0, n).
func backoff(base, limit time.Duration, attempts int, rnd func(int64) int64) time.Duration {
	ceil := base
	for i := 1; i < attempts && ceil < limit; i++ {
		ceil *= 2
	}
	ceil = min(ceil, limit)
	if ceil <= 0 {
		return 0
	}
	return time.Duration(rnd(int64(ceil) + 1))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

func (q *queue) Extend(ctx context.Context, b *Batch) error {
	if q.cfgErr != nil {
		return q.done("extend", q.cfgErr)
	}
	if b == nil {
		return q.done("extend", invalid("nil batch"))
	}
	if err := checkBatch(*b); err != nil {
		return q.done("extend", err)
	}
	return q.done("extend", q.b.extend(detach(ctx), b))
}

// leaseLost is the error of a fenced call whose lease is gone.
func leaseLost(op string) error { return fmt.Errorf("%w: %s", ErrLeaseLost, op) }
