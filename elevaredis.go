package elevaredis

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"net/url"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/analytics"
	"github.com/elevacare/eleva-redis/cache"
	"github.com/elevacare/eleva-redis/internal/keys"
	"github.com/elevacare/eleva-redis/lock"
	"github.com/elevacare/eleva-redis/notify"
	"github.com/elevacare/eleva-redis/ratelimit"
	"github.com/elevacare/eleva-redis/realtime"
	"github.com/elevacare/eleva-redis/session"
	"github.com/elevacare/eleva-redis/tempdata"
)

// Backend names returned by Eleva.Backend.
const (
	BackendMemory = "memory"
	BackendRedis  = "redis"
)

// Errors returned by Open. They are wrapped with %w together with the cause.
var (
	// ErrInvalidURL reports a RedisURL that cannot be parsed.
	ErrInvalidURL = errors.New("elevaredis: invalid redis URL")
	// ErrInvalidConfig reports a Config field that cannot be used.
	ErrInvalidConfig = errors.New("elevaredis: invalid config")
	// ErrConnect reports that Redis could not be reached, refused the
	// credentials or did not answer PING before the context ended.
	ErrConnect = errors.New("elevaredis: cannot connect to redis")
)

// Config configures Open. The zero value is the default: the in-process
// memory backend, keys under "eleva:", no metrics registered, no encryption
// at rest.
type Config struct {
	// RedisURL selects the Redis backend; "" means the memory backend. Forms
	// (parsed by rueidis.ParseURL):
	//
	//	redis://[user:password@]host:port[/db]      standalone
	//	rediss://...                                 the same over TLS
	//	unix:///path/to/redis.sock
	//	redis://host1:port?addr=host2:port&addr=...  Redis Cluster (detected)
	//	redis://sentinel1:26379?addr=sentinel2:26379&master_set=mymaster
	//
	// and the query options dial_timeout, write_timeout, protocol=2,
	// client_cache=0, max_retries=0, client_name, skip_verify (rediss only).
	// With master_set, the hosts are the sentinels: they are dialed with the
	// URL's TLS setting but without credentials; the user and password
	// authenticate to the master.
	RedisURL string
	// KeyPrefix prefixes every Redis key; "" means "eleva:".
	KeyPrefix string
	// KeyHashSecret, when set, HMACs identifiers so that emails and patient
	// ids never appear in Redis key names.
	KeyHashSecret []byte
	// Logger receives connection warnings and is passed to the capabilities;
	// nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the capabilities' Prometheus metrics; nil means none
	// are registered.
	Registerer prometheus.Registerer
	// RateLimit configures the rate limiter. Its Prefix, KeyHashSecret,
	// Registerer and Logger default to the fields above when empty.
	RateLimit ratelimit.Config
	// Lock configures the locker, Temp the store of temporary values,
	// one-time tokens and idempotency records. Their Prefix, KeyHashSecret,
	// Registerer and Logger default to the fields above when empty, as
	// RateLimit's do.
	Lock lock.Config
	Temp tempdata.Config
	// Cache configures the query cache's Store. Its Prefix, KeyHashSecret,
	// Registerer and Logger default to the fields above when empty. Its
	// Tracker is set by Open (CLIENT TRACKING coherence) unless client-side
	// caching is off, in which case the Store uses Pub/Sub invalidation.
	Cache cache.StoreConfig
	// Session configures the session store. Its Prefix, KeyHashSecret,
	// Registerer and Logger default to the fields above when empty, and
	// its Keyring to the one EncryptionKey gives.
	Session session.Config
	// Notify configures the notification queue. Its Prefix, KeyHashSecret,
	// Registerer and Logger default to the fields above when empty. Its
	// Shards must be the same on every instance sharing the Redis.
	// EncryptionKey does not apply to it yet: titles, messages and data are
	// stored unencrypted.
	Notify notify.Config
	// Analytics configures the counters, unique counts and event buffer. Its
	// Prefix, KeyHashSecret, Registerer and Logger default to the fields
	// above when empty. The PostHog forwarder is not part of Open (see
	// analytics.NewForwarder on Eleva.Analytics.Buffer()).
	Analytics analytics.Config
	// Realtime configures the real-time broker (channels with history,
	// presence). Its Prefix, KeyHashSecret, Registerer and Logger default
	// to the fields above when empty.
	Realtime realtime.Config
	// EncryptionKey turns on encryption at rest (AES-256-GCM) of temporary
	// values, token data and idempotency responses: the ELEVA_ENCRYPTION_KEY
	// format, comma-separated "kid:base64key" entries (32-byte keys), the
	// first sealing new values and every one opening (key rotation), parsed
	// by tempdata.ParseKeyring. It also seals sessions' deviceInfo and
	// preferences and the query cache's values. "" means no encryption, unless Temp.Keyring (or
	// Session.Keyring, Cache.Keyring) is set; setting both is an error. A value that does not parse makes
	// Open fail with ErrInvalidConfig, whose message never contains key
	// material.
	EncryptionKey string
	// TLS replaces the TLS configuration of a rediss:// URL, for example to
	// trust a private CA (RootCAs) or to present a client certificate. An
	// empty ServerName is taken from the URL. Setting it with a redis:// URL
	// is an error rather than a silent upgrade or a silent no-op.
	TLS *tls.Config
	// DisableClientCache turns off rueidis server-assisted client-side
	// caching. Without it, Open still turns caching off by itself (and logs a
	// warning) when the server refuses it: it needs RESP3 and CLIENT TRACKING,
	// which Redis before 6, protocol=2 and ACL users without +client lack.
	DisableClientCache bool
	// RedisConnections is the number of pipelined connections the client
	// keeps to each Redis node, shared by every capability (rueidis
	// auto-pipelines concurrent calls over them; Pub/Sub and blocking calls
	// use their own). 0 means DefaultRedisConnections: one per two CPUs
	// (GOMAXPROCS), at least 1, at most 4. Otherwise a power of two from 1 to
	// 256. Fewer connections put more commands in each write, which saves
	// system calls on both sides: on a 2-CPU instance, one connection
	// instead of rueidis's two gave the lock benchmark 11-25% more
	// cycles/s at 64 goroutines (bench/README.md).
	RedisConnections int
}

