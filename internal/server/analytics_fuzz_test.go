package server

import (
	"net/http"
	"net/url"
	"testing"
)

// FuzzAnalytics sends one body to increment, unique and events, and reads a
// fuzzed metric's series and unique count over a fuzzed range: no input may
// panic or answer 5xx, and every success carries its fields.
func FuzzAnalytics(f *testing.F) {
	for _, s := range []string{
		`{"metric":"m","by":3,"userId":"u","at":1767225600000}`, `{"metric":"m"}`, `{"metric":"m","by":-9223372036854775808}`,
		`{"metric":"m","member":"x"}`, `{"metric":"","member":""}`, `{"metric":"m","at":0}`, `{"metric":"m","at":1e30}`,
		`{"metric":"\u0000{x}*","by":1}`, `{"metric":"m","by":9223372036854775807}`,
		`{"events":[{"event":"e","distinctId":"d","properties":{"a":[1,{"b":null}]},"timestamp":1,"uuid":"0190a0b0-0000-7000-8000-000000000000"}]}`,
		`{"events":[{"event":"e","distinctId":"d","timestamp":"2026-01-01T00:00:00.5+02:00"}]}`,
		`{"events":[null,1,"x",[]]}`, `{"events":[{"event":"e","distinctId":"d","properties":"x"}]}`, `{"events":[]}`, `{"events":null}`,
		`{}`, `[]`, `null`, ``, `{`, `{"metric":"m"} x`,
	} {
		f.Add([]byte(s), "m", "2026-01-01", "2026-01-31")
	}
	f.Add([]byte(`{"metric":"m"}`), "a/../b", "2026-02-30", "x")
	f.Add([]byte(`{"metric":"m"}`), "\xff", "0001-01-01", "9999-12-31")
	f.Add([]byte(`{"metric":"m"}`), "", "", "")
	f.Fuzz(func(t *testing.T, body []byte, metric, from, to string) {
		h := fuzzServer(t)
		status, m := fuzzDo(t, h, http.MethodPost, "/v1/metrics/increment", body)
		wantFields(t, "increment", status, m, "value")
		fuzzDo(t, h, http.MethodPost, "/v1/metrics/unique", body)
		status, m = fuzzDo(t, h, http.MethodPost, "/v1/events", body)
		wantFields(t, "events", status, m, "accepted")
		q := "?from=" + url.QueryEscape(from) + "&to=" + url.QueryEscape(to)
		status, m = fuzzDo(t, h, http.MethodGet, "/v1/metrics/"+url.PathEscape(metric)+q, nil)
		wantFields(t, "series", status, m, "metric", "points", "total")
		status, m = fuzzDo(t, h, http.MethodGet, "/v1/metrics/"+url.PathEscape(metric)+"/unique"+q+"&userId="+url.QueryEscape(metric), nil)
		wantFields(t, "unique", status, m, "count")
		status, m = fuzzDo(t, h, http.MethodGet, "/v1/metrics/"+url.PathEscape(metric)+"/unique"+q, nil)
		wantFields(t, "unique", status, m, "count")
		status, m = fuzzDo(t, h, http.MethodGet, "/v1/events/stats", nil)
		wantFields(t, "stats", status, m, "buffered", "sent", "retrying", "dead")
	})
}
