package elevaredis_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	elevaredis "github.com/elevacare/eleva-redis"
	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/ratelimit"
)

func TestMain(m *testing.M) { os.Exit(redistest.Run(m)) }

// open opens cfg and closes it when the test ends.
func open(t *testing.T, cfg elevaredis.Config) *elevaredis.Eleva {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e, err := elevaredis.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("Open(%s): %v", elevaredis.RedactURL(cfg.RedisURL), err)
	}
	t.Cleanup(e.Close)
	return e
}

// Every URL form reaches a real server, and the rate limiter runs on it:
// two Eleva instances opened on the same Redis URL share one counter, while
// two memory instances do not.
func TestOpenURLForms(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// setup starts what the case needs and returns the config, the
		// substrings Describe must contain and a secret it must not.
		setup  func(t *testing.T) (cfg elevaredis.Config, describe []string, secret string)
		memory bool
	}{
		{
			name: "memory",
			setup: func(t *testing.T) (elevaredis.Config, []string, string) {
				return elevaredis.Config{}, []string{"memory (", "not shared"}, ""
			},
			memory: true,
		},
		{
			name: "standalone",
			setup: func(t *testing.T) (elevaredis.Config, []string, string) {
				u := redistest.URL(t)
				return elevaredis.Config{RedisURL: u}, []string{"redis (standalone " + strings.TrimPrefix(u, "redis://")}, ""
			},
		},
		{
			name: "cluster",
			setup: func(t *testing.T) (elevaredis.Config, []string, string) {
				return elevaredis.Config{RedisURL: redistest.ClusterURL(t)}, []string{"redis (cluster, 3 nodes: 127.0.0.1:"}, ""
			},
		},
		{
			name: "acl user",
			setup: func(t *testing.T) (elevaredis.Config, []string, string) {
				s := redistest.NewServer(t)
				redistest.ACLUser(t, s.URL(), "app", "s3cret-pw")
				return elevaredis.Config{RedisURL: "redis://app:s3cret-pw@" + s.Addr},
					[]string{"redis (standalone " + s.Addr + ", user app)"}, "s3cret-pw"
			},
		},
		{
			name: "tls",
			setup: func(t *testing.T) (elevaredis.Config, []string, string) {
				s := redistest.NewTLSServer(t)
				return elevaredis.Config{RedisURL: s.URL(), TLS: s.ClientTLS()},
					[]string{"redis (standalone " + s.Addr + ", tls)"}, ""
			},
		},
		{
			name: "tls acl user db",
			setup: func(t *testing.T) (elevaredis.Config, []string, string) {
				s := redistest.NewTLSServer(t)
				return elevaredis.Config{RedisURL: "rediss://default:@" + s.Addr + "/3", TLS: s.ClientTLS()},
					[]string{"redis (standalone " + s.Addr + ", tls, user default, db 3)"}, ""
			},
		},
		{
			name: "sentinel",
			setup: func(t *testing.T) (elevaredis.Config, []string, string) {
				master := redistest.NewServer(t)
				s := redistest.StartSentinel(t, "mymaster", master)
				return elevaredis.Config{RedisURL: "redis://" + s.Addr + "?master_set=mymaster"},
					[]string{"redis (sentinel master_set=mymaster via " + s.Addr + ", master " + master.Addr + ")"}, ""
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, describe, secret := tc.setup(t)
			cfg.KeyPrefix = redistest.Prefix(t)
			e1 := open(t, cfg)
			e2 := open(t, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()

			wantBackend := elevaredis.BackendRedis
			if tc.memory {
				wantBackend = elevaredis.BackendMemory
			}
			if got := e1.Backend(); got != wantBackend {
				t.Errorf("Backend() = %q, want %q", got, wantBackend)
			}
			desc := e1.Describe()
			for _, want := range describe {
				if !strings.Contains(desc, want) {
					t.Errorf("Describe() = %q, want it to contain %q", desc, want)
				}
			}
			if secret != "" && strings.Contains(desc, secret) {
				t.Errorf("Describe() = %q contains the password", desc)
			}
			if _, err := e1.Ping(ctx); err != nil {
				t.Errorf("Ping: %v", err)
			}

			if tc.memory {
				if e1.Redis() != nil {
					t.Errorf("Redis() = %v on memory, want nil", e1.Redis())
				}
			} else {
				// The client reaches the server: what one instance writes,
				// the other reads.
				c1, c2 := e1.Redis(), e2.Redis()
				key := cfg.KeyPrefix + "roundtrip"
				if err := c1.Do(ctx, c1.B().Set().Key(key).Value("v1").Ex(time.Minute).Build()).Error(); err != nil {
					t.Fatalf("SET: %v", err)
				}
				if got, err := c2.Do(ctx, c2.B().Get().Key(key).Build()).ToString(); err != nil || got != "v1" {
					t.Errorf("GET from the second instance = %q, %v; want v1", got, err)
				}
			}

			// Limit 2: the first instance takes both units. On Redis the
			// second instance shares the counter and is denied; on memory
			// it has its own.
			l := ratelimit.Limit{Limit: 2, Window: time.Minute}
			for i := 0; i < 2; i++ {
				d, err := e1.RateLimit.Allow(ctx, "user:42", l)
				if err != nil || !d.Allowed || d.Degraded {
					t.Fatalf("Allow #%d on e1 = %+v, %v; want allowed, not degraded", i+1, d, err)
				}
			}
			d, err := e1.RateLimit.Allow(ctx, "user:42", l)
			if err != nil || d.Allowed {
				t.Errorf("Allow #3 on e1 = %+v, %v; want denied", d, err)
			}
			d, err = e2.RateLimit.Allow(ctx, "user:42", l)
			if err != nil || d.Degraded {
				t.Fatalf("Allow on e2 = %+v, %v", d, err)
			}
			if wantAllowed := tc.memory; d.Allowed != wantAllowed {
				t.Errorf("Allow on the second instance: allowed=%v, want %v", d.Allowed, wantAllowed)
			}
		})
	}
}

