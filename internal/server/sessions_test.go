package server

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	elevaredis "github.com/elevacare/eleva-redis"
	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/session"
)

// sessionBody is the Session JSON of HTTP-API.md.
type sessionBody struct {
	ID             string   `json:"id"`
	UserID         string   `json:"userId"`
	Roles          []string `json:"roles"`
	DeviceInfo     any      `json:"deviceInfo"`
	Preferences    any      `json:"preferences"`
	CreatedAt      int64    `json:"createdAt"`
	LastActivityAt int64    `json:"lastActivityAt"`
	ExpiresAt      int64    `json:"expiresAt"`
}

func sessionPath(id string) string { return "/v1/sessions/" + url.PathEscape(id) }

func userPath(user string) string { return "/v1/users/" + url.PathEscape(user) }

func TestSessionEndpoints(t *testing.T) {
	for _, bc := range backendCases {
		t.Run(bc.name, func(t *testing.T) {
			t.Parallel()
			e := newBackendEnv(t, backendURL(t, bc.url), elevaredis.Config{})
			// Ids and user ids may hold any characters.
			id, user := "sess:{a}/b c", "jane.doe@example.com"
			base := sessionPath(id)

			before := time.Now()
			res := e.do(http.MethodPut, base, `{"userId":"`+user+`","roles":["patient","patient","beta"],
				"deviceInfo":{"ua":"Safari","v":17},"ttlMs":3600000,"idleTimeoutMs":600000}`)
			e.mustStatus(res, 201)
			created := decodeInto[sessionBody](t, res)
			if created.ID != id || created.UserID != user || !slices.Equal(created.Roles, []string{"patient", "beta"}) ||
				created.Preferences != nil || fmt.Sprint(created.DeviceInfo) != "map[ua:Safari v:17]" {
				t.Fatalf("created %+v", created)
			}
			if created.CreatedAt < before.UnixMilli()-1000 || created.CreatedAt > time.Now().UnixMilli()+1000 ||
				created.LastActivityAt != created.CreatedAt || created.ExpiresAt != created.LastActivityAt+600000 {
				t.Fatalf("times %+v", created)
			}
			if !sameJSON(t, field(t, e.do(http.MethodGet, base, ""), "preferences"), []byte("null")) {
				t.Fatal("absent preferences do not read back as null")
			}

			// PATCH: each field independently; an explicit null is a value.
			res = e.do(http.MethodPatch, base, `{"preferences":{"lang":"pt"}}`)
			e.mustStatus(res, 200)
			got := decodeInto[sessionBody](t, res)
			if fmt.Sprint(got.Preferences) != "map[lang:pt]" || fmt.Sprint(got.DeviceInfo) != "map[ua:Safari v:17]" || len(got.Roles) != 2 {
				t.Fatalf("after PATCH preferences: %+v", got)
			}
			e.mustStatus(e.do(http.MethodPatch, base, `{"roles":["expert"],"deviceInfo":null}`), 200)
			got = decodeInto[sessionBody](t, e.do(http.MethodGet, base, ""))
			if !slices.Equal(got.Roles, []string{"expert"}) || got.DeviceInfo != nil || fmt.Sprint(got.Preferences) != "map[lang:pt]" {
				t.Fatalf("after PATCH roles and deviceInfo: %+v", got)
			}
			e.mustStatus(e.do(http.MethodPatch, base, `{}`), 200)

			// Roles.
			for role, want := range map[string]bool{"expert": true, "patient": false, "a/b": false} {
				res := e.do(http.MethodGet, base+"/roles/"+url.PathEscape(role), "")
				e.mustStatus(res, 200)
				if string(res.body) != fmt.Sprintf("{\"hasRole\":%v}\n", want) {
					t.Errorf("role %q: %s", role, res.body)
				}
			}
			wantError(t, e.do(http.MethodGet, sessionPath("nope")+"/roles/x", ""), 404, "not_found")

			// Touch: 204, with or without an empty body.
			for _, body := range []string{"", "{}"} {
				res := e.do(http.MethodPost, base+"/touch", body)
				e.mustStatus(res, 204)
				if len(res.body) != 0 {
					t.Errorf("204 with body %q", res.body)
				}
			}
			wantError(t, e.do(http.MethodPost, sessionPath("nope")+"/touch", ""), 404, "not_found")

			// A second session of the user and one of another user.
			e.mustStatus(e.do(http.MethodPut, sessionPath("second"), `{"userId":"`+user+`","roles":[]}`), 201)
			e.mustStatus(e.do(http.MethodPut, sessionPath("other"), `{"userId":"someone-else","roles":["patient"]}`), 201)
			res = e.do(http.MethodGet, userPath(user)+"/sessions", "")
			e.mustStatus(res, 200)
			list := decodeInto[struct{ Sessions []sessionBody }](t, res).Sessions
			if len(list) != 2 || list[0].ID != id || list[1].ID != "second" || list[1].Roles == nil {
				t.Fatalf("list %+v", list)
			}

			// Role change of every session of the user.
			res = e.do(http.MethodPut, userPath(user)+"/roles", `{"roles":["patient","admin"]}`)
			e.mustStatus(res, 200)
			if string(res.body) != "{\"updated\":2}\n" {
				t.Fatalf("roles: %s", res.body)
			}
			for _, p := range []string{base, sessionPath("second")} {
				if string(e.do(http.MethodGet, p+"/roles/admin", "").body) != "{\"hasRole\":true}\n" {
					t.Fatalf("%s did not get the role", p)
				}
			}
			if string(e.do(http.MethodGet, sessionPath("other")+"/roles/admin", "").body) != "{\"hasRole\":false}\n" {
				t.Fatal("another user's session got the role")
			}

			// Log out everywhere.
			res = e.do(http.MethodDelete, userPath(user)+"/sessions", "")
			e.mustStatus(res, 200)
			if string(res.body) != "{\"revoked\":2}\n" {
				t.Fatalf("revoke: %s", res.body)
			}
			for _, p := range []string{base, sessionPath("second")} {
				wantError(t, e.do(http.MethodGet, p, ""), 404, "not_found")
				wantError(t, e.do(http.MethodGet, p+"/roles/admin", ""), 404, "not_found")
				wantError(t, e.do(http.MethodPatch, p, `{"roles":[]}`), 404, "not_found")
			}
			if m := e.do(http.MethodGet, userPath(user)+"/sessions", "").json(t); fmt.Sprint(m["sessions"]) != "[]" {
				t.Fatalf("list after revoke: %v", m)
			}
			if string(e.do(http.MethodDelete, userPath(user)+"/sessions", "").body) != "{\"revoked\":0}\n" {
				t.Fatal("second revoke")
			}
			if string(e.do(http.MethodPut, userPath(user)+"/roles", `{"roles":[]}`).body) != "{\"updated\":0}\n" {
				t.Fatal("roles of a user without sessions")
			}

			// DELETE: 204, also when nothing is there.
			for range 2 {
				res := e.do(http.MethodDelete, sessionPath("other"), "")
				e.mustStatus(res, 204)
				if len(res.body) != 0 {
					t.Errorf("204 with body %q", res.body)
				}
			}
			wantError(t, e.do(http.MethodGet, sessionPath("other"), ""), 404, "not_found")

			// PUT replaces a session stored under the same id.
			e.mustStatus(e.do(http.MethodPut, sessionPath("x"), `{"userId":"u1","roles":["a"],"preferences":1}`), 201)
			res = e.do(http.MethodPut, sessionPath("x"), `{"userId":"u2","roles":["b"]}`)
			e.mustStatus(res, 201)
			if got := decodeInto[sessionBody](t, res); got.UserID != "u2" || got.Preferences != nil {
				t.Fatalf("replaced: %+v", got)
			}

			// Nothing identifying reaches the logs.
			logs := e.logs.String()
			for _, secret := range []string{"jane", "sess:", "Safari", "expert", "admin", "lang", "someone-else"} {
				if strings.Contains(logs, secret) {
					t.Errorf("logs contain %q:\n%s", secret, logs)
				}
			}
		})
	}
}

