package analytics

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/keys"
	"github.com/elevacare/eleva-redis/internal/lograte"
)

// keyCapability is the capability part of every key.
const keyCapability = "an"

// Group is the consumer group of the forwarders on the Redis event stream.
const Group = "forwarders"

var (
	//go:embed incr.lua
	incrSrc string
	//go:embed unique.lua
	uniqueSrc string
	//go:embed capture.lua
	captureSrc string
	//go:embed ack.lua
	ackSrc string
	//go:embed dead.lua
	deadSrc string
	//go:embed group.lua
	groupSrc string

	incrScript    = rueidis.NewLuaScript(incrSrc)
	uniqueScript  = rueidis.NewLuaScript(uniqueSrc)
	captureScript = rueidis.NewLuaScript(captureSrc)
	ackScript     = rueidis.NewLuaScript(ackSrc)
	deadScript    = rueidis.NewLuaScript(deadSrc)
	groupScript   = rueidis.NewLuaScript(groupSrc)
)

type redisStore struct {
	client rueidis.Client
	cfg    Config
	kb     keys.Builder
	m      *metrics
	log    *lograte.Limiter
	cfgErr error

	stream, dead, sent string
	dropped            atomic.Int64
	grouped            atomic.Bool
}

var (
	_ Store  = (*redisStore)(nil)
	_ Buffer = (*redisStore)(nil)
)

// NewRedis returns a Store in Redis (standalone, Sentinel or Cluster) through
// client, shared by every instance using the same Prefix and KeyHashSecret.
//
// Keys (<m> is the key-safe metric name, <d> the UTC day YYYY-MM-DD, <u> the
// key-safe user id):
//
//	<prefix>an:{<m>:<d>}:n      day total (string), INCRBY
//	<prefix>an:{<m>:<d>}:u      per-user counts of the day (hash <u> -> count)
//	<prefix>an:{h:<m>}:<d>      unique members of the day (HyperLogLog)
//	<prefix>an:{events}:s       event stream (the durable buffer)
//	<prefix>an:{events}:d       dead-letter stream
//	<prefix>an:{events}:n       events sent (counter)
//
// A day's total and user counts share a hash tag, so one script updates
// both with their TTL; days are in different slots, read with one pipelined
// GET each. A metric's HyperLogLogs share a hash tag, so one PFCOUNT unions a
// range (all of one metric's sketches live on one Cluster node). The three
// event keys share one tag, so settling an entry is one script (the event
// buffer lives on one node).
//
// Counter and sketch keys expire at the end of their day plus
// Config.Retention, set in the step that writes them. The streams get
// Config.StreamTTL, refreshed by every write.
//
// NewRedis has no error result: when cfg is invalid (a bad Prefix) or
// client is nil, the problem is logged once and every call returns an error
// wrapping ErrBackend.
func NewRedis(client rueidis.Client, cfg Config) Store {
	var cfgErr error
	kb, err := keys.New(cfg.Prefix, cfg.KeyHashSecret)
	switch {
	case err != nil:
		cfgErr = fmt.Errorf("%w: %w", ErrBackend, err)
	case client == nil:
		cfgErr = fmt.Errorf("%w: NewRedis was given a nil client", ErrBackend)
	}
	if cfgErr != nil {
		cfg.logger().Error("analytics: unusable Redis configuration; every call will fail", "err", cfgErr.Error())
	}
	s := &redisStore{client: client, cfg: cfg, kb: kb, m: newMetrics(cfg.Registerer), log: lograte.New(cfg.logger(), 0), cfgErr: cfgErr}
	if cfgErr == nil {
		ev := kb.RawKey(keyCapability, "events")
		s.stream, s.dead, s.sent = ev+":s", ev+":d", ev+":n"
	}
	return s
}

func (s *redisStore) dayKey(metric string, d time.Time) string {
	return s.kb.RawKey(keyCapability, s.kb.ID(metric)+":"+dayString(d))
}

func (s *redisStore) hllKey(metric string, d time.Time) string {
	return s.kb.RawKey(keyCapability, "h:"+s.kb.ID(metric), dayString(d))
}

