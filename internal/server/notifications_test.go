package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	elevaredis "github.com/elevacare/eleva-redis"
	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/notify"
)

// notificationBody is the Notification JSON of HTTP-API.md.
type notificationBody struct {
	ID           string          `json:"id"`
	UserID       string          `json:"userId"`
	Type         string          `json:"type"`
	Title        string          `json:"title"`
	Message      string          `json:"message"`
	Data         json.RawMessage `json:"data"`
	Priority     string          `json:"priority"`
	ScheduledFor int64           `json:"scheduledFor"`
	ExpiresAt    *int64          `json:"expiresAt"`
	Attempts     int             `json:"attempts"`
	MaxAttempts  int             `json:"maxAttempts"`
	State        string          `json:"state"`
	LastError    string          `json:"lastError"`
}

type enqueuedBody struct {
	ID    string `json:"id"`
	State string `json:"state"`
}

type notifyStatsBody struct {
	Scheduled, Pending, Inflight, Retrying, Dead, Delivered int64
}

func userNotifications(user string) string {
	return "/v1/users/" + url.PathEscape(user) + "/notifications"
}

// pendingOf GETs the user's due notifications with limit (0: none given).
func (e *testEnv) pendingOf(user string, limit int) []notificationBody {
	e.t.Helper()
	path := userNotifications(user)
	if limit > 0 {
		path += fmt.Sprintf("?limit=%d", limit)
	}
	res := e.do(http.MethodGet, path, "")
	e.mustStatus(res, 200)
	return decodeInto[struct{ Notifications []notificationBody }](e.t, res).Notifications
}

func (e *testEnv) notifyStats() notifyStatsBody {
	e.t.Helper()
	res := e.do(http.MethodGet, "/v1/notifications/stats", "")
	e.mustStatus(res, 200)
	return decodeInto[notifyStatsBody](e.t, res)
}

func ids(list []notificationBody) []string {
	out := make([]string, len(list))
	for i, n := range list {
		out[i] = n.ID
	}
	return out
}

