package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	elevaredis "github.com/elevacare/eleva-redis"
	"github.com/elevacare/eleva-redis/analytics"
	"github.com/elevacare/eleva-redis/internal/server"
	"github.com/elevacare/eleva-redis/lock"
	"github.com/elevacare/eleva-redis/notify"
	"github.com/elevacare/eleva-redis/ratelimit"
	"github.com/elevacare/eleva-redis/realtime"
	"github.com/elevacare/eleva-redis/session"
	"github.com/elevacare/eleva-redis/tempdata"
)

// version is the release version, set at build time with
// -ldflags "-X main.version=v1.2.3"; empty means "from the build info".
var version string

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // a runtime failure: Redis unreachable, address in use
	exitUsage   = 2 // bad command line, environment or configuration
)

// capabilities are the API's capability groups, for the start-up log.
const capabilities = "ratelimit,locks,temp,tokens,idempotency,sessions,cache,notifications"

// openTimeout bounds connecting to Redis at start-up.
const openTimeout = 15 * time.Second

// defaultNotifyConcurrency is notify.WorkerConfig's default Concurrency.
const defaultNotifyConcurrency = 4

// Notification senders (--notify-sender).
const (
	senderLog     = "log"
	senderWebhook = "webhook"
	senderNovu    = "novu"
)

const usageText = `eleva-redis: the Eleva Care shared state layer over HTTP: rate limiting,
distributed locks, temporary data, one-time tokens, idempotency records,
sessions, a query cache and a notification queue.

Usage:
  eleva-redis [serve] [flags]   serve the HTTP API (the default command)
  eleva-redis version           print the version
  eleva-redis help              print this help

Every flag has an ELEVA_* environment variable; a flag given on the command
line wins over the environment. Prefer the environment for secrets
(ELEVA_API_KEYS, ELEVA_REDIS_URL with a password, ELEVA_KEY_HASH_SECRET,
ELEVA_ENCRYPTION_KEY, ELEVA_WEBHOOK_SECRET, ELEVA_NOVU_API_KEY):
command lines are visible to other local users.

Serve flags:
`

// run is the whole command: main only adds the process (signals, exit).
// It returns the exit code.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(ctx, args, getenv, stdout, stderr)
	case "version":
		if len(args) > 0 {
			fmt.Fprintf(stderr, "eleva-redis version: unexpected arguments %q\n", args)
			return exitUsage
		}
		fmt.Fprintf(stdout, "eleva-redis %s (%s, %s/%s)\n", buildVersion(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return exitOK
	case "help":
		printUsage(stdout)
		return exitOK
	default:
		fmt.Fprintf(stderr, "eleva-redis: unknown command %q\n\n", cmd)
		printUsage(stderr)
		return exitUsage
	}
}

func printUsage(w io.Writer) {
	fs, _ := newFlagSet(&config{})
	fmt.Fprint(w, usageText)
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// buildVersion is the -ldflags version, else the module version or VCS
// revision recorded by the Go toolchain, else "dev".
func buildVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		return "dev"
	}
	return "dev-" + rev + dirty
}

// config is the serve configuration after flags and environment.
type config struct {
	redisURL        string
	redisConns      int
	listen          string
	apiKeys         string
	keyPrefix       string
	keyHashSecret   string
	policiesFile    string
	maxBodyBytes    int64
	logLevel        string
	logFormat       string
	rlTimeout       time.Duration
	rlOnError       string
	localInstances  int
	lockTimeout     time.Duration
	tempTimeout     time.Duration
	sessionTimeout  time.Duration
	sessionTouch    time.Duration
	encryptionKey   string
	shutdownTimeout time.Duration
	noWorkers       bool
	notifyConc      int
	notifySender    string
	webhookURL      string
	webhookSecret   string
	novuAPIKey      string
	novuURL         string
	novuBulk        bool
	allowEviction   bool

	// Analytics and the PostHog forwarder.
	analyticsTimeout time.Duration
	posthogKey       string
	posthogHost      string

	// Real-time.
	realtimeSecret string
}