// syncBuffer is a log sink safe for the concurrent writes of slog.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Client-side caching is on by default, and turned off (with a warning) when
// the server refuses it rather than failing Open.
func TestOpenClientCache(t *testing.T) {
	t.Parallel()
	s := redistest.NewServer(t)
	// An ACL user without CLIENT cannot turn on CLIENT TRACKING.
	redistest.ACLUser(t, s.URL(), "noclient", "pw-noclient", "-client")
	tests := []struct {
		name      string
		url       string
		disable   bool
		wantCache bool
		wantWarn  bool
	}{
		{name: "default", url: s.URL(), wantCache: true},
		{name: "DisableClientCache", url: s.URL(), disable: true},
		{name: "client_cache=0", url: s.URL() + "?client_cache=0"},
		{name: "RESP2 refused", url: s.URL() + "?protocol=2", wantWarn: true},
		{name: "CLIENT TRACKING refused", url: "redis://noclient:pw-noclient@" + s.Addr, wantWarn: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs syncBuffer
			e := open(t, elevaredis.Config{
				RedisURL:           tc.url,
				KeyPrefix:          redistest.Prefix(t),
				DisableClientCache: tc.disable,
				Logger:             slog.New(slog.NewTextHandler(&logs, nil)),
			})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c := e.Redis()
			key := redistest.Prefix(t) + "cached"
			if err := c.Do(ctx, c.B().Set().Key(key).Value("v").Ex(time.Minute).Build()).Error(); err != nil {
				t.Fatalf("SET: %v", err)
			}
			// The second cached read is served locally only when tracking is on.
			var hit bool
			for i := 0; i < 2; i++ {
				r := c.DoCache(ctx, c.B().Get().Key(key).Cache(), time.Minute)
				if v, err := r.ToString(); err != nil || v != "v" {
					t.Fatalf("cached GET = %q, %v; want v", v, err)
				}
				hit = r.IsCacheHit()
			}
			if hit != tc.wantCache {
				t.Errorf("second cached GET: cache hit = %v, want %v", hit, tc.wantCache)
			}
			if off := strings.Contains(e.Describe(), "client-side cache off"); off == tc.wantCache {
				t.Errorf("Describe() = %q; want cache off = %v", e.Describe(), !tc.wantCache)
			}
			warned := strings.Contains(logs.String(), "refused client-side caching")
			if warned != tc.wantWarn {
				t.Errorf("warning logged = %v, want %v; logs:\n%s", warned, tc.wantWarn, logs.String())
			}
			if strings.Contains(logs.String(), "pw-noclient") {
				t.Errorf("logs contain the password:\n%s", logs.String())
			}
		})
	}
}

