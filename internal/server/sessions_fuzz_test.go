package server

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/elevacare/eleva-redis/session"
)

// FuzzSessions sends one body to every session route that takes one
// (create, update, touch, the user's roles) for a fuzzed session id, user id
// and role, then reads, lists, revokes and deletes: no input may panic or
// answer 5xx, and every success carries its fields.
func FuzzSessions(f *testing.F) {
	for _, s := range []string{
		`{"userId":"u","roles":["patient"],"deviceInfo":{"ua":"x"},"preferences":[1,2],"ttlMs":60000,"idleTimeoutMs":1000}`,
		`{"userId":"u","roles":[]}`, `{"userId":"u","roles":null}`, `{"userId":"","roles":[""]}`,
		`{"userId":"u","roles":["a","a","b"],"deviceInfo":null}`, `{"userId":1}`, `{"roles":["x"]}`,
		`{"roles":null}`, `{"roles":{}}`, `{"deviceInfo":"\u0000","preferences":1e400}`,
		`{"userId":"u","roles":[],"ttlMs":0}`, `{"userId":"u","roles":[],"ttlMs":2592000001,"idleTimeoutMs":-1}`,
		`{"userId":"u","roles":[],"x":1}`, `{}`, `[]`, `null`, ``, `{`, `{"userId":"u","roles":[]} x`,
	} {
		f.Add([]byte(s), "sess-1", "u", "patient")
	}
	f.Add([]byte(`{"userId":"u","roles":["r"]}`), "a/../b", "{u}*", "a/b")
	f.Add([]byte(`{"userId":"u","roles":["r"]}`), "\xff", "\xfe", "\xc3")
	f.Add([]byte(`{"userId":"u","roles":["r"]}`), "", "", "")
	f.Add([]byte(`{"userId":"u","roles":["r"]}`), strings.Repeat("i", session.MaxIDLen+1), "u", "r")
	f.Fuzz(func(t *testing.T, body []byte, id, user, role string) {
		h := fuzzServer(t)
		base := "/v1/sessions/" + url.PathEscape(id)
		users := "/v1/users/" + url.PathEscape(user)
		sessionFields := []string{"id", "userId", "roles", "deviceInfo", "preferences", "createdAt", "lastActivityAt", "expiresAt"}

		status, m := fuzzDo(t, h, http.MethodPut, base, body)
		wantFields(t, "create", status, m, sessionFields...)
		if status == http.StatusCreated {
			var roles []string
			if err := json.Unmarshal(m["roles"], &roles); err != nil || roles == nil {
				t.Fatalf("create: roles %s", m["roles"])
			}
		}
		status, m = fuzzDo(t, h, http.MethodPatch, base, body)
		wantFields(t, "update", status, m, sessionFields...)
		fuzzDo(t, h, http.MethodPost, base+"/touch", body)
		status, m = fuzzDo(t, h, http.MethodGet, base+"/roles/"+url.PathEscape(role), nil)
		wantFields(t, "has role", status, m, "hasRole")
		status, m = fuzzDo(t, h, http.MethodGet, base, nil)
		wantFields(t, "get", status, m, sessionFields...)
		status, m = fuzzDo(t, h, http.MethodPut, users+"/roles", body)
		wantFields(t, "set roles", status, m, "updated")
		status, m = fuzzDo(t, h, http.MethodGet, users+"/sessions", nil)
		wantFields(t, "list", status, m, "sessions")
		status, m = fuzzDo(t, h, http.MethodDelete, users+"/sessions", nil)
		wantFields(t, "revoke", status, m, "revoked")
		fuzzDo(t, h, http.MethodDelete, base, nil)
	})
}