// TestSessionsAcrossInstances: two servers on one Redis play two instances.
// A revocation on one is a 404 on the other at once; a role change on one is
// seen by the other's roles route (served from its local cache) within the
// invalidation latency; 100 concurrent PATCHes of different fields through
// both, with touches, lose nothing.
func TestSessionsAcrossInstances(t *testing.T) {
	for _, bc := range backendCases[1:] {
		t.Run(bc.name, func(t *testing.T) {
			t.Parallel()
			u := backendURL(t, bc.url)
			cfg := elevaredis.Config{KeyPrefix: redistest.Prefix(t)}
			cfg.Session.TouchInterval = time.Millisecond
			a, b := newBackendEnv(t, u, cfg), newBackendEnv(t, u, cfg)

			a.mustStatus(a.do(http.MethodPut, sessionPath("s1"), `{"userId":"u","roles":["patient"]}`), 201)
			a.mustStatus(a.do(http.MethodPut, sessionPath("s2"), `{"userId":"u","roles":["patient"]}`), 201)
			for range 3 { // b caches both
				for _, id := range []string{"s1", "s2"} {
					if string(b.do(http.MethodGet, sessionPath(id)+"/roles/expert", "").body) != "{\"hasRole\":false}\n" {
						t.Fatal("expert before the change")
					}
				}
			}
			a.mustStatus(a.do(http.MethodPut, userPath("u")+"/roles", `{"roles":["patient","expert"]}`), 200)
			start := time.Now()
			for _, id := range []string{"s1", "s2"} {
				for string(b.do(http.MethodGet, sessionPath(id)+"/roles/expert", "").body) != "{\"hasRole\":true}\n" {
					if time.Since(start) > 5*time.Second {
						t.Fatal("the other instance did not see the role change within 5s")
					}
					time.Sleep(time.Millisecond) // poll interval: the invalidation is asynchronous by design
				}
			}
			t.Logf("role change seen by the other instance after %v", time.Since(start))

			// Concurrent PATCHes of different fields, plus touches, in
			// rounds through both instances.
			for round := 1; round <= 34; round++ {
				var wg sync.WaitGroup
				for i, body := range []string{
					fmt.Sprintf(`{"roles":["r%d"]}`, round),
					fmt.Sprintf(`{"deviceInfo":"d%d"}`, round),
					fmt.Sprintf(`{"preferences":"p%d"}`, round),
					"", "",
				} {
					e := []*testEnv{a, b}[i%2]
					wg.Go(func() {
						method, path := http.MethodPatch, sessionPath("s1")
						if body == "" {
							method, path = http.MethodPost, path+"/touch"
						}
						req := httptest.NewRequest(method, path, strings.NewReader(body))
						req.RemoteAddr = "127.0.0.1:1"
						rec := httptest.NewRecorder()
						e.h.ServeHTTP(rec, req)
						if rec.Code != 200 && rec.Code != 204 {
							t.Errorf("%s %s: %d %s", method, path, rec.Code, rec.Body)
						}
					})
				}
				wg.Wait()
				got := decodeInto[sessionBody](t, b.do(http.MethodGet, sessionPath("s1"), ""))
				want := fmt.Sprintf("[r%d] d%d p%d", round, round, round)
				if s := fmt.Sprint(got.Roles, " ", got.DeviceInfo, " ", got.Preferences); s != want {
					t.Fatalf("round %d: %s, want %s", round, s, want)
				}
			}

			// Log out everywhere on b: a answers 404 at once.
			b.mustStatus(b.do(http.MethodDelete, userPath("u")+"/sessions", ""), 200)
			for _, id := range []string{"s1", "s2"} {
				wantError(t, a.do(http.MethodGet, sessionPath(id), ""), 404, "not_found")
			}
		})
	}
}