// envNames maps each flag to its environment variable.
var envNames = map[string]string{
	"redis-url":              "ELEVA_REDIS_URL",
	"redis-connections":      "ELEVA_REDIS_CONNECTIONS",
	"listen":                 "ELEVA_LISTEN",
	"api-keys":               "ELEVA_API_KEYS",
	"key-prefix":             "ELEVA_KEY_PREFIX",
	"key-hash-secret":        "ELEVA_KEY_HASH_SECRET",
	"policies":               "ELEVA_POLICIES_FILE",
	"max-body-bytes":         "ELEVA_MAX_BODY_BYTES",
	"log-level":              "ELEVA_LOG_LEVEL",
	"log-format":             "ELEVA_LOG_FORMAT",
	"ratelimit-timeout":      "ELEVA_RATELIMIT_TIMEOUT",
	"ratelimit-on-error":     "ELEVA_RATELIMIT_ON_ERROR",
	"local-instances":        "ELEVA_RATELIMIT_LOCAL_INSTANCES",
	"lock-timeout":           "ELEVA_LOCK_TIMEOUT",
	"temp-timeout":           "ELEVA_TEMP_TIMEOUT",
	"session-timeout":        "ELEVA_SESSION_TIMEOUT",
	"session-touch-interval": "ELEVA_SESSION_TOUCH_INTERVAL",
	"encryption-key":         "ELEVA_ENCRYPTION_KEY",
	"shutdown-timeout":       "ELEVA_SHUTDOWN_TIMEOUT",
	"no-workers":             "ELEVA_NOTIFY_NO_WORKERS",
	"notify-concurrency":     "ELEVA_NOTIFY_CONCURRENCY",
	"notify-sender":          "ELEVA_NOTIFY_SENDER",
	"webhook-url":            "ELEVA_WEBHOOK_URL",
	"webhook-secret":         "ELEVA_WEBHOOK_SECRET",
	"novu-api-key":           "ELEVA_NOVU_API_KEY",
	"novu-url":               "ELEVA_NOVU_URL",
	"novu-bulk":              "ELEVA_NOVU_BULK",
	"allow-eviction":         "ELEVA_NOTIFY_ALLOW_EVICTION",
	"analytics-timeout":      "ELEVA_ANALYTICS_TIMEOUT",
	"posthog-api-key":        "ELEVA_POSTHOG_API_KEY",
	"posthog-host":           "ELEVA_POSTHOG_HOST",
	"realtime-secret":        "ELEVA_REALTIME_SECRET",
}

// secretFlags are never echoed in error messages.
// The webhook URL is one too: it may carry a token or credentials.
var secretFlags = map[string]bool{"redis-url": true, "api-keys": true, "key-hash-secret": true, "encryption-key": true,
	"webhook-url": true, "webhook-secret": true, "novu-api-key": true, "posthog-api-key": true,
	"realtime-secret": true}