// DefaultRedisConnections is the number of pipelined connections per Redis
// node that Open uses when Config.RedisConnections is 0: GOMAXPROCS/2, at
// least 1, at most 4, rounded down to a power of two. rueidis's own default
// is one per CPU up to 4 (standalone and Sentinel; one per node on Cluster):
// each connection has a writer and a reader goroutine that make a system
// call per batch, and with one per CPU the batches are small, so a busy
// instance spends its CPU on writes rather than on its work.
func DefaultRedisConnections() int {
	n := runtime.GOMAXPROCS(0) / 2
	switch {
	case n >= 4:
		return 4
	case n >= 2:
		return 2
	default:
		return 1
	}
}

// PipelineMultiplex returns the rueidis ClientOption.PipelineMultiplex that
// Open sets for Config.RedisConnections = conns (a power of two from 1 to
// 256, or 0 for DefaultRedisConnections): log2 of the count, except that one
// connection is -1 (rueidis reads 0 as "its default"). It is for programs
// that build their own rueidis client for the capabilities' NewRedis
// constructors and want Open's connections. A bad count is ErrInvalidConfig.
func PipelineMultiplex(conns int) (int, error) {
	if conns == 0 {
		conns = DefaultRedisConnections()
	}
	if conns < 1 || conns > 1<<rueidis.MaxPipelineMultiplex || conns&(conns-1) != 0 {
		return 0, fmt.Errorf("%w: RedisConnections is %d; want 0 (the default) or a power of two from 1 to %d", ErrInvalidConfig, conns, 1<<rueidis.MaxPipelineMultiplex)
	}
	if conns == 1 {
		return -1, nil
	}
	return bits.TrailingZeros(uint(conns)), nil
}

