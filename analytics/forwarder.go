package analytics

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/elevacare/eleva-redis/internal/lograte"
)

// Defaults of ForwarderConfig.
const (
	DefaultHost           = "https://us.i.posthog.com"
	DefaultBatchSize      = 100
	DefaultConcurrency    = 4
	DefaultMaxBatchBytes  = 5 << 20
	DefaultWait           = time.Second
	DefaultClaimAfter     = time.Minute
	DefaultRequestTimeout = 10 * time.Second
	DefaultBackoffBase    = 100 * time.Millisecond
	DefaultBackoffCap     = 30 * time.Second
	DefaultMaxRetryAfter  = 5 * time.Minute
	// MaxBatchBytesLimit is PostHog's limit on a request body (20 MB).
	MaxBatchBytesLimit = 20_000_000
)

// ForwarderConfig configures a Forwarder. The zero value is the documented
// default, except APIKey, which is required.
type ForwarderConfig struct {
	// APIKey is the PostHog project key (phc_...), sent as api_key in the
	// body; required. Never logged.
	APIKey string
	// Host is PostHog's ingestion host; "" means https://us.i.posthog.com.
	Host string
	// HTTPClient sends the batches; nil means a client with RequestTimeout.
	HTTPClient *http.Client
	// Consumer names this forwarder in the buffer (on Redis, the consumer
	// in the group); "" means hostname-pid-random. Two live forwarders must
	// not share a name.
	Consumer string
	// BatchSize caps the events of one request; 0 means 100.
	BatchSize int
	// Concurrency is the number of batches in flight at once (each read,
	// sent and settled on its own); 0 means 4.
	Concurrency int
	// MaxBatchBytes caps one request body; 0 means 5 MiB, at most 20 MB.
	MaxBatchBytes int
	// Wait is how long a read waits for new events; 0 means 1s.
	Wait time.Duration
	// ClaimAfter is how long an event read by a forwarder may stay
	// unsettled before another forwarder takes it over (a crashed one); 0
	// means 1 minute. Keep it above RequestTimeout.
	ClaimAfter time.Duration
	// RequestTimeout bounds one request; 0 means 10s.
	RequestTimeout time.Duration
	// BackoffBase and BackoffCap shape the retry delay (base·2^n with full
	// jitter, capped); 0 means 100ms and 30s.
	BackoffBase, BackoffCap time.Duration
	// MaxRetryAfter caps a Retry-After header; 0 means 5 minutes.
	MaxRetryAfter time.Duration
	// Logger receives failure logs (never events or the key); nil means
	// slog.Default().
	Logger *slog.Logger
	// Registerer receives the Prometheus metrics; nil means none.
	Registerer prometheus.Registerer
}

// Forwarder drains a Buffer into PostHog's /batch/ endpoint. Events are sent
// at least once, each with its uuid, so PostHog de-duplicates a retried
// batch. It retries 5xx, 408, 429 and network errors with backoff (waiting
// at least Retry-After); any other 4xx moves the events to the dead-letter
// buffer (a 400 for a batch is first bisected, so only the refused events go
// there).
type Forwarder struct {
	b      Buffer
	cfg    ForwarderConfig
	url    string
	client *http.Client
	m      *metrics
	log    *lograte.Limiter

	startOnce sync.Once
	stopOnce  sync.Once
	stop      chan struct{} // closed by Close: drain, then return
	hardCtx   context.Context
	hardStop  context.CancelFunc // Close's deadline passed
	done      chan struct{}
	lastStats atomic.Int64 // unix nanoseconds of the last Stats read
}

// NewForwarder returns a Forwarder on b; Start starts it. ErrInvalidArgument
// without an APIKey or with a bad Host.
func NewForwarder(b Buffer, cfg ForwarderConfig) (*Forwarder, error) {
	if cfg.APIKey == "" {
		return nil, fmt.Errorf("%w: ForwarderConfig.APIKey is required", ErrInvalidArgument)
	}
	if b == nil {
		return nil, fmt.Errorf("%w: nil buffer", ErrInvalidArgument)
	}
	host := strings.TrimRight(cfg.Host, "/")
	if host == "" {
		host = DefaultHost
	}
	if !strings.HasPrefix(host, "http://") && !strings.HasPrefix(host, "https://") {
		return nil, fmt.Errorf("%w: Host must be an http(s) URL", ErrInvalidArgument)
	}
	cfg.BatchSize = orInt(cfg.BatchSize, DefaultBatchSize)
	cfg.Concurrency = orInt(cfg.Concurrency, DefaultConcurrency)
	cfg.MaxBatchBytes = min(orInt(cfg.MaxBatchBytes, DefaultMaxBatchBytes), MaxBatchBytesLimit)
	cfg.Wait = orDur(cfg.Wait, DefaultWait)
	cfg.ClaimAfter = orDur(cfg.ClaimAfter, DefaultClaimAfter)
	cfg.RequestTimeout = orDur(cfg.RequestTimeout, DefaultRequestTimeout)
	cfg.BackoffBase = orDur(cfg.BackoffBase, DefaultBackoffBase)
	cfg.BackoffCap = orDur(cfg.BackoffCap, DefaultBackoffCap)
	cfg.MaxRetryAfter = orDur(cfg.MaxRetryAfter, DefaultMaxRetryAfter)
	if cfg.Consumer == "" {
		cfg.Consumer = defaultConsumer()
	}
	client := cfg.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: cfg.RequestTimeout}
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	hard, cancel := context.WithCancel(context.Background())
	return &Forwarder{
		b: b, cfg: cfg, url: host + "/batch/", client: client,
		m: newMetrics(cfg.Registerer), log: lograte.New(logger, 0),
		stop: make(chan struct{}), hardCtx: hard, hardStop: cancel, done: make(chan struct{}),
	}, nil
}

