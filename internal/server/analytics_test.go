package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	elevaredis "github.com/elevacare/eleva-redis"
	"github.com/elevacare/eleva-redis/analytics"
	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/internal/testlog"
)

// newAnalyticsEnv is newBackendEnv with the analytics store of the same
// backend (url "" for memory).
func newAnalyticsEnv(t *testing.T, url string, cfg elevaredis.Config) *testEnv {
	t.Helper()
	cfg.RedisURL = url
	if url != "" && cfg.KeyPrefix == "" {
		cfg.KeyPrefix = redistest.Prefix(t)
	}
	logs := &testlog.Buffer{}
	cfg.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e, err := elevaredis.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return newEnvLogs(t, Deps{Limiter: e.RateLimit, Locks: e.Locks, Temp: e.Temp, Sessions: e.Sessions, Cache: e.Cache,
		Notify: e.Notify, Analytics: e.Analytics, Backend: e, Logger: cfg.Logger}, logs)
}

type seriesBody struct {
	Metric string
	Points []struct {
		Date  string
		Value int64
	}
	Total int64
}

type eventStatsBody struct{ Buffered, Sent, Retrying, Dead int64 }

func metricPath(metric string) string { return "/v1/metrics/" + url.PathEscape(metric) }

// TestAnalyticsEndpoints walks every /v1/metrics and /v1/events route on
// every backend: increments (day total returned, per user, at a past day),
// the series with zeros and its total, unique counts over a range, events
// accepted into the buffer and counted by the stats. No user id, member or
// event property reaches the logs.
func TestAnalyticsEndpoints(t *testing.T) {
	for _, bc := range backendCases {
		t.Run(bc.name, func(t *testing.T) {
			t.Parallel()
			e := newAnalyticsEnv(t, backendURL(t, bc.url), elevaredis.Config{})
			const metric = "appointments:booked/{all}"
			today := time.Now().UTC().Truncate(24 * time.Hour)
			d := func(n int) string { return today.AddDate(0, 0, n).Format(time.DateOnly) }
			twoDaysAgo := today.AddDate(0, 0, -2).Add(13 * time.Hour).UnixMilli()

			for i, c := range []struct {
				body string
				want int64
			}{
				{`{"metric":"` + metric + `"}`, 1},
				{`{"metric":"` + metric + `","by":4,"userId":"jane.doe@example.com"}`, 5},
				{fmt.Sprintf(`{"metric":%q,"by":3,"at":%d,"userId":"jane.doe@example.com"}`, metric, twoDaysAgo), 3},
			} {
				res := e.do(http.MethodPost, "/v1/metrics/increment", c.body)
				e.mustStatus(res, 200)
				if got := decodeInto[struct{ Value int64 }](t, res).Value; got != c.want {
					t.Fatalf("increment %d: value %d, want %d", i, got, c.want)
				}
			}
			res := e.do(http.MethodGet, metricPath(metric)+"?from="+d(-3)+"&to="+d(0), "")
			e.mustStatus(res, 200)
			s := decodeInto[seriesBody](t, res)
			if s.Metric != metric || s.Total != 8 || len(s.Points) != 4 {
				t.Fatalf("series %+v", s)
			}
			for i, want := range []int64{0, 3, 0, 5} {
				if s.Points[i].Date != d(i-3) || s.Points[i].Value != want {
					t.Fatalf("point %d: %+v, want %s %d", i, s.Points[i], d(i-3), want)
				}
			}
			res = e.do(http.MethodGet, metricPath(metric)+"?from="+d(-2)+"&to="+d(0)+"&userId="+url.QueryEscape("jane.doe@example.com"), "")
			e.mustStatus(res, 200)
			if s := decodeInto[seriesBody](t, res); s.Total != 7 || s.Points[0].Value != 3 || s.Points[2].Value != 4 {
				t.Fatalf("user series %+v", s)
			}

			for i, member := range []string{"patient-1", "patient-2", "patient-1"} {
				at := ""
				if i == 2 {
					at = fmt.Sprintf(`,"at":%d`, twoDaysAgo)
				}
				res := e.do(http.MethodPost, "/v1/metrics/unique", `{"metric":"active","member":"`+member+`"`+at+`}`)
				e.mustStatus(res, 204)
			}
			for _, c := range []struct {
				from, to string
				want     int64
			}{{d(-2), d(0), 2}, {d(-2), d(-2), 1}, {d(-1), d(-1), 0}} {
				res := e.do(http.MethodGet, "/v1/metrics/active/unique?from="+c.from+"&to="+c.to, "")
				e.mustStatus(res, 200)
				if got := decodeInto[struct{ Count int64 }](t, res).Count; got != c.want {
					t.Fatalf("unique %s..%s: %d, want %d", c.from, c.to, got, c.want)
				}
			}

			res = e.do(http.MethodPost, "/v1/events", `{"events":[`+
				`{"event":"appointment_booked","distinctId":"patient-1","properties":{"diagnosis":"secret-dx"}},`+
				`{"event":"payment","distinctId":"patient-2","timestamp":1767225600000,"uuid":"0190a0b0-0000-7000-8000-000000000001"},`+
				`{"event":"payment","distinctId":"patient-3","timestamp":"2026-01-01T00:00:00Z"}]}`)
			e.mustStatus(res, 202)
			if got := decodeInto[struct{ Accepted int }](t, res).Accepted; got != 3 {
				t.Fatalf("accepted %d", got)
			}
			res = e.do(http.MethodGet, "/v1/events/stats", "")
			e.mustStatus(res, 200)
			if st := decodeInto[eventStatsBody](t, res); st != (eventStatsBody{Buffered: 3}) {
				t.Fatalf("stats %+v", st)
			}
			es, err := e.deps.Analytics.Buffer().Read(t.Context(), "test", 10, time.Hour, 0)
			if err != nil || len(es) != 3 {
				t.Fatalf("buffer: %d entries, %v", len(es), err)
			}
			ev, err := analytics.DecodeEvent(es[1].Data)
			if err != nil || ev.UUID != "0190a0b0-0000-7000-8000-000000000001" || ev.Timestamp.UnixMilli() != 1767225600000 || ev.DistinctID != "patient-2" {
				t.Fatalf("buffered event %+v %v", ev, err)
			}
			logs := e.logs.String()
			for _, secret := range []string{"jane.doe", "patient-1", "secret-dx"} {
				if strings.Contains(logs, secret) {
					t.Errorf("logs hold %q:\n%s", secret, logs)
				}
			}
		})
	}
}

