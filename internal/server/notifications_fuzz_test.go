package server

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/elevacare/eleva-redis/notify"
)

// FuzzNotifications sends one body to enqueue, remove and requeue for a
// fuzzed user id, notification id and limit, then lists, cancels and reads
// the stats and the dead set: no input may panic or answer 5xx, and every
// success carries its fields.
func FuzzNotifications(f *testing.F) {
	for _, s := range []string{
		`{"userId":"u","type":"t","title":"x","message":"y","data":{"a":[1,2]},"priority":"high","scheduledFor":1,"expiresAt":9000000000000,"id":"n","maxAttempts":3}`,
		`{"userId":"u","type":"t","title":"","message":""}`, `{"userId":"u","type":"t","title":"","message":"","data":null,"priority":"low"}`,
		`{"userId":"","type":"","title":null,"message":1}`, `{"userId":"u","type":"t","title":"","message":"","priority":""}`,
		`{"userId":"u","type":"t","title":"","message":"","scheduledFor":0,"expiresAt":-1}`, `{"userId":"u","type":"t","title":"","message":"","scheduledFor":1e30}`,
		`{"userId":"u","type":"t","title":"","message":"","maxAttempts":101}`, `{"userId":"\u0000{x}*","type":"t","title":"\ud800","message":"","id":"a/../b"}`,
		`{"ids":["n","m"]}`, `{"ids":[]}`, `{"ids":null}`, `{"ids":[""]}`, `{"ids":"n"}`,
		`{}`, `[]`, `null`, ``, `{`, `{"userId":"u"} x`, `{"state":"dead"}`,
	} {
		f.Add([]byte(s), "u", "n", "10")
	}
	f.Add([]byte(`{"userId":"u","type":"t","title":"","message":""}`), "a/../b", "{n}*", "1000")
	f.Add([]byte(`{"userId":"u","type":"t","title":"","message":""}`), "\xff", "\xfe", "0")
	f.Add([]byte(`{"userId":"u","type":"t","title":"","message":""}`), "", "", "")
	f.Add([]byte(`{"userId":"u","type":"t","title":"","message":""}`), strings.Repeat("u", notify.MaxUserIDLen+1), strings.Repeat("i", notify.MaxIDLen+1), "-1")
	f.Add([]byte(`{"userId":"u","type":"t","title":"","message":""}`), "u", "n", "1 x")
	f.Fuzz(func(t *testing.T, body []byte, user, id, limit string) {
		h := fuzzServer(t)
		users := "/v1/users/" + url.PathEscape(user) + "/notifications"
		notificationFields := []string{"id", "userId", "type", "title", "message", "data", "priority", "scheduledFor", "attempts", "maxAttempts", "state"}
		wantList := func(what string, status int, m map[string]json.RawMessage) {
			t.Helper()
			wantFields(t, what, status, m, "notifications")
			if status != http.StatusOK {
				return
			}
			var list []map[string]json.RawMessage
			if err := json.Unmarshal(m["notifications"], &list); err != nil || list == nil {
				t.Fatalf("%s: notifications %s", what, m["notifications"])
			}
			for _, n := range list {
				wantFields(t, what, status, n, notificationFields...)
			}
		}

		for range 2 { // the second time the same id, if any, is already there
			status, m := fuzzDo(t, h, http.MethodPost, "/v1/notifications", body)
			wantFields(t, "enqueue", status, m, "id", "state")
		}
		status, m := fuzzDo(t, h, http.MethodGet, users+"?limit="+url.QueryEscape(limit), nil)
		wantList("pending", status, m)
		status, m = fuzzDo(t, h, http.MethodGet, users, nil)
		wantList("pending", status, m)
		status, m = fuzzDo(t, h, http.MethodPost, users+"/remove", body)
		wantFields(t, "remove", status, m, "removed")
		status, m = fuzzDo(t, h, http.MethodPost, "/v1/notifications/dead/"+url.PathEscape(id)+"/requeue?userId="+url.QueryEscape(user), body)
		wantFields(t, "requeue", status, m, "id", "state")
		fuzzDo(t, h, http.MethodDelete, users+"/"+url.PathEscape(id), nil)
		status, m = fuzzDo(t, h, http.MethodGet, "/v1/notifications/dead?limit="+url.QueryEscape(limit), nil)
		wantList("dead", status, m)
		status, m = fuzzDo(t, h, http.MethodGet, "/v1/notifications/stats", nil)
		wantFields(t, "stats", status, m, "scheduled", "pending", "inflight", "retrying", "dead", "delivered")
	})
}