func defaultConsumer() string {
	h, _ := os.Hostname()
	var r [4]byte
	_, _ = rand.Read(r[:])
	return fmt.Sprintf("%s-%d-%s", h, os.Getpid(), hex.EncodeToString(r[:]))
}

// Start starts forwarding in the background (once).
func (f *Forwarder) Start() {
	f.startOnce.Do(func() { go f.run() })
}

// Close stops reading new events, sends what is buffered (retrying as
// usual) and returns once the buffer is empty (nil) or when ctx ends: then
// the request in flight is cancelled and ctx's error returned. On Redis
// what was not sent stays in the stream for the next forwarder; on memory
// it is lost and counted as dropped (reason shutdown).
func (f *Forwarder) Close(ctx context.Context) error {
	f.Start()
	f.stopOnce.Do(func() { close(f.stop) })
	select {
	case <-f.done:
		return nil
	case <-ctx.Done():
		f.hardStop()
		<-f.done
		if mb, ok := f.b.(*memBuffer); ok {
			if st, err := mb.Stats(context.Background()); err == nil {
				f.m.drop("shutdown", int(st.Buffered))
			}
		}
		return fmt.Errorf("analytics: forwarder close: %w", context.Cause(ctx))
	}
}

func (f *Forwarder) stopping() bool {
	select {
	case <-f.stop:
		return true
	default:
		return false
	}
}

func (f *Forwarder) run() {
	defer close(f.done)
	defer f.hardStop()
	// readCtx ends at Close, so a blocking read does not hold it up.
	readCtx, cancelRead := context.WithCancel(f.hardCtx)
	go func() {
		select {
		case <-f.stop:
		case <-f.hardCtx.Done():
		}
		cancelRead()
	}()
	var wg sync.WaitGroup
	for range f.cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.loop(readCtx)
		}()
	}
	wg.Wait()
}

// loop reads, sends and settles batches until the buffer is drained after
// Close, or Close's deadline passes.
func (f *Forwarder) loop(readCtx context.Context) {
	failures := 0
	for f.hardCtx.Err() == nil {
		draining := f.stopping()
		rctx, wait := readCtx, f.cfg.Wait
		if draining {
			rctx, wait = f.hardCtx, 0
		}
		entries, err := f.b.Read(rctx, f.cfg.Consumer, f.cfg.BatchSize, f.cfg.ClaimAfter, wait)
		if err != nil {
			if draining && f.hardCtx.Err() != nil {
				return
			}
			if !draining && readCtx.Err() != nil {
				continue // Close was called during the read: drain
			}
			f.log.Log(slog.LevelWarn, "analytics: forwarder: reading the buffer failed", "err", err.Error())
			if !f.sleep(f.backoff(failures), draining) {
				return
			}
			failures++
			continue
		}
		failures = 0
		f.updateStats()
		if len(entries) == 0 {
			if draining {
				return
			}
			continue
		}
		for _, chunk := range f.chunks(entries) {
			if !f.deliver(chunk) {
				return
			}
		}
	}
}

func (f *Forwarder) updateStats() {
	last := f.lastStats.Load()
	now := time.Now().UnixNano()
	if f.m == nil || now-last < int64(time.Second) || !f.lastStats.CompareAndSwap(last, now) {
		return
	}
	ctx, cancel := context.WithTimeout(f.hardCtx, time.Second)
	defer cancel()
	if st, err := f.b.Stats(ctx); err == nil {
		f.m.setBuffered(st.Buffered)
	}
}