// TestAnalyticsBadInput: every bad request is 400 naming the field, and
// writes nothing.
func TestAnalyticsBadInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Deps{})
	today := time.Now().UTC().Format(time.DateOnly)
	old := time.Now().Add(-200 * 24 * time.Hour).UnixMilli()
	for _, c := range []struct {
		method, path, body, field string
	}{
		{"POST", "/v1/metrics/increment", `{}`, "metric"},
		{"POST", "/v1/metrics/increment", `{"metric":""}`, "metric"},
		{"POST", "/v1/metrics/increment", `{"metric":"a\u0001b"}`, "metric"},
		{"POST", "/v1/metrics/increment", `{"metric":"` + strings.Repeat("m", analytics.MaxNameLen+1) + `"}`, "metric"},
		{"POST", "/v1/metrics/increment", `{"metric":"m","by":"2"}`, "by"},
		{"POST", "/v1/metrics/increment", `{"metric":"m","by":1.5}`, "by"},
		{"POST", "/v1/metrics/increment", `{"metric":"m","by":-9223372036854775808}`, "by"},
		{"POST", "/v1/metrics/increment", `{"metric":"m","by":1125899906842625}`, "by"},
		{"POST", "/v1/metrics/increment", `{"metric":"m","userId":""}`, "userId"},
		{"POST", "/v1/metrics/increment", `{"metric":"m","at":-1}`, "at"},
		{"POST", "/v1/metrics/increment", fmt.Sprintf(`{"metric":"m","at":%d}`, old), "at"},
		{"POST", "/v1/metrics/increment", `{"metric":"m","extra":1}`, "extra"},
		{"POST", "/v1/metrics/unique", `{"metric":"m"}`, "member"},
		{"POST", "/v1/metrics/unique", `{"member":"x"}`, "metric"},
		{"GET", "/v1/metrics/m", "", "from"},
		{"GET", "/v1/metrics/m?from=" + today, "", "to"},
		{"GET", "/v1/metrics/m?from=2026-13-01&to=" + today, "", "from"},
		{"GET", "/v1/metrics/m?from=" + today + "&to=2020-01-01", "", "to"},
		{"GET", "/v1/metrics/m?from=2020-01-01&to=" + today, "", "from"},
		{"GET", "/v1/metrics/m?from=" + today + "&to=" + today + "&userId=", "", "userId"},
		{"GET", "/v1/metrics/m?from=" + today + "&to=" + today + "&x=1", "", "x"},
		{"GET", "/v1/metrics/a%01b?from=" + today + "&to=" + today, "", "metric"},
		{"GET", "/v1/metrics/m/unique?from=" + today + "&to=" + today + "&userId=u", "", "userId"},
		{"POST", "/v1/events", `{}`, "events"},
		{"POST", "/v1/events", `{"events":[{"event":"e","distinctId":"d"},{"event":"e"}]}`, "events[1].distinctId"},
		{"POST", "/v1/events", `{"events":[{"distinctId":"d"}]}`, "events[0].event"},
		{"POST", "/v1/events", `{"events":[{"event":"e","distinctId":"d","properties":[1]}]}`, "events[0].properties"},
		{"POST", "/v1/events", `{"events":[{"event":"e","distinctId":"d","timestamp":"yesterday"}]}`, "events[0].timestamp"},
		{"POST", "/v1/events", `{"events":[{"event":"e","distinctId":"d","timestamp":true}]}`, "events[0].timestamp"},
		{"POST", "/v1/events", `{"events":[{"event":"e","distinctId":"d","uuid":""}]}`, "events[0].uuid"},
		{"POST", "/v1/events", `{"events":[{"event":"e","distinctId":"d","uuid":"not-a-uuid"}]}`, "events"},
		{"POST", "/v1/events", `{"events":[{"event":"e","distinctId":"d","ip":"x"}]}`, "events[0].ip"},
		{"POST", "/v1/events", `{"events":[` + strings.Repeat(`{"event":"e","distinctId":"d"},`, maxEventsPerRequest) + `{"event":"e","distinctId":"d"}]}`, "events"},
		{"GET", "/v1/events/stats?x=1", "", "x"},
	} {
		res := e.do(c.method, c.path, c.body)
		if res.status != 400 {
			t.Fatalf("%s %s %.80s: status %d, want 400; body %s", c.method, c.path, c.body, res.status, res.body)
		}
		if code, field := res.errorOf(t); code != "invalid_argument" || field != c.field {
			t.Errorf("%s %s %.80s: %s field %q, want field %q", c.method, c.path, c.body, code, field, c.field)
		}
	}
	res := e.do(http.MethodGet, "/v1/events/stats", "")
	e.mustStatus(res, 200)
	if st := decodeInto[eventStatsBody](t, res); st != (eventStatsBody{}) {
		t.Fatalf("a refused event was buffered: %+v", st)
	}
	res = e.do(http.MethodGet, "/v1/metrics/m?from="+today+"&to="+today, "")
	e.mustStatus(res, 200)
	if s := decodeInto[seriesBody](t, res); s.Total != 0 {
		t.Fatalf("a refused increment counted: %+v", s)
	}
}