func newFlagSet(c *config) (*flag.FlagSet, error) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.StringVar(&c.redisURL, "redis-url", "", "Redis `url`: redis://[user:pass@]host:port[/db], rediss:// for TLS;\n"+
		"Cluster: redis://h1:p?addr=h2:p&addr=h3:p; Sentinel: redis://sentinel:26379?master_set=name;\n"+
		"empty: the in-process memory backend (not shared, not durable)")
	fs.IntVar(&c.redisConns, "redis-connections", 0, "pipelined connections to each Redis node, a power of two; 0: one per two CPUs, 1 to 4")
	fs.StringVar(&c.listen, "listen", "127.0.0.1:8080", "listen `address` (host:port; port 0 picks a free one); a non-loopback address requires API keys")
	fs.StringVar(&c.apiKeys, "api-keys", "", "comma-separated API `keys` accepted as \"Authorization: Bearer <key>\" on /v1;\nnone: only loopback clients may call /v1")
	fs.StringVar(&c.keyPrefix, "key-prefix", "", "`prefix` of every Redis key (default \"eleva:\")")
	fs.StringVar(&c.keyHashSecret, "key-hash-secret", "", "`secret` to HMAC identifiers in Redis key names (keeps emails and patient ids out of Redis)")
	fs.StringVar(&c.policiesFile, "policies", "", "rate-limit policies `file`, JSON or YAML")
	fs.Int64Var(&c.maxBodyBytes, "max-body-bytes", server.DefaultMaxBodyBytes, "request body limit in `bytes`")
	fs.StringVar(&c.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "log `format`: text or json")
	fs.DurationVar(&c.rlTimeout, "ratelimit-timeout", 50*time.Millisecond, "bound of each rate-limit backend call; on timeout the failure policy decides")
	fs.StringVar(&c.rlOnError, "ratelimit-on-error", "local", "default failure `policy` when the backend is slow or down: closed, open or local")
	fs.IntVar(&c.localInstances, "local-instances", 1, "number of service `instances`; the local failure policy divides limits by it")
	fs.DurationVar(&c.lockTimeout, "lock-timeout", 500*time.Millisecond, "bound of each lock backend call; past it the call fails with 503 (locks fail closed)")
	fs.DurationVar(&c.tempTimeout, "temp-timeout", tempdata.DefaultTimeout, "bound of each temp, token and idempotency backend call; past it the call fails with 503 (fail closed)")
	fs.DurationVar(&c.sessionTimeout, "session-timeout", session.DefaultTimeout, "bound of each session backend call; past it the call fails with 503 (sessions fail closed)")
	fs.DurationVar(&c.sessionTouch, "session-touch-interval", session.DefaultTouchInterval, "least time between two activity writes of one session (touch); at most half a session's idle timeout is used")
	fs.StringVar(&c.encryptionKey, "encryption-key", "", "`keys` for encryption at rest (AES-256-GCM) of temporary values, token data, idempotency\n"+
		"responses, session device info and preferences and cached values: kid:base64(32 bytes)[,kid:base64...], the first seals, all open (rotation); none: stored unencrypted")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long in-flight requests and notification sends may take to finish after SIGTERM")
	fs.BoolVar(&c.noWorkers, "no-workers", false, "run no notification delivery workers in this process: the queue is only filled and read over HTTP")
	fs.IntVar(&c.notifyConc, "notify-concurrency", defaultNotifyConcurrency, "notification batches (users) the delivery worker sends at once")
	fs.StringVar(&c.notifySender, "notify-sender", senderLog, "notification `sender`: log (development: logs ids and marks them delivered), webhook or novu")
	fs.StringVar(&c.webhookURL, "webhook-url", "", "`url` the webhook sender POSTs each batch to (http or https; required with --notify-sender webhook)")
	fs.StringVar(&c.webhookSecret, "webhook-secret", "", "`secret` of the webhook sender's HMAC-SHA256 signature (X-Eleva-Signature; required with --notify-sender webhook)")
	fs.StringVar(&c.novuAPIKey, "novu-api-key", "", "Novu secret `key` (required with --notify-sender novu)")
	fs.StringVar(&c.novuURL, "novu-url", notify.DefaultNovuURL, "Novu API base `url` (EU region: https://eu.api.novu.co)")
	fs.BoolVar(&c.novuBulk, "novu-bulk", false, "send full chunks of 100 notifications (across users) in one Novu bulk trigger; a chunk redelivered after a crash\n"+
		"is usually composed differently, so Novu's per-event answer is then the only guard against a second delivery (docs/notify.md)")
	fs.DurationVar(&c.analyticsTimeout, "analytics-timeout", analytics.DefaultTimeout, "bound of each analytics backend call (increments, captures); past it the call fails with 503 and is counted")
	fs.StringVar(&c.posthogKey, "posthog-api-key", "", "PostHog project `key` (phc_...): when set, serve forwards buffered events to PostHog's /batch/ endpoint")
	fs.StringVar(&c.posthogHost, "posthog-host", analytics.DefaultHost, "PostHog ingestion host `url` (EU: https://eu.i.posthog.com)")
	fs.StringVar(&c.realtimeSecret, "realtime-secret", "", "`secret` (at least 32 bytes) signing the browsers' SSE subscription tokens (HS256); every instance needs the same one.\n"+
		"none: a random secret of this process (tokens die with it and other instances refuse them)")
	fs.BoolVar(&c.allowEviction, "allow-eviction", false, "start on a Redis whose maxmemory-policy is not noeviction (or cannot be read), with a warning;\n"+
		"an evicted queue key is a lost notification")
	for name := range envNames {
		if fs.Lookup(name) == nil {
			return nil, fmt.Errorf("internal: no flag %q", name)
		}
	}
	fs.VisitAll(func(f *flag.Flag) {
		f.Usage += " [" + envNames[f.Name] + "]"
	})
	return fs, nil
}