// TestSessionBadInput: every bad input of the session routes is a 400 naming
// the field (or 413), never a 5xx, and writes nothing.
func TestSessionBadInput(t *testing.T) {
	long := func(n int) string { return strings.Repeat("n", n) }
	manyRoles := make([]string, session.MaxRoles+1)
	for i := range manyRoles {
		manyRoles[i] = fmt.Sprintf("%q", fmt.Sprint("r", i))
	}
	roles65 := "[" + strings.Join(manyRoles, ",") + "]"
	big := `"` + long(session.MaxFieldSize) + `"`
	tests := []struct {
		name, method, path, body string
		status                   int
		field                    string
	}{
		{"create: missing userId", "PUT", "/v1/sessions/s", `{"roles":[]}`, 400, "userId"},
		{"create: empty userId", "PUT", "/v1/sessions/s", `{"userId":"","roles":[]}`, 400, "userId"},
		{"create: userId a number", "PUT", "/v1/sessions/s", `{"userId":42,"roles":[]}`, 400, "userId"},
		{"create: long userId", "PUT", "/v1/sessions/s", `{"userId":"` + long(session.MaxUserIDLen+1) + `","roles":[]}`, 400, "userId"},
		{"create: missing roles", "PUT", "/v1/sessions/s", `{"userId":"u"}`, 400, "roles"},
		{"create: null roles", "PUT", "/v1/sessions/s", `{"userId":"u","roles":null}`, 400, "roles"},
		{"create: roles a string", "PUT", "/v1/sessions/s", `{"userId":"u","roles":"admin"}`, 400, "roles"},
		{"create: role a number", "PUT", "/v1/sessions/s", `{"userId":"u","roles":[1]}`, 400, "roles"},
		{"create: empty role", "PUT", "/v1/sessions/s", `{"userId":"u","roles":[""]}`, 400, "roles"},
		{"create: long role", "PUT", "/v1/sessions/s", `{"userId":"u","roles":["` + long(session.MaxRoleLen+1) + `"]}`, 400, "roles"},
		{"create: too many roles", "PUT", "/v1/sessions/s", `{"userId":"u","roles":` + roles65 + `}`, 400, "roles"},
		{"create: big deviceInfo", "PUT", "/v1/sessions/s", `{"userId":"u","roles":[],"deviceInfo":` + big + `}`, 400, "deviceInfo"},
		{"create: zero ttl", "PUT", "/v1/sessions/s", `{"userId":"u","roles":[],"ttlMs":0}`, 400, "ttlMs"},
		{"create: ttl over 30 days", "PUT", "/v1/sessions/s", `{"userId":"u","roles":[],"ttlMs":2592000001}`, 400, "ttlMs"},
		{"create: idle a string", "PUT", "/v1/sessions/s", `{"userId":"u","roles":[],"idleTimeoutMs":"1m"}`, 400, "idleTimeoutMs"},
		{"create: negative idle", "PUT", "/v1/sessions/s", `{"userId":"u","roles":[],"idleTimeoutMs":-1}`, 400, "idleTimeoutMs"},
		{"create: unknown field", "PUT", "/v1/sessions/s", `{"userId":"u","roles":[],"id":"x"}`, 400, "id"},
		{"create: malformed", "PUT", "/v1/sessions/s", `{"userId":"u",`, 400, ""},
		{"create: array", "PUT", "/v1/sessions/s", `[]`, 400, ""},
		{"create: too large", "PUT", "/v1/sessions/s", `{"userId":"u","roles":[]}` + strings.Repeat(" ", 200<<10), 413, ""},
		{"create: long id", "PUT", "/v1/sessions/" + long(session.MaxIDLen+1), `{"userId":"u","roles":[]}`, 400, "id"},
		{"create: non-UTF-8 id", "PUT", "/v1/sessions/%FF", `{"userId":"u","roles":[]}`, 400, "id"},
		{"patch: null roles", "PATCH", "/v1/sessions/s", `{"roles":null}`, 400, "roles"},
		{"patch: roles an object", "PATCH", "/v1/sessions/s", `{"roles":{}}`, 400, "roles"},
		{"patch: empty role", "PATCH", "/v1/sessions/s", `{"roles":["a",""]}`, 400, "roles"},
		{"patch: big preferences", "PATCH", "/v1/sessions/s", `{"preferences":` + big + `}`, 400, "preferences"},
		{"patch: unknown field", "PATCH", "/v1/sessions/s", `{"userId":"v"}`, 400, "userId"},
		{"patch: empty body", "PATCH", "/v1/sessions/s", ``, 400, ""},
		{"touch: unknown field", "POST", "/v1/sessions/s/touch", `{"at":1}`, 400, "at"},
		{"touch: not an object", "POST", "/v1/sessions/s/touch", `[]`, 400, ""},
		{"has role: long role", "GET", "/v1/sessions/s/roles/" + long(session.MaxRoleLen+1), ``, 400, "role"},
		{"has role: non-UTF-8 role", "GET", "/v1/sessions/s/roles/%C3", ``, 400, "role"},
		{"get: long id", "GET", "/v1/sessions/" + long(session.MaxIDLen+1), ``, 400, "id"},
		{"delete: long id", "DELETE", "/v1/sessions/" + long(session.MaxIDLen+1), ``, 400, "id"},
		{"list: long user", "GET", "/v1/users/" + long(session.MaxUserIDLen+1) + "/sessions", ``, 400, "userId"},
		{"revoke: non-UTF-8 user", "DELETE", "/v1/users/%FE/sessions", ``, 400, "userId"},
		{"roles: missing roles", "PUT", "/v1/users/u/roles", `{}`, 400, "roles"},
		{"roles: role a bool", "PUT", "/v1/users/u/roles", `{"roles":[true]}`, 400, "roles"},
		{"roles: too many", "PUT", "/v1/users/u/roles", `{"roles":` + roles65 + `}`, 400, "roles"},
		{"roles: unknown field", "PUT", "/v1/users/u/roles", `{"roles":[],"userId":"v"}`, 400, "userId"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, Deps{APIKeys: []string{testKey}, MaxBodyBytes: 200 << 10})
			auth := "Authorization: Bearer " + testKey
			// A session that a bad request must leave untouched.
			e.mustStatus(e.do(http.MethodPut, "/v1/sessions/s", `{"userId":"u","roles":["patient"],"deviceInfo":1,"preferences":2}`, auth), 201)
			before := e.do(http.MethodGet, "/v1/sessions/s", "", auth)
			res := e.do(tc.method, tc.path, tc.body, auth)
			e.mustStatus(res, tc.status)
			code, f := res.errorOf(t)
			want := "invalid_argument"
			if tc.status == 413 {
				want = "payload_too_large"
			}
			if code != want || f != tc.field {
				t.Fatalf("code=%q field=%q, want %q %q (%s)", code, f, want, tc.field, res.body)
			}
			if after := e.do(http.MethodGet, "/v1/sessions/s", "", auth); string(after.body) != string(before.body) {
				t.Fatalf("a bad request changed the session:\n%s\n%s", before.body, after.body)
			}
		})
	}

	// The limits themselves are accepted.
	e := newEnv(t, Deps{MaxBodyBytes: 1 << 20})
	roles64 := "[" + strings.Join(manyRoles[:session.MaxRoles], ",") + "]"
	e.mustStatus(e.do(http.MethodPut, "/v1/sessions/"+long(session.MaxIDLen), `{"userId":"`+long(session.MaxUserIDLen)+`","roles":`+roles64+
		`,"deviceInfo":"`+long(session.MaxFieldSize-2)+`","ttlMs":2592000000,"idleTimeoutMs":1}`), 201)

	// The routes need the API key like every /v1 route, and refuse
	// cross-site form posts without a JSON Content-Type.
	e = newEnv(t, Deps{APIKeys: []string{testKey}})
	for _, r := range [][2]string{{"PUT", "/v1/sessions/s"}, {"GET", "/v1/sessions/s"}, {"PATCH", "/v1/sessions/s"},
		{"POST", "/v1/sessions/s/touch"}, {"GET", "/v1/sessions/s/roles/r"}, {"DELETE", "/v1/sessions/s"},
		{"GET", "/v1/users/u/sessions"}, {"DELETE", "/v1/users/u/sessions"}, {"PUT", "/v1/users/u/roles"}} {
		wantError(t, e.do(r[0], r[1], `{}`, "Authorization: Bearer wrong"), 401, "unauthorized")
	}
	e = newEnv(t, Deps{})
	for _, ct := range []string{"application/x-www-form-urlencoded", "text/plain"} {
		wantError(t, e.do(http.MethodPost, "/v1/sessions/s/touch", "", "Content-Type: "+ct), 400, "invalid_argument")
	}
}