// Eleva holds every capability built on one backend. Close it when done.
type Eleva struct {
	// RateLimit is the rate limiter.
	RateLimit ratelimit.Limiter
	// Locks hands out distributed locks with fencing tokens.
	Locks lock.Locker
	// Temp keeps temporary values, one-time tokens and idempotency records
	// (and backs tempdata.IdempotencyMiddleware).
	Temp tempdata.Store
	// Cache is the shared level of the query cache: build typed caches on
	// it with cache.New.
	Cache *cache.Store
	// Sessions keeps login sessions.
	Sessions session.Store
	// Notify is the notification queue. Delivery workers are not part of
	// Open: a worker claims from it.
	Notify notify.Queue
	// Analytics keeps day counters, unique counts and the PostHog event
	// buffer. The forwarder is not part of Open: it reads Analytics.Buffer().
	Analytics analytics.Store
	// Realtime publishes channel messages with history and presence, and
	// feeds realtime.SSEHandler.
	Realtime realtime.Broker

	client    rueidis.Client // nil on memory
	target    target
	cacheOff  bool
	keyIDs    []string // encryption key ids, the current one first
	closeOnce sync.Once
}

// target is what the start-up log may say about the Redis URL: never the
// password.
type target struct {
	redacted  string
	tls       bool
	user      string
	db        int
	masterSet string
	addrs     []string // the URL's hosts: sentinels with masterSet
	unix      bool
	conns     int // pipelined connections per node
}

// inherit fills a capability Config's common fields from the top-level ones
// where the capability leaves them empty.
func (cfg Config) inherit(prefix *string, secret *[]byte, reg *prometheus.Registerer, log **slog.Logger, logger *slog.Logger) {
	if *prefix == "" {
		*prefix = cfg.KeyPrefix
	}
	if len(*secret) == 0 {
		*secret = cfg.KeyHashSecret
	}
	if *reg == nil {
		*reg = cfg.Registerer
	}
	if *log == nil {
		*log = logger
	}
}