// claimOne leases the one due user of the env's queue (a worker would),
// within a few Claim calls (a Redis claim scans the shards from a rotating
// start).
func claimOne(t *testing.T, q notify.Queue) notify.Batch {
	t.Helper()
	for range 20 {
		bs, err := q.Claim(t.Context(), 10, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(bs) == 1 {
			return bs[0]
		}
		if len(bs) > 1 {
			t.Fatalf("claimed %d users, want the one due user", len(bs))
		}
	}
	t.Fatal("nothing claimed: the due user was not found")
	return notify.Batch{}
}

// TestNotificationEndpoints walks notifications through every route on
// every backend: enqueue (generated and given ids, scheduled, expiring),
// the due list with its fields, remove (counted as delivered, not queued
// again), cancel (204, then 404), stats, and a dead notification listed with
// its error and requeued for its user. Nothing identifying reaches the logs.
func TestNotificationEndpoints(t *testing.T) {
	for _, bc := range backendCases {
		t.Run(bc.name, func(t *testing.T) {
			t.Parallel()
			e := newBackendEnv(t, backendURL(t, bc.url), elevaredis.Config{})
			q := e.deps.Notify
			const user = "jane.doe@example.com"
			now := time.Now()

			// A dead notification first, while it is the only due one: a
			// worker claims it and fails it permanently.
			res := e.do(http.MethodPost, "/v1/notifications", `{"userId":"dead/user {x}","type":"t","title":"Lab results","message":"HbA1c 9.1","id":"poison"}`)
			e.mustStatus(res, 202)
			b := claimOne(t, q)
			if _, err := q.Nack(t.Context(), b, notify.Failure{ID: "poison", Err: errors.New("mailbox unavailable"), Permanent: true}); err != nil {
				t.Fatal(err)
			}
			res = e.do(http.MethodGet, "/v1/notifications/dead?limit=5", "")
			e.mustStatus(res, 200)
			dead := decodeInto[struct{ Notifications []notificationBody }](t, res).Notifications
			if len(dead) != 1 || dead[0].ID != "poison" || dead[0].UserID != "dead/user {x}" || dead[0].State != "dead" ||
				dead[0].LastError != "mailbox unavailable" || dead[0].Attempts != 1 || dead[0].Title != "Lab results" {
				t.Fatalf("dead list %+v", dead)
			}
			if st := e.notifyStats(); st != (notifyStatsBody{Dead: 1}) {
				t.Fatalf("stats with one dead: %+v", st)
			}
			requeue := "/v1/notifications/dead/poison/requeue"
			wantError(t, e.do(http.MethodPost, requeue, ""), 400, "invalid_argument")
			wantError(t, e.do(http.MethodPost, requeue+"?userId=someone-else", ""), 404, "not_found")
			res = e.do(http.MethodPost, requeue+"?userId="+url.QueryEscape("dead/user {x}"), "")
			e.mustStatus(res, 200)
			if got := decodeInto[enqueuedBody](t, res); got != (enqueuedBody{"poison", "pending"}) {
				t.Fatalf("requeue answered %+v", got)
			}
			if got := e.pendingOf("dead/user {x}", 0); len(got) != 1 || got[0].ID != "poison" || got[0].Attempts != 0 || got[0].State != "pending" {
				t.Fatalf("after requeue: %+v", got)
			}
			wantError(t, e.do(http.MethodPost, requeue+"?userId="+url.QueryEscape("dead/user {x}"), "{}"), 404, "not_found")
			e.mustStatus(e.do(http.MethodDelete, userNotifications("dead/user {x}")+"/poison", ""), 204)

			// Enqueue: a given id, every field.
			sched := now.Add(-time.Minute).UnixMilli()
			exp := now.Add(time.Hour).UnixMilli()
			res = e.do(http.MethodPost, "/v1/notifications", fmt.Sprintf(`{"userId":%q,"type":"appointment-reminder","title":"Your session with Dr. Silva",
				"message":"Tomorrow at 10:00","data":{"appointmentId":"appt-42","diagnosis":"anxiety"},"priority":"high",
				"scheduledFor":%d,"expiresAt":%d,"id":"reminder:appt-42/1","maxAttempts":3}`, user, sched, exp))
			e.mustStatus(res, 202)
			if got := decodeInto[enqueuedBody](t, res); got != (enqueuedBody{"reminder:appt-42/1", "pending"}) {
				t.Fatalf("enqueue answered %+v", got)
			}
			// A generated id, no data, defaults.
			res = e.do(http.MethodPost, "/v1/notifications", `{"userId":"`+user+`","type":"welcome","title":"","message":"Welcome"}`)
			e.mustStatus(res, 202)
			gen := decodeInto[enqueuedBody](t, res)
			if gen.ID == "" || gen.State != "pending" {
				t.Fatalf("generated: %+v", gen)
			}
			// Scheduled a week ahead: not due, counted as scheduled.
			res = e.do(http.MethodPost, "/v1/notifications", fmt.Sprintf(`{"userId":%q,"type":"t","title":"x","message":"y","id":"later","scheduledFor":%d}`,
				user, now.Add(7*24*time.Hour).UnixMilli()))
			e.mustStatus(res, 202)
			if got := decodeInto[enqueuedBody](t, res); got.State != "scheduled" {
				t.Fatalf("scheduled: %+v", got)
			}

			list := e.pendingOf(user, 0)
			if !slices.Equal(ids(list), []string{"reminder:appt-42/1", gen.ID}) {
				t.Fatalf("due list %q", ids(list))
			}
			n := list[0]
			if n.UserID != user || n.Type != "appointment-reminder" || n.Title != "Your session with Dr. Silva" || n.Message != "Tomorrow at 10:00" ||
				!sameJSON(t, n.Data, []byte(`{"appointmentId":"appt-42","diagnosis":"anxiety"}`)) || n.Priority != "high" ||
				n.ScheduledFor != sched || n.ExpiresAt == nil || *n.ExpiresAt != exp || n.Attempts != 0 || n.MaxAttempts != 3 ||
				n.State != "pending" || n.LastError != "" {
				t.Fatalf("first %+v", n)
			}
			n = list[1]
			if string(n.Data) != "null" || n.Priority != "normal" || n.ExpiresAt != nil || n.MaxAttempts != notify.DefaultMaxAttempts ||
				n.Title != "" || n.Message != "Welcome" {
				t.Fatalf("second %+v", n)
			}
			if got := e.pendingOf(user, 1); !slices.Equal(ids(got), []string{"reminder:appt-42/1"}) {
				t.Fatalf("limit=1: %q", ids(got))
			}
			// poison (requeued, then cancelled) is gone; the welcome and
			// the reminder are pending; "later" is scheduled.
			if st := e.notifyStats(); st != (notifyStatsBody{Scheduled: 1, Pending: 2}) {
				t.Fatalf("stats %+v", st)
			}

			// Remove: what the app delivered itself; unknown ids are
			// ignored; a removed id is not queued again.
			res = e.do(http.MethodPost, userNotifications(user)+"/remove", `{"ids":["reminder:appt-42/1","`+gen.ID+`","nope"]}`)
			e.mustStatus(res, 200)
			if string(res.body) != "{\"removed\":2}\n" {
				t.Fatalf("remove: %s", res.body)
			}
			if got := e.pendingOf(user, 0); len(got) != 0 {
				t.Fatalf("after remove: %q", ids(got))
			}
			res = e.do(http.MethodPost, "/v1/notifications", `{"userId":"`+user+`","type":"t","title":"","message":"","id":"reminder:appt-42/1"}`)
			e.mustStatus(res, 200)
			if got := decodeInto[enqueuedBody](t, res); got != (enqueuedBody{"reminder:appt-42/1", "delivered"}) {
				t.Fatalf("enqueue of a removed id: %+v", got)
			}
			if string(e.do(http.MethodPost, userNotifications(user)+"/remove", `{"ids":[]}`).body) != "{\"removed\":0}\n" {
				t.Fatal("remove of no ids")
			}

			// Cancel: the scheduled one, then 404.
			e.mustStatus(e.do(http.MethodDelete, userNotifications(user)+"/later", ""), 204)
			wantError(t, e.do(http.MethodDelete, userNotifications(user)+"/later", ""), 404, "not_found")
			wantError(t, e.do(http.MethodDelete, userNotifications("someone-else")+"/"+url.PathEscape("reminder:appt-42/1"), ""), 404, "not_found")
			if st := e.notifyStats(); st != (notifyStatsBody{Delivered: 2}) {
				t.Fatalf("stats at the end %+v", st)
			}

			logs := e.logs.String()
			for _, secret := range []string{"jane", "Silva", "Tomorrow", "anxiety", "appt-42", "Welcome", "Lab results", "HbA1c", "dead/user"} {
				if strings.Contains(logs, secret) {
					t.Errorf("logs contain %q:\n%s", secret, logs)
				}
			}
		})
	}
}

// TestNotificationSameIDTwice: the same (userId, id) POSTed twice is 202,
// then 200 with the stored state, and stored once with the first body; the
// same id for another user is another notification.
func TestNotificationSameIDTwice(t *testing.T) {
	for _, bc := range backendCases {
		t.Run(bc.name, func(t *testing.T) {
			t.Parallel()
			e := newBackendEnv(t, backendURL(t, bc.url), elevaredis.Config{})
			body := `{"userId":"u1","type":"t","title":"first","message":"m","id":"n-1"}`
			res := e.do(http.MethodPost, "/v1/notifications", body)
			e.mustStatus(res, 202)
			if got := decodeInto[enqueuedBody](t, res); got != (enqueuedBody{"n-1", "pending"}) {
				t.Fatalf("first: %+v", got)
			}
			res = e.do(http.MethodPost, "/v1/notifications", strings.Replace(body, "first", "second", 1))
			e.mustStatus(res, 200)
			if got := decodeInto[enqueuedBody](t, res); got != (enqueuedBody{"n-1", "pending"}) {
				t.Fatalf("second: %+v", got)
			}
			if got := e.pendingOf("u1", 0); len(got) != 1 || got[0].Title != "first" {
				t.Fatalf("stored: %+v", got)
			}
			e.mustStatus(e.do(http.MethodPost, "/v1/notifications", strings.Replace(body, "u1", "u2", 1)), 202)
			if st := e.notifyStats(); st.Pending != 2 {
				t.Fatalf("stats %+v, want 2 pending", st)
			}
		})
	}
}

// TestNotificationOrder: GET lists high before normal before low, then the
// oldest (by scheduledFor) first, and in enqueue order within one
// millisecond, whatever the order of the POSTs.
func TestNotificationOrder(t *testing.T) {
	for _, bc := range backendCases {
		t.Run(bc.name, func(t *testing.T) {
			t.Parallel()
			e := newBackendEnv(t, backendURL(t, bc.url), elevaredis.Config{})
			base := time.Now().Add(-time.Hour).UnixMilli()
			// id, priority, scheduledFor offset (ms), in POST order.
			posts := []struct {
				id, prio string
				at       int64
			}{
				{"low-new", "low", 900}, {"normal-old", "", 100}, {"high-new", "high", 800},
				{"low-old", "low", 50}, {"high-old", "high", 300}, {"normal-new", "normal", 700},
				{"high-tie-1", "high", 500}, {"high-tie-2", "high", 500}, {"normal-mid", "normal", 400},
			}
			for _, p := range posts {
				prio := ""
				if p.prio != "" {
					prio = `,"priority":"` + p.prio + `"`
				}
				e.mustStatus(e.do(http.MethodPost, "/v1/notifications", fmt.Sprintf(`{"userId":"patient-1","type":"t","title":"","message":"","id":%q,"scheduledFor":%d%s}`,
					p.id, base+p.at, prio)), 202)
			}
			want := []string{"high-old", "high-tie-1", "high-tie-2", "high-new", "normal-old", "normal-mid", "normal-new", "low-old", "low-new"}
			if got := ids(e.pendingOf("patient-1", 100)); !slices.Equal(got, want) {
				t.Fatalf("order %q\nwant  %q", got, want)
			}
			if got := ids(e.pendingOf("patient-1", 4)); !slices.Equal(got, want[:4]) {
				t.Fatalf("limit 4: %q", got)
			}
		})
	}
}

// TestNotificationsAcrossInstances: two servers on one Redis (two
// elevaredis.Open instances) take 1000 concurrent POSTs for one user, half
// each, plus 200 more that repeat ids through the other instance at the same
// time: every one of the 1000 is stored exactly once (1000 answers 202, the
// 200 repeats 200), and GET with the largest limit lists each of them once.
func TestNotificationsAcrossInstances(t *testing.T) {
	for _, bc := range backendCases[1:] {
		t.Run(bc.name, func(t *testing.T) {
			t.Parallel()
			u := backendURL(t, bc.url)
			cfg := elevaredis.Config{KeyPrefix: redistest.Prefix(t)}
			// 1200 requests at once under -race: the test is about
			// concurrency, not the default 500ms bound.
			cfg.Notify.Timeout = 10 * time.Second
			a, b := newBackendEnv(t, u, cfg), newBackendEnv(t, u, cfg)
			const n, repeats = 1000, 200
			var created, existing atomic.Int64
			var wg sync.WaitGroup
			post := func(e *testEnv, i int) {
				body := fmt.Sprintf(`{"userId":"patient-42","type":"t","title":"t%d","message":"m","id":"n-%04d"}`, i, i)
				req := httptest.NewRequest(http.MethodPost, "/v1/notifications", strings.NewReader(body))
				req.RemoteAddr = "127.0.0.1:1"
				req.Header.Set("Content-Type", "application/json")
				rec := httptest.NewRecorder()
				e.h.ServeHTTP(rec, req)
				switch rec.Code {
				case 202:
					created.Add(1)
				case 200:
					existing.Add(1)
				default:
					t.Errorf("POST %d: %d %s", i, rec.Code, rec.Body)
				}
			}
			for i := range n {
				e, other := a, b
				if i%2 == 1 {
					e, other = b, a
				}
				wg.Go(func() { post(e, i) })
				if i < repeats {
					wg.Go(func() { post(other, i) })
				}
			}
			wg.Wait()
			if created.Load() != n || existing.Load() != repeats {
				t.Fatalf("%d created, %d already there; want %d and %d", created.Load(), existing.Load(), n, repeats)
			}
			for _, e := range []*testEnv{a, b} {
				got := ids(e.pendingOf("patient-42", notify.MaxPendingLimit))
				slices.Sort(got)
				if len(got) != n || len(slices.Compact(slices.Clone(got))) != n {
					t.Fatalf("GET listed %d (%d distinct), want %d", len(got), len(slices.Compact(slices.Clone(got))), n)
				}
				for i, id := range got {
					if id != fmt.Sprintf("n-%04d", i) {
						t.Fatalf("GET listed %q at %d", id, i)
					}
				}
				if st := e.notifyStats(); st.Pending != n {
					t.Fatalf("stats %+v, want %d pending", st, n)
				}
			}
		})
	}
}

// TestNotificationBadInput: every bad input of the notification routes is a
// 400 naming the field (or 413), never a 5xx, and writes nothing.
func TestNotificationBadInput(t *testing.T) {
	long := func(n int) string { return strings.Repeat("n", n) }
	enqueue := func(extra string) string {
		return `{"userId":"u","type":"t","title":"x","message":"y"` + extra + `}`
	}
	past := time.Now().Add(-time.Hour).UnixMilli()
	manyIDs := `["` + strings.Repeat(`a","`, notify.MaxBatch) + `a"]`
	tests := []struct {
		name, method, path, body string
		status                   int
		field                    string
	}{
		{"enqueue: missing userId", "POST", "/v1/notifications", `{"type":"t","title":"","message":""}`, 400, "userId"},
		{"enqueue: empty userId", "POST", "/v1/notifications", `{"userId":"","type":"t","title":"","message":""}`, 400, "userId"},
		{"enqueue: userId a number", "POST", "/v1/notifications", `{"userId":7,"type":"t","title":"","message":""}`, 400, "userId"},
		{"enqueue: long userId", "POST", "/v1/notifications", `{"userId":"` + long(notify.MaxUserIDLen+1) + `","type":"t","title":"","message":""}`, 400, "userId"},
		{"enqueue: missing type", "POST", "/v1/notifications", `{"userId":"u","title":"","message":""}`, 400, "type"},
		{"enqueue: empty type", "POST", "/v1/notifications", `{"userId":"u","type":"","title":"","message":""}`, 400, "type"},
		{"enqueue: long type", "POST", "/v1/notifications", `{"userId":"u","type":"` + long(notify.MaxTypeLen+1) + `","title":"","message":""}`, 400, "type"},
		{"enqueue: missing title", "POST", "/v1/notifications", `{"userId":"u","type":"t","message":""}`, 400, "title"},
		{"enqueue: null title", "POST", "/v1/notifications", `{"userId":"u","type":"t","title":null,"message":""}`, 400, "title"},
		{"enqueue: missing message", "POST", "/v1/notifications", `{"userId":"u","type":"t","title":""}`, 400, "message"},
		{"enqueue: message an object", "POST", "/v1/notifications", `{"userId":"u","type":"t","title":"","message":{}}`, 400, "message"},
		{"enqueue: big message", "POST", "/v1/notifications", `{"userId":"u","type":"t","title":"x","message":"` + long(notify.MaxPayloadSize) + `"}`, 400, "message"},
		{"enqueue: big data", "POST", "/v1/notifications", enqueue(`,"data":"` + long(notify.MaxPayloadSize) + `"`), 400, "data"},
		{"enqueue: unknown priority", "POST", "/v1/notifications", enqueue(`,"priority":"urgent"`), 400, "priority"},
		{"enqueue: empty priority", "POST", "/v1/notifications", enqueue(`,"priority":""`), 400, "priority"},
		{"enqueue: priority a number", "POST", "/v1/notifications", enqueue(`,"priority":1`), 400, "priority"},
		{"enqueue: zero scheduledFor", "POST", "/v1/notifications", enqueue(`,"scheduledFor":0`), 400, "scheduledFor"},
		{"enqueue: negative scheduledFor", "POST", "/v1/notifications", enqueue(`,"scheduledFor":-1`), 400, "scheduledFor"},
		{"enqueue: scheduledFor after 2255", "POST", "/v1/notifications", enqueue(`,"scheduledFor":9000000000001`), 400, "scheduledFor"},
		{"enqueue: scheduledFor a string", "POST", "/v1/notifications", enqueue(`,"scheduledFor":"tomorrow"`), 400, "scheduledFor"},
		{"enqueue: scheduledFor a fraction", "POST", "/v1/notifications", enqueue(`,"scheduledFor":1.5`), 400, "scheduledFor"},
		{"enqueue: expiresAt before scheduledFor", "POST", "/v1/notifications", enqueue(fmt.Sprintf(`,"scheduledFor":%d,"expiresAt":%d`, past, past-1)), 400, "expiresAt"},
		{"enqueue: expiresAt at scheduledFor", "POST", "/v1/notifications", enqueue(fmt.Sprintf(`,"scheduledFor":%d,"expiresAt":%d`, past, past)), 400, "expiresAt"},
		{"enqueue: expiresAt in the past", "POST", "/v1/notifications", enqueue(fmt.Sprintf(`,"expiresAt":%d`, past)), 400, "expiresAt"},
		{"enqueue: expiresAt after 2255", "POST", "/v1/notifications", enqueue(`,"expiresAt":9000000000001`), 400, "expiresAt"},
		{"enqueue: zero maxAttempts", "POST", "/v1/notifications", enqueue(`,"maxAttempts":0`), 400, "maxAttempts"},
		{"enqueue: maxAttempts over 100", "POST", "/v1/notifications", enqueue(`,"maxAttempts":101`), 400, "maxAttempts"},
		{"enqueue: empty id", "POST", "/v1/notifications", enqueue(`,"id":""`), 400, "id"},
		{"enqueue: long id", "POST", "/v1/notifications", enqueue(`,"id":"` + long(notify.MaxIDLen+1) + `"`), 400, "id"},
		{"enqueue: id a number", "POST", "/v1/notifications", enqueue(`,"id":1`), 400, "id"},
		{"enqueue: state given", "POST", "/v1/notifications", enqueue(`,"state":"delivered"`), 400, "state"},
		{"enqueue: attempts given", "POST", "/v1/notifications", enqueue(`,"attempts":0`), 400, "attempts"},
		{"enqueue: malformed", "POST", "/v1/notifications", `{"userId":"u",`, 400, ""},
		{"enqueue: array", "POST", "/v1/notifications", `[]`, 400, ""},
		{"enqueue: trailing data", "POST", "/v1/notifications", enqueue("") + ` {}`, 400, ""},
		{"enqueue: empty body", "POST", "/v1/notifications", ``, 400, ""},
		{"enqueue: too large", "POST", "/v1/notifications", enqueue("") + strings.Repeat(" ", 200<<10), 413, ""},
		{"pending: zero limit", "GET", "/v1/users/u/notifications?limit=0", ``, 400, "limit"},
		{"pending: limit over 1000", "GET", "/v1/users/u/notifications?limit=1001", ``, 400, "limit"},
		{"pending: limit not a number", "GET", "/v1/users/u/notifications?limit=ten", ``, 400, "limit"},
		{"pending: limit twice", "GET", "/v1/users/u/notifications?limit=1&limit=2", ``, 400, "limit"},
		{"pending: unknown parameter", "GET", "/v1/users/u/notifications?state=dead", ``, 400, "state"},
		{"pending: long user", "GET", "/v1/users/" + long(notify.MaxUserIDLen+1) + "/notifications", ``, 400, "userId"},
		{"pending: non-UTF-8 user", "GET", "/v1/users/%FF/notifications", ``, 400, "userId"},
		{"remove: missing ids", "POST", "/v1/users/u/notifications/remove", `{}`, 400, "ids"},
		{"remove: null ids", "POST", "/v1/users/u/notifications/remove", `{"ids":null}`, 400, "ids"},
		{"remove: ids a string", "POST", "/v1/users/u/notifications/remove", `{"ids":"a"}`, 400, "ids"},
		{"remove: id a number", "POST", "/v1/users/u/notifications/remove", `{"ids":[1]}`, 400, "ids"},
		{"remove: empty id", "POST", "/v1/users/u/notifications/remove", `{"ids":["a",""]}`, 400, "ids"},
		{"remove: long id", "POST", "/v1/users/u/notifications/remove", `{"ids":["` + long(notify.MaxIDLen+1) + `"]}`, 400, "ids"},
		{"remove: too many ids", "POST", "/v1/users/u/notifications/remove", `{"ids":` + manyIDs + `}`, 400, "ids"},
		{"remove: unknown field", "POST", "/v1/users/u/notifications/remove", `{"ids":[],"userId":"v"}`, 400, "userId"},
		{"remove: non-UTF-8 user", "POST", "/v1/users/%C3/notifications/remove", `{"ids":["a"]}`, 400, "userId"},
		{"cancel: long id", "DELETE", "/v1/users/u/notifications/" + long(notify.MaxIDLen+1), ``, 400, "id"},
		{"cancel: non-UTF-8 id", "DELETE", "/v1/users/u/notifications/%FE", ``, 400, "id"},
		{"cancel: long user", "DELETE", "/v1/users/" + long(notify.MaxUserIDLen+1) + "/notifications/a", ``, 400, "userId"},
		{"stats: unknown parameter", "GET", "/v1/notifications/stats?all=1", ``, 400, "all"},
		{"dead: zero limit", "GET", "/v1/notifications/dead?limit=0", ``, 400, "limit"},
		{"dead: limit over 1000", "GET", "/v1/notifications/dead?limit=1001", ``, 400, "limit"},
		{"dead: unknown parameter", "GET", "/v1/notifications/dead?userId=u", ``, 400, "userId"},
		{"requeue: missing userId", "POST", "/v1/notifications/dead/a/requeue", ``, 400, "userId"},
		{"requeue: empty userId", "POST", "/v1/notifications/dead/a/requeue?userId=", ``, 400, "userId"},
		{"requeue: long userId", "POST", "/v1/notifications/dead/a/requeue?userId=" + long(notify.MaxUserIDLen+1), ``, 400, "userId"},
		{"requeue: non-UTF-8 userId", "POST", "/v1/notifications/dead/a/requeue?userId=%FF", ``, 400, "userId"},
		{"requeue: userId twice", "POST", "/v1/notifications/dead/a/requeue?userId=u&userId=v", ``, 400, "userId"},
		{"requeue: unknown parameter", "POST", "/v1/notifications/dead/a/requeue?userId=u&force=1", ``, 400, "force"},
		{"requeue: long id", "POST", "/v1/notifications/dead/" + long(notify.MaxIDLen+1) + "/requeue?userId=u", ``, 400, "id"},
		{"requeue: unknown body field", "POST", "/v1/notifications/dead/a/requeue?userId=u", `{"userId":"u"}`, 400, "userId"},
		{"requeue: body not an object", "POST", "/v1/notifications/dead/a/requeue?userId=u", `[]`, 400, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q := notify.NewMemory(notify.Config{})
			e := newEnv(t, Deps{APIKeys: []string{testKey}, MaxBodyBytes: 200 << 10, Notify: q})
			auth := "Authorization: Bearer " + testKey
			// Notifications a bad request must leave untouched: one due,
			// one dead.
			e.mustStatus(e.do(http.MethodPost, "/v1/notifications", `{"userId":"u","type":"t","title":"x","message":"y","id":"a"}`, auth), 202)
			e.mustStatus(e.do(http.MethodPost, "/v1/notifications", `{"userId":"d","type":"t","title":"x","message":"y","id":"a","maxAttempts":1}`, auth), 202)
			bs, err := q.Claim(t.Context(), 1, 0)
			if err != nil || len(bs) != 1 {
				t.Fatalf("claim: %v, %v", bs, err)
			}
			if _, err := q.Nack(t.Context(), bs[0], notify.Failure{ID: "a", Err: errors.New("x"), Permanent: true}); err != nil {
				t.Fatal(err)
			}
			snapshot := func() string {
				return fmt.Sprint(e.do(http.MethodGet, "/v1/users/u/notifications", "", auth).body,
					e.do(http.MethodGet, "/v1/users/d/notifications", "", auth).body,
					e.do(http.MethodGet, "/v1/notifications/dead", "", auth).body,
					e.do(http.MethodGet, "/v1/notifications/stats", "", auth).body)
			}
			before := snapshot()
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
			if after := snapshot(); after != before {
				t.Fatalf("a bad request changed the queue:\n%s\n%s", before, after)
			}
			if strings.Contains(e.logs.String(), `"y"`) {
				t.Fatalf("a message reached the logs:\n%s", e.logs)
			}
		})
	}

	// The limits themselves are accepted.
	e := newEnv(t, Deps{MaxBodyBytes: 1 << 20})
	e.mustStatus(e.do(http.MethodPost, "/v1/notifications", `{"userId":"`+long(notify.MaxUserIDLen)+`","type":"`+long(notify.MaxTypeLen)+
		`","title":"","message":"`+long(notify.MaxPayloadSize-notify.MaxTypeLen)+`","id":"`+long(notify.MaxIDLen)+
		`","maxAttempts":100,"priority":"low","scheduledFor":1,"expiresAt":9000000000000}`), 202)
	e.mustStatus(e.do(http.MethodGet, "/v1/users/"+long(notify.MaxUserIDLen)+"/notifications?limit=1000", ""), 200)
	e.mustStatus(e.do(http.MethodGet, "/v1/notifications/dead?limit=1000", ""), 200)
	manyIDs = `["` + strings.Repeat(`a","`, notify.MaxBatch-1) + `a"]`
	e.mustStatus(e.do(http.MethodPost, "/v1/users/u/notifications/remove", `{"ids":`+manyIDs+`}`), 200)

	// The routes need the API key like every /v1 route, and refuse
	// cross-site form posts without a JSON Content-Type.
	e = newEnv(t, Deps{APIKeys: []string{testKey}})
	for _, r := range [][2]string{{"POST", "/v1/notifications"}, {"GET", "/v1/users/u/notifications"},
		{"POST", "/v1/users/u/notifications/remove"}, {"DELETE", "/v1/users/u/notifications/a"},
		{"GET", "/v1/notifications/stats"}, {"GET", "/v1/notifications/dead"}, {"POST", "/v1/notifications/dead/a/requeue?userId=u"}} {
		wantError(t, e.do(r[0], r[1], `{}`, "Authorization: Bearer wrong"), 401, "unauthorized")
	}
	e = newEnv(t, Deps{})
	for _, ct := range []string{"application/x-www-form-urlencoded", "text/plain"} {
		wantError(t, e.do(http.MethodPost, "/v1/notifications", enqueue(""), "Content-Type: "+ct), 400, "invalid_argument")
		wantError(t, e.do(http.MethodPost, "/v1/notifications/dead/a/requeue?userId=u", "", "Content-Type: "+ct), 400, "invalid_argument")
	}
	if st := e.notifyStats(); st != (notifyStatsBody{}) {
		t.Fatalf("a refused request wrote: %+v", st)
	}
}

