package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/keys"
	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/internal/seal"
	"github.com/elevacare/eleva-redis/internal/testutil"
)

func mustKeys(prefix string) keys.Builder { return keys.MustNew(prefix, nil) }

// The conformance suite: the behaviours of the Store contract (session.go),
// run unchanged on the memory backend, a real redis-server and a real 3-node
// Redis Cluster. The memory backend runs on the real clock here (its
// fake-clock arithmetic is checked in memory_test.go), so both backends see
// time pass the same way. Several Store values over one backend play several
// application instances; on Redis each has its own client, and so its own
// client-side cache.

// env is one test's backend: every Store it makes shares the same data (the
// same memory backend, or the same Redis key prefix).
type env struct {
	// store returns a Store with cfg (Prefix and Timeout are filled in).
	store func(cfg Config) Store
	// instances returns n stores with cfg, each on its own client.
	instances func(cfg Config, n int) []Store
	// dump returns every key name and stored value of this test, joined.
	dump func() []byte
	// keyNames returns the key names of this test.
	keyNames func() []string
	// countWrites starts counting the writes of session id's fields (on
	// Redis: HSET keyspace notifications, independent of the code under
	// test) and returns the reader of the count.
	countWrites func(t *testing.T, id string) func() int
	// cached reports whether instances have a client-side cache, so that
	// a cross-instance change can be seen late.
	cached bool
}

type target struct {
	name   string
	newEnv func(t *testing.T) env
}

func targets() []target {
	return []target{
		{"memory", memoryEnv},
		{"redis", func(t *testing.T) env { return redisEnv(t, redistest.URL(t)) }},
		{"cluster", func(t *testing.T) env { return redisEnv(t, redistest.ClusterURL(t)) }},
	}
}

func quiet(cfg Config) Config {
	if cfg.Logger == nil {
		// Tests that provoke failures check what they care about.
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg
}

func memoryEnv(t *testing.T) env {
	var (
		mu     sync.Mutex
		b      *memoryBackend
		writes = map[string]int{}
	)
	// The backend is made by the first store, with its key names; every
	// later store of the test shares it.
	mk := func(cfg Config) Store {
		cfg = quiet(cfg)
		return newStore(cfg, "memory", newMetrics(cfg.Registerer), func(n names) backend {
			mu.Lock()
			defer mu.Unlock()
			if b == nil {
				b = newMemoryBackend(time.Now, n, nil)
				b.onWrite = func(k string) {
					mu.Lock()
					writes[k]++
					mu.Unlock()
				}
			}
			return b
		}, nil)
	}
	backend := func() *memoryBackend {
		mu.Lock()
		defer mu.Unlock()
		return b
	}
	return env{
		store: mk,
		instances: func(cfg Config, n int) []Store {
			out := make([]Store, n)
			for i := range out {
				out[i] = mk(cfg)
			}
			return out
		},
		dump: func() []byte {
			b := backend()
			if b == nil {
				return nil
			}
			var buf bytes.Buffer
			b.mu.Lock()
			defer b.mu.Unlock()
			for k, r := range b.sessions {
				fmt.Fprintf(&buf, "%s\x00%s\x00%s\x00%s\x00%s\x00%s\x00", k, r.id, r.userID, r.roles, r.deviceInfo, r.preferences)
			}
			for k := range b.users {
				buf.WriteString(k + "\x00")
			}
			return buf.Bytes()
		},
		keyNames: func() []string {
			b := backend()
			if b == nil {
				return nil
			}
			b.mu.Lock()
			defer b.mu.Unlock()
			var out []string
			for k := range b.sessions {
				out = append(out, k)
			}
			for k := range b.users {
				out = append(out, k)
			}
			return out
		},
		countWrites: func(t *testing.T, id string) func() int {
			b := backend()
			k := b.n.session(id)
			mu.Lock()
			start := writes[k]
			mu.Unlock()
			return func() int {
				mu.Lock()
				defer mu.Unlock()
				return writes[k] - start
			}
		},
	}
}

func redisEnv(t *testing.T, url string) env {
	prefix := redistest.Prefix(t)
	client := redistest.Client(t, url)
	prep := func(cfg Config) Config {
		cfg.Prefix = prefix
		if cfg.Timeout == 0 {
			// Generous: a conformance result must come from Redis, not
			// from a timeout on a loaded CI machine.
			cfg.Timeout = 10 * time.Second
		}
		return quiet(cfg)
	}
	return env{
		store: func(cfg Config) Store { return NewRedis(client, prep(cfg)) },
		instances: func(cfg Config, n int) []Store {
			out := make([]Store, n)
			for i := range out {
				out[i] = NewRedis(redistest.Client(t, url), prep(cfg))
			}
			return out
		},
		dump:     func() []byte { return redisDump(t, client, prefix) },
		keyNames: func() []string { return redisKeys(t, client, prefix) },
		countWrites: func(t *testing.T, id string) func() int {
			return countHSETs(t, client, names{kb: mustKeys(prefix)}.session(id))
		},
		cached: true,
	}
}

// countHSETs counts the HSET keyspace notifications of key on every node
// from now on.
func countHSETs(t *testing.T, client rueidis.Client, key string) func() int {
	t.Helper()
	var n atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	nodes := client.Nodes()
	subscribed := make(chan struct{}, len(nodes))
	for _, node := range nodes {
		// Notifications are node-local, and CONFIG SET is per node.
		if err := node.Do(ctx, node.B().ConfigSet().ParameterValue().ParameterValue("notify-keyspace-events", "Kh").Build()).Error(); err != nil {
			t.Fatalf("CONFIG SET notify-keyspace-events: %v", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			hctx := rueidis.WithOnSubscriptionHook(ctx, func(s rueidis.PubSubSubscription) {
				if s.Kind == "subscribe" {
					subscribed <- struct{}{}
				}
			})
			_ = node.Receive(hctx, node.B().Subscribe().Channel("__keyspace@0__:"+key).Build(), func(m rueidis.PubSubMessage) {
				if m.Message == "hset" {
					n.Add(1)
				}
			})
		}()
	}
	for range nodes {
		select {
		case <-subscribed:
		case <-time.After(10 * time.Second):
			t.Fatal("keyspace subscription not confirmed within 10s")
		}
	}
	return func() int { return int(n.Load()) }
}

// redisKeys lists the keys under prefix on every node (test helper: SCAN is
// never used on a request path).
func redisKeys(t *testing.T, client rueidis.Client, prefix string) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	for _, node := range client.Nodes() {
		var cursor uint64
		for {
			e, err := node.Do(ctx, node.B().Scan().Cursor(cursor).Match(prefix+"*").Count(1000).Build()).AsScanEntry()
			if err != nil {
				t.Fatalf("SCAN: %v", err)
			}
			out = append(out, e.Elements...)
			if cursor = e.Cursor; cursor == 0 {
				break
			}
		}
	}
	return out
}

// redisDump returns every key under prefix and its raw contents.
func redisDump(t *testing.T, client rueidis.Client, prefix string) []byte {
	t.Helper()
	ctx := context.Background()
	var buf bytes.Buffer
	for _, k := range redisKeys(t, client, prefix) {
		buf.WriteString(k + "\x00")
		typ, err := client.Do(ctx, client.B().Type().Key(k).Build()).ToString()
		if err != nil {
			t.Fatalf("TYPE: %v", err)
		}
		switch typ {
		case "hash":
			m, err := client.Do(ctx, client.B().Hgetall().Key(k).Build()).AsStrMap()
			if err != nil {
				t.Fatalf("HGETALL: %v", err)
			}
			for f, v := range m {
				buf.WriteString(f + "=" + v + "\x00")
			}
		case "zset":
			m, err := client.Do(ctx, client.B().Zrange().Key(k).Min("0").Max("-1").Build()).AsStrSlice()
			if err != nil {
				t.Fatalf("ZRANGE: %v", err)
			}
			buf.WriteString(strings.Join(m, "\x00"))
		}
		buf.WriteByte(0)
	}
	return buf.Bytes()
}

func TestConformance(t *testing.T) {
	t.Parallel()
	for _, tg := range targets() {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			runConformance(t, tg.newEnv)
		})
	}
}

