package elevaredis_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	elevaredis "github.com/elevacare/eleva-redis"
	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/internal/testlog"
	"github.com/elevacare/eleva-redis/lock"
	"github.com/elevacare/eleva-redis/notify"
	"github.com/elevacare/eleva-redis/ratelimit"
	"github.com/elevacare/eleva-redis/tempdata"
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
					[]string{"redis (standalone " + s.Addr + ", user app"}, "s3cret-pw"
			},
		},
		{
			name: "tls",
			setup: func(t *testing.T) (elevaredis.Config, []string, string) {
				s := redistest.NewTLSServer(t)
				return elevaredis.Config{RedisURL: s.URL(), TLS: s.ClientTLS()},
					[]string{"redis (standalone " + s.Addr + ", tls"}, ""
			},
		},
		{
			name: "tls acl user db",
			setup: func(t *testing.T) (elevaredis.Config, []string, string) {
				s := redistest.NewTLSServer(t)
				return elevaredis.Config{RedisURL: "rediss://default:@" + s.Addr + "/3", TLS: s.ClientTLS()},
					[]string{"redis (standalone " + s.Addr + ", tls, user default, db 3"}, ""
			},
		},
		{
			name: "sentinel",
			setup: func(t *testing.T) (elevaredis.Config, []string, string) {
				master := redistest.NewServer(t)
				s := redistest.StartSentinel(t, "mymaster", master)
				return elevaredis.Config{RedisURL: "redis://" + s.Addr + "?master_set=mymaster"},
					[]string{"redis (sentinel master_set=mymaster via " + s.Addr + ", master " + master.Addr + ""}, ""
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
			if !tc.memory {
				want := fmt.Sprintf(", %d pipelined connection", elevaredis.DefaultRedisConnections())
				if !strings.Contains(desc, want) || !strings.HasSuffix(desc, ")") {
					t.Errorf("Describe() = %q, want it to contain %q and end with \")\"", desc, want)
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
				// Real-time Pub/Sub runs on a dedicated connection of the
				// client (per node on Cluster): what one instance publishes,
				// the other's subscriber receives, on every form of URL.
				sub, err := e1.Realtime.Subscribe(ctx, []string{"appt:url"}, nil)
				if err != nil {
					t.Fatalf("Subscribe: %v", err)
				}
				defer sub.Close()
				if _, err := e2.Realtime.Publish(ctx, "appt:url", []byte(`{"v":1}`)); err != nil {
					t.Fatalf("Publish: %v", err)
				}
				if ev, err := sub.Next(ctx); err != nil || ev.Message == nil || string(ev.Message.Data) != `{"v":1}` {
					t.Errorf("Next on the first instance = %+v, %v; want the second one's message", ev, err)
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
			var logs testlog.Buffer
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
			// The query cache follows: tracking when the client caches,
			// Pub/Sub invalidation otherwise.
			wantMode := "pubsub"
			if tc.wantCache {
				wantMode = "tracking"
			}
			if got := e.Cache.Mode(); got != wantMode {
				t.Errorf("Cache.Mode() = %s, want %s", got, wantMode)
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
		{"connections not a power of two", elevaredis.Config{RedisURL: "redis://u:hidden-pw@127.0.0.1:6379", RedisConnections: 3}, elevaredis.ErrInvalidConfig},
		{"negative connections", elevaredis.Config{RedisURL: "redis://u:hidden-pw@127.0.0.1:6379", RedisConnections: -1}, elevaredis.ErrInvalidConfig},
		{"too many connections", elevaredis.Config{RedisURL: "redis://u:hidden-pw@127.0.0.1:6379", RedisConnections: 512}, elevaredis.ErrInvalidConfig},
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

// RedisConnections is the number of pipelined connections Open's client
// keeps to the server: many concurrent calls use exactly that many (counted
// by the server), and 0 means DefaultRedisConnections.
func TestOpenRedisConnections(t *testing.T) {
	t.Parallel()
	for _, conns := range []int{0, 1, 2, 4} {
		t.Run(fmt.Sprint(conns), func(t *testing.T) {
			t.Parallel()
			s := redistest.NewServer(t)
			e := open(t, elevaredis.Config{RedisURL: s.URL(), KeyPrefix: redistest.Prefix(t), RedisConnections: conns})
			want := conns
			if want == 0 {
				want = elevaredis.DefaultRedisConnections()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			// Enough concurrent calls on enough keys that every connection
			// is dialled (rueidis spreads calls over them by key).
			var wg sync.WaitGroup
			for g := range 32 {
				wg.Go(func() {
					for i := range 20 {
						key := fmt.Sprintf("k%d-%d", g, i)
						if err := e.Redis().Do(ctx, e.Redis().B().Set().Key(key).Value("v").Build()).Error(); err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			// The server's view: its connections, less the one asking, the
			// Pub/Sub ones and those that never ran a command (cmd=NULL: the
			// dedicated connection the real-time broker dials at start for
			// its subscriptions; every pipelined one has just run SETs).
			admin := redistest.Client(t, s.URL())
			list, err := admin.Do(ctx, admin.B().ClientList().Build()).ToString()
			if err != nil {
				t.Fatal(err)
			}
			got := 0
			for line := range strings.Lines(list) {
				if strings.Contains(line, " cmd=client|list ") || strings.Contains(line, " cmd=NULL ") || !strings.Contains(line, " sub=0 psub=0 ssub=0 ") {
					continue
				}
				got++
			}
			if got != want {
				t.Errorf("%d pipelined connections to the server, want %d; CLIENT LIST:\n%s", got, want, list)
			}
			if desc := e.Describe(); !strings.Contains(desc, fmt.Sprintf(", %d pipelined connection", want)) {
				t.Errorf("Describe() = %q, want it to name %d pipelined connections", desc, want)
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

// Locks and Temp run on the backend Open picks, with the prefix, registry
// and logger of the top-level Config: two instances opened on one Redis URL
// (standalone or Cluster) share locks, values and tokens; two memory
// instances do not.
func TestOpenLocksAndTemp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		url  func(testing.TB) string // nil: memory
	}{
		{"memory", nil},
		{"standalone", redistest.URL},
		{"cluster", redistest.ClusterURL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := prometheus.NewRegistry()
			cfg := elevaredis.Config{KeyPrefix: redistest.Prefix(t), Registerer: reg}
			if tc.url != nil {
				cfg.RedisURL = tc.url(t)
			}
			shared := tc.url != nil
			e1 := open(t, cfg)
			cfg.Registerer = nil
			e2 := open(t, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()

			lease, err := e1.Locks.Acquire(ctx, "payment:appt-1", time.Minute)
			if err != nil {
				t.Fatalf("Acquire on e1: %v", err)
			}
			l2, err := e2.Locks.Acquire(ctx, "payment:appt-1", time.Minute)
			if shared && !errors.Is(err, lock.ErrHeld) {
				t.Errorf("Acquire on e2 = %v, %v; want ErrHeld (one Redis, one lock)", l2, err)
			}
			if !shared && err != nil {
				t.Errorf("Acquire on a second memory instance: %v; want its own lock", err)
			}
			if err := lease.Release(ctx); err != nil {
				t.Errorf("Release: %v", err)
			}

			tok, _, err := e1.Temp.Issue(ctx, "verify-email", []byte(`{"userId":"42"}`), time.Minute)
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			data, err := e2.Temp.Consume(ctx, "verify-email", tok)
			if shared && (err != nil || string(data) != `{"userId":"42"}`) {
				t.Errorf("Consume on e2 = %q, %v; want the data", data, err)
			}
			if !shared && !errors.Is(err, tempdata.ErrNotFound) {
				t.Errorf("Consume on a second memory instance = %q, %v; want ErrNotFound", data, err)
			}
			if _, err := e1.Temp.Put(ctx, "setup", "user-42", []byte(`{"step":2}`), time.Minute); err != nil {
				t.Fatalf("Put: %v", err)
			}
			_, err = e2.Temp.Get(ctx, "setup", "user-42")
			if shared != (err == nil) {
				t.Errorf("Get on e2: %v (shared backend: %v)", err, shared)
			}

			// The capabilities' keys are under KeyPrefix (a single node
			// answers KEYS for every key only on standalone).
			if tc.name == "standalone" {
				c := redistest.Client(t, cfg.RedisURL)
				for _, pattern := range []string{"lock:*", "tmp:*"} {
					n, err := c.Do(ctx, c.B().Keys().Pattern(cfg.KeyPrefix+pattern).Build()).AsStrSlice()
					if err != nil || len(n) == 0 {
						t.Errorf("no key %s%s (%v): the prefix was not passed on", cfg.KeyPrefix, pattern, err)
					}
				}
			}
			// The capabilities' metrics are on the top-level registry.
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]bool{}
			for _, mf := range mfs {
				got[mf.GetName()] = true
			}
			for _, want := range []string{"eleva_lock_acquire_total", "eleva_tempdata_ops_total"} {
				if !got[want] {
					t.Errorf("registry lacks %s", want)
				}
			}
		})
	}
}

// Two encryption keys (kid:base64 of 32 bytes).
const (
	encKey1 = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
	encKey2 = "k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="
)

// EncryptionKey seals what Temp stores, keeps values written under an older
// key readable after a rotation, and is reported by id only.
func TestOpenEncryptionKey(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	url, prefix := redistest.URL(t), redistest.Prefix(t)
	old := open(t, elevaredis.Config{RedisURL: url, KeyPrefix: prefix, EncryptionKey: encKey1})
	rotated := open(t, elevaredis.Config{RedisURL: url, KeyPrefix: prefix, EncryptionKey: encKey2 + "," + encKey1})
	dropped := open(t, elevaredis.Config{RedisURL: url, KeyPrefix: prefix, EncryptionKey: encKey2})
	plain := open(t, elevaredis.Config{RedisURL: url, KeyPrefix: prefix})

	if got := fmt.Sprint(rotated.EncryptionKeyIDs()); got != "[k2 k1]" {
		t.Errorf("EncryptionKeyIDs = %s, want [k2 k1]", got)
	}
	if ids := plain.EncryptionKeyIDs(); ids != nil {
		t.Errorf("EncryptionKeyIDs without a key = %v, want nil", ids)
	}

	const secret = "diagnosis: example"
	if _, err := old.Temp.Put(ctx, "intake", "jane", []byte(secret), time.Minute); err != nil {
		t.Fatal(err)
	}
	c := redistest.Client(t, url)
	keys, err := c.Do(ctx, c.B().Keys().Pattern(prefix+"tmp:*").Build()).AsStrSlice()
	if err != nil || len(keys) != 1 {
		t.Fatalf("KEYS = %v, %v; want the one value", keys, err)
	}
	raw, err := c.Do(ctx, c.B().Get().Key(keys[0]).Build()).ToString()
	if err != nil || strings.Contains(raw, secret) || !strings.HasPrefix(raw, "\xe1\x02k1") {
		t.Fatalf("stored %q, %v; want it sealed under k1", raw, err)
	}
	if it, err := rotated.Temp.Get(ctx, "intake", "jane"); err != nil || string(it.Value) != secret {
		t.Errorf("after rotation: %q, %v; want the value", it.Value, err)
	}
	if _, err := dropped.Temp.Get(ctx, "intake", "jane"); !errors.Is(err, tempdata.ErrUnreadable) {
		t.Errorf("without k1: %v, want ErrUnreadable", err)
	}

	// Memory seals too.
	mem := open(t, elevaredis.Config{EncryptionKey: encKey1})
	if _, err := mem.Temp.Put(ctx, "ns", "k", []byte("v"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if it, err := mem.Temp.Get(ctx, "ns", "k"); err != nil || string(it.Value) != "v" {
		t.Errorf("memory round trip: %q, %v", it.Value, err)
	}
}

// A bad EncryptionKey fails Open with ErrInvalidConfig before any connection,
// and the error never contains key material.
func TestOpenInvalidEncryptionKey(t *testing.T) {
	t.Parallel()
	const material = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
	kr, err := tempdata.ParseKeyring(encKey1)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  elevaredis.Config
	}{
		{"no key id", elevaredis.Config{EncryptionKey: material + "="}},
		{"short key", elevaredis.Config{EncryptionKey: "k1:c2hvcnQta2V5LW1hdGVyaWFs"}},
		{"not base64", elevaredis.Config{EncryptionKey: "k1:" + material + "*"}},
		{"duplicate id", elevaredis.Config{EncryptionKey: encKey1 + ",k1:" + encKey2[3:]}},
		{"blank", elevaredis.Config{EncryptionKey: " "}},
		{"on redis", elevaredis.Config{RedisURL: "redis://127.0.0.1:1", EncryptionKey: "k1:" + material[:20]}},
		{"both set", elevaredis.Config{EncryptionKey: encKey1, Temp: tempdata.Config{Keyring: kr}}},
		{"bad lock prefix", elevaredis.Config{Lock: lock.Config{Prefix: "{x}"}}},
		{"bad temp prefix", elevaredis.Config{Temp: tempdata.Config{Prefix: "a*"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, err := elevaredis.Open(context.Background(), tc.cfg)
			if err == nil {
				e.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, elevaredis.ErrInvalidConfig) {
				t.Errorf("error %q, want ErrInvalidConfig", err)
			}
			for _, m := range []string{material, material[:20], encKey2[3:13], "c2hvcnQta2V5"} {
				if strings.Contains(err.Error(), m) {
					t.Errorf("error %q contains key material", err)
				}
			}
		})
	}
}

// Notify runs on the backend Open picks, with the prefix, key hash secret,
// registry and logger of the top-level Config: a notification enqueued on one
// instance is pending on another opened on the same Redis URL (standalone or
// Cluster), and the same id enqueued through the other is not queued twice;
// two memory instances do not share a queue.
func TestOpenNotify(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		url  func(testing.TB) string // nil: memory
	}{
		{"memory", nil},
		{"standalone", redistest.URL},
		{"cluster", redistest.ClusterURL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := prometheus.NewRegistry()
			const secret = "notify-test-secret"
			cfg := elevaredis.Config{KeyPrefix: redistest.Prefix(t), Registerer: reg, KeyHashSecret: []byte(secret)}
			if tc.url != nil {
				cfg.RedisURL = tc.url(t)
			}
			shared := tc.url != nil
			e1 := open(t, cfg)
			cfg.Registerer = nil
			e2 := open(t, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()

			const user = "patient-7@example.com"
			n := notify.Notification{ID: "reminder:appt-42", UserID: user, Type: "appointment-reminder", Title: "t"}
			r, err := e1.Notify.Enqueue(ctx, n)
			if err != nil || !r.Created || r.State != notify.StatePending {
				t.Fatalf("Enqueue on e1 = %+v, %v", r, err)
			}
			r, err = e2.Notify.Enqueue(ctx, n)
			if err != nil || r.Created == shared {
				t.Errorf("Enqueue of the same id on e2 = %+v, %v (shared backend: %v)", r, err, shared)
			}
			got, err := e2.Notify.Pending(ctx, user, 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || got[0].ID != n.ID {
				t.Errorf("Pending on e2 = %+v, want the one notification", got)
			}
			if err := e2.Notify.Cancel(ctx, user, n.ID); err != nil {
				t.Fatalf("Cancel on e2: %v", err)
			}
			if got, _ := e1.Notify.Pending(ctx, user, 10); shared != (len(got) == 0) {
				t.Errorf("Pending on e1 after Cancel on e2 = %+v (shared backend: %v)", got, shared)
			}
			if _, err := e1.Notify.Enqueue(ctx, notify.Notification{UserID: user, Type: "x"}); err != nil {
				t.Fatal(err)
			}

			// The queue's keys are under KeyPrefix, and the user id is
			// HMACed out of them (a single node answers KEYS for every key
			// only on standalone).
			if tc.name == "standalone" {
				c := redistest.Client(t, cfg.RedisURL)
				names, err := c.Do(ctx, c.B().Keys().Pattern(cfg.KeyPrefix+"nq:*").Build()).AsStrSlice()
				if err != nil || len(names) == 0 {
					t.Errorf("no key %snq:* (%v): the prefix was not passed on", cfg.KeyPrefix, err)
				}
				for _, k := range names {
					if strings.Contains(k, "patient") {
						t.Errorf("key %q holds the user id: the key hash secret was not passed on", k)
					}
				}
			}
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, mf := range mfs {
				found = found || mf.GetName() == "eleva_notify_ops_total"
			}
			if !found {
				t.Error("registry lacks eleva_notify_ops_total")
			}
		})
	}

	// A bad Notify.Prefix fails Open on both backends, as the others do.
	for _, url := range []string{"", "redis://127.0.0.1:1"} {
		cfg := elevaredis.Config{RedisURL: url}
		cfg.Notify.Prefix = "app{1}:"
		if e, err := elevaredis.Open(context.Background(), cfg); !errors.Is(err, elevaredis.ErrInvalidConfig) {
			if e != nil {
				e.Close()
			}
			t.Errorf("Open(%q) with a bad Notify.Prefix: %v, want ErrInvalidConfig", url, err)
		}
	}
}