// Open builds every capability on the backend cfg selects. With a RedisURL it
// connects and sends PING under ctx, so a wrong address, a refused password or
// an unreachable server is reported here, within ctx's deadline, rather than
// on the first request. Errors name the URL with its password redacted.
func Open(ctx context.Context, cfg Config) (*Eleva, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	rl, lk, td := cfg.RateLimit, cfg.Lock, cfg.Temp
	cfg.inherit(&rl.Prefix, &rl.KeyHashSecret, &rl.Registerer, &rl.Logger, logger)
	cfg.inherit(&lk.Prefix, &lk.KeyHashSecret, &lk.Registerer, &lk.Logger, logger)
	cfg.inherit(&td.Prefix, &td.KeyHashSecret, &td.Registerer, &td.Logger, logger)
	cc := cfg.Cache
	cfg.inherit(&cc.Prefix, &cc.KeyHashSecret, &cc.Registerer, &cc.Logger, logger)
	ss := cfg.Session
	cfg.inherit(&ss.Prefix, &ss.KeyHashSecret, &ss.Registerer, &ss.Logger, logger)
	nq := cfg.Notify
	cfg.inherit(&nq.Prefix, &nq.KeyHashSecret, &nq.Registerer, &nq.Logger, logger)
	an := cfg.Analytics
	cfg.inherit(&an.Prefix, &an.KeyHashSecret, &an.Registerer, &an.Logger, logger)
	rt := cfg.Realtime
	cfg.inherit(&rt.Prefix, &rt.KeyHashSecret, &rt.Registerer, &rt.Logger, logger)
	// Checked here because the capabilities' constructors have no error
	// result (a bad prefix would surface on every call instead), and so that
	// it fails the same way on both backends.
	for _, p := range []struct{ field, prefix string }{
		{"KeyPrefix", cfg.KeyPrefix},
		{"RateLimit.Prefix", rl.Prefix},
		{"Lock.Prefix", lk.Prefix},
		{"Temp.Prefix", td.Prefix},
		{"Cache.Prefix", cc.Prefix},
		{"Session.Prefix", ss.Prefix},
		{"Notify.Prefix", nq.Prefix},
		{"Analytics.Prefix", an.Prefix},
		{"Realtime.Prefix", rt.Prefix},
	} {
		if _, err := keys.New(p.prefix, nil); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrInvalidConfig, p.field, err)
		}
	}
	if cfg.EncryptionKey != "" {
		if td.Keyring != nil {
			return nil, fmt.Errorf("%w: both EncryptionKey and Temp.Keyring are set; set one", ErrInvalidConfig)
		}
		if ss.Keyring != nil {
			return nil, fmt.Errorf("%w: both EncryptionKey and Session.Keyring are set; set one", ErrInvalidConfig)
		}
		if cc.Keyring != nil {
			return nil, fmt.Errorf("%w: both EncryptionKey and Cache.Keyring are set; set one", ErrInvalidConfig)
		}
		kr, err := tempdata.ParseKeyring(cfg.EncryptionKey)
		if err != nil {
			// ParseKeyring's errors name the entry and the key id, never
			// the key.
			return nil, fmt.Errorf("%w: EncryptionKey: %w", ErrInvalidConfig, err)
		}
		td.Keyring, ss.Keyring, cc.Keyring = kr, kr, kr
	}
	keyIDs := td.Keyring.KeyIDs()

	if cfg.RedisURL == "" {
		return &Eleva{
			RateLimit: ratelimit.NewMemory(rl),
			Locks:     lock.NewMemory(lk),
			Temp:      tempdata.NewMemory(td),
			Cache:     cache.NewMemoryStore(cc),
			Sessions:  session.NewMemory(ss),
			Notify:    notify.NewMemory(nq),
			Analytics: analytics.NewMemory(an),
			Realtime:  realtime.NewMemory(rt),
			keyIDs:    keyIDs,
		}, nil
	}

	opt, tgt, err := clientOption(cfg, logger)
	if err != nil {
		return nil, err
	}
	// The query cache's local copies follow CLIENT TRACKING pushes, which
	// reach it through this hook.
	tracker := cache.NewTracker()
	opt.OnInvalidations = tracker.OnInvalidations
	client, err := connect(ctx, opt, tgt)
	if err != nil && !opt.DisableCache && errors.Is(err, rueidis.ErrNoCache) {
		logger.Warn("redis refused client-side caching (it needs RESP3 and CLIENT TRACKING); continuing without it: the query cache uses Pub/Sub invalidation",
			"redis", tgt.redacted, "reason", err.Error())
		opt.DisableCache = true
		client, err = connect(ctx, opt, tgt)
	}
	if err != nil {
		return nil, err
	}
	cc.Tracker = nil
	if !opt.DisableCache {
		cc.Tracker = tracker
	}
	broker, err := realtime.NewRedis(client, rt)
	if err != nil { // the prefix was checked above; kept for safety
		client.Close()
		return nil, fmt.Errorf("%w: Realtime: %w", ErrInvalidConfig, err)
	}
	return &Eleva{
		RateLimit: ratelimit.NewRedis(client, rl),
		Locks:     lock.NewRedis(client, lk),
		Temp:      tempdata.NewRedis(client, td),
		Cache:     cache.NewRedisStore(client, cc),
		Sessions:  session.NewRedis(client, ss),
		Notify:    notify.NewRedis(client, nq),
		Analytics: analytics.NewRedis(client, an),
		Realtime:  broker,
		client:    client,
		target:    tgt,
		cacheOff:  opt.DisableCache,
		keyIDs:    keyIDs,
	}, nil
}