// chunks splits entries into batches within BatchSize and MaxBatchBytes.
func (f *Forwarder) chunks(entries []Entry) [][]Entry {
	var out [][]Entry
	start, size := 0, 0
	overhead := len(f.cfg.APIKey) + 64
	for i, e := range entries {
		n := len(e.Data) + 1
		if i > start && (i-start >= f.cfg.BatchSize || overhead+size+n > f.cfg.MaxBatchBytes) {
			out = append(out, entries[start:i])
			start, size = i, 0
		}
		size += n
	}
	return append(out, entries[start:])
}

// deliver sends one batch until it is settled; false when the forwarder must
// stop (Close's deadline passed).
func (f *Forwarder) deliver(batch []Entry) bool {
	for attempt := 0; ; attempt++ {
		status, retryAfter, err := f.post(batch)
		switch {
		case err == nil && status/100 == 2:
			if err := f.b.Ack(f.hardCtx, ids(batch)); err != nil {
				// Sent but not settled: sent again after ClaimAfter, with
				// the same uuids.
				f.log.Log(slog.LevelWarn, "analytics: forwarder: ack failed; the batch will be sent again", "err", err.Error())
			}
			f.m.add(func(m *metrics) prometheus.Counter { return m.sent }, len(batch))
			return true
		case err == nil && !retryable(status):
			if status == http.StatusBadRequest && len(batch) > 1 {
				// One bad event fails the whole batch: find it.
				h := len(batch) / 2
				return f.deliver(batch[:h]) && f.deliver(batch[h:])
			}
			if status == http.StatusUnauthorized || status == http.StatusForbidden {
				f.log.Log(slog.LevelError, "analytics: forwarder: PostHog refused the API key", "status", status)
			}
			if err := f.b.Dead(f.hardCtx, batch, strconv.Itoa(status)); err != nil {
				f.log.Log(slog.LevelWarn, "analytics: forwarder: dead-lettering failed; the batch will be sent again", "err", err.Error())
			} else {
				f.m.add(func(m *metrics) prometheus.Counter { return m.dead }, len(batch))
			}
			return true
		}
		if f.hardCtx.Err() != nil {
			return false
		}
		f.m.add(func(m *metrics) prometheus.Counter { return m.retried }, len(batch))
		if err != nil {
			f.log.Log(slog.LevelWarn, "analytics: forwarder: sending a batch failed; retrying", "err", err.Error())
		} else {
			f.log.Log(slog.LevelWarn, "analytics: forwarder: PostHog answered a retryable status; retrying", "status", status)
		}
		wait := max(f.backoff(attempt), min(retryAfter, f.cfg.MaxRetryAfter))
		if !f.sleep(wait, true) {
			return false
		}
	}
}

func retryable(status int) bool {
	return status >= 500 || status == http.StatusRequestTimeout || status == http.StatusTooManyRequests
}

func ids(batch []Entry) []string {
	out := make([]string, len(batch))
	for i, e := range batch {
		out[i] = e.ID
	}
	return out
}

// backoff is BackoffBase·2^attempt with full jitter, capped at BackoffCap.
func (f *Forwarder) backoff(attempt int) time.Duration {
	d := f.cfg.BackoffCap
	if attempt < 30 {
		d = min(f.cfg.BackoffBase<<attempt, f.cfg.BackoffCap)
	}
	return d/2 + time.Duration(mrand.Int64N(int64(d/2)+1))
}

// sleep waits d; false if the forwarder must stop. Unless throughStop, Close
// also ends the wait (the caller then drains).
func (f *Forwarder) sleep(d time.Duration, throughStop bool) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	var stop <-chan struct{}
	if !throughStop {
		stop = f.stop
	}
	select {
	case <-t.C:
		return true
	case <-stop:
		return true
	case <-f.hardCtx.Done():
		return false
	}
}

// post sends batch to /batch/: the status, the Retry-After wait, or a
// transport error.
func (f *Forwarder) post(batch []Entry) (int, time.Duration, error) {
	var body bytes.Buffer
	key, _ := json.Marshal(f.cfg.APIKey)
	body.WriteString(`{"api_key":`)
	body.Write(key)
	body.WriteString(`,"batch":[`)
	for i, e := range batch {
		if i > 0 {
			body.WriteByte(',')
		}
		body.Write(e.Data)
	}
	body.WriteString(`]}`)
	ctx, cancel := context.WithTimeout(f.hardCtx, f.cfg.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.url, &body)
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := f.client.Do(req)
	if err != nil {
		// The URL holds no secret; the body (with the key) is not in err.
		return 0, 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp.StatusCode, RetryAfter(resp.Header.Get("Retry-After"), time.Now()), nil
}

// RetryAfter parses a Retry-After header (seconds or an HTTP date) as a
// wait from now; 0 when absent or unparseable, never negative.
func RetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		return time.Duration(min(n, 24*3600)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(t.Sub(now), 0), 24*time.Hour)
	}
	return 0
}