// failed wraps a Redis error in ErrBackend, counts it and logs it (rate
// limited, never the keys or arguments).
func (s *redisStore) failed(op string, err error) error {
	err = fmt.Errorf("%w: %s: %w", ErrBackend, op, err)
	s.m.fail("redis", op, err)
	s.log.Log(slog.LevelWarn, "analytics: redis call failed", "op", op, "err", err.Error())
	return err
}

func (s *redisStore) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.cfg.timeout())
}

func (s *redisStore) Incr(ctx context.Context, metric string, by int64, at time.Time, opts ...Option) (int64, error) {
	if err := CheckMetric(metric); err != nil {
		return 0, err
	}
	if err := checkBy(by); err != nil {
		return 0, err
	}
	o, err := resolve(opts)
	if err != nil {
		return 0, err
	}
	d, exp, err := s.cfg.bucket(at)
	if err != nil {
		return 0, err
	}
	if s.cfgErr != nil {
		return 0, s.cfgErr
	}
	base := s.dayKey(metric, d)
	ks := []string{base + ":n"}
	args := []string{strconv.FormatInt(by, 10), strconv.FormatInt(exp.UnixMilli(), 10)}
	if o.hasUser {
		ks = append(ks, base+":u")
		args = append(args, s.kb.ID(o.user))
	}
	cctx, cancel := s.ctx(ctx)
	defer cancel()
	v, err := incrScript.Exec(cctx, s.client, ks, args).AsInt64()
	if err != nil {
		return 0, s.failed("incr", err)
	}
	return v, nil
}

func (s *redisStore) Series(ctx context.Context, metric string, from, to time.Time, opts ...Option) ([]Point, error) {
	if err := CheckMetric(metric); err != nil {
		return nil, err
	}
	o, err := resolve(opts)
	if err != nil {
		return nil, err
	}
	ds, err := days(from, to)
	if err != nil {
		return nil, err
	}
	if s.cfgErr != nil {
		return nil, s.cfgErr
	}
	uid := ""
	if o.hasUser {
		uid = s.kb.ID(o.user)
	}
	cmds := make(rueidis.Commands, len(ds))
	for i, d := range ds {
		base := s.dayKey(metric, d)
		if o.hasUser {
			cmds[i] = s.client.B().Hget().Key(base + ":u").Field(uid).Build()
		} else {
			cmds[i] = s.client.B().Get().Key(base + ":n").Build()
		}
	}
	cctx, cancel := s.ctx(ctx)
	defer cancel()
	out := make([]Point, len(ds))
	for i, r := range s.client.DoMulti(cctx, cmds...) {
		out[i].Date = ds[i]
		v, err := r.AsInt64()
		if rueidis.IsRedisNil(err) {
			continue
		}
		if err != nil {
			return nil, s.failed("series", err)
		}
		out[i].Value = v
	}
	return out, nil
}

func (s *redisStore) Total(ctx context.Context, metric string, from, to time.Time, opts ...Option) (int64, error) {
	ps, err := s.Series(ctx, metric, from, to, opts...)
	return sum(ps), err
}

func (s *redisStore) AddUnique(ctx context.Context, metric, member string, at time.Time) error {
	if err := CheckMetric(metric); err != nil {
		return err
	}
	if err := checkName("member", member); err != nil {
		return err
	}
	d, exp, err := s.cfg.bucket(at)
	if err != nil {
		return err
	}
	if s.cfgErr != nil {
		return s.cfgErr
	}
	cctx, cancel := s.ctx(ctx)
	defer cancel()
	// The member is HMACed like a user id: the sketch never needs it back.
	err = uniqueScript.Exec(cctx, s.client, []string{s.hllKey(metric, d)},
		[]string{s.kb.ID(member), strconv.FormatInt(exp.UnixMilli(), 10)}).Error()
	if err != nil {
		return s.failed("unique_add", err)
	}
	return nil
}

func (s *redisStore) CountUnique(ctx context.Context, metric string, from, to time.Time) (int64, error) {
	if err := CheckMetric(metric); err != nil {
		return 0, err
	}
	ds, err := days(from, to)
	if err != nil {
		return 0, err
	}
	if s.cfgErr != nil {
		return 0, s.cfgErr
	}
	ks := make([]string, len(ds))
	for i, d := range ds {
		ks[i] = s.hllKey(metric, d)
	}
	cctx, cancel := s.ctx(ctx)
	defer cancel()
	n, err := s.client.Do(cctx, s.client.B().Pfcount().Key(ks...).Build()).AsInt64()
	if err != nil {
		return 0, s.failed("unique_count", err)
	}
	return n, nil
}