// TestSessionsUnavailableWhenRedisIsDown: with redis-server killed, every
// session route answers 503 unavailable, never success, within a bounded
// time; the same server works again once Redis is back.
func TestSessionsUnavailableWhenRedisIsDown(t *testing.T) {
	srv := redistest.NewServer(t)
	cfg := elevaredis.Config{KeyPrefix: redistest.Prefix(t)}
	cfg.Session.Timeout = 200 * time.Millisecond
	e := newBackendEnv(t, srv.URL(), cfg)
	e.mustStatus(e.do(http.MethodPut, "/v1/sessions/s", `{"userId":"u","roles":["patient"]}`), 201)
	e.mustStatus(e.do(http.MethodGet, "/v1/sessions/s/roles/patient", ""), 200) // cached

	srv.Stop(t)
	calls := []struct{ method, path, body string }{
		{"PUT", "/v1/sessions/t", `{"userId":"u","roles":[]}`},
		{"GET", "/v1/sessions/s", ``},
		{"PATCH", "/v1/sessions/s", `{"roles":["x"]}`},
		{"DELETE", "/v1/sessions/s", ``},
		{"GET", "/v1/users/u/sessions", ``},
		{"DELETE", "/v1/users/u/sessions", ``},
		{"PUT", "/v1/users/u/roles", `{"roles":["x"]}`},
		// Last: these may read the local cache, which the client drops
		// when it sees the connection close.
		{"POST", "/v1/sessions/s/touch", ``},
		{"GET", "/v1/sessions/s/roles/patient", ``},
	}
	for range 2 {
		for _, c := range calls {
			start := time.Now()
			res := e.do(c.method, c.path, c.body)
			took := time.Since(start)
			wantError(t, res, 503, "unavailable")
			if strings.Contains(string(res.body), srv.Addr) {
				t.Errorf("%s %s: backend address leaked: %s", c.method, c.path, res.body)
			}
			if took > 3*time.Second { // generous: bounded by the 200ms timeout
				t.Errorf("%s %s took %v with Redis down", c.method, c.path, took)
			}
		}
	}

	srv.Start(t) // a fresh server: nothing persisted
	deadline := time.Now().Add(10 * time.Second)
	for e.do(http.MethodPut, "/v1/sessions/s", `{"userId":"u","roles":["patient"]}`).status != 201 {
		if time.Now().After(deadline) {
			t.Fatal("no recovery within 10s")
		}
		time.Sleep(20 * time.Millisecond) // poll interval while the client reconnects
	}
	e.mustStatus(e.do(http.MethodGet, "/v1/sessions/s/roles/patient", ""), 200)
	e.mustStatus(e.do(http.MethodPost, "/v1/sessions/s/touch", ""), 204)
}

