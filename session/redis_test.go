package session

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/internal/seal"
	"github.com/elevacare/eleva-redis/internal/testutil"
)

// redisStore is NewRedis with test defaults, and its backend for hooks.
func redisStore(t *testing.T, client rueidis.Client, cfg Config) (*store, *redisBackend) {
	t.Helper()
	if cfg.Prefix == "" {
		cfg.Prefix = redistest.Prefix(t)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	s := NewRedis(client, quiet(cfg)).(*store)
	return s, s.b.(*redisBackend)
}

// TestRedisKeyLayout checks, on the cluster, that every key the store writes
// has a TTL, the documented shape (one hash tag, at the end, holding the
// whole identity), and that the index outlives its longest session.
func TestRedisKeyLayout(t *testing.T) {
	t.Parallel()
	client := redistest.Client(t, redistest.ClusterURL(t))
	prefix := redistest.Prefix(t)
	s, _ := redisStore(t, client, Config{Prefix: prefix})
	testutil.Must[Session](t, "Create")(s.Create(ctxb, "sess:{a}*", NewSession{UserID: "user@example.com", TTL: 2 * time.Hour}))
	testutil.Must[Session](t, "Create")(s.Create(ctxb, "short", NewSession{UserID: "user@example.com", TTL: time.Hour}))
	testutil.Must[Session](t, "Create")(s.Create(ctxb, "rot-old", newSession("u2")))
	testutil.Must[Session](t, "Rotate")(s.Rotate(ctxb, "rot-old", "rot-new"))
	testutil.Must[int](t, "SetUserRoles")(s.SetUserRoles(ctxb, "u2", []string{"r"}))

	want := map[string]string{
		prefix + "sess:{sess%3A%7Ba%7D%2A}":     "hash",
		prefix + "sess:{short}":                 "hash",
		prefix + "sess:{rot-new}":               "hash",
		prefix + "sess-user:{user@example.com}": "zset",
		prefix + "sess-user:{u2}":               "zset",
	}
	ks := redisKeys(t, client, prefix)
	slices.Sort(ks)
	if len(ks) != len(want) {
		t.Fatalf("keys %q, want %d keys", ks, len(want))
	}
	for _, k := range ks {
		typ, ok := want[k]
		if !ok {
			t.Errorf("unexpected key %q", k)
			continue
		}
		if got, err := client.Do(ctxb, client.B().Type().Key(k).Build()).ToString(); err != nil || got != typ {
			t.Errorf("key %q: type %q, %v; want %s", k, got, err, typ)
		}
		pttl, err := client.Do(ctxb, client.B().Pttl().Key(k).Build()).AsInt64()
		if err != nil || pttl <= 0 {
			t.Errorf("key %q: PTTL %d, %v; want a TTL on every key", k, pttl, err)
		}
		if strings.Count(k, "{") != 1 || strings.Count(k, "}") != 1 || !strings.HasSuffix(k, "}") {
			t.Errorf("key %q: want exactly one hash tag, at the end", k)
		}
	}
	// The index lives at least as long as its longest session (2h, plus
	// the slack), the session as long as its idle timeout (30m default).
	idx, _ := client.Do(ctxb, client.B().Pttl().Key(prefix+"sess-user:{user@example.com}").Build()).AsInt64()
	if idx < (2 * time.Hour).Milliseconds() {
		t.Errorf("index PTTL %dms, want at least 2h", idx)
	}
	sess, _ := client.Do(ctxb, client.B().Pttl().Key(prefix+"sess:{short}").Build()).AsInt64()
	if sess > DefaultIdleTimeout.Milliseconds() || sess < DefaultIdleTimeout.Milliseconds()-60_000 {
		t.Errorf("session PTTL %dms, want about the idle timeout", sess)
	}
}

// TestRedisHasRoleIsServedLocally shows that HasRole reads from the
// client-side cache (Redis sees one HMGET for many calls, the metrics count
// hits) and that a client without caching (DisableCache) still answers
// correctly, from Redis every time, and sees changes at once.
func TestRedisHasRoleIsServedLocally(t *testing.T) {
	t.Parallel()
	srv := redistest.NewServer(t)
	admin := redistest.Client(t, srv.URL())
	prefix := redistest.Prefix(t)
	other, _ := redisStore(t, redistest.Client(t, srv.URL()), Config{Prefix: prefix})
	for _, tc := range []struct {
		name   string
		url    string
		cached bool
	}{
		{"cached", srv.URL(), true},
		{"client_cache=0", srv.URL() + "?client_cache=0", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			s, _ := redisStore(t, redistest.Client(t, tc.url), Config{Prefix: prefix, Registerer: reg})
			id, user := "s-"+tc.name, "u-"+tc.name
			testutil.Must[Session](t, "Create")(other.Create(ctxb, id, newSession(user, "patient")))
			before := commandCalls(t, admin, "hmget")
			for range 100 {
				if ok := testutil.Must[bool](t, "HasRole")(s.HasRole(ctxb, id, "patient")); !ok {
					t.Fatal("HasRole = false")
				}
			}
			hmgets := commandCalls(t, admin, "hmget") - before
			hits := testutil.Sum(t, reg, metricCache, "result", "hit")
			if tc.cached && (hmgets > 1 || hits < 99) || !tc.cached && (hmgets != 100 || hits != 0) {
				t.Fatalf("100 HasRole: %d HMGETs reached Redis, %v cache hits", hmgets, hits)
			}
			// Coherent either way: another instance's change is seen.
			testutil.Must[int](t, "SetUserRoles")(other.SetUserRoles(ctxb, user, []string{"expert"}))
			d, calls := eventually(t, "role change", func() (bool, error) { return s.HasRole(ctxb, id, "expert") })
			if !tc.cached && calls != 1 {
				t.Fatalf("without a cache the change was seen after %d calls", calls)
			}
			t.Logf("100 HasRole: %d HMGETs reached Redis, %v cache hits; another instance's role change seen after %v", hmgets, hits, d)
		})
	}
}