// A refused password is reported at Open, with the URL redacted.
func TestOpenWrongPassword(t *testing.T) {
	t.Parallel()
	s := redistest.NewServer(t)
	redistest.ACLUser(t, s.URL(), "app", "right-pw")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e, err := elevaredis.Open(ctx, elevaredis.Config{RedisURL: "redis://app:wrong-pw-123@" + s.Addr})
	if err == nil {
		e.Close()
		t.Fatal("Open with a wrong password succeeded")
	}
	msg := err.Error()
	if !errors.Is(err, elevaredis.ErrConnect) {
		t.Errorf("error %q is not ErrConnect", msg)
	}
	for _, want := range []string{"WRONGPASS", "redis://app:xxxxx@" + s.Addr} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not contain %q", msg, want)
		}
	}
	if strings.Contains(msg, "wrong-pw-123") {
		t.Errorf("error %q contains the password", msg)
	}
}

// Open gives up when ctx ends, whether the server refuses connections, never
// answers, or is not what the URL says.
func TestOpenUnreachable(t *testing.T) {
	t.Parallel()
	// A port nobody listens on: connection refused.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := l.Addr().String()
	l.Close()

	// A listener that accepts and never answers: a hung server or a black
	// hole. rueidis alone would wait its 5s dial timeout.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns sync.WaitGroup
	conns.Go(func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	})
	t.Cleanup(func() {
		silent.Close()
		conns.Wait()
	})

	standalone := redistest.URL(t)
	tests := []struct {
		name     string
		url      string
		timeout  time.Duration
		wantIs   error
		contains string
	}{
		{name: "connection refused", url: "redis://u:hidden-pw@" + closedAddr, timeout: 5 * time.Second, contains: "redis://u:xxxxx@" + closedAddr},
		{name: "silent server", url: "redis://" + silent.Addr().String(), timeout: 300 * time.Millisecond, wantIs: context.DeadlineExceeded},
		{name: "silent sentinel", url: "redis://" + silent.Addr().String() + "?master_set=mymaster", timeout: 300 * time.Millisecond, wantIs: context.DeadlineExceeded},
		{name: "silent tls", url: "rediss://" + silent.Addr().String(), timeout: 300 * time.Millisecond, wantIs: context.DeadlineExceeded},
		// Several addresses mean Cluster: two standalone servers are refused,
		// with a hint about Sentinel.
		{name: "not a cluster", url: standalone + "?addr=" + strings.TrimPrefix(standalone, "redis://"), timeout: 5 * time.Second, contains: "master_set"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			start := time.Now()
			e, err := elevaredis.Open(ctx, elevaredis.Config{RedisURL: tc.url})
			took := time.Since(start)
			if err == nil {
				e.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, elevaredis.ErrConnect) {
				t.Errorf("error %q is not ErrConnect", err)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("error %q is not %v", err, tc.wantIs)
			}
			if tc.contains != "" && !strings.Contains(err.Error(), tc.contains) {
				t.Errorf("error %q does not contain %q", err, tc.contains)
			}
			if strings.Contains(err.Error(), "hidden-pw") {
				t.Errorf("error %q contains the password", err)
			}
			// Generous: only "did not wait for rueidis' own timeouts".
			if limit := tc.timeout + 2*time.Second; took > limit {
				t.Errorf("Open took %v, want at most %v", took, limit)
			}
		})
	}
}