// clientOption turns cfg into rueidis options and a loggable description.
func clientOption(cfg Config, logger *slog.Logger) (rueidis.ClientOption, target, error) {
	redacted := RedactURL(cfg.RedisURL)
	opt, err := rueidis.ParseURL(cfg.RedisURL)
	if err != nil {
		// A *url.Error repeats the whole URL, password included: keep only
		// its cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return opt, target{}, fmt.Errorf("%w %s: %w", ErrInvalidURL, redacted, err)
	}
	u, _ := url.Parse(cfg.RedisURL) // ParseURL succeeded, so this does too.
	tgt := target{
		redacted:  redacted,
		tls:       opt.TLSConfig != nil,
		user:      opt.Username,
		db:        opt.SelectDB,
		masterSet: opt.Sentinel.MasterSet,
		addrs:     slices.Clone(opt.InitAddress),
		unix:      u.Scheme == "unix",
	}
	if cfg.TLS != nil {
		if opt.TLSConfig == nil {
			return opt, target{}, fmt.Errorf("%w: TLS is set but %s is not a rediss:// URL", ErrInvalidConfig, redacted)
		}
		t := cfg.TLS.Clone()
		if t.ServerName == "" {
			t.ServerName = opt.TLSConfig.ServerName
		}
		// skip_verify in the URL is an explicit request; keep honouring it.
		t.InsecureSkipVerify = t.InsecureSkipVerify || opt.TLSConfig.InsecureSkipVerify
		opt.TLSConfig = t
	}
	if opt.TLSConfig != nil && opt.TLSConfig.InsecureSkipVerify {
		logger.Warn("redis TLS certificate verification is disabled", "redis", redacted)
	}
	if cfg.DisableClientCache {
		opt.DisableCache = true
	}
	tgt.conns = cfg.RedisConnections
	if tgt.conns == 0 {
		tgt.conns = DefaultRedisConnections()
	}
	if opt.PipelineMultiplex, err = PipelineMultiplex(tgt.conns); err != nil {
		return opt, target{}, err
	}
	if opt.Sentinel.MasterSet != "" {
		// ParseURL fills only the master's options. Sentinels are reached the
		// way the URL says (TLS for rediss://) and with the same dial timeout;
		// left zero, rueidis would dial them in plain text with no timeout.
		if opt.Sentinel.TLSConfig == nil {
			opt.Sentinel.TLSConfig = opt.TLSConfig
		}
		if opt.Sentinel.Dialer.Timeout == 0 {
			opt.Sentinel.Dialer.Timeout = opt.Dialer.Timeout
		}
		if opt.Sentinel.Dialer.Timeout == 0 {
			opt.Sentinel.Dialer.Timeout = rueidis.DefaultDialTimeout
		}
	}
	return opt, tgt, nil
}

// connect creates the client and checks it with PING, both bounded by ctx.
// rueidis.NewClient dials without a context (up to its dial timeout, 5s by
// default, per address), so it runs in a goroutine that Open stops waiting for
// when ctx ends; a client it creates after that is closed.
func connect(ctx context.Context, opt rueidis.ClientOption, tgt target) (rueidis.Client, error) {
	type result struct {
		c   rueidis.Client
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := rueidis.NewClient(opt)
		ch <- result{c, err}
	}()
	var client rueidis.Client
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, connectError(tgt, opt, r.err)
		}
		client = r.c
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, connectError(tgt, opt, context.Cause(ctx))
	}
	if err := client.Do(ctx, client.B().Ping().Build()).Error(); err != nil {
		client.Close()
		return nil, connectError(tgt, opt, err)
	}
	return client, nil
}

func connectError(tgt target, opt rueidis.ClientOption, err error) error {
	msg := err.Error()
	hint := ""
	if len(tgt.addrs) > 1 && tgt.masterSet == "" && strings.Contains(msg, "cluster support disabled") {
		hint = " (several addresses mean Redis Cluster; for Sentinel add ?master_set=NAME)"
	}
	// The cause comes from the server or the network, not from us: make sure
	// it cannot carry the password into a log.
	if opt.Password != "" && strings.Contains(msg, opt.Password) {
		return fmt.Errorf("%w at %s: %s%s", ErrConnect, tgt.redacted, strings.ReplaceAll(msg, opt.Password, "xxxxx"), hint)
	}
	return fmt.Errorf("%w at %s: %w%s", ErrConnect, tgt.redacted, err, hint)
}

// Backend reports "memory" or "redis".
func (e *Eleva) Backend() string {
	if e.client == nil {
		return BackendMemory
	}
	return BackendRedis
}

// EncryptionKeyIDs returns the ids of the keys of encryption at rest, the
// one sealing new values first; nil when encryption is off. The ids are
// names, not key material: safe to log.
func (e *Eleva) EncryptionKeyIDs() []string { return slices.Clone(e.keyIDs) }

// Redis returns the Redis client, or nil on the memory backend. It belongs to
// e: Close closes it.
func (e *Eleva) Redis() rueidis.Client { return e.client }

