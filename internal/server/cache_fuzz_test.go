package server

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/elevacare/eleva-redis/cache"
)

// FuzzCache sends one body to PUT and to invalidate, and one query (lease,
// waitMs, two tags, one more parameter) to GET, for a fuzzed key: no input
// may panic or answer 5xx, every success carries its fields, and a lease the
// server hands out always fills (nothing else happened to the key).
func FuzzCache(f *testing.F) {
	for _, s := range []string{
		`{"value":{"rows":[1,2]},"ttlMs":60000,"tags":["expert:7"]}`, `{"value":null,"ttlMs":1}`,
		`{"value":"x","ttlMs":2592000000,"tags":[]}`, `{"value":[1,{"a":"\u0000"}],"ttlMs":1000,"lease":"abc"}`,
		`{"value":1e400,"ttlMs":1000}`, `{"value":1,"ttlMs":1000,"lease":""}`, `{"value":1,"ttlMs":1000,"lease":"a.1-2"}`,
		`{"value":1,"ttlMs":1000,"lease":".x"}`, `{"value":1,"ttlMs":1000,"tags":[""]}`, `{"value":1,"ttlMs":1000,"tags":"a"}`,
		`{"keys":["k"],"tags":["expert:7"]}`, `{"keys":[""]}`, `{"keys":null,"tags":null}`, `{"tags":[1]}`,
		`{"ttlMs":1000}`, `{"value":1}`, `{"value":1,"ttlMs":2592000001}`, `{"value":1,"ttlMs":"1"}`,
		`{"value":1,"ttlMs":1000,"x":1}`, `[]`, `null`, ``, `{"value":`, `{"value":1,"ttlMs":1000} x`,
	} {
		f.Add([]byte(s), "query:experts", "1", "2000", "expert:7", "")
	}
	f.Add([]byte(`{"value":1,"ttlMs":1000}`), "{tag}*/../b", "true", "0", "a", "a")
	f.Add([]byte(`{"value":1,"ttlMs":1000}`), "", "0", "5", "", "")
	f.Add([]byte(`{"value":1,"ttlMs":1000}`), "k", "2", "-1", "x", "y")
	f.Add([]byte(`{"value":1,"ttlMs":1000}`), "k", "1", "30001", strings.Repeat("t", cache.MaxKeyLen+1), "")
	f.Add([]byte(`{"value":1,"ttlMs":1000}`), strings.Repeat("k", cache.MaxKeyLen+1), "1", "", "", "")
	f.Add([]byte(`{"value":1,"ttlMs":1000}`), "\xff", "1", "1.5", "\xfe", "\x00")
	f.Fuzz(func(t *testing.T, body []byte, key, lease, waitMs, tag1, tag2 string) {
		h := fuzzServer(t)
		base := "/v1/cache/" + url.PathEscape(key)
		entryFields := []string{"value", "cachedAt", "expiresAt"}

		status, _ := fuzzDo(t, h, http.MethodPut, base, body)
		if status != http.StatusNoContent && status < 400 {
			t.Fatalf("put: status %d", status)
		}
		status, m := fuzzDo(t, h, http.MethodGet, base, nil)
		wantFields(t, "get", status, m, entryFields...)

		q := url.Values{}
		for k, v := range map[string]string{"lease": lease, "waitMs": waitMs} {
			if v != "" {
				q.Set(k, v)
			}
		}
		var tags []string
		for _, tg := range []string{tag1, tag2} {
			if tg != "" {
				q.Add("tags", tg)
				tags = append(tags, tg)
			}
		}
		status, m = fuzzDo(t, h, http.MethodGet, base+"?"+q.Encode(), nil)
		wantFields(t, "lease get", status, m, entryFields...)
		if raw, ok := m["lease"]; ok {
			var l string
			if status != http.StatusNotFound || json.Unmarshal(raw, &l) != nil || l == "" {
				t.Fatalf("lease get: status %d with lease %s", status, raw)
			}
			// The lease this server just gave, with the tags it was
			// asked with, writes the value.
			fill, _ := json.Marshal(map[string]any{"value": 1, "ttlMs": 60000, "tags": tags, "lease": l})
			if status, _ := fuzzDo(t, h, http.MethodPut, base, fill); status != http.StatusNoContent {
				t.Fatalf("fill with the lease %q and tags %q: status %d", l, tags, status)
			}
			status, m = fuzzDo(t, h, http.MethodGet, base, nil)
			if status != http.StatusOK || string(m["value"]) != "1" {
				t.Fatalf("after the fill: %d %v", status, m)
			}
		}

		status, _ = fuzzDo(t, h, http.MethodPost, "/v1/cache/invalidate", body)
		if status != http.StatusNoContent && status < 400 {
			t.Fatalf("invalidate: status %d", status)
		}
		fuzzDo(t, h, http.MethodDelete, base, nil)
	})
}