// TestNotifyErrorTable: the queue's sentinels map to their answers, wrapped
// or not (lease_lost has no route yet: workers are library callers).
func TestNotifyErrorTable(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
		code   string
	}{
		{notify.ErrNotFound, 404, "not_found"},
		{notify.ErrInvalidArgument, 400, "invalid_argument"},
		{notify.ErrBackend, 503, "unavailable"},
		{notify.ErrLeaseLost, 409, "lease_lost"},
	} {
		for _, err := range []error{tc.err, fmt.Errorf("op: %w: detail", tc.err), errors.Join(context.DeadlineExceeded, tc.err)} {
			if ae := toAPIError(err); ae.Status != tc.status || ae.Code != tc.code {
				t.Errorf("%v: %d %s, want %d %s", err, ae.Status, ae.Code, tc.status, tc.code)
			}
		}
	}
	if ae := toAPIError(fmt.Errorf("%w: dial tcp 10.0.0.7:6379", notify.ErrBackend)); strings.Contains(ae.Message, "10.0.0.7") {
		t.Errorf("backend detail in the answer: %q", ae.Message)
	}
}

// TestNotificationsUnavailableWhenRedisIsDown: with redis-server killed,
// every notification route answers 503 unavailable, never success, within a
// bounded time; the same server works again once Redis is back.
func TestNotificationsUnavailableWhenRedisIsDown(t *testing.T) {
	srv := redistest.NewServer(t)
	cfg := elevaredis.Config{KeyPrefix: redistest.Prefix(t)}
	cfg.Notify.Timeout = 200 * time.Millisecond
	e := newBackendEnv(t, srv.URL(), cfg)
	e.mustStatus(e.do(http.MethodPost, "/v1/notifications", `{"userId":"u","type":"t","title":"x","message":"y","id":"a"}`), 202)

	srv.Stop(t)
	calls := []struct{ method, path, body string }{
		{"POST", "/v1/notifications", `{"userId":"u","type":"t","title":"x","message":"y","id":"b"}`},
		{"GET", "/v1/users/u/notifications", ``},
		{"POST", "/v1/users/u/notifications/remove", `{"ids":["a"]}`},
		{"DELETE", "/v1/users/u/notifications/a", ``},
		{"GET", "/v1/notifications/stats", ``},
		{"GET", "/v1/notifications/dead", ``},
		{"POST", "/v1/notifications/dead/a/requeue?userId=u", ``},
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
	for e.do(http.MethodPost, "/v1/notifications", `{"userId":"u","type":"t","title":"x","message":"y","id":"a"}`).status != 202 {
		if time.Now().After(deadline) {
			t.Fatal("no recovery within 10s")
		}
		time.Sleep(20 * time.Millisecond) // poll interval while the client reconnects
	}
	if got := ids(e.pendingOf("u", 0)); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("after recovery: %q", got)
	}
	e.mustStatus(e.do(http.MethodDelete, "/v1/users/u/notifications/a", ""), 204)
	if st := e.notifyStats(); st != (notifyStatsBody{}) {
		t.Fatalf("stats after recovery: %+v", st)
	}
	if logs := e.logs.String(); strings.Contains(logs, `"y"`) || !strings.Contains(logs, "unavailable") {
		t.Errorf("logs hold a message, or no failure line:\n%s", logs)
	}
}