// parseConfig reads the environment, then the flags (which win).
func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	var c config
	fs, err := newFlagSet(&c)
	if err != nil {
		return c, err
	}
	fs.SetOutput(io.Discard)
	for name, env := range envNames {
		v := getenv(env)
		if v == "" {
			continue
		}
		if err := fs.Set(name, v); err != nil {
			shown := strconv.Quote(v)
			if secretFlags[name] {
				shown = "(hidden)"
			}
			return c, fmt.Errorf("%s=%s: %v", env, shown, err)
		}
	}
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: eleva-redis serve [flags]  (eleva-redis help for details)\n")
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return c, c.validate()
}

func (c config) validate() error {
	switch c.logFormat {
	case "text", "json":
	default:
		return fmt.Errorf("--log-format %q: want text or json", c.logFormat)
	}
	if _, err := parseLevel(c.logLevel); err != nil {
		return err
	}
	switch ratelimit.FailurePolicy(c.rlOnError) {
	case ratelimit.FailClosed, ratelimit.FailOpen, ratelimit.FailLocal:
	default:
		return fmt.Errorf("--ratelimit-on-error %q: want closed, open or local", c.rlOnError)
	}
	if c.maxBodyBytes <= 0 {
		return fmt.Errorf("--max-body-bytes must be positive, got %d", c.maxBodyBytes)
	}
	if c.rlTimeout <= 0 {
		return fmt.Errorf("--ratelimit-timeout must be positive, got %s", c.rlTimeout)
	}
	if c.localInstances <= 0 {
		return fmt.Errorf("--local-instances must be positive, got %d", c.localInstances)
	}
	if _, err := elevaredis.PipelineMultiplex(c.redisConns); err != nil {
		return fmt.Errorf("--redis-connections must be 0 (one per two CPUs) or a power of two from 1 to 256, got %d", c.redisConns)
	}
	if c.lockTimeout <= 0 {
		return fmt.Errorf("--lock-timeout must be positive, got %s", c.lockTimeout)
	}
	if c.tempTimeout <= 0 {
		return fmt.Errorf("--temp-timeout must be positive, got %s", c.tempTimeout)
	}
	if c.sessionTimeout <= 0 {
		return fmt.Errorf("--session-timeout must be positive, got %s", c.sessionTimeout)
	}
	if c.sessionTouch <= 0 {
		return fmt.Errorf("--session-touch-interval must be positive, got %s", c.sessionTouch)
	}
	if c.encryptionKey != "" {
		// Checked here so that a bad key is a configuration error (exit 2)
		// found before connecting. The error names the entry and key id,
		// never the key.
		if _, err := tempdata.ParseKeyring(c.encryptionKey); err != nil {
			return fmt.Errorf("--encryption-key: %v", err)
		}
	}
	if c.shutdownTimeout <= 0 {
		return fmt.Errorf("--shutdown-timeout must be positive, got %s", c.shutdownTimeout)
	}
	if c.realtimeSecret != "" && len(c.realtimeSecret) < realtime.MinSecretLen {
		return fmt.Errorf("--realtime-secret must be at least %d bytes, got %d", realtime.MinSecretLen, len(c.realtimeSecret))
	}
	if err := c.validateNotify(); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(c.listen); err != nil {
		return fmt.Errorf("--listen %q: want host:port: %v", c.listen, err)
	}
	if len(c.keys()) == 0 && !loopbackHost(c.listen) {
		return fmt.Errorf("refusing to listen on %q without API keys: set --api-keys / ELEVA_API_KEYS, "+
			"or listen on a loopback address such as 127.0.0.1:8080", c.listen)
	}
	return nil
}

