package realtime

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/keys"
	"github.com/elevacare/eleva-redis/internal/lograte"
)

var (
	//go:embed publish.lua
	publishSrc string
	//go:embed history.lua
	historySrc string

	publishScript = rueidis.NewLuaScript(publishSrc)
	historyScript = rueidis.NewLuaScript(historySrc)
)

// capability is the key segment of this package's keys.
const capability = "rt"

// NewRedis returns a Broker on client. Keys (all of one channel share the
// channel's hash tag, so a Publish is one script on Cluster):
//
//	<prefix>rt:{<channel>}:m        meta hash: epoch, last offset
//	<prefix>rt:{<channel>}:h        history stream, ids "<offset>-0"
//	<prefix>rt:{<channel>}:i:<key>  idempotency record
//	<prefix>rt:{<channel>}:ps       Pub/Sub channel (SPUBLISH on Cluster)
//	<prefix>rt:{presence:<subject>}:p  presence heartbeat
//
// It returns an error for a Prefix that keys.New refuses.
func NewRedis(client rueidis.Client, cfg Config) (Broker, error) {
	kb, err := keys.New(cfg.Prefix, cfg.KeyHashSecret)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	m := newMetrics(cfg.Registerer)
	st := &redisStore{
		client:  client,
		cfg:     cfg,
		keys:    kb,
		sharded: client.Mode() == rueidis.ClientModeCluster,
		log:     lograte.New(cfg.logger(), 0),
		m:       m,
	}
	b := &broker{cfg: cfg, kind: "redis", st: st, m: m}
	b.hub = newHub(m)
	if st.sharded {
		b.hub.shared = newClusterFeed(st)
	} else {
		b.hub.shared = newSharedFeed(st)
	}
	return b, nil
}

type redisStore struct {
	client  rueidis.Client
	cfg     Config
	keys    keys.Builder
	sharded bool
	log     *lograte.Limiter
	m       *metrics
}

type chanKeys struct{ meta, hist, ps, tag string }

func (s *redisStore) keysFor(channel string) chanKeys {
	tag := s.keys.ID(channel)
	return chanKeys{
		meta: s.keys.RawKey(capability, tag, "m"),
		hist: s.keys.RawKey(capability, tag, "h"),
		ps:   s.keys.RawKey(capability, tag, "ps"),
		tag:  tag,
	}
}

func (s *redisStore) pubCmd() string {
	if s.sharded {
		return "SPUBLISH"
	}
	return "PUBLISH"
}

func (s *redisStore) exec(ctx context.Context, script *rueidis.Lua, keys, args []string) rueidis.RedisResult {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.timeout())
	defer cancel()
	return script.Exec(ctx, s.client, keys, args)
}

func (s *redisStore) publish(ctx context.Context, channel string, data []byte, idemKey string) (Position, error) {
	k := s.keysFor(channel)
	ks := []string{k.meta, k.hist}
	mode, extraTTL := "", "0"
	if idemKey != "" {
		ks = append(ks, s.keys.RawKey(capability, k.tag, "i", idemKey))
		mode, extraTTL = "idem", ms(s.cfg.idempotencyTTL())
	}
	res := s.exec(ctx, publishScript, ks, []string{
		string(data), strconv.Itoa(s.cfg.historySize()), ms(s.cfg.historyTTL()), k.ps, s.pubCmd(), newEpoch(), mode, extraTTL, "",
	})
	p, _, err := parsePublish(res)
	if err != nil {
		s.fail("publish", err)
		return Position{}, backendErr("publish", err)
	}
	return p, nil
}

func parsePublish(res rueidis.RedisResult) (Position, int64, error) {
	arr, err := res.ToArray()
	if err != nil {
		return Position{}, 0, err
	}
	if len(arr) != 4 {
		return Position{}, 0, errors.New("unexpected script reply")
	}
	e, err1 := arr[0].ToString()
	o, err2 := arr[1].AsInt64()
	t, err3 := arr[2].AsInt64()
	if err := errors.Join(err1, err2, err3); err != nil {
		return Position{}, 0, err
	}
	return Position{Epoch: e, Offset: uint64(o)}, t, nil
}

func (s *redisStore) history(ctx context.Context, channel string, since uint64, limit int) (History, error) {
	k := s.keysFor(channel)
	res := s.exec(ctx, historyScript, []string{k.meta, k.hist}, []string{strconv.FormatUint(since, 10), strconv.Itoa(limit)})
	h, err := parseHistory(channel, res)
	if err != nil {
		s.fail("history", err)
		return History{}, backendErr("history", err)
	}
	return h, nil
}

func parseHistory(channel string, res rueidis.RedisResult) (History, error) {
	arr, err := res.ToArray()
	if err != nil {
		return History{}, err
	}
	if len(arr) != 3 {
		return History{}, errors.New("unexpected script reply")
	}
	e, err := arr[0].ToString()
	if err != nil {
		return History{}, err
	}
	top, err := arr[1].AsInt64()
	if err != nil {
		return History{}, err
	}
	h := History{Epoch: e, Top: uint64(top)}
	if e == "" {
		return h, nil
	}
	// The entries are read in place ([id, [field, value, ...]] each), without
	// the map per entry of AsXRange: recovery reads many of them.
	entries, err := arr[2].ToArray()
	if err != nil {
		return History{}, err
	}
	h.Messages = make([]*Message, 0, len(entries))
	for _, en := range entries {
		m, err := parseEntry(channel, e, en)
		if err != nil {
			return History{}, err
		}
		h.Messages = append(h.Messages, m)
	}
	return h, nil
}