func (s *redisStore) Capture(ctx context.Context, ev Event) error {
	_, err := s.CaptureMany(ctx, []Event{ev})
	return err
}

func (s *redisStore) CaptureMany(ctx context.Context, evs []Event) (int, error) {
	if len(evs) == 0 {
		return 0, nil
	}
	args := make([]string, 2, len(evs)+2)
	args[0] = strconv.Itoa(s.cfg.streamCap())
	args[1] = strconv.FormatInt(s.cfg.streamTTL().Milliseconds(), 10)
	for i, ev := range evs {
		_, b, err := s.cfg.prepare(ev)
		if err != nil {
			return 0, fmt.Errorf("event %d: %w", i, err)
		}
		args = append(args, string(b))
	}
	if s.cfgErr != nil {
		s.m.drop("capture_error", len(evs))
		return 0, s.cfgErr
	}
	cctx, cancel := s.ctx(ctx)
	defer cancel()
	trimmed, err := captureScript.Exec(cctx, s.client, []string{s.stream}, args).AsInt64()
	if err != nil {
		s.m.drop("capture_error", len(evs))
		return 0, s.failed("capture", err)
	}
	if trimmed > 0 {
		s.dropped.Add(trimmed)
		s.m.drop("trimmed", int(trimmed))
		s.log.Log(slog.LevelWarn, "analytics: the event stream is over StreamCap; the oldest events were trimmed", "trimmed", trimmed)
	}
	return len(evs), nil
}

func (s *redisStore) Buffer() Buffer { return s }

func (s *redisStore) Stats(ctx context.Context) (Stats, error) {
	if s.cfgErr != nil {
		return Stats{}, s.cfgErr
	}
	cctx, cancel := s.ctx(ctx)
	defer cancel()
	res := s.client.DoMulti(cctx,
		s.client.B().Xlen().Key(s.stream).Build(),
		s.client.B().Xlen().Key(s.dead).Build(),
		s.client.B().Get().Key(s.sent).Build(),
		s.client.B().Xpending().Key(s.stream).Group(Group).Build(),
	)
	st := Stats{Dropped: s.dropped.Load()}
	var err error
	if st.Buffered, err = res[0].AsInt64(); err != nil {
		return Stats{}, s.failed("stats", err)
	}
	if st.Dead, err = res[1].AsInt64(); err != nil {
		return Stats{}, s.failed("stats", err)
	}
	if st.Sent, err = res[2].AsInt64(); err != nil && !rueidis.IsRedisNil(err) {
		return Stats{}, s.failed("stats", err)
	}
	if arr, err := res[3].ToArray(); err == nil && len(arr) > 0 {
		st.Retrying, _ = arr[0].AsInt64()
	} else if err != nil && !noGroup(err) {
		return Stats{}, s.failed("stats", err)
	}
	return st, nil
}

func noGroup(err error) bool {
	e, ok := rueidis.IsRedisErr(err)
	return ok && strings.HasPrefix(e.Error(), "NOGROUP")
}

func (s *redisStore) ensureGroup(ctx context.Context) error {
	cctx, cancel := s.ctx(ctx)
	defer cancel()
	err := groupScript.Exec(cctx, s.client, []string{s.stream},
		[]string{Group, strconv.FormatInt(s.cfg.streamTTL().Milliseconds(), 10)}).Error()
	if err != nil {
		return s.failed("read", err)
	}
	s.grouped.Store(true)
	return nil
}

func (s *redisStore) Read(ctx context.Context, consumer string, max int, claimAfter, wait time.Duration) ([]Entry, error) {
	if max <= 0 || consumer == "" {
		return nil, fmt.Errorf("%w: Read needs a consumer and a positive max", ErrInvalidArgument)
	}
	if s.cfgErr != nil {
		return nil, s.cfgErr
	}
	if !s.grouped.Load() {
		if err := s.ensureGroup(ctx); err != nil {
			return nil, err
		}
	}
	out, err := s.read(ctx, consumer, max, claimAfter, wait)
	var ge *groupErr
	if errors.As(err, &ge) {
		// The stream expired or was deleted (and the group with it).
		s.grouped.Store(false)
		if err := s.ensureGroup(ctx); err != nil {
			return nil, err
		}
		out, err = s.read(ctx, consumer, max, claimAfter, wait)
	}
	return out, err
}