// validateNotify checks the delivery settings. Its errors name flags, never
// the webhook URL (it may carry a token), the webhook secret or the Novu key.
func (c config) validateNotify() error {
	if c.notifyConc <= 0 {
		return fmt.Errorf("--notify-concurrency must be positive, got %d", c.notifyConc)
	}
	switch c.notifySender {
	case senderLog, senderWebhook, senderNovu:
	default:
		return fmt.Errorf("--notify-sender %q: want log, webhook or novu", c.notifySender)
	}
	// Settings of another sender are a mistake, not a no-op: the operator
	// believes notifications go somewhere they do not (the log sender marks
	// them delivered).
	if c.notifySender != senderWebhook && (c.webhookURL != "" || c.webhookSecret != "") {
		return fmt.Errorf("--webhook-url / --webhook-secret are set but --notify-sender is %s: set --notify-sender webhook, or unset them", c.notifySender)
	}
	if c.notifySender != senderNovu && (c.novuAPIKey != "" || c.novuURL != notify.DefaultNovuURL || c.novuBulk) {
		return fmt.Errorf("--novu-api-key / --novu-url / --novu-bulk are set but --notify-sender is %s: set --notify-sender novu, or unset them", c.notifySender)
	}
	switch c.notifySender {
	case senderWebhook:
		if c.webhookURL == "" {
			return errors.New("--notify-sender webhook needs --webhook-url (ELEVA_WEBHOOK_URL)")
		}
		if c.webhookSecret == "" {
			return errors.New("--notify-sender webhook needs --webhook-secret (ELEVA_WEBHOOK_SECRET)")
		}
		if _, err := c.sender(nil); err != nil {
			return errors.New("--webhook-url: want an absolute http(s) URL")
		}
	case senderNovu:
		if c.novuAPIKey == "" {
			return errors.New("--notify-sender novu needs --novu-api-key (ELEVA_NOVU_API_KEY)")
		}
		if _, err := c.sender(nil); err != nil {
			return errors.New("--novu-url: want an absolute http(s) URL")
		}
	}
	return nil
}

// sender builds the configured notification sender.
func (c config) sender(log *slog.Logger) (notify.Sender, error) {
	switch c.notifySender {
	case senderWebhook:
		return notify.NewWebhookSender(notify.WebhookConfig{URL: c.webhookURL, Secret: []byte(c.webhookSecret)})
	case senderNovu:
		return notify.NewNovuSender(notify.NovuConfig{APIKey: c.novuAPIKey, BaseURL: c.novuURL, Bulk: c.novuBulk})
	}
	return notify.LogSender{Logger: log}, nil
}

// senderTarget is where the sender delivers, safe to log: the scheme and
// host of its URL only (no credentials, path or query, which may carry a
// token); "" for the log sender.
func (c config) senderTarget() string {
	raw := ""
	switch c.notifySender {
	case senderWebhook:
		raw = c.webhookURL
	case senderNovu:
		raw = c.novuURL
	default:
		return ""
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable)"
	}
	return u.Scheme + "://" + u.Host
}

// keys returns the configured API keys, blanks dropped.
func (c config) keys() []string {
	var out []string
	for k := range strings.SplitSeq(c.apiKeys, ",") {
		if k = strings.TrimSpace(k); k != "" {
			out = append(out, k)
		}
	}
	return out
}