// commandCalls is the number of calls of a command Redis has served.
func commandCalls(t *testing.T, admin rueidis.Client, cmd string) int {
	t.Helper()
	info, err := admin.Do(ctxb, admin.B().Info().Section("commandstats").Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(info, "\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_"+cmd+":calls="); ok {
			n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
			return n
		}
	}
	return 0
}

// TestRedisTouchAvoidsRoundTrips: touches within the interval are answered
// from the cached copy; Redis sees neither a script nor a read for them.
func TestRedisTouchAvoidsRoundTrips(t *testing.T) {
	t.Parallel()
	srv := redistest.NewServer(t)
	admin := redistest.Client(t, srv.URL())
	prefix := redistest.Prefix(t)
	reg := prometheus.NewRegistry()
	s, _ := redisStore(t, redistest.Client(t, srv.URL()), Config{Prefix: prefix, Registerer: reg})
	// The session is created by another instance (this one's copy cannot
	// predate its own write) and this one has learned Redis's time.
	other, _ := redisStore(t, redistest.Client(t, srv.URL()), Config{Prefix: prefix})
	testutil.Must[Session](t, "Create")(s.Create(ctxb, "clock", newSession("u")))
	testutil.Must[Session](t, "Create")(other.Create(ctxb, "s", newSession("u")))
	if err := admin.Do(ctxb, admin.B().ConfigResetstat().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	for range 200 {
		if err := s.Touch(ctxb, "s"); err != nil {
			t.Fatal(err)
		}
	}
	hmgets := commandCalls(t, admin, "hmget")
	scripts := commandCalls(t, admin, "evalsha") + commandCalls(t, admin, "eval")
	local := testutil.Sum(t, reg, metricTouches, "result", touchSkippedLocal)
	if hmgets > 1 || scripts > 0 || local < 199 {
		t.Fatalf("200 touches within the interval: %d HMGETs and %d scripts reached Redis, %v skipped locally; want at most 1 read, no script", hmgets, scripts, local)
	}
	t.Logf("200 touches within the interval: %d HMGET and %d scripts reached Redis, %v skipped locally", hmgets, scripts, local)
}

// TestRedisCreateCrashAndRaces interleaves other calls between the two
// steps of Create (index, then session), as a crash or a concurrent call
// would: the session is never unreachable by RevokeUser, and a role change
// in between is applied.
func TestRedisCreateCrashAndRaces(t *testing.T) {
	t.Parallel()
	url := redistest.ClusterURL(t)
	prefix := redistest.Prefix(t)
	s, b := redisStore(t, redistest.Client(t, url), Config{Prefix: prefix})
	other, _ := redisStore(t, redistest.Client(t, url), Config{Prefix: prefix})

	// RevokeUser between the steps finds nothing to revoke, and must leave
	// the index entry: the session created next is revoked by the next
	// RevokeUser.
	b.hook = func(step string) {
		if step == "create:indexed" {
			if n, err := other.RevokeUser(ctxb, "u"); err != nil || n != 0 {
				t.Errorf("RevokeUser between the steps: %d, %v", n, err)
			}
			if l, err := other.List(ctxb, "u"); err != nil || len(l) != 0 {
				t.Errorf("List between the steps: %v, %v", l, err)
			}
		}
	}
	testutil.Must[Session](t, "Create")(s.Create(ctxb, "a", newSession("u", "patient")))
	b.hook = nil
	if n := testutil.Must[int](t, "RevokeUser")(other.RevokeUser(ctxb, "u")); n != 1 {
		t.Fatalf("RevokeUser after the interleaved Create revoked %d, want 1", n)
	}

	// SetUserRoles between the steps: the new session gets the new roles
	// (through the pending-roles marker), not the ones Create was given.
	testutil.Must[Session](t, "Create")(s.Create(ctxb, "live", newSession("u", "patient")))
	b.hook = func(step string) {
		if step == "create:indexed" {
			if n, err := other.SetUserRoles(ctxb, "u", []string{"patient", "expert"}); err != nil || n != 1 {
				t.Errorf("SetUserRoles between the steps: %d, %v", n, err)
			}
		}
	}
	got := testutil.Must[Session](t, "Create")(s.Create(ctxb, "b", newSession("u", "patient")))
	b.hook = nil
	if !slices.Equal(got.Roles, []string{"patient", "expert"}) {
		t.Fatalf("Create overlapping SetUserRoles stored roles %q", got.Roles)
	}
	// The marker is not a session: a Get of an id that only has one is
	// not found, and creating another user's session there ignores it.
	testutil.Must[int](t, "SetUserRoles")(other.SetUserRoles(ctxb, "u", []string{"patient", "expert"}))
	b.hook = func(step string) {
		if step == "create:indexed" {
			testutil.Must[int](t, "SetUserRoles")(other.SetUserRoles(ctxb, "u", []string{"admin"}))
			_, err := other.Get(ctxb, "c")
			testutil.WantErr(t, "Get of a marker", err, ErrNotFound)
			_, err = other.HasRole(ctxb, "c", "admin")
			testutil.WantErr(t, "HasRole of a marker", err, ErrNotFound)
		}
	}
	got = testutil.Must[Session](t, "Create")(s.Create(ctxb, "c", newSession("u", "patient")))
	b.hook = nil
	if !slices.Equal(got.Roles, []string{"admin"}) {
		t.Fatalf("roles %q", got.Roles)
	}

	// A crash after the index step (simulated: the index entry alone) is
	// ignored by every reader and removed by nothing but its bound.
	if err := scriptIndexAdd.exec(ctxb, b.client, []string{b.n.user("u")}, []string{b.n.member("crashed"), "rel", "60000", "0"}).Error(); err != nil {
		t.Fatal(err)
	}
	l := testutil.Must[[]Session](t, "List")(s.List(ctxb, "u"))
	if len(l) != 3 {
		t.Fatalf("List with a dangling entry = %d sessions, want 3", len(l))
	}
	if n := testutil.Must[int](t, "RevokeUser")(s.RevokeUser(ctxb, "u")); n != 3 {
		t.Fatalf("RevokeUser = %d, want 3", n)
	}
}

// TestRedisRotateRaces interleaves changes of the old session between
// Rotate's copy and its deletion of the old id.
func TestRedisRotateRaces(t *testing.T) {
	t.Parallel()
	url := redistest.ClusterURL(t)
	prefix := redistest.Prefix(t)
	s, b := redisStore(t, redistest.Client(t, url), Config{Prefix: prefix})
	// other writes every touch (the interval is 1ms), so the touch case
	// below really writes between Rotate's steps.
	other, _ := redisStore(t, redistest.Client(t, url), Config{Prefix: prefix, TouchInterval: time.Millisecond})

	tests := []struct {
		name      string
		interfere func(t *testing.T, oldID string)
		times     int // how many attempts interfere
		wantErr   error
		wantRoles []string
	}{
		{"update of the old session is carried over", func(t *testing.T, oldID string) {
			testutil.Must[Session](t, "Update")(other.Update(ctxb, oldID, Update{Roles: []string{"updated"}}))
		}, 1, nil, []string{"updated"}},
		{"role change of the user is carried over", func(t *testing.T, oldID string) {
			testutil.Must[int](t, "SetUserRoles")(other.SetUserRoles(ctxb, "u", []string{"demoted"}))
		}, 1, nil, []string{"demoted"}},
		{"a touch does not disturb it", func(t *testing.T, oldID string) {
			if err := other.Touch(ctxb, oldID); err != nil {
				t.Error(err)
			}
		}, 1, nil, []string{"patient"}},
		{"a delete of the old session removes the copy", func(t *testing.T, oldID string) {
			if err := other.Delete(ctxb, oldID); err != nil {
				t.Error(err)
			}
		}, 1, ErrNotFound, nil},
		{"a revoke of the user removes the copy", func(t *testing.T, oldID string) {
			if _, err := other.RevokeUser(ctxb, "u"); err != nil {
				t.Error(err)
			}
		}, 1, ErrNotFound, nil},
		{"the old id taken by a new session removes the copy and keeps the new one", func(t *testing.T, oldID string) {
			testutil.Must[Session](t, "Create")(other.Create(ctxb, oldID, newSession("v", "other")))
		}, 1, ErrNotFound, nil},
		{"endless updates give up", func(t *testing.T, oldID string) {
			testutil.Must[Session](t, "Update")(other.Update(ctxb, oldID, Update{Preferences: []byte(time.Now().String())}))
		}, maxRotateAttempts, ErrConflict, nil},
	}
	for i, tc := range tests {
		oldID, newID := fmt.Sprint("old-", i), fmt.Sprint("new-", i)
		testutil.Must[Session](t, "Create")(s.Create(ctxb, oldID, NewSession{UserID: "u", Roles: []string{"patient"}, IdleTimeout: time.Hour}))
		calls := 0
		b.hook = func(step string) {
			if step == "rotate:copied" && calls < tc.times {
				calls++
				tc.interfere(t, oldID)
			}
		}
		got, err := s.Rotate(ctxb, oldID, newID)
		b.hook = nil
		if tc.wantErr != nil {
			testutil.WantErr(t, tc.name, err, tc.wantErr)
		} else if err != nil || !slices.Equal(got.Roles, tc.wantRoles) {
			t.Fatalf("%s: Rotate = %+v, %v; want roles %q", tc.name, got, err, tc.wantRoles)
		}
		_, err = s.Get(ctxb, oldID)
		if tc.wantErr == ErrConflict {
			// Gave up: the old session is still there, and so is the
			// copy, which a retry replaces.
			if err != nil {
				t.Fatalf("%s: old session after giving up: %v", tc.name, err)
			}
			got := testutil.Must[Session](t, tc.name+": retry")(s.Rotate(ctxb, oldID, newID))
			if got.ID != newID {
				t.Fatalf("%s: retry = %+v", tc.name, got)
			}
			continue
		}
		if strings.HasPrefix(tc.name, "the old id taken") {
			if err != nil || got.UserID != "" {
				t.Fatalf("%s: the new session under the old id: %v (Rotate returned %+v)", tc.name, err, got)
			}
			if read := testutil.Must[Session](t, "Get")(s.Get(ctxb, oldID)); read.UserID != "v" {
				t.Fatalf("%s: old id now holds %+v", tc.name, read)
			}
		} else {
			testutil.WantErr(t, tc.name+": old id", err, ErrNotFound)
		}
		read, err := s.Get(ctxb, newID)
		if tc.wantErr != nil {
			testutil.WantErr(t, tc.name+": new id", err, ErrNotFound)
			continue
		}
		if err != nil || !slices.Equal(read.Roles, tc.wantRoles) {
			t.Fatalf("%s: Get new = %+v, %v", tc.name, read, err)
		}
	}
}

// TestRedisCopiedCiphertextFails: a sealed value copied by someone with
// Redis access to another session does not open there.
func TestRedisCopiedCiphertextFails(t *testing.T) {
	t.Parallel()
	client := redistest.Client(t, redistest.URL(t))
	s, b := redisStore(t, client, Config{Keyring: testutil.Keyring(t, testutil.KeyEntry("k1", 1))})
	testutil.Must[Session](t, "Create")(s.Create(ctxb, "alice", NewSession{UserID: "alice", DeviceInfo: []byte("alice's device"), Preferences: []byte("p")}))
	testutil.Must[Session](t, "Create")(s.Create(ctxb, "mallory", NewSession{UserID: "mallory", DeviceInfo: []byte("mallory's device")}))
	raw, err := client.Do(ctxb, client.B().Hget().Key(b.n.session("alice")).Field("deviceInfo").Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	// Into another session, and into another field of the same session.
	for _, dst := range []struct{ id, field string }{{"mallory", "deviceInfo"}, {"alice", "preferences"}} {
		if err := client.Do(ctxb, client.B().Hset().Key(b.n.session(dst.id)).FieldValue().FieldValue(dst.field, raw).Build()).Error(); err != nil {
			t.Fatal(err)
		}
		_, err = s.Get(ctxb, dst.id)
		testutil.WantErr(t, "Get of a value copied to "+dst.id+"."+dst.field, err, seal.ErrCorrupt)
	}
}

// TestRedisFailClosed: with redis-server killed, every call returns an
// error wrapping ErrBackend within a bounded time, never a guess; after a
// restart the same Store works again.
func TestRedisFailClosed(t *testing.T) {
	t.Parallel()
	srv := redistest.NewServer(t)
	const timeout = 200 * time.Millisecond
	const bound = 2 * time.Second // generous: the point is "does not hang"
	s, _ := redisStore(t, redistest.Client(t, srv.URL()), Config{Timeout: timeout})
	untilHealthy(t, s)
	testutil.Must[Session](t, "Create")(s.Create(ctxb, "s", newSession("u", "patient")))
	if ok := testutil.Must[bool](t, "HasRole")(s.HasRole(ctxb, "s", "patient")); !ok { // cached now
		t.Fatal("HasRole = false")
	}

	srv.Stop(t)

	calls := []testutil.Call{
		testutil.C("Get", func() error { _, err := s.Get(ctxb, "s"); return err }),
		testutil.C("Create", func() error { _, err := s.Create(ctxb, "t", newSession("u")); return err }),
		testutil.C("Update", func() error { _, err := s.Update(ctxb, "s", Update{Roles: []string{"x"}}); return err }),
		testutil.C("Delete", func() error { return s.Delete(ctxb, "s") }),
		testutil.C("Rotate", func() error { _, err := s.Rotate(ctxb, "s", "s2"); return err }),
		testutil.C("List", func() error { _, err := s.List(ctxb, "u"); return err }),
		testutil.C("RevokeUser", func() error { _, err := s.RevokeUser(ctxb, "u"); return err }),
		testutil.C("SetUserRoles", func() error { _, err := s.SetUserRoles(ctxb, "u", nil); return err }),
		// Last: the client drops its local cache when it sees the
		// connection close, which the calls above make sure of.
		testutil.C("Touch", func() error { return s.Touch(ctxb, "s") }),
		testutil.C("HasRole", func() error { _, err := s.HasRole(ctxb, "s", "patient"); return err }),
	}
	slowest := testutil.FailClosed(t, 3, calls, ErrBackend, bound)
	t.Logf("slowest call with Redis down: %v (timeout %v)", slowest, timeout)

	// Restart: the same Store works again. The server kept nothing, and
	// says so: not found, not a cached answer.
	srv.Start(t)
	untilHealthy(t, s)
	_, err := s.HasRole(ctxb, "s", "patient")
	testutil.WantErr(t, "HasRole of a session lost with the server", err, ErrNotFound)
	testutil.Must[Session](t, "Create")(s.Create(ctxb, "s", newSession("u", "patient")))
	if ok := testutil.Must[bool](t, "HasRole")(s.HasRole(ctxb, "s", "patient")); !ok {
		t.Fatal("HasRole after restart = false")
	}
}

// TestRedisTimeoutFailsClosed: with the server paused (slow Redis), calls
// return ErrBackend after about Config.Timeout, not when Redis answers.
func TestRedisTimeoutFailsClosed(t *testing.T) {
	t.Parallel()
	srv := redistest.NewServer(t)
	admin := redistest.Client(t, srv.URL())
	const timeout = 100 * time.Millisecond
	s, _ := redisStore(t, redistest.Client(t, srv.URL()), Config{Timeout: timeout})
	untilHealthy(t, s)
	testutil.Must[Session](t, "Create")(s.Create(ctxb, "s", newSession("u")))
	// Paused for writes (scripts count as writes), so that the UNPAUSE
	// below is served at once.
	if err := admin.Do(ctxb, admin.B().ClientPause().Timeout(10000).Write().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	unpaused := false
	unpause := func() {
		if !unpaused {
			unpaused = true
			if err := admin.Do(ctxb, admin.B().ClientUnpause().Build()).Error(); err != nil {
				t.Errorf("CLIENT UNPAUSE: %v", err)
			}
		}
	}
	defer unpause()
	for _, c := range []struct {
		name string
		call func() error
	}{
		{"Create", func() error { _, err := s.Create(ctxb, "t", newSession("u")); return err }},
		{"Update", func() error { _, err := s.Update(ctxb, "s", Update{Roles: []string{"x"}}); return err }},
		{"RevokeUser", func() error { _, err := s.RevokeUser(ctxb, "u"); return err }},
	} {
		start := time.Now()
		err := c.call()
		el := time.Since(start)
		if !errors.Is(err, ErrBackend) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s with Redis paused: %v, want ErrBackend wrapping a deadline", c.name, err)
		}
		if el > 2*time.Second {
			t.Fatalf("%s with Redis paused took %v; timeout is %v", c.name, el, timeout)
		}
	}
	unpause()
	untilHealthy(t, s)
}

// untilHealthy waits (at most 10s) until a Create succeeds: a restarted
// server takes a moment to accept the client's reconnection.
func untilHealthy(t *testing.T, s Store) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := s.Create(ctxb, "health-probe", NewSession{UserID: "probe", TTL: time.Second})
		if err == nil {
			return
		}
		if !errors.Is(err, ErrBackend) {
			t.Fatalf("probe: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no successful call within 10s: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // poll interval while the client reconnects
	}
}

// TestRedisBadConfig: a bad configuration fails every call with ErrBackend
// (the constructors have no error result) and never panics.
func TestRedisBadConfig(t *testing.T) {
	t.Parallel()
	client := redistest.Client(t, redistest.URL(t))
	for name, s := range map[string]Store{
		"nil client":   NewRedis(nil, quiet(Config{})),
		"bad prefix":   NewRedis(client, quiet(Config{Prefix: "{bad}"})),
		"TTL over max": NewRedis(client, quiet(Config{TTL: MaxTTL + time.Hour})),
		"negative":     NewMemory(quiet(Config{TouchInterval: -time.Second})),
	} {
		_, err := s.Create(ctxb, "s", newSession("u"))
		testutil.WantErr(t, name+": Create", err, ErrBackend)
		_, err = s.HasRole(ctxb, "s", "r")
		testutil.WantErr(t, name+": HasRole", err, ErrBackend)
		// Bad input is still reported as such.
		_, err = s.Get(ctxb, "")
		testutil.WantErr(t, name+": Get with an empty id", err, ErrInvalidArgument)
	}
}
