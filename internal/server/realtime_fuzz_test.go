package server

import (
	"net/http"
	"net/url"
	"testing"
)

// FuzzRealtime sends one body to publish, token and presence for a fuzzed
// channel, subject and history query: no input may panic or answer 5xx, and every
// success carries its fields.
func FuzzRealtime(f *testing.F) {
	for _, s := range []string{
		`{"data":{"v":1}}`, `{"data":"x","idempotencyKey":"k"}`, `{"data":null}`, `{"data":1,"idempotencyKey":""}`,
		`{"subject":"p","channels":["a","b"],"ttlMs":1000}`, `{"subject":"p","channels":["a,b"],"ttlMs":1}`,
		`{"status":"busy","ttlMs":1000}`, `{"status":"away"}`, `{}`, `[]`, `null`, ``, `{`, `{"data":1} x`,
	} {
		f.Add([]byte(s), "appt:1", "expert:1", "0", "10")
	}
	f.Add([]byte(`{"data":1}`), "a,b", "\xff", "", "-1")
	f.Add([]byte(`{"data":1}`), "", "", "18446744073709551616", "1001")
	f.Add([]byte(`{"status":"online"}`), "{x}*\x00", "a/../b", "1 x", "")
	f.Fuzz(func(t *testing.T, body []byte, channel, subject, since, limit string) {
		h := fuzzServer(t)
		ch := "/v1/channels/" + url.PathEscape(channel)
		status, m := fuzzDo(t, h, http.MethodPost, ch+"/publish", body)
		wantFields(t, "publish", status, m, "epoch", "offset")
		status, m = fuzzDo(t, h, http.MethodGet, ch+"/history?sinceOffset="+url.QueryEscape(since)+"&limit="+url.QueryEscape(limit), nil)
		wantFields(t, "history", status, m, "epoch", "messages")
		status, m = fuzzDo(t, h, http.MethodPost, "/v1/realtime/tokens", body)
		wantFields(t, "token", status, m, "token", "expiresAt")
		status, m = fuzzDo(t, h, http.MethodPut, "/v1/presence/"+url.PathEscape(subject), body)
		wantFields(t, "set presence", status, m, "status", "expiresAt")
		status, m = fuzzDo(t, h, http.MethodGet, "/v1/presence?subjects="+url.QueryEscape(subject), nil)
		wantFields(t, "presence", status, m, "statuses")
	})
}