// TestAnalyticsRedisDown: with Redis stopped every analytics route answers
// 503 unavailable within the timeout, without the backend's address, and
// works again once Redis is back.
func TestAnalyticsRedisDown(t *testing.T) {
	t.Parallel()
	srv := redistest.NewServer(t)
	e := newAnalyticsEnv(t, srv.URL(), elevaredis.Config{Analytics: analytics.Config{Timeout: 200 * time.Millisecond}})
	e.mustStatus(e.do(http.MethodPost, "/v1/metrics/increment", `{"metric":"m"}`), 200)
	srv.Stop(t)
	today := time.Now().UTC().Format(time.DateOnly)
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/v1/metrics/increment", `{"metric":"m","userId":"u"}`},
		{"GET", "/v1/metrics/m?from=" + today + "&to=" + today, ""},
		{"POST", "/v1/metrics/unique", `{"metric":"m","member":"x"}`},
		{"GET", "/v1/metrics/m/unique?from=" + today + "&to=" + today, ""},
		{"POST", "/v1/events", `{"events":[{"event":"e","distinctId":"d"}]}`},
		{"GET", "/v1/events/stats", ""},
	} {
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
	srv.Start(t)
	deadline := time.Now().Add(10 * time.Second)
	for e.do(http.MethodPost, "/v1/events", `{"events":[{"event":"e","distinctId":"d"}]}`).status != 202 {
		if time.Now().After(deadline) {
			t.Fatal("no recovery within 10s")
		}
		time.Sleep(20 * time.Millisecond) // poll interval while the client reconnects
	}
}