// parseEntry reads one history entry: id "<offset>-0", fields d (data) and
// t (published at, unix ms).
func parseEntry(channel, epoch string, en rueidis.RedisMessage) (*Message, error) {
	kv, err := en.ToArray()
	if err != nil || len(kv) != 2 {
		return nil, errors.New("malformed history entry")
	}
	id, err := kv[0].ToString()
	if err != nil {
		return nil, err
	}
	off, _, ok := strings.Cut(id, "-")
	o, err := strconv.ParseUint(off, 10, 64)
	if !ok || err != nil {
		return nil, fmt.Errorf("history entry id %q", id)
	}
	fields, err := kv[1].ToArray()
	if err != nil {
		return nil, err
	}
	m := &Message{Channel: channel, Epoch: epoch, Offset: o}
	for i := 0; i+1 < len(fields); i += 2 {
		f, _ := fields[i].ToString()
		v, _ := fields[i+1].ToString()
		switch f {
		case "d":
			m.Data = []byte(v)
		case "t":
			t, _ := strconv.ParseInt(v, 10, 64)
			m.PublishedAt = time.UnixMilli(t)
		}
	}
	return m, nil
}

func (s *redisStore) positions(ctx context.Context, channels []string) ([]Position, error) {
	// Concurrent calls share one pipeline (rueidis auto-pipelining); Lua's
	// ExecMulti would SCRIPT LOAD on every node first.
	out := make([]Position, len(channels))
	errs := make([]error, len(channels))
	var wg sync.WaitGroup
	for i, ch := range channels {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, err := s.history(ctx, ch, 0, 0)
			out[i], errs[i] = Position{Epoch: h.Epoch, Offset: h.Top}, err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

func (s *redisStore) presenceKey(subject string) (chanKeys, string) {
	k := s.keysFor(PresenceChannel(subject))
	return k, s.keys.RawKey(capability, k.tag, "p")
}

func (s *redisStore) setPresence(ctx context.Context, subject string, status Status, ttl time.Duration) (PresenceState, error) {
	k, pk := s.presenceKey(subject)
	res := s.exec(ctx, publishScript, []string{k.meta, k.hist, pk}, []string{
		presencePrefix(subject, status), strconv.Itoa(s.cfg.historySize()), ms(max(s.cfg.historyTTL(), ttl)), k.ps, s.pubCmd(),
		newEpoch(), "presence", ms(ttl), string(status),
	})
	_, t, err := parsePublish(res)
	if err != nil {
		s.fail("set_presence", err)
		return PresenceState{}, backendErr("set_presence", err)
	}
	at := time.UnixMilli(t)
	return PresenceState{Status: status, UpdatedAt: at, ExpiresAt: at.Add(ttl)}, nil
}

func (s *redisStore) presence(ctx context.Context, subjects []string) (map[string]PresenceState, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.timeout())
	defer cancel()
	cmds := make(rueidis.Commands, len(subjects))
	for i, sub := range subjects {
		_, pk := s.presenceKey(sub)
		cmds[i] = s.client.B().Get().Key(pk).Build()
	}
	out := make(map[string]PresenceState, len(subjects))
	for i, res := range s.client.DoMulti(ctx, cmds...) {
		v, err := res.ToString()
		if rueidis.IsRedisNil(err) {
			out[subjects[i]] = PresenceState{Status: StatusOffline}
			continue
		}
		if err != nil {
			s.fail("presence", err)
			return nil, backendErr("presence", err)
		}
		out[subjects[i]] = parsePresence(v)
	}
	return out, nil
}

// parsePresence reads "<status>:<updatedAt ms>:<expiresAt ms>"; anything
// else reads as offline.
func parsePresence(v string) PresenceState {
	st, rest, ok1 := strings.Cut(v, ":")
	up, ex, ok2 := strings.Cut(rest, ":")
	u, err1 := strconv.ParseInt(up, 10, 64)
	e, err2 := strconv.ParseInt(ex, 10, 64)
	if !ok1 || !ok2 || err1 != nil || err2 != nil || checkStatus(Status(st)) != nil {
		return PresenceState{Status: StatusOffline}
	}
	return PresenceState{Status: Status(st), UpdatedAt: time.UnixMilli(u), ExpiresAt: time.UnixMilli(e)}
}

// parsePayload reads a Pub/Sub payload "<offset>:<epoch>:<ms>:<data>".
func parsePayload(channel, p string) (*Message, error) {
	off, rest, ok1 := strings.Cut(p, ":")
	epoch, rest, ok2 := strings.Cut(rest, ":")
	t, data, ok3 := strings.Cut(rest, ":")
	if !ok1 || !ok2 || !ok3 || epoch == "" || !validEpoch(epoch) {
		return nil, errors.New("realtime: malformed Pub/Sub payload")
	}
	o, err := strconv.ParseUint(off, 10, 64)
	if err != nil || o == 0 {
		return nil, errors.New("realtime: malformed Pub/Sub offset")
	}
	ms, err := strconv.ParseInt(t, 10, 64)
	if err != nil {
		return nil, errors.New("realtime: malformed Pub/Sub time")
	}
	return &Message{Channel: channel, Epoch: epoch, Offset: o, Data: []byte(data), PublishedAt: time.UnixMilli(ms)}, nil
}

func (s *redisStore) fail(op string, err error) {
	if errors.Is(err, context.Canceled) {
		return
	}
	s.log.Log(errorLevel, "realtime: redis call failed", "op", op, "err", err.Error())
}

func ms(d time.Duration) string { return strconv.FormatInt(max(d.Milliseconds(), 1), 10) }

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