// slack absorbs the time between Redis TIME and the test's clock readings
// (same machine) under -race.
const slack = time.Second

func within(t *testing.T, what string, got, lo, hi time.Time) {
	t.Helper()
	if got.Before(lo.Add(-slack)) || got.After(hi.Add(slack)) {
		t.Errorf("%s = %v, want within [%v, %v] (±%v)", what, got, lo, hi, slack)
	}
}

var ctxb = context.Background()

// eventually polls cond every millisecond until it holds or 5s pass, and
// returns how long it took and how many calls. It is for the one thing that
// is asynchronous by design: another instance's cached copy hearing of a
// change.
func eventually(t *testing.T, what string, cond func() (bool, error)) (time.Duration, int) {
	t.Helper()
	start := time.Now()
	for calls := 1; ; calls++ {
		ok, err := cond()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return time.Since(start), calls
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(time.Millisecond) // poll interval
	}
}

func newSession(user string, roles ...string) NewSession {
	return NewSession{UserID: user, Roles: roles}
}

func runConformance(t *testing.T, newEnv func(t *testing.T) env) {
	t.Run("CreateGet", func(t *testing.T) {
		t.Parallel()
		s := newEnv(t).store(Config{})
		before := time.Now()
		got := testutil.Must[Session](t, "Create")(s.Create(ctxb, "sess-1", NewSession{
			UserID: "user-42", Roles: []string{"patient", "beta", "patient"},
			DeviceInfo: []byte(`{"ua":"Safari"}`), Preferences: []byte(`{"lang":"pt"}`),
		}))
		after := time.Now()
		if got.ID != "sess-1" || got.UserID != "user-42" || !slices.Equal(got.Roles, []string{"patient", "beta"}) ||
			string(got.DeviceInfo) != `{"ua":"Safari"}` || string(got.Preferences) != `{"lang":"pt"}` {
			t.Fatalf("Create = %+v", got)
		}
		within(t, "CreatedAt", got.CreatedAt, before, after)
		if !got.LastActivityAt.Equal(got.CreatedAt) {
			t.Errorf("LastActivityAt %v != CreatedAt %v", got.LastActivityAt, got.CreatedAt)
		}
		// Defaults: idle 30m, absolute 24h; ExpiresAt is the earlier.
		if got.IdleTimeout != DefaultIdleTimeout || !got.AbsoluteExpiresAt.Equal(got.CreatedAt.Add(DefaultTTL)) ||
			!got.ExpiresAt.Equal(got.LastActivityAt.Add(DefaultIdleTimeout)) {
			t.Errorf("defaults: idle %v, absolute %v, expires %v (created %v)", got.IdleTimeout, got.AbsoluteExpiresAt, got.ExpiresAt, got.CreatedAt)
		}
		read := testutil.Must[Session](t, "Get")(s.Get(ctxb, "sess-1"))
		if fmt.Sprint(read) != fmt.Sprint(got) {
			t.Fatalf("Get = %+v\nCreate returned %+v", read, got)
		}

		// Per-call lifetimes; the absolute expiry wins when it is earlier.
		got = testutil.Must[Session](t, "Create")(s.Create(ctxb, "sess-2", NewSession{UserID: "u", TTL: 10 * time.Minute, IdleTimeout: time.Hour}))
		if got.IdleTimeout != time.Hour || !got.ExpiresAt.Equal(got.AbsoluteExpiresAt) || !got.AbsoluteExpiresAt.Equal(got.CreatedAt.Add(10*time.Minute)) {
			t.Errorf("custom lifetimes: %+v", got)
		}
		// No roles, no values: empty roles (never nil), nil values.
		if got.Roles == nil || len(got.Roles) != 0 || got.DeviceInfo != nil || got.Preferences != nil {
			t.Errorf("empty session: roles %#v, deviceInfo %#v, preferences %#v", got.Roles, got.DeviceInfo, got.Preferences)
		}
		// Config defaults apply.
		c := newEnv(t).store(Config{TTL: time.Hour, IdleTimeout: 5 * time.Minute})
		got = testutil.Must[Session](t, "Create")(c.Create(ctxb, "s", newSession("u")))
		if got.IdleTimeout != 5*time.Minute || !got.AbsoluteExpiresAt.Equal(got.CreatedAt.Add(time.Hour)) {
			t.Errorf("Config defaults: %+v", got)
		}
	})

	t.Run("CreateReplaces", func(t *testing.T) {
		t.Parallel()
		s := newEnv(t).store(Config{})
		testutil.Must[Session](t, "Create")(s.Create(ctxb, "shared-id", NewSession{UserID: "alice", Roles: []string{"admin"}, DeviceInfo: []byte("a")}))
		got := testutil.Must[Session](t, "Create")(s.Create(ctxb, "shared-id", NewSession{UserID: "bob", Roles: []string{"patient"}}))
		if got.UserID != "bob" || got.DeviceInfo != nil || !slices.Equal(got.Roles, []string{"patient"}) {
			t.Fatalf("replaced session = %+v", got)
		}
		// Alice's index may still name the id; it is not hers any more.
		if l := testutil.Must[[]Session](t, "List")(s.List(ctxb, "alice")); len(l) != 0 {
			t.Fatalf("List(alice) = %+v", l)
		}
		if n := testutil.Must[int](t, "RevokeUser")(s.RevokeUser(ctxb, "alice")); n != 0 {
			t.Fatalf("RevokeUser(alice) revoked %d", n)
		}
		if n := testutil.Must[int](t, "SetUserRoles")(s.SetUserRoles(ctxb, "alice", []string{"x"})); n != 0 {
			t.Fatalf("SetUserRoles(alice) updated %d", n)
		}
		got = testutil.Must[Session](t, "Get")(s.Get(ctxb, "shared-id"))
		if got.UserID != "bob" || !slices.Equal(got.Roles, []string{"patient"}) {
			t.Fatalf("bob's session after alice's revoke and role change: %+v", got)
		}
		if l := testutil.Must[[]Session](t, "List")(s.List(ctxb, "bob")); len(l) != 1 || l[0].ID != "shared-id" {
			t.Fatalf("List(bob) = %+v", l)
		}
	})

	t.Run("MissingAndDelete", func(t *testing.T) {
		t.Parallel()
		s := newEnv(t).store(Config{})
		_, err := s.Get(ctxb, "missing")
		testutil.WantErr(t, "Get", err, ErrNotFound)
		_, err = s.Update(ctxb, "missing", Update{Roles: []string{"x"}})
		testutil.WantErr(t, "Update", err, ErrNotFound)
		_, err = s.Update(ctxb, "missing", Update{})
		testutil.WantErr(t, "empty Update", err, ErrNotFound)
		testutil.WantErr(t, "Touch", s.Touch(ctxb, "missing"), ErrNotFound)
		_, err = s.HasRole(ctxb, "missing", "x")
		testutil.WantErr(t, "HasRole", err, ErrNotFound)
		_, err = s.Rotate(ctxb, "missing", "new")
		testutil.WantErr(t, "Rotate", err, ErrNotFound)
		if err := s.Delete(ctxb, "missing"); err != nil {
			t.Fatalf("Delete missing: %v", err)
		}
		if n := testutil.Must[int](t, "RevokeUser")(s.RevokeUser(ctxb, "nobody")); n != 0 {
			t.Fatalf("RevokeUser of nobody: %d", n)
		}
		// The update of a missing session created nothing.
		_, err = s.Get(ctxb, "missing")
		testutil.WantErr(t, "Get after Update of a missing session", err, ErrNotFound)

		testutil.Must[Session](t, "Create")(s.Create(ctxb, "s", newSession("u", "r")))
		if ok := testutil.Must[bool](t, "HasRole")(s.HasRole(ctxb, "s", "r")); !ok {
			t.Fatal("HasRole before Delete = false")
		}
		if err := s.Delete(ctxb, "s"); err != nil {
			t.Fatal(err)
		}
		_, err = s.Get(ctxb, "s")
		testutil.WantErr(t, "Get after Delete", err, ErrNotFound)
		// Read-your-writes on this instance, cache or not.
		_, err = s.HasRole(ctxb, "s", "r")
		testutil.WantErr(t, "HasRole after Delete", err, ErrNotFound)
		if l := testutil.Must[[]Session](t, "List")(s.List(ctxb, "u")); len(l) != 0 {
			t.Fatalf("List after Delete = %+v", l)
		}
		if err := s.Delete(ctxb, "s"); err != nil {
			t.Fatalf("Delete again: %v", err)
		}
	})

	t.Run("Update", func(t *testing.T) {
		t.Parallel()
		s := newEnv(t).store(Config{})
		created := testutil.Must[Session](t, "Create")(s.Create(ctxb, "s", NewSession{UserID: "u", Roles: []string{"patient"},
			DeviceInfo: []byte("dev-1"), Preferences: []byte("pref-1"), IdleTimeout: time.Hour}))
		for _, tc := range []struct {
			name string
			u    Update
			want [3]string // roles, deviceInfo, preferences
		}{
			{"roles", Update{Roles: []string{"patient", "expert"}}, [3]string{"patient,expert", "dev-1", "pref-1"}},
			{"deviceInfo", Update{DeviceInfo: []byte("dev-2")}, [3]string{"patient,expert", "dev-2", "pref-1"}},
			{"preferences", Update{Preferences: []byte("pref-2")}, [3]string{"patient,expert", "dev-2", "pref-2"}},
			{"all", Update{Roles: []string{"a"}, DeviceInfo: []byte("d"), Preferences: []byte("p")}, [3]string{"a", "d", "p"}},
			{"clear", Update{Roles: []string{}, DeviceInfo: []byte{}}, [3]string{"", "", "p"}},
			{"nothing", Update{}, [3]string{"", "", "p"}},
		} {
			got := testutil.Must[Session](t, "Update "+tc.name)(s.Update(ctxb, "s", tc.u))
			read := testutil.Must[Session](t, "Get")(s.Get(ctxb, "s"))
			for _, g := range []Session{got, read} {
				if h := [3]string{strings.Join(g.Roles, ","), string(g.DeviceInfo), string(g.Preferences)}; h != tc.want {
					t.Fatalf("after %s: %q, want %q", tc.name, h, tc.want)
				}
				if g.ID != "s" || g.UserID != "u" || !g.CreatedAt.Equal(created.CreatedAt) || g.IdleTimeout != time.Hour {
					t.Fatalf("after %s: fixed fields changed: %+v", tc.name, g)
				}
				if !g.ExpiresAt.Equal(g.LastActivityAt.Add(time.Hour)) || g.LastActivityAt.Before(created.LastActivityAt) {
					t.Fatalf("after %s: activity %v, expiry %v", tc.name, g.LastActivityAt, g.ExpiresAt)
				}
			}
		}
		if ok := testutil.Must[bool](t, "HasRole")(s.HasRole(ctxb, "s", "patient")); ok {
			t.Fatal("HasRole(patient) after roles were cleared")
		}
	})

	t.Run("HasRoleReadsOwnWrites", func(t *testing.T) {
		t.Parallel()
		s := newEnv(t).store(Config{})
		testutil.Must[Session](t, "Create")(s.Create(ctxb, "s", newSession("u", "patient")))
		// Each round changes the roles and asks at once, on the same
		// instance: its cached copy must never answer from before the
		// write.
		for i := range 50 {
			role := fmt.Sprint("role-", i)
			if i%2 == 0 {
				testutil.Must[Session](t, "Update")(s.Update(ctxb, "s", Update{Roles: []string{role}}))
			} else {
				testutil.Must[int](t, "SetUserRoles")(s.SetUserRoles(ctxb, "u", []string{role}))
			}
			if ok := testutil.Must[bool](t, "HasRole")(s.HasRole(ctxb, "s", role)); !ok {
				t.Fatalf("round %d: HasRole(%s) right after this instance set it = false", i, role)
			}
			if i > 0 {
				if ok := testutil.Must[bool](t, "HasRole")(s.HasRole(ctxb, "s", fmt.Sprint("role-", i-1))); ok {
					t.Fatalf("round %d: the previous role is still seen", i)
				}
			}
		}
	})

	t.Run("ConcurrentPatchesLoseNothing", func(t *testing.T) {
		// Acceptance: 100 concurrent PATCHes of different fields plus
		// touches lose nothing. Each round releases at once, on 4
		// instances, 102 updates — the three fields of 34 sessions — and a
		// touch of each; afterwards every field of every session holds its
		// round's value. An implementation that rewrote the whole session
		// would lose some of them.
		t.Parallel()
		e := newEnv(t)
		stores := e.instances(Config{TouchInterval: time.Millisecond}, 4)
		const sessions = 34
		id := func(i int) string { return fmt.Sprint("s", i) }
		for i := range sessions {
			testutil.Must[Session](t, "Create")(stores[i%4].Create(ctxb, id(i), NewSession{UserID: "u", IdleTimeout: time.Hour}))
		}
		for round := 1; round <= 3; round++ {
			want := func(i int) Update {
				return Update{
					Roles:       []string{fmt.Sprint("r", round, "-", i)},
					DeviceInfo:  []byte(fmt.Sprint("d", round, "-", i)),
					Preferences: []byte(fmt.Sprint("p", round, "-", i)),
				}
			}
			raceEach(t, 4*sessions, stores, func(g int, s Store) error {
				i, w := g/4, want(g/4)
				switch g % 4 {
				case 0:
					_, err := s.Update(ctxb, id(i), Update{Roles: w.Roles})
					return err
				case 1:
					_, err := s.Update(ctxb, id(i), Update{DeviceInfo: w.DeviceInfo})
					return err
				case 2:
					_, err := s.Update(ctxb, id(i), Update{Preferences: w.Preferences})
					return err
				default:
					return s.Touch(ctxb, id(i))
				}
			})
			for i := range sessions {
				got, w := testutil.Must[Session](t, "Get")(stores[(i+round)%4].Get(ctxb, id(i))), want(i)
				if !slices.Equal(got.Roles, w.Roles) || !bytes.Equal(got.DeviceInfo, w.DeviceInfo) || !bytes.Equal(got.Preferences, w.Preferences) {
					t.Fatalf("round %d, session %d: roles %q, deviceInfo %q, preferences %q; want the round's values", round, i, got.Roles, got.DeviceInfo, got.Preferences)
				}
			}
		}
	})

	t.Run("TouchThrottle", func(t *testing.T) {
		// Acceptance: at most one activity write per interval per session,
		// across instances, however many touches arrive.
		t.Parallel()
		e := newEnv(t)
		const interval = 250 * time.Millisecond
		stores := e.instances(Config{TouchInterval: interval}, 3)
		created := testutil.Must[Session](t, "Create")(stores[0].Create(ctxb, "s", NewSession{UserID: "u", IdleTimeout: time.Hour}))
		writes := e.countWrites(t, "s")
		start := time.Now()
		var touches atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, 12)
		for g := range 12 {
			wg.Go(func() {
				for time.Since(start) < 3*interval+interval/2 {
					if err := stores[g%3].Touch(ctxb, "s"); err != nil {
						errs <- err
						return
					}
					touches.Add(1)
				}
			})
		}
		wg.Wait()
		elapsed := time.Since(start)
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		// The writes may take a moment to be reported (notifications).
		var n int
		_, _ = eventually(t, "at least one write", func() (bool, error) { n = writes(); return n >= 1, nil })
		maxWrites := int(elapsed/interval) + 1
		if n > maxWrites {
			t.Fatalf("%d touches in %v wrote %d times; want at most %d (one per %v)", touches.Load(), elapsed, n, maxWrites, interval)
		}
		got := testutil.Must[Session](t, "Get")(stores[1].Get(ctxb, "s"))
		if !got.LastActivityAt.After(created.LastActivityAt) || !got.ExpiresAt.Equal(got.LastActivityAt.Add(time.Hour)) {
			t.Fatalf("after touches: activity %v (created %v), expiry %v", got.LastActivityAt, created.LastActivityAt, got.ExpiresAt)
		}
		t.Logf("%d touches over %v (3 instances, 12 goroutines): %d writes (at most %d allowed)", touches.Load(), elapsed.Round(time.Millisecond), n, maxWrites)
	})

	t.Run("IdleExpiry", func(t *testing.T) {
		t.Parallel()
		s := newEnv(t).store(Config{})
		const idle = time.Second
		start := time.Now()
		testutil.Must[Session](t, "Create")(s.Create(ctxb, "s", NewSession{UserID: "u", IdleTimeout: idle}))
		testutil.Must[Session](t, "Create")(s.Create(ctxb, "idle", NewSession{UserID: "u", IdleTimeout: idle}))
		// A touch after half the idle timeout writes (the effective
		// interval is at most idle/2, whatever TouchInterval says).
		time.Sleep(idle*6/10 - time.Since(start)) // waiting is the semantics under test
		if err := s.Touch(ctxb, "s"); err != nil {
			t.Fatal(err)
		}
		got := testutil.Must[Session](t, "Get")(s.Get(ctxb, "s"))
		if got.LastActivityAt.Sub(got.CreatedAt) < idle/2 {
			t.Fatalf("the touch after %v did not write: %+v", idle*6/10, got)
		}
		time.Sleep(idle*13/10 - time.Since(start))
		if _, err := s.Get(ctxb, "s"); err != nil {
			t.Fatalf("touched session past its first idle expiry: %v", err)
		}
		_, err := s.Get(ctxb, "idle")
		testutil.WantErr(t, "untouched session past its idle timeout", err, ErrNotFound)
		time.Sleep(idle*2 - time.Since(start))
		_, err = s.Get(ctxb, "s")
		testutil.WantErr(t, "touched session past its extended idle timeout", err, ErrNotFound)
		if l := testutil.Must[[]Session](t, "List")(s.List(ctxb, "u")); len(l) != 0 {
			t.Fatalf("List after expiry = %+v", l)
		}
	})

	t.Run("AbsoluteExpiry", func(t *testing.T) {
		t.Parallel()
		s := newEnv(t).store(Config{TouchInterval: time.Millisecond})
		const ttl = 800 * time.Millisecond
		start := time.Now()
		testutil.Must[Session](t, "Create")(s.Create(ctxb, "s", NewSession{UserID: "u", TTL: ttl, IdleTimeout: time.Hour}))
		time.Sleep(ttl/2 - time.Since(start)) // waiting is the semantics under test
		testutil.Must[Session](t, "Update")(s.Update(ctxb, "s", Update{Roles: []string{"x"}}))
		if err := s.Touch(ctxb, "s"); err != nil {
			t.Fatal(err)
		}
		got := testutil.Must[Session](t, "Get")(s.Get(ctxb, "s"))
		if !got.ExpiresAt.Equal(got.AbsoluteExpiresAt) {
			t.Fatalf("activity moved the absolute expiry: %+v", got)
		}
		time.Sleep(ttl + 300*time.Millisecond - time.Since(start))
		_, err := s.Get(ctxb, "s")
		testutil.WantErr(t, "Get past the absolute expiry despite activity", err, ErrNotFound)
		testutil.WantErr(t, "Touch past the absolute expiry", s.Touch(ctxb, "s"), ErrNotFound)
	})

	t.Run("RevokeUser", func(t *testing.T) {
		// Acceptance: revoke-all makes every session of the user not found
		// at once, on every instance.
		t.Parallel()
		e := newEnv(t)
		stores := e.instances(Config{}, 3)
		ids := []string{"a", "b", "c", "d", "e", "f"}
		for i, id := range ids {
			testutil.Must[Session](t, "Create")(stores[i%3].Create(ctxb, id, newSession("user-1", "patient")))
		}
		testutil.Must[Session](t, "Create")(stores[0].Create(ctxb, "other", newSession("user-2", "patient")))
		// Every instance has read (and cached) the sessions.
		for _, s := range stores {
			for _, id := range ids {
				if ok := testutil.Must[bool](t, "HasRole")(s.HasRole(ctxb, id, "patient")); !ok {
					t.Fatal("HasRole = false")
				}
			}
		}
		if l := testutil.Must[[]Session](t, "List")(stores[1].List(ctxb, "user-1")); len(l) != len(ids) {
			t.Fatalf("List = %d sessions, want %d", len(l), len(ids))
		}
		if n := testutil.Must[int](t, "RevokeUser")(stores[2].RevokeUser(ctxb, "user-1")); n != len(ids) {
			t.Fatalf("RevokeUser revoked %d, want %d", n, len(ids))
		}
		// The revoking instance's own cached copies are not used.
		for _, id := range ids {
			_, err := stores[2].HasRole(ctxb, id, "patient")
			testutil.WantErr(t, "HasRole on the revoking instance", err, ErrNotFound)
		}
		for i, s := range stores {
			for _, id := range ids {
				_, err := s.Get(ctxb, id)
				testutil.WantErr(t, fmt.Sprintf("instance %d: Get(%s) right after RevokeUser", i, id), err, ErrNotFound)
				testutil.WantErr(t, "Touch", s.Touch(ctxb, id), ErrNotFound)
			}
			if l := testutil.Must[[]Session](t, "List")(s.List(ctxb, "user-1")); len(l) != 0 {
				t.Fatalf("List after RevokeUser = %+v", l)
			}
		}
		// HasRole answers from the cached copy: it hears of the revocation
		// asynchronously (immediately on the revoking instance).
		var worst time.Duration
		late := 0
		for _, s := range stores {
			for _, id := range ids {
				d, calls := eventually(t, "HasRole of a revoked session", func() (bool, error) {
					_, err := s.HasRole(ctxb, id, "patient")
					if errors.Is(err, ErrNotFound) {
						return true, nil
					}
					return false, err
				})
				worst = max(worst, d)
				if calls > 1 {
					late++
				}
			}
		}
		if !e.cached && late > 0 {
			t.Errorf("without a local cache %d reads saw the revoked session", late)
		}
		t.Logf("HasRole of a revoked session: not found on every instance after at most %v", worst)
		// The other user is untouched; a second revoke finds nothing.
		if ok := testutil.Must[bool](t, "HasRole")(stores[1].HasRole(ctxb, "other", "patient")); !ok {
			t.Fatal("other user's session lost its role")
		}
		if n := testutil.Must[int](t, "RevokeUser again")(stores[0].RevokeUser(ctxb, "user-1")); n != 0 {
			t.Fatalf("second RevokeUser revoked %d", n)
		}
		// New sessions of the user work again.
		testutil.Must[Session](t, "Create")(stores[0].Create(ctxb, "g", newSession("user-1")))
		if l := testutil.Must[[]Session](t, "List")(stores[1].List(ctxb, "user-1")); len(l) != 1 || l[0].ID != "g" {
			t.Fatalf("List after a new login = %+v", l)
		}
	})

	t.Run("SetUserRolesSeenEverywhere", func(t *testing.T) {
		// Acceptance: a role change is seen by HasRole on all instances.
		t.Parallel()
		e := newEnv(t)
		stores := e.instances(Config{}, 4)
		ids := []string{"web", "mobile", "tablet"}
		before := map[string]Session{}
		for i, id := range ids {
			before[id] = testutil.Must[Session](t, "Create")(stores[i].Create(ctxb, id, newSession("dr-7", "patient")))
		}
		testutil.Must[Session](t, "Create")(stores[0].Create(ctxb, "someone-else", newSession("dr-8", "patient")))
		// Warm every instance's cache: none has the expert role.
		for _, s := range stores {
			for _, id := range ids {
				for range 3 {
					if ok := testutil.Must[bool](t, "HasRole")(s.HasRole(ctxb, id, "expert")); ok {
						t.Fatal("expert before the change")
					}
				}
			}
		}
		if n := testutil.Must[int](t, "SetUserRoles")(stores[0].SetUserRoles(ctxb, "dr-7", []string{"patient", "expert"})); n != len(ids) {
			t.Fatalf("SetUserRoles updated %d, want %d", n, len(ids))
		}
		// The changing instance sees it at once; the others when Redis's
		// invalidation reaches their cache (at once on memory).
		for _, id := range ids {
			if ok := testutil.Must[bool](t, "HasRole")(stores[0].HasRole(ctxb, id, "expert")); !ok {
				t.Fatalf("%s: the instance that changed the roles does not see the change", id)
			}
		}
		var mu sync.Mutex
		var worst time.Duration
		late := 0
		var wg sync.WaitGroup
		for _, s := range stores[1:] {
			for _, id := range ids {
				wg.Go(func() {
					d, calls := eventually(t, "HasRole(expert) after SetUserRoles", func() (bool, error) {
						return s.HasRole(ctxb, id, "expert")
					})
					mu.Lock()
					worst = max(worst, d)
					if calls > 1 {
						late++
					}
					mu.Unlock()
				})
			}
		}
		wg.Wait()
		if !e.cached && late > 0 {
			t.Errorf("without a local cache %d reads missed the change", late)
		}
		t.Logf("role change seen by HasRole on all 4 instances after at most %v", worst)
		for _, id := range ids {
			got := testutil.Must[Session](t, "Get")(stores[3].Get(ctxb, id))
			if !slices.Equal(got.Roles, []string{"patient", "expert"}) {
				t.Fatalf("%s roles %q", id, got.Roles)
			}
			// A role change is not activity: the expiry stays.
			if !got.ExpiresAt.Equal(before[id].ExpiresAt) || !got.LastActivityAt.Equal(before[id].LastActivityAt) {
				t.Fatalf("%s: role change moved activity/expiry: %+v, was %+v", id, got, before[id])
			}
		}
		if ok := testutil.Must[bool](t, "HasRole")(stores[2].HasRole(ctxb, "someone-else", "expert")); ok {
			t.Fatal("another user's session got the role")
		}
	})

	t.Run("Rotate", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		stores := e.instances(Config{}, 2)
		s := stores[0]
		old := testutil.Must[Session](t, "Create")(s.Create(ctxb, "pre-login", NewSession{UserID: "u", Roles: []string{"patient"},
			DeviceInfo: []byte("dev"), Preferences: []byte("pref"), TTL: time.Hour, IdleTimeout: 20 * time.Minute}))
		testutil.Must[bool](t, "HasRole")(stores[1].HasRole(ctxb, "pre-login", "patient"))
		got := testutil.Must[Session](t, "Rotate")(s.Rotate(ctxb, "pre-login", "post-login"))
		if got.ID != "post-login" || got.UserID != "u" || !slices.Equal(got.Roles, old.Roles) || string(got.DeviceInfo) != "dev" ||
			string(got.Preferences) != "pref" || !got.CreatedAt.Equal(old.CreatedAt) || !got.AbsoluteExpiresAt.Equal(old.AbsoluteExpiresAt) ||
			got.IdleTimeout != old.IdleTimeout || got.LastActivityAt.Before(old.LastActivityAt) {
			t.Fatalf("Rotate = %+v\nold = %+v", got, old)
		}
		for i, st := range stores {
			_, err := st.Get(ctxb, "pre-login")
			testutil.WantErr(t, fmt.Sprintf("instance %d: Get of the old id", i), err, ErrNotFound)
			if read := testutil.Must[Session](t, "Get new")(st.Get(ctxb, "post-login")); fmt.Sprint(read) != fmt.Sprint(got) {
				t.Fatalf("Get new = %+v, Rotate returned %+v", read, got)
			}
		}
		if l := testutil.Must[[]Session](t, "List")(s.List(ctxb, "u")); len(l) != 1 || l[0].ID != "post-login" {
			t.Fatalf("List after Rotate = %+v", l)
		}
		// The index follows: revoking the user revokes the new id.
		testutil.Must[Session](t, "Create")(s.Create(ctxb, "taken", newSession("v")))
		_, err := s.Rotate(ctxb, "post-login", "taken")
		testutil.WantErr(t, "Rotate onto another live session", err, ErrExists)
		if read := testutil.Must[Session](t, "Get")(s.Get(ctxb, "taken")); read.UserID != "v" {
			t.Fatalf("the taken id was changed: %+v", read)
		}
		if _, err := s.Get(ctxb, "post-login"); err != nil {
			t.Fatalf("a refused Rotate lost the session: %v", err)
		}
		_, err = s.Rotate(ctxb, "post-login", "post-login")
		testutil.WantErr(t, "Rotate onto itself", err, ErrInvalidArgument)
		if n := testutil.Must[int](t, "RevokeUser")(stores[1].RevokeUser(ctxb, "u")); n != 1 {
			t.Fatalf("RevokeUser after Rotate revoked %d, want 1", n)
		}
		_, err = s.Get(ctxb, "post-login")
		testutil.WantErr(t, "Get of the rotated session after RevokeUser", err, ErrNotFound)
	})

	t.Run("List", func(t *testing.T) {
		t.Parallel()
		s := newEnv(t).store(Config{})
		for _, id := range []string{"first", "second", "third"} {
			testutil.Must[Session](t, "Create")(s.Create(ctxb, id, NewSession{UserID: "u", DeviceInfo: []byte(id)}))
			time.Sleep(2 * time.Millisecond) // distinct creation times, for the order
		}
		testutil.Must[Session](t, "Create")(s.Create(ctxb, "x", newSession("someone-else")))
		if err := s.Delete(ctxb, "second"); err != nil {
			t.Fatal(err)
		}
		l := testutil.Must[[]Session](t, "List")(s.List(ctxb, "u"))
		if len(l) != 2 || l[0].ID != "first" || l[1].ID != "third" || string(l[1].DeviceInfo) != "third" {
			t.Fatalf("List = %+v", l)
		}
		if l := testutil.Must[[]Session](t, "List")(s.List(ctxb, "nobody")); len(l) != 0 {
			t.Fatalf("List(nobody) = %+v", l)
		}
	})

	t.Run("InvalidArguments", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		s := e.store(Config{})
		long := func(n int) string { return strings.Repeat("x", n) }
		tooManyRoles := make([]string, MaxRoles+1)
		for i := range tooManyRoles {
			tooManyRoles[i] = fmt.Sprint("r", i)
		}
		big := make([]byte, MaxFieldSize+1)
		ok := NewSession{UserID: "u"}
		with := func(f func(*NewSession)) NewSession { n := ok; f(&n); return n }
		create := func(id string, n NewSession) func() error {
			return func() error { _, err := s.Create(ctxb, id, n); return err }
		}
		for _, c := range []struct {
			name string
			call func() error
		}{
			{"Create empty id", create("", ok)},
			{"Create long id", create(long(MaxIDLen+1), ok)},
			{"Create non-UTF-8 id", create("\xff", ok)},
			{"Create empty user", create("s", NewSession{})},
			{"Create long user", create("s", with(func(n *NewSession) { n.UserID = long(MaxUserIDLen + 1) }))},
			{"Create non-UTF-8 user", create("s", with(func(n *NewSession) { n.UserID = "\xc3" }))},
			{"Create empty role", create("s", with(func(n *NewSession) { n.Roles = []string{"a", ""} }))},
			{"Create long role", create("s", with(func(n *NewSession) { n.Roles = []string{long(MaxRoleLen + 1)} }))},
			{"Create too many roles", create("s", with(func(n *NewSession) { n.Roles = tooManyRoles }))},
			{"Create big deviceInfo", create("s", with(func(n *NewSession) { n.DeviceInfo = big }))},
			{"Create big preferences", create("s", with(func(n *NewSession) { n.Preferences = big }))},
			{"Create negative TTL", create("s", with(func(n *NewSession) { n.TTL = -time.Second }))},
			{"Create TTL under 1ms", create("s", with(func(n *NewSession) { n.TTL = time.Microsecond }))},
			{"Create TTL over max", create("s", with(func(n *NewSession) { n.TTL = MaxTTL + time.Millisecond }))},
			{"Create idle over max", create("s", with(func(n *NewSession) { n.IdleTimeout = MaxTTL + time.Hour }))},
			{"Get empty id", func() error { _, err := s.Get(ctxb, ""); return err }},
			{"Update long id", func() error { _, err := s.Update(ctxb, long(MaxIDLen+1), Update{}); return err }},
			{"Update bad role", func() error { _, err := s.Update(ctxb, "s", Update{Roles: []string{""}}); return err }},
			{"Update big preferences", func() error { _, err := s.Update(ctxb, "s", Update{Preferences: big}); return err }},
			{"Touch empty id", func() error { return s.Touch(ctxb, "") }},
			{"HasRole empty role", func() error { _, err := s.HasRole(ctxb, "s", ""); return err }},
			{"HasRole long role", func() error { _, err := s.HasRole(ctxb, "s", long(MaxRoleLen+1)); return err }},
			{"Delete empty id", func() error { return s.Delete(ctxb, "") }},
			{"Rotate empty new id", func() error { _, err := s.Rotate(ctxb, "s", ""); return err }},
			{"List empty user", func() error { _, err := s.List(ctxb, ""); return err }},
			{"RevokeUser non-UTF-8 user", func() error { _, err := s.RevokeUser(ctxb, "\xfe"); return err }},
			{"SetUserRoles empty user", func() error { _, err := s.SetUserRoles(ctxb, "", nil); return err }},
			{"SetUserRoles bad roles", func() error { _, err := s.SetUserRoles(ctxb, "u", tooManyRoles); return err }},
		} {
			if err := c.call(); !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("%s: %v, want ErrInvalidArgument", c.name, err)
			}
		}
		if d := e.dump(); len(d) != 0 {
			t.Fatalf("invalid calls wrote %q", d)
		}
		// The limits themselves are accepted.
		roles := tooManyRoles[:MaxRoles]
		roles[0] = long(MaxRoleLen)
		testutil.Must[Session](t, "Create at the limits")(s.Create(ctxb, long(MaxIDLen), NewSession{UserID: long(MaxUserIDLen), Roles: roles,
			DeviceInfo: big[:MaxFieldSize], Preferences: big[:MaxFieldSize], TTL: MaxTTL, IdleTimeout: MinTTL * 1000}))
	})

	t.Run("KeyEscaping", func(t *testing.T) {
		t.Parallel()
		s := newEnv(t).store(Config{})
		ids := []string{"a:b", "a%3Ab", "{x}", "x", "*", "?", "[a-z]", "user@example.com", "ü", "日本語", " ", "a b", "c\r\nd", "\x00"}
		for i, id := range ids {
			testutil.Must[Session](t, "Create")(s.Create(ctxb, id, NewSession{UserID: "u:" + id, Roles: []string{fmt.Sprint(i)}}))
		}
		for i, id := range ids {
			got := testutil.Must[Session](t, fmt.Sprintf("Get(%q)", id))(s.Get(ctxb, id))
			if got.ID != id || got.UserID != "u:"+id || got.Roles[0] != fmt.Sprint(i) {
				t.Errorf("Get(%q) = %+v", id, got)
			}
			if l := testutil.Must[[]Session](t, "List")(s.List(ctxb, "u:"+id)); len(l) != 1 || l[0].ID != id {
				t.Errorf("List(%q) = %+v", "u:"+id, l)
			}
		}
		if n := testutil.Must[int](t, "RevokeUser")(s.RevokeUser(ctxb, "u:{x}")); n != 1 {
			t.Fatalf("RevokeUser = %d", n)
		}
		if _, err := s.Get(ctxb, "x"); err != nil {
			t.Fatalf("revoking u:{x} touched x: %v", err)
		}
	})

	t.Run("Encryption", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		k1, k2 := testutil.KeyEntry("k1", 1), testutil.KeyEntry("k2", 2)
		old := e.store(Config{Keyring: testutil.Keyring(t, k1)})
		const secret = "jane has diabetes"
		testutil.Must[Session](t, "Create")(old.Create(ctxb, "s", NewSession{UserID: "u", Roles: []string{"patient"},
			DeviceInfo: []byte(secret + " (device)"), Preferences: []byte(secret + " (prefs)")}))
		if dump := e.dump(); bytes.Contains(dump, []byte("diabetes")) {
			t.Fatalf("stored data holds a plaintext: %q", dump)
		}
		got := testutil.Must[Session](t, "Get")(old.Get(ctxb, "s"))
		if string(got.DeviceInfo) != secret+" (device)" || string(got.Preferences) != secret+" (prefs)" {
			t.Fatalf("Get = %+v", got)
		}

		// Key rotation: the new keyring seals with k2 and still opens k1.
		rotated := e.store(Config{Keyring: testutil.Keyring(t, k2, k1)})
		got = testutil.Must[Session](t, "Get after key rotation")(rotated.Get(ctxb, "s"))
		if string(got.DeviceInfo) != secret+" (device)" {
			t.Fatalf("Get after key rotation = %+v", got)
		}
		// Update re-seals what it writes under k2; the untouched field
		// stays under k1 and still opens.
		testutil.Must[Session](t, "Update")(rotated.Update(ctxb, "s", Update{DeviceInfo: []byte("new device")}))
		got = testutil.Must[Session](t, "Get")(rotated.Get(ctxb, "s"))
		if string(got.DeviceInfo) != "new device" || string(got.Preferences) != secret+" (prefs)" {
			t.Fatalf("after Update under k2: %+v", got)
		}
		_, err := old.Get(ctxb, "s")
		testutil.WantErr(t, "Get of a k2 value with only k1", err, seal.ErrUnknownKey)
		testutil.WantErr(t, "Get of a k2 value with only k1", err, ErrUnreadable)
		// HasRole needs no decryption.
		if ok := testutil.Must[bool](t, "HasRole")(old.HasRole(ctxb, "s", "patient")); !ok {
			t.Fatal("HasRole = false")
		}

		// Rotate re-seals both values for the new id under the current key.
		testutil.Must[Session](t, "Rotate")(rotated.Rotate(ctxb, "s", "s2"))
		got = testutil.Must[Session](t, "Get rotated")(rotated.Get(ctxb, "s2"))
		if string(got.DeviceInfo) != "new device" || string(got.Preferences) != secret+" (prefs)" {
			t.Fatalf("after Rotate: %+v", got)
		}
		only2 := e.store(Config{Keyring: testutil.Keyring(t, k2)})
		if got := testutil.Must[Session](t, "Get with k2 only")(only2.Get(ctxb, "s2")); string(got.Preferences) != secret+" (prefs)" {
			t.Fatalf("Rotate did not re-seal under k2: %+v", got)
		}
		if bytes.Contains(e.dump(), []byte("diabetes")) {
			t.Fatal("Rotate stored a plaintext")
		}

		// A keyring store cannot read a session written without encryption.
		plain := e.store(Config{})
		testutil.Must[Session](t, "Create")(plain.Create(ctxb, "plain", NewSession{UserID: "u", DeviceInfo: []byte("plain device")}))
		_, err = rotated.Get(ctxb, "plain")
		testutil.WantErr(t, "Get of a plain value with a keyring", err, seal.ErrCorrupt)
		testutil.WantErr(t, "Get of a plain value with a keyring", err, ErrUnreadable)
		_, err = rotated.List(ctxb, "u")
		testutil.WantErr(t, "List holding a plain value with a keyring", err, ErrUnreadable)
		if !bytes.Contains(e.dump(), []byte("plain device")) {
			t.Fatalf("the dump does not show an unencrypted value: the secrecy checks above prove nothing")
		}
	})

	t.Run("KeyHashSecret", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		s := e.store(Config{KeyHashSecret: []byte("secret")})
		testutil.Must[Session](t, "Create")(s.Create(ctxb, "session-token-abc", newSession("jane.doe@example.com", "patient")))
		for _, k := range e.keyNames() {
			if strings.Contains(k, "jane") || strings.Contains(k, "session-token") {
				t.Fatalf("key name %q holds an identifier", k)
			}
		}
		if l := testutil.Must[[]Session](t, "List")(s.List(ctxb, "jane.doe@example.com")); len(l) != 1 || l[0].ID != "session-token-abc" {
			t.Fatalf("List = %+v", l)
		}
		if n := testutil.Must[int](t, "RevokeUser")(s.RevokeUser(ctxb, "jane.doe@example.com")); n != 1 {
			t.Fatalf("RevokeUser = %d", n)
		}
	})

	t.Run("CancelledContext", func(t *testing.T) {
		t.Parallel()
		s := newEnv(t).store(Config{})
		for _, id := range []string{"a", "b", "c"} {
			testutil.Must[Session](t, "Create")(s.Create(ctxb, id, newSession("u", "r")))
		}
		cancelled, cancel := context.WithCancel(ctxb)
		cancel()
		// Reads and activity give up: the caller is gone.
		_, err := s.Get(cancelled, "a")
		testutil.WantErr(t, "Get", err, context.Canceled)
		if errors.Is(err, ErrBackend) {
			t.Fatalf("a cancelled Get blamed the backend: %v", err)
		}
		testutil.WantErr(t, "Touch", s.Touch(cancelled, "a"), context.Canceled)
		// Logout, revocation and role changes still happen.
		if err := s.Delete(cancelled, "a"); err != nil {
			t.Fatalf("Delete with a cancelled ctx: %v", err)
		}
		if n, err := s.SetUserRoles(cancelled, "u", []string{"x"}); err != nil || n != 2 {
			t.Fatalf("SetUserRoles with a cancelled ctx: %d, %v", n, err)
		}
		if _, err := s.Rotate(cancelled, "b", "b2"); err != nil {
			t.Fatalf("Rotate with a cancelled ctx: %v", err)
		}
		if n, err := s.RevokeUser(cancelled, "u"); err != nil || n != 2 {
			t.Fatalf("RevokeUser with a cancelled ctx: %d, %v", n, err)
		}
		for _, id := range []string{"a", "b", "b2", "c"} {
			_, err := s.Get(ctxb, id)
			testutil.WantErr(t, "Get "+id, err, ErrNotFound)
		}
	})
}

// raceEach runs f n times concurrently, goroutine i on stores[i%len], all
// released together; an error fails the test.
func raceEach(t *testing.T, n int, stores []Store, f func(i int, s Store) error) {
	t.Helper()
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			<-start
			if err := f(i, stores[i%len(stores)]); err != nil {
				errs <- err
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("unexpected error: %v", err)
	}
}