// read takes over entries idle for claimAfter (XAUTOCLAIM), then reads new
// ones (XREADGROUP, blocking up to wait when there was nothing to take over).
func (s *redisStore) read(ctx context.Context, consumer string, max int, claimAfter, wait time.Duration) ([]Entry, error) {
	cctx, cancel := s.ctx(ctx)
	res, err := s.client.Do(cctx, s.client.B().Xautoclaim().Key(s.stream).Group(Group).Consumer(consumer).
		MinIdleTime(strconv.FormatInt(claimAfter.Milliseconds(), 10)).Start("0-0").Count(int64(max)).Build()).ToArray()
	cancel()
	if err != nil {
		return nil, s.failedRaw("read", err)
	}
	var out []Entry
	if len(res) >= 2 {
		xs, err := res[1].AsXRange()
		if err != nil {
			return nil, s.failedRaw("read", err)
		}
		out = appendEntries(out, xs)
	}
	if len(out) >= max {
		return out, nil
	}
	cmd := s.client.B().Xreadgroup().Group(Group, consumer).Count(int64(max - len(out)))
	var built rueidis.Completed
	block := wait > 0 && len(out) == 0
	if block {
		built = cmd.Block(max64(wait.Milliseconds(), 1)).Streams().Key(s.stream).Id(">").Build()
	} else {
		built = cmd.Streams().Key(s.stream).Id(">").Build()
	}
	timeout := s.cfg.timeout()
	if block {
		timeout += wait
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	m, err := s.client.Do(rctx, built).AsXRead()
	if rueidis.IsRedisNil(err) {
		return out, nil
	}
	if err != nil {
		if block && ctx.Err() != nil {
			// Interrupted (a Forwarder closing): whatever this read took
			// stays pending and is taken over after claimAfter.
			return out, nil
		}
		return nil, s.failedRaw("read", err)
	}
	return appendEntries(out, m[s.stream]), nil
}

// failedRaw is failed, keeping the Redis error reachable by errors.Unwrap
// for the NOGROUP check.
func (s *redisStore) failedRaw(op string, err error) error {
	if noGroup(err) {
		return &groupErr{err}
	}
	return s.failed(op, err)
}

type groupErr struct{ err error }

func (e *groupErr) Error() string { return ErrBackend.Error() + ": read: " + e.err.Error() }
func (e *groupErr) Unwrap() error { return e.err }
func (e *groupErr) Is(t error) bool {
	return t == ErrBackend
}

func appendEntries(out []Entry, xs []rueidis.XRangeEntry) []Entry {
	for _, x := range xs {
		if d, ok := x.FieldValues["e"]; ok {
			out = append(out, Entry{ID: x.ID, Data: []byte(d)})
		}
	}
	return out
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

func (s *redisStore) Ack(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	if s.cfgErr != nil {
		return s.cfgErr
	}
	args := append([]string{Group, strconv.FormatInt(s.cfg.streamTTL().Milliseconds(), 10)}, ids...)
	cctx, cancel := s.ctx(context.WithoutCancel(ctx))
	defer cancel()
	if err := ackScript.Exec(cctx, s.client, []string{s.stream, s.sent}, args).Error(); err != nil {
		return s.failed("ack", err)
	}
	return nil
}

func (s *redisStore) Dead(ctx context.Context, entries []Entry, reason string) error {
	if len(entries) == 0 {
		return nil
	}
	if s.cfgErr != nil {
		return s.cfgErr
	}
	args := []string{Group, strconv.Itoa(s.cfg.deadCap()), strconv.FormatInt(s.cfg.streamTTL().Milliseconds(), 10), reason}
	for _, e := range entries {
		args = append(args, e.ID, string(e.Data))
	}
	cctx, cancel := s.ctx(context.WithoutCancel(ctx))
	defer cancel()
	if err := deadScript.Exec(cctx, s.client, []string{s.stream, s.dead}, args).Error(); err != nil {
		return s.failed("dead", err)
	}
	return nil
}