// Ping measures one round trip to the backend, for readiness checks. The
// memory backend is always ready: 0, nil.
func (e *Eleva) Ping(ctx context.Context) (time.Duration, error) {
	if e.client == nil {
		return 0, nil
	}
	start := time.Now()
	err := e.client.Do(ctx, e.client.B().Ping().Build()).Error()
	d := time.Since(start)
	if err != nil {
		return d, fmt.Errorf("elevaredis: ping redis: %w", err)
	}
	return d, nil
}

// Describe says which backend is in use and how it is reached, for the
// start-up log, for example
//
//	memory (in-process: not shared between instances, not durable)
//	redis (standalone 127.0.0.1:6379, tls, user app)
//	redis (cluster, 3 nodes: 127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002)
//	redis (sentinel master_set=mymaster via 127.0.0.1:26379, master 127.0.0.1:6380)
//
// It never contains a password.
func (e *Eleva) Describe() string {
	if e.client == nil {
		return "memory (in-process: not shared between instances, not durable)"
	}
	t := e.target
	var b strings.Builder
	b.WriteString("redis (")
	switch e.client.Mode() {
	case rueidis.ClientModeCluster:
		nodes := e.nodes()
		fmt.Fprintf(&b, "cluster, %d nodes: %s", len(nodes), strings.Join(nodes, ","))
	case rueidis.ClientModeSentinel:
		fmt.Fprintf(&b, "sentinel master_set=%s via %s", t.masterSet, strings.Join(t.addrs, ","))
		if nodes := e.nodes(); len(nodes) > 0 {
			fmt.Fprintf(&b, ", master %s", strings.Join(nodes, ","))
		}
	default:
		b.WriteString("standalone ")
		if t.unix {
			b.WriteString("unix:")
		}
		b.WriteString(strings.Join(t.addrs, ","))
	}
	if t.tls {
		b.WriteString(", tls")
	}
	if t.user != "" {
		b.WriteString(", user " + t.user)
	}
	if t.db != 0 {
		b.WriteString(", db " + strconv.Itoa(t.db))
	}
	if e.cacheOff {
		b.WriteString(", client-side cache off")
	}
	fmt.Fprintf(&b, ", %d pipelined connection", t.conns)
	if t.conns != 1 {
		b.WriteString("s")
	}
	if e.client.Mode() == rueidis.ClientModeCluster {
		b.WriteString(" per node")
	}
	b.WriteString(")")
	return b.String()
}

func (e *Eleva) nodes() []string {
	var addrs []string
	for addr := range e.client.Nodes() {
		addrs = append(addrs, addr)
	}
	slices.Sort(addrs)
	return addrs
}

// Close releases the Redis client that every capability uses. The
// capabilities own no long-lived goroutines of their own (the locker's
// release subscriptions live only while an Acquire waits). It is safe to call
// more than once; calls made on e afterwards fail.
func (e *Eleva) Close() {
	e.closeOnce.Do(func() {
		if e.Cache != nil {
			e.Cache.Close()
		}
		if e.Realtime != nil {
			_ = e.Realtime.Close()
		}
		if e.client != nil {
			e.client.Close()
		}
	})
}

// RedactURL returns u with its password replaced by "xxxxx", for logs and
// error messages. It works on strings that do not parse as URLs too.
func RedactURL(u string) string {
	if p, err := url.Parse(u); err == nil && p.User != nil {
		return p.Redacted()
	}
	// Unparseable, or parsed without userinfo although it may hold one
	// ("user:pw@host" parses as scheme "user"): find the userinfo by hand.
	// The authority ends at the first '/', '?' or '#' after the scheme; the
	// userinfo ends at its last '@'.
	start := 0
	if i := strings.Index(u, "://"); i >= 0 {
		start = i + 3
	}
	end := len(u)
	if i := strings.IndexAny(u[start:], "/?#"); i >= 0 {
		end = start + i
	}
	at := strings.LastIndex(u[start:end], "@")
	if at < 0 {
		return u
	}
	at += start
	colon := strings.Index(u[start:at], ":")
	if colon < 0 {
		return u
	}
	colon += start
	return u[:colon+1] + "xxxxx" + u[at:]
}