// Bad configuration fails before any connection attempt, with a sentinel error
// and without the password.
func TestOpenInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  elevaredis.Config
		want error
	}{
		{"unknown scheme", elevaredis.Config{RedisURL: "http://u:hidden-pw@127.0.0.1:6379"}, elevaredis.ErrInvalidURL},
		{"bad port", elevaredis.Config{RedisURL: "redis://u:hidden-pw@127.0.0.1:port"}, elevaredis.ErrInvalidURL},
		{"bad db", elevaredis.Config{RedisURL: "redis://u:hidden-pw@127.0.0.1:6379/zero"}, elevaredis.ErrInvalidURL},
		{"bad path", elevaredis.Config{RedisURL: "redis://u:hidden-pw@127.0.0.1:6379/0/1"}, elevaredis.ErrInvalidURL},
		{"bad dial_timeout", elevaredis.Config{RedisURL: "redis://u:hidden-pw@127.0.0.1:6379?dial_timeout=soon"}, elevaredis.ErrInvalidURL},
		{"control character", elevaredis.Config{RedisURL: "redis://u:hidden-pw@127.0.0.1:6379\n"}, elevaredis.ErrInvalidURL},
		{"TLS without rediss", elevaredis.Config{RedisURL: "redis://u:hidden-pw@127.0.0.1:6379", TLS: &tls.Config{}}, elevaredis.ErrInvalidConfig},
		{"bad prefix on redis", elevaredis.Config{RedisURL: "redis://u:hidden-pw@127.0.0.1:6379", KeyPrefix: "app{1}:"}, elevaredis.ErrInvalidConfig},
		{"bad prefix on memory", elevaredis.Config{KeyPrefix: "app*"}, elevaredis.ErrInvalidConfig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, err := elevaredis.Open(context.Background(), tc.cfg)
			if err == nil {
				e.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("error %q, want %v", err, tc.want)
			}
			if strings.Contains(err.Error(), "hidden-pw") {
				t.Errorf("error %q contains the password", err)
			}
		})
	}
}

// Close closes the client (Ping then fails) and may be called twice.
func TestClose(t *testing.T) {
	t.Parallel()
	for _, url := range []string{"", redistest.URL(t)} {
		e := open(t, elevaredis.Config{RedisURL: url})
		e.Close()
		e.Close()
		_, err := e.Ping(context.Background())
		if url == "" && err != nil {
			t.Errorf("memory Ping after Close: %v", err)
		}
		if url != "" && !errors.Is(err, rueidis.ErrClosing) {
			t.Errorf("redis Ping after Close = %v, want ErrClosing", err)
		}
	}
}

func TestRedactURL(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"", ""},
		{"redis://127.0.0.1:6379", "redis://127.0.0.1:6379"},
		{"redis://app:secret@127.0.0.1:6379/2", "redis://app:xxxxx@127.0.0.1:6379/2"},
		{"rediss://:secret@redis.internal:6380", "rediss://:xxxxx@redis.internal:6380"},
		{"redis://app@127.0.0.1:6379", "redis://app@127.0.0.1:6379"},
		{"redis://app:p%40ss@h:1?addr=h:2&master_set=m", "redis://app:xxxxx@h:1?addr=h:2&master_set=m"},
		// Unparseable URLs are redacted by hand.
		{"redis://app:se@cret@h:port/0", "redis://app:xxxxx@h:port/0"},
		{"redis://app:secret@h:1\n", "redis://app:xxxxx@h:1\n"},
		{"app:secret@h:1", "app:xxxxx@h:1"},
	}
	for _, tc := range tests {
		if got := elevaredis.RedactURL(tc.in); got != tc.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