// loopbackHost reports whether a host:port names a loopback address:
// "localhost" or a loopback IP. An empty host (all interfaces) and other
// names are not loopback.
func loopbackHost(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// serve runs the HTTP API until ctx ends.
func serve(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, err := parseConfig(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		printUsage(stdout)
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "eleva-redis: %v\n", err)
		fmt.Fprintf(stderr, "Run 'eleva-redis help' for usage.\n")
		return exitUsage
	}
	level, _ := parseLevel(cfg.logLevel)
	opts := &slog.HandlerOptions{Level: level}
	var handler slog.Handler = slog.NewTextHandler(stderr, opts)
	if cfg.logFormat == "json" {
		handler = slog.NewJSONHandler(stderr, opts)
	}
	log := slog.New(handler)

	keys := cfg.keys()
	var policies ratelimit.Policies
	if cfg.policiesFile != "" {
		if policies, err = ratelimit.LoadPolicies(cfg.policiesFile); err != nil {
			log.Error("cannot load the policies file", "error", err.Error())
			return exitUsage
		}
	}

	log.Info("starting eleva-redis", "version", buildVersion(), "go", runtime.Version())

	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	openCtx, cancel := context.WithTimeout(ctx, openTimeout)
	var secret []byte
	if cfg.keyHashSecret != "" {
		secret = []byte(cfg.keyHashSecret)
	}
	eleva, err := elevaredis.Open(openCtx, elevaredis.Config{
		RedisURL:         cfg.redisURL,
		RedisConnections: cfg.redisConns,
		KeyPrefix:        cfg.keyPrefix,
		KeyHashSecret:    secret,
		Logger:           log,
		Registerer:       registry,
		RateLimit: ratelimit.Config{
			Timeout:        cfg.rlTimeout,
			OnBackendError: ratelimit.FailurePolicy(cfg.rlOnError),
			LocalInstances: cfg.localInstances,
		},
		Lock:          lock.Config{Timeout: cfg.lockTimeout},
		Temp:          tempdata.Config{Timeout: cfg.tempTimeout},
		Session:       session.Config{Timeout: cfg.sessionTimeout, TouchInterval: cfg.sessionTouch},
		Analytics:     analytics.Config{Timeout: cfg.analyticsTimeout},
		EncryptionKey: cfg.encryptionKey,
	})
	cancel()
	if err != nil {
		// Open's errors never contain the password (RedactURL).
		log.Error("cannot open the backend", "error", err.Error())
		return exitFailure
	}
	defer eleva.Close()

	// An evicted queue key is a lost notification: refuse a Redis that may
	// evict, like any other backend that cannot serve (exit 1), before
	// listening. The error names the node, maxmemory-policy and noeviction.
	if client := eleva.Redis(); client != nil {
		cctx, cancel := context.WithTimeout(ctx, openTimeout)
		err := notify.CheckEviction(cctx, client)
		cancel()
		switch {
		case err != nil && cfg.allowEviction:
			log.Warn("--allow-eviction: starting although Redis may evict queued notifications (maxmemory-policy must be noeviction)", "error", err.Error())
		case err != nil:
			log.Error("refusing to start: Redis maxmemory-policy must be noeviction for the notification queue "+
				"(set it, or pass --allow-eviction / ELEVA_NOTIFY_ALLOW_EVICTION=true to start anyway)", "error", err.Error())
			return exitFailure
		}
	}
	sender, err := cfg.sender(log)
	if err != nil { // validate built it already
		log.Error("cannot build the notification sender", "sender", cfg.notifySender)
		return exitUsage
	}

	prefix := cfg.keyPrefix
	if prefix == "" {
		prefix = "eleva:"
	}
	log.Info("backend", "backend", eleva.Backend(), "target", eleva.Describe(), "key_prefix", prefix)
	if cfg.redisURL == "" {
		log.Warn("ELEVA_REDIS_URL not set: using the in-process memory backend; state is not shared and not durable")
	} else if cfg.keyHashSecret == "" {
		log.Warn("ELEVA_KEY_HASH_SECRET not set: identifiers appear escaped in key names")
	}
	log.Info("rate limiter", "timeout", cfg.rlTimeout.String(), "on_backend_error", cfg.rlOnError, "local_instances", cfg.localInstances)
	log.Info("locks, temporary data, tokens, idempotency", "lock_timeout", cfg.lockTimeout.String(), "temp_timeout", cfg.tempTimeout.String(),
		"on_backend_error", "closed (503)")
	log.Info("sessions", "timeout", cfg.sessionTimeout.String(), "touch_interval", cfg.sessionTouch.String(), "on_backend_error", "closed (503)",
		"device_info_and_preferences_encrypted", len(eleva.EncryptionKeyIDs()) > 0)
	log.Info("cache", "namespace", server.CacheNamespace, "coherence", eleva.Cache.Mode(),
		"on_backend_error", "503: callers load from their database")
	log.Info("notifications", "backend", eleva.Backend(), "timeout", notify.DefaultTimeout.String(),
		"on_backend_error", "closed (503): an enqueue that fails says so", "titles_messages_data_encrypted", false)
	if cfg.noWorkers {
		log.Info("notification delivery", "workers", "off (--no-workers): apps read GET /v1/users/{userId}/notifications and remove what they sent, or another process delivers",
			"sender", cfg.notifySender, "concurrency", cfg.notifyConc)
	} else {
		attrs := []any{"workers", "on", "sender", cfg.notifySender, "concurrency", cfg.notifyConc}
		if t := cfg.senderTarget(); t != "" {
			attrs = append(attrs, "target", t)
		}
		log.Info("notification delivery", attrs...)
		if cfg.notifySender == senderLog && cfg.redisURL != "" {
			log.Warn("the log sender marks every notification delivered without sending it: set --notify-sender webhook or novu, " +
				"or --no-workers when apps read the due list themselves")
		}
	}
	// The PostHog forwarder drains the event buffer (a Redis Stream, or the
	// memory backend's bounded buffer) when a key is configured; never log
	// the key.
	var forwarder *analytics.Forwarder
	if cfg.posthogKey != "" {
		forwarder, err = analytics.NewForwarder(eleva.Analytics.Buffer(), analytics.ForwarderConfig{
			APIKey: cfg.posthogKey, Host: cfg.posthogHost, Logger: log, Registerer: registry,
		})
		if err != nil {
			log.Error("cannot build the PostHog forwarder", "error", err.Error())
			return exitUsage
		}
		log.Info("analytics", "timeout", cfg.analyticsTimeout.String(), "posthog_forwarding", "on", "posthog_host", cfg.posthogHost,
			"buffer", map[bool]string{true: "redis stream (durable)", false: "in-process (lost on exit beyond the shutdown flush)"}[cfg.redisURL != ""])
	} else {
		log.Info("analytics", "timeout", cfg.analyticsTimeout.String(), "posthog_forwarding", "off (ELEVA_POSTHOG_API_KEY not set): POST /v1/events only buffers")
	}
	if ids := eleva.EncryptionKeyIDs(); len(ids) > 0 {
		log.Info("encryption at rest on: temporary values, token data, idempotency responses, session device info and preferences and cached values are sealed with AES-256-GCM",
			"current_key_id", ids[0], "older_key_ids", strings.Join(ids[1:], ","))
	} else {
		log.Warn("ELEVA_ENCRYPTION_KEY not set: encryption at rest is off; temporary values, token data, idempotency responses, sessions and cached values are stored unencrypted")
	}
	if len(keys) > 0 {
		log.Info("auth enabled", "api_keys", len(keys))
	} else {
		log.Warn("no API keys configured (ELEVA_API_KEYS): /v1 accepts loopback clients only")
	}
	if cfg.policiesFile != "" {
		log.Info("policies loaded", "file", cfg.policiesFile, "names", strings.Join(policies.Names(), ","))
	} else {
		log.Info("no policies file (ELEVA_POLICIES_FILE): /v1/ratelimit/policies is empty")
	}
	log.Info("/metrics is served without authentication", "max_body_bytes", cfg.maxBodyBytes)
	if cfg.realtimeSecret == "" {
		log.Warn("ELEVA_REALTIME_SECRET not set: SSE subscription tokens are signed with a random secret of this process; they stop working on restart and other instances refuse them")
	}

	apiHandler := server.New(server.Deps{
		Limiter:        eleva.RateLimit,
		Locks:          eleva.Locks,
		Temp:           eleva.Temp,
		Sessions:       eleva.Sessions,
		Cache:          eleva.Cache,
		Notify:         eleva.Notify,
		Analytics:      eleva.Analytics,
		Realtime:       eleva.Realtime,
		RealtimeSecret: []byte(cfg.realtimeSecret),
		Policies:       policies,
		OnBackendError: ratelimit.FailurePolicy(cfg.rlOnError),
		APIKeys:        keys,
		Backend:        eleva,
		Logger:         log,
		Registry:       registry,
		MaxBodyBytes:   cfg.maxBodyBytes,
		Version:        buildVersion(),
	})

	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", cfg.listen)
	if err != nil {
		log.Error("cannot listen", "listen", cfg.listen, "error", err.Error())
		return exitFailure
	}
	// "localhost" was accepted as loopback by name: check what it became.
	if len(keys) == 0 && !loopbackHost(ln.Addr().String()) {
		_ = ln.Close()
		log.Error("refusing to serve without API keys on a non-loopback address", "addr", ln.Addr().String())
		return exitUsage
	}

	srv := &http.Server{
		Handler:           apiHandler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		// No WriteTimeout: streaming responses (Server-Sent Events) will
		// outlive any fixed bound; handlers bound their own work.
		IdleTimeout:    120 * time.Second,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(handler, slog.LevelWarn),
	}
	// The worker runs until the server has stopped accepting (Shutdown
	// calls the OnShutdown hooks after closing the listeners), not until
	// SIGTERM: the two then stop side by side within --shutdown-timeout.
	workerDone := make(chan struct{})
	stopWorker := func() {}
	if cfg.noWorkers {
		close(workerDone)
	} else {
		wctx, cancelWorker := context.WithCancel(context.WithoutCancel(ctx))
		stopWorker = cancelWorker
		w := notify.NewWorker(eleva.Notify, sender, notify.WorkerConfig{
			Concurrency: cfg.notifyConc,
			// Sends in flight get most of the budget; the rest is for their
			// acks and nacks.
			StopTimeout: max(cfg.shutdownTimeout*4/5, time.Millisecond),
			Logger:      log,
			Registerer:  registry,
		})
		go func() {
			defer close(workerDone)
			if err := w.Run(wctx); err != nil {
				log.Error("notification delivery worker failed", "error", err.Error())
			}
		}()
		srv.RegisterOnShutdown(cancelWorker)
	}
	stopped := false
	defer func() {
		if stopped {
			return
		}
		// Other exits than a shutdown (the server failed): stop it too.
		stopWorker()
		select {
		case <-workerDone:
		case <-time.After(cfg.shutdownTimeout):
		}
	}()

	if forwarder != nil {
		forwarder.Start()
		defer func() {
			// Flush what is buffered, bounded by --shutdown-timeout (on
			// Redis what is left stays in the stream for the next start).
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.shutdownTimeout)
			defer cancel()
			if err := forwarder.Close(fctx); err != nil {
				log.Warn("PostHog forwarder: not every buffered event was sent before the shutdown deadline", "error", err.Error())
			}
		}()
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String(), "capabilities", capabilities)

	select {
	case err := <-errc:
		log.Error("server failed", "error", err.Error())
		return exitFailure
	case <-ctx.Done():
	}
	log.Info("shutting down", "timeout", cfg.shutdownTimeout.String())
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("in-flight requests did not finish in time; closing their connections", "error", err.Error())
		_ = srv.Close()
	}
	<-errc       // http.ErrServerClosed
	stopWorker() // already, unless Shutdown failed before its hooks
	stopped = true
	select {
	case <-workerDone:
	case <-sctx.Done():
		log.Warn("notification sends did not finish in time; their items stay leased and are delivered again after the lease")
	}
	log.Info("stopped")
	return exitOK
}