// TestSessionEncryptionAtRest: with ELEVA_ENCRYPTION_KEY (Config.
// EncryptionKey), deviceInfo and preferences are sealed in Redis; after a key
// rotation the old values still read; without the old key they are a 500.
func TestSessionEncryptionAtRest(t *testing.T) {
	const (
		k1 = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
		k2 = "k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="
	)
	u := redistest.URL(t)
	prefix := redistest.Prefix(t)
	old := newBackendEnv(t, u, elevaredis.Config{KeyPrefix: prefix, EncryptionKey: k1})
	rotated := newBackendEnv(t, u, elevaredis.Config{KeyPrefix: prefix, EncryptionKey: k2 + "," + k1})
	dropped := newBackendEnv(t, u, elevaredis.Config{KeyPrefix: prefix, EncryptionKey: k2})

	old.mustStatus(old.do(http.MethodPut, "/v1/sessions/s", `{"userId":"u","roles":["patient"],"deviceInfo":{"diagnosis":"diabetes"},"preferences":"dark mode"}`), 201)
	client := redistest.Client(t, u)
	raw, err := client.Do(t.Context(), client.B().Hgetall().Key(prefix+"sess:{s}").Build()).AsStrMap()
	if err != nil || len(raw) == 0 {
		t.Fatalf("HGETALL: %v, %v", raw, err)
	}
	if strings.Contains(fmt.Sprint(raw), "diabetes") || strings.Contains(fmt.Sprint(raw), "dark mode") {
		t.Fatalf("plaintext in Redis: %v", raw)
	}
	res := rotated.do(http.MethodGet, "/v1/sessions/s", "")
	rotated.mustStatus(res, 200)
	if !sameJSON(t, field(t, res, "deviceInfo"), []byte(`{"diagnosis":"diabetes"}`)) {
		t.Fatalf("after key rotation: %s", res.body)
	}
	wantError(t, dropped.do(http.MethodGet, "/v1/sessions/s", ""), 500, "internal")
	// Roles need no decryption.
	dropped.mustStatus(dropped.do(http.MethodGet, "/v1/sessions/s/roles/patient", ""), 200)

	// EncryptionKey and Session.Keyring together are refused.
	kr, err := session.ParseKeyring(k1)
	if err != nil {
		t.Fatal(err)
	}
	cfg := elevaredis.Config{EncryptionKey: k1}
	cfg.Session.Keyring = kr
	if _, err := elevaredis.Open(t.Context(), cfg); !errors.Is(err, elevaredis.ErrInvalidConfig) {
		t.Fatalf("Open with both: %v", err)
	}
}
