package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	elevaredis "github.com/elevacare/eleva-redis"
	"github.com/elevacare/eleva-redis/cache"
	"github.com/elevacare/eleva-redis/internal/redistest"
)

func cachePath(key string) string { return "/v1/cache/" + url.PathEscape(key) }

// cacheEntry is the 200 body of GET /v1/cache/{key}.
type cacheEntry struct {
	Value     json.RawMessage `json:"value"`
	CachedAt  int64           `json:"cachedAt"`
	ExpiresAt int64           `json:"expiresAt"`
}

// leaseOf returns the lease of a 404 of GET ?lease=1 ("" when none), failing
// on any other answer.
func leaseOf(t *testing.T, res response) string {
	t.Helper()
	wantError(t, res, 404, "not_found")
	var m struct{ Lease string }
	if err := json.Unmarshal(res.body, &m); err != nil {
		t.Fatalf("body %q: %v", res.body, err)
	}
	return m.Lease
}

// wantValue fails unless res is a hit holding want.
func wantValue(t *testing.T, res response, want string) cacheEntry {
	t.Helper()
	if res.status != 200 {
		t.Fatalf("status %d, want 200 with %s; body %s", res.status, want, res.body)
	}
	got := decodeInto[cacheEntry](t, res)
	if !sameJSON(t, got.Value, []byte(want)) {
		t.Fatalf("value %s, want %s", got.Value, want)
	}
	return got
}

// eventually polls cond until it holds, for what the design makes
// asynchronous: another instance's view after an invalidation.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(time.Millisecond) // poll interval: invalidation pushes are asynchronous by design
	}
}

// cachePair returns two servers sharing one cache backend: two
// elevaredis.Open instances on one Redis (or Cluster) under one prefix, or
// two servers on one memory Store.
func cachePair(t *testing.T, u func(testing.TB) string) (a, b *testEnv) {
	t.Helper()
	if u == nil {
		store := cache.NewMemoryStore(cache.StoreConfig{})
		t.Cleanup(store.Close)
		return newEnv(t, Deps{Cache: store}), newEnv(t, Deps{Cache: store})
	}
	url := u(t)
	cfg := elevaredis.Config{KeyPrefix: redistest.Prefix(t)}
	return newBackendEnv(t, url, cfg), newBackendEnv(t, url, cfg)
}

// TestCacheEndpoints walks values through the cache over HTTP on every
// backend: miss, PUT, GET with cachedAt and expiresAt, every kind of JSON
// value, replacement, DELETE, and invalidation by keys and by tags.
func TestCacheEndpoints(t *testing.T) {
	for _, bc := range backendCases {
		t.Run(bc.name, func(t *testing.T) {
			t.Parallel()
			e := newBackendEnv(t, backendURL(t, bc.url), elevaredis.Config{})
			// Keys may hold any characters.
			key := "query:{experts}/top 10 é?x=1"
			base := cachePath(key)

			res := e.do(http.MethodGet, base, "")
			if l := leaseOf(t, res); l != "" {
				t.Fatalf("a plain GET answered a lease: %s", res.body)
			}

			before := time.Now()
			res = e.do(http.MethodPut, base, `{"value":{"experts":[{"id":7,"name":"Dr. Jane <Smith>"}],"total":1},"ttlMs":60000,"tags":["expert:7","experts"]}`)
			e.mustStatus(res, 204)
			if len(res.body) != 0 {
				t.Errorf("204 with body %q", res.body)
			}
			got := wantValue(t, e.do(http.MethodGet, base, ""), `{"experts":[{"id":7,"name":"Dr. Jane <Smith>"}],"total":1}`)
			if got.CachedAt < before.UnixMilli()-1000 || got.CachedAt > time.Now().UnixMilli()+1000 {
				t.Errorf("cachedAt %d not around now (%d)", got.CachedAt, before.UnixMilli())
			}
			// The TTL is jittered down by less than 10%.
			if ttl := got.ExpiresAt - got.CachedAt; ttl < 54000-1 || ttl > 60000 {
				t.Errorf("expiresAt - cachedAt = %d, want within [54000, 60000]", ttl)
			}
			// HEAD is GET without a body.
			e.mustStatus(e.do(http.MethodHead, base, ""), 200)
			// A lease GET of a present key is a plain hit.
			wantValue(t, e.do(http.MethodGet, base+"?lease=1&waitMs=100", ""), `{"experts":[{"id":7,"name":"Dr. Jane <Smith>"}],"total":1}`)

			// Every kind of JSON value round-trips as the same value; a
			// PUT replaces what is there.
			for _, v := range jsonValues {
				e.mustStatus(e.do(http.MethodPut, base, `{"value": `+v+` , "ttlMs":60000}`), 204)
				wantValue(t, e.do(http.MethodGet, base, ""), v)
				wantValue(t, e.do(http.MethodGet, base+"?lease=1", ""), v)
			}

			// DELETE: 204, also when nothing is there.
			for range 2 {
				res := e.do(http.MethodDelete, base, "")
				e.mustStatus(res, 204)
				if len(res.body) != 0 {
					t.Errorf("204 with body %q", res.body)
				}
				wantError(t, e.do(http.MethodGet, base, ""), 404, "not_found")
			}

			// Invalidation by keys, by tags and by both.
			put := func(k, tags string) {
				t.Helper()
				e.mustStatus(e.do(http.MethodPut, cachePath(k), `{"value":"`+k+`","ttlMs":60000,"tags":`+tags+`}`), 204)
			}
			present := func(want map[string]bool) {
				t.Helper()
				for k, ok := range want {
					res := e.do(http.MethodGet, cachePath(k), "")
					switch {
					case ok:
						wantValue(t, res, `"`+k+`"`)
					default:
						wantError(t, res, 404, "not_found")
					}
				}
			}
			for _, k := range []string{"k1", "k2", "k3"} {
				put(k, `[]`)
			}
			e.mustStatus(e.do(http.MethodPost, "/v1/cache/invalidate", `{"keys":["k1","k2","never-stored"]}`), 204)
			present(map[string]bool{"k1": false, "k2": false, "k3": true})

			put("t1", `["a"]`)
			put("t2", `["a","b"]`)
			put("t3", `["b"]`)
			put("t4", `null`)
			e.mustStatus(e.do(http.MethodPost, "/v1/cache/invalidate", `{"tags":["a"]}`), 204)
			present(map[string]bool{"t1": false, "t2": false, "t3": true, "t4": true})
			e.mustStatus(e.do(http.MethodPost, "/v1/cache/invalidate", `{"keys":["t4"],"tags":["b","never-used"]}`), 204)
			present(map[string]bool{"t3": false, "t4": false, "k3": true})
			// A value written after its tag was invalidated is live.
			put("t1", `["a"]`)
			present(map[string]bool{"t1": true})
			// Nothing to do is not an error.
			for _, body := range []string{`{}`, `{"keys":[],"tags":[]}`, `{"keys":null}`} {
				e.mustStatus(e.do(http.MethodPost, "/v1/cache/invalidate", body), 204)
			}
			present(map[string]bool{"t1": true, "k3": true})

			// Neither keys nor values reach the logs.
			logs := e.logs.String()
			for _, secret := range []string{"experts", "Jane", "Smith", "expert:7", "top 10"} {
				if strings.Contains(logs, secret) {
					t.Errorf("logs contain %q:\n%s", secret, logs)
				}
			}
		})
	}
}

// TestCacheLeaseProtocol runs the lease protocol over HTTP across two
// servers sharing one backend (two elevaredis.Open instances on one Redis or
// Cluster; two servers on one memory Store).
func TestCacheLeaseProtocol(t *testing.T) {
	for _, bc := range backendCases {
		t.Run(bc.name, func(t *testing.T) {
			t.Parallel()
			a, b := cachePair(t, bc.url)
			envs := []*testEnv{a, b}

			t.Run("one loads, the other waits for its value", func(t *testing.T) {
				base := cachePath("cold")
				type answer struct {
					i   int
					res response
				}
				results := make(chan answer, 2)
				for i, e := range envs {
					go func() { results <- answer{i, e.do(http.MethodGet, base+"?lease=1&waitMs=10000", "")} }()
				}
				// Nothing is stored, so the first answer can only be the
				// lease: the other caller waits (10s) for a value.
				first := <-results
				lease := leaseOf(t, first.res)
				if lease == "" {
					t.Fatalf("first answer without a lease: %s", first.res.body)
				}
				select {
				case second := <-results:
					t.Fatalf("the second caller answered before the value was written: %d %s", second.res.status, second.res.body)
				default:
				}
				holder := envs[first.i]
				holder.mustStatus(holder.do(http.MethodPut, base, `{"value":{"loaded":true},"ttlMs":60000,"lease":"`+lease+`"}`), 204)
				second := <-results
				wantValue(t, second.res, `{"loaded":true}`)
				// The lease is used up: it cannot write again.
				wantError(t, holder.do(http.MethodPut, base, `{"value":2,"ttlMs":60000,"lease":"`+lease+`"}`), 409, "lease_lost")
				for _, e := range envs {
					wantValue(t, e.do(http.MethodGet, base+"?lease=1", ""), `{"loaded":true}`)
				}
			})

			t.Run("invalidated during the load: the stale value is not written", func(t *testing.T) {
				base := cachePath("inv")
				lease := leaseOf(t, a.do(http.MethodGet, base+"?lease=1", ""))
				if lease == "" {
					t.Fatal("no lease on a cold key")
				}
				b.mustStatus(b.do(http.MethodPost, "/v1/cache/invalidate", `{"keys":["inv"]}`), 204)
				wantError(t, a.do(http.MethodPut, base, `{"value":"stale","ttlMs":60000,"lease":"`+lease+`"}`), 409, "lease_lost")
				for _, e := range envs {
					wantError(t, e.do(http.MethodGet, base, ""), 404, "not_found")
				}
				// The next caller gets a fresh lease and fills.
				lease2 := leaseOf(t, b.do(http.MethodGet, base+"?lease=1", ""))
				if lease2 == "" || lease2 == lease {
					t.Fatalf("lease after the invalidation %q (first %q)", lease2, lease)
				}
				b.mustStatus(b.do(http.MethodPut, base, `{"value":"fresh","ttlMs":60000,"lease":"`+lease2+`"}`), 204)
				wantValue(t, b.do(http.MethodGet, base, ""), `"fresh"`)
				eventually(t, "the other server reads the value", func() bool {
					return a.do(http.MethodGet, base, "").status == 200
				})
				wantValue(t, a.do(http.MethodGet, base, ""), `"fresh"`)
			})

			// A tag invalidation reaches the instance that invalidates at
			// once, the others within their invalidation latency (a
			// Redis push): a lease given with the tag is lost on each once
			// it has seen the invalidation.
			t.Run("a tag invalidated during the load", func(t *testing.T) {
				// a keeps the tags' versions: it reads a value stored
				// with them.
				a.mustStatus(a.do(http.MethodPut, cachePath("probe"), `{"value":0,"ttlMs":60000,"tags":["expert:7","day"]}`), 204)
				wantValue(t, a.do(http.MethodGet, cachePath("probe"), ""), `0`)
				base := cachePath("tagged")
				for i, inv := range []*testEnv{a, b} {
					lease := leaseOf(t, a.do(http.MethodGet, base+"?lease=1&tags=expert%3A7&tags=day", ""))
					if lease == "" {
						t.Fatalf("round %d: no lease on a cold key", i)
					}
					inv.mustStatus(inv.do(http.MethodPost, "/v1/cache/invalidate", `{"tags":["expert:7"]}`), 204)
					if inv != a {
						eventually(t, "the filling server sees the other's tag invalidation", func() bool {
							return a.do(http.MethodGet, cachePath("probe"), "").status == 404
						})
					}
					wantError(t, a.do(http.MethodPut, base, `{"value":"stale","ttlMs":60000,"tags":["expert:7","day"],"lease":"`+lease+`"}`), 409, "lease_lost")
					wantError(t, a.do(http.MethodGet, base, ""), 404, "not_found")
					wantError(t, inv.do(http.MethodGet, base, ""), 404, "not_found")
					a.mustStatus(a.do(http.MethodPut, cachePath("probe"), `{"value":0,"ttlMs":60000,"tags":["expert:7","day"]}`), 204)
					wantValue(t, a.do(http.MethodGet, cachePath("probe"), ""), `0`)
				}
				// A fresh lease with the tags fills, and the tag removes it.
				lease := leaseOf(t, b.do(http.MethodGet, base+"?lease=1&tags=expert%3A7&tags=day", ""))
				if lease == "" {
					t.Fatal("no fresh lease after the lost one")
				}
				b.mustStatus(b.do(http.MethodPut, base, `{"value":"fresh","ttlMs":60000,"tags":["day","expert:7"],"lease":"`+lease+`"}`), 204)
				wantValue(t, b.do(http.MethodGet, base, ""), `"fresh"`)
				a.mustStatus(a.do(http.MethodPost, "/v1/cache/invalidate", `{"tags":["day"]}`), 204)
				wantError(t, a.do(http.MethodGet, base, ""), 404, "not_found")
				eventually(t, "the other server sees the tag invalidation", func() bool {
					return b.do(http.MethodGet, base, "").status == 404
				})
			})

			t.Run("a plain PUT during the load wins", func(t *testing.T) {
				base := cachePath("set")
				lease := leaseOf(t, a.do(http.MethodGet, base+"?lease=1", ""))
				b.mustStatus(b.do(http.MethodPut, base, `{"value":"written","ttlMs":60000}`), 204)
				wantError(t, a.do(http.MethodPut, base, `{"value":"loaded","ttlMs":60000,"lease":"`+lease+`"}`), 409, "lease_lost")
				wantValue(t, b.do(http.MethodGet, base, ""), `"written"`)
				wantValue(t, a.do(http.MethodGet, base+"?lease=1", ""), `"written"`)
			})

			t.Run("waitMs runs out while the lease is held", func(t *testing.T) {
				base := cachePath("held")
				if leaseOf(t, a.do(http.MethodGet, base+"?lease=1", "")) == "" {
					t.Fatal("no lease on a cold key")
				}
				if l := leaseOf(t, b.do(http.MethodGet, base+"?lease=1", "")); l != "" {
					t.Fatalf("a second lease while the first holds: %q", l)
				}
				start := time.Now()
				if l := leaseOf(t, b.do(http.MethodGet, base+"?lease=1&waitMs=300", "")); l != "" {
					t.Fatalf("a second lease after waiting: %q", l)
				}
				if took := time.Since(start); took < 300*time.Millisecond {
					t.Fatalf("answered after %v, before waitMs", took)
				}
			})

			t.Run("the holder gives up: a waiter gets a fresh lease", func(t *testing.T) {
				base := cachePath("given-up")
				lease := leaseOf(t, a.do(http.MethodGet, base+"?lease=1", ""))
				done := make(chan response, 1)
				go func() { done <- b.do(http.MethodGet, base+"?lease=1&waitMs=10000", "") }()
				a.mustStatus(a.do(http.MethodDelete, base, ""), 204)
				lease2 := leaseOf(t, <-done)
				if lease2 == "" || lease2 == lease {
					t.Fatalf("waiter's lease %q after the holder's %q was given up", lease2, lease)
				}
				wantError(t, a.do(http.MethodPut, base, `{"value":"late","ttlMs":60000,"lease":"`+lease+`"}`), 409, "lease_lost")
				b.mustStatus(b.do(http.MethodPut, base, `{"value":"b","ttlMs":60000,"lease":"`+lease2+`"}`), 204)
				wantValue(t, b.do(http.MethodGet, base, ""), `"b"`)
			})

			// 20 concurrent callers across both servers on a cold key:
			// exactly one lease. Without waiting the others answer 404 at
			// once; waiting, they get the holder's value.
			for _, wait := range []int{0, 10000} {
				t.Run(fmt.Sprintf("20 callers waitMs=%d", wait), func(t *testing.T) {
					key := fmt.Sprintf("crowd-%d", wait)
					base := cachePath(key)
					var (
						wg      sync.WaitGroup
						mu      sync.Mutex
						results []response
						filled  []response
					)
					for i := range 20 {
						e := envs[i%2]
						wg.Go(func() {
							res := e.do(http.MethodGet, fmt.Sprintf("%s?lease=1&waitMs=%d", base, wait), "")
							var fill response
							if wait > 0 && res.status == 404 && strings.Contains(string(res.body), `"lease"`) {
								var m struct{ Lease string }
								_ = json.Unmarshal(res.body, &m)
								fill = e.do(http.MethodPut, base, `{"value":"loaded once","ttlMs":60000,"lease":"`+m.Lease+`"}`)
							}
							mu.Lock()
							results = append(results, res)
							if fill.status != 0 {
								filled = append(filled, fill)
							}
							mu.Unlock()
						})
					}
					wg.Wait()
					var leases []string
					hits := 0
					for _, res := range results {
						if res.status == 200 {
							wantValue(t, res, `"loaded once"`)
							hits++
							continue
						}
						if l := leaseOf(t, res); l != "" {
							leases = append(leases, l)
						}
					}
					if len(leases) != 1 {
						t.Fatalf("%d leases among 20 callers, want 1", len(leases))
					}
					if wait == 0 {
						if hits != 0 {
							t.Fatalf("%d hits before anything was stored", hits)
						}
						a.mustStatus(a.do(http.MethodPut, base, `{"value":"loaded once","ttlMs":60000,"lease":"`+leases[0]+`"}`), 204)
					} else {
						if len(filled) != 1 || filled[0].status != 204 {
							t.Fatalf("fills %+v", filled)
						}
						if hits != 19 {
							t.Fatalf("%d of the 19 waiting callers got the value", hits)
						}
					}
					for _, e := range envs {
						wantValue(t, e.do(http.MethodGet, base+"?lease=1", ""), `"loaded once"`)
					}
				})
			}
		})
	}
}

// TestCacheBadInput: every bad input of the cache routes is a 400 naming
// the field (or 413), never a 5xx, and writes nothing.
func TestCacheBadInput(t *testing.T) {
	long := func(n int) string { return strings.Repeat("n", n) }
	tagList := func(n int) string {
		tags := make([]string, n)
		for i := range tags {
			tags[i] = fmt.Sprintf(`"t%d"`, i)
		}
		return "[" + strings.Join(tags, ",") + "]"
	}
	tagQuery := func(n int) string {
		q := url.Values{"lease": {"1"}}
		for i := range n {
			q.Add("tags", fmt.Sprint("t", i))
		}
		return q.Encode()
	}
	tests := []struct {
		name, method, path, body string
		status                   int
		field                    string
	}{
		{"get: long key", "GET", "/v1/cache/" + long(cache.MaxKeyLen+1), ``, 400, "key"},
		{"get: lease 2", "GET", "/v1/cache/k?lease=2", ``, 400, "lease"},
		{"get: lease empty", "GET", "/v1/cache/k?lease=", ``, 400, "lease"},
		{"get: non-UTF-8 key", "GET", "/v1/cache/%FF", ``, 400, "key"},
		{"get: non-UTF-8 tag", "GET", "/v1/cache/k?lease=1&tags=%C3", ``, 400, "tags"},
		{"put: non-UTF-8 key", "PUT", "/v1/cache/a%FEb", `{"value":1,"ttlMs":1000}`, 400, "key"},
		{"delete: non-UTF-8 key", "DELETE", "/v1/cache/%FF", ``, 400, "key"},
		{"head: lease", "HEAD", "/v1/cache/k?lease=1", ``, 400, "lease"},
		{"get: lease twice", "GET", "/v1/cache/k?lease=1&lease=1", ``, 400, "lease"},
		{"get: waitMs without lease", "GET", "/v1/cache/k?waitMs=10", ``, 400, "waitMs"},
		{"get: waitMs with lease=0", "GET", "/v1/cache/k?lease=0&waitMs=10", ``, 400, "waitMs"},
		{"get: negative waitMs", "GET", "/v1/cache/k?lease=1&waitMs=-1", ``, 400, "waitMs"},
		{"get: waitMs over 30s", "GET", "/v1/cache/k?lease=1&waitMs=30001", ``, 400, "waitMs"},
		{"get: waitMs a word", "GET", "/v1/cache/k?lease=1&waitMs=soon", ``, 400, "waitMs"},
		{"get: waitMs a fraction", "GET", "/v1/cache/k?lease=1&waitMs=1.5", ``, 400, "waitMs"},
		{"get: waitMs twice", "GET", "/v1/cache/k?lease=1&waitMs=1&waitMs=2", ``, 400, "waitMs"},
		{"get: tags without lease", "GET", "/v1/cache/k?tags=a", ``, 400, "tags"},
		{"get: empty tag", "GET", "/v1/cache/k?lease=1&tags=", ``, 400, "tags"},
		{"get: long tag", "GET", "/v1/cache/k?lease=1&tags=" + long(cache.MaxKeyLen+1), ``, 400, "tags"},
		{"get: 17 tags", "GET", "/v1/cache/k?" + tagQuery(cache.MaxTags+1), ``, 400, "tags"},
		{"get: unknown parameter", "GET", "/v1/cache/k?lease=1&ttlMs=5", ``, 400, "ttlMs"},
		{"get: malformed query", "GET", "/v1/cache/k?lease=%zz", ``, 400, ""},
		{"put: long key", "PUT", "/v1/cache/" + long(cache.MaxKeyLen+1), `{"value":1,"ttlMs":1000}`, 400, "key"},
		{"put: missing value", "PUT", "/v1/cache/k", `{"ttlMs":1000}`, 400, "value"},
		{"put: missing ttl", "PUT", "/v1/cache/k", `{"value":1}`, 400, "ttlMs"},
		{"put: zero ttl", "PUT", "/v1/cache/k", `{"value":1,"ttlMs":0}`, 400, "ttlMs"},
		{"put: negative ttl", "PUT", "/v1/cache/k", `{"value":1,"ttlMs":-5}`, 400, "ttlMs"},
		{"put: ttl over 30 days", "PUT", "/v1/cache/k", `{"value":1,"ttlMs":2592000001}`, 400, "ttlMs"},
		{"put: ttl a string", "PUT", "/v1/cache/k", `{"value":1,"ttlMs":"1000"}`, 400, "ttlMs"},
		{"put: ttl a fraction", "PUT", "/v1/cache/k", `{"value":1,"ttlMs":1.5}`, 400, "ttlMs"},
		{"put: ttl null", "PUT", "/v1/cache/k", `{"value":1,"ttlMs":null}`, 400, "ttlMs"},
		{"put: tags a string", "PUT", "/v1/cache/k", `{"value":1,"ttlMs":1000,"tags":"a"}`, 400, "tags"},
		{"put: tag a number", "PUT", "/v1/cache/k", `{"value":1,"ttlMs":1000,"tags":[1]}`, 400, "tags"},
		{"put: empty tag", "PUT", "/v1/cache/k", `{"value":1,"ttlMs":1000,"tags":["a",""]}`, 400, "tags"},
		{"put: long tag", "PUT", "/v1/cache/k", `{"value":1,"ttlMs":1000,"tags":["` + long(cache.MaxKeyLen+1) + `"]}`, 400, "tags"},
		{"put: 17 tags", "PUT", "/v1/cache/k", `{"value":1,"ttlMs":1000,"tags":` + tagList(cache.MaxTags+1) + `}`, 400, "tags"},
		{"put: empty lease", "PUT", "/v1/cache/k", `{"value":1,"ttlMs":1000,"lease":""}`, 400, "lease"},
		{"put: long lease", "PUT", "/v1/cache/k", `{"value":1,"ttlMs":1000,"lease":"` + long(maxLeaseLen+1) + `"}`, 400, "lease"},
		{"put: lease a number", "PUT", "/v1/cache/k", `{"value":1,"ttlMs":1000,"lease":5}`, 400, "lease"},
		{"put: malformed lease", "PUT", "/v1/cache/k", `{"value":1,"ttlMs":1000,"lease":"abc.x-1"}`, 400, "lease"},
		{"put: lease without token", "PUT", "/v1/cache/k", `{"value":1,"ttlMs":1000,"lease":".1"}`, 400, "lease"},
		{"put: unknown field", "PUT", "/v1/cache/k", `{"value":1,"ttlMs":1000,"staleMs":5}`, 400, "staleMs"},
		{"put: malformed", "PUT", "/v1/cache/k", `{"value":`, 400, ""},
		{"put: bad JSON value", "PUT", "/v1/cache/k", `{"value":[1,],"ttlMs":1000}`, 400, ""},
		{"put: array", "PUT", "/v1/cache/k", `[]`, 400, ""},
		{"put: empty body", "PUT", "/v1/cache/k", ``, 400, ""},
		{"put: trailing data", "PUT", "/v1/cache/k", `{"value":1,"ttlMs":1000} {}`, 400, ""},
		{"put: too large", "PUT", "/v1/cache/k", `{"value":"` + long(200<<10) + `","ttlMs":1000}`, 413, ""},
		{"delete: long key", "DELETE", "/v1/cache/" + long(cache.MaxKeyLen+1), ``, 400, "key"},
		{"invalidate: keys a string", "POST", "/v1/cache/invalidate", `{"keys":"k"}`, 400, "keys"},
		{"invalidate: empty key", "POST", "/v1/cache/invalidate", `{"keys":["k",""]}`, 400, "keys"},
		{"invalidate: long key", "POST", "/v1/cache/invalidate", `{"keys":["` + long(cache.MaxKeyLen+1) + `"]}`, 400, "keys"},
		{"invalidate: 1001 keys", "POST", "/v1/cache/invalidate", `{"keys":` + tagList(maxCacheInvalidate+1) + `}`, 400, "keys"},
		{"invalidate: empty tag", "POST", "/v1/cache/invalidate", `{"tags":[""]}`, 400, "tags"},
		{"invalidate: tag an object", "POST", "/v1/cache/invalidate", `{"tags":[{}]}`, 400, "tags"},
		{"invalidate: 1001 tags", "POST", "/v1/cache/invalidate", `{"tags":` + tagList(maxCacheInvalidate+1) + `}`, 400, "tags"},
		{"invalidate: unknown field", "POST", "/v1/cache/invalidate", `{"key":"k"}`, 400, "key"},
		{"invalidate: not an object", "POST", "/v1/cache/invalidate", `["k"]`, 400, ""},
		{"invalidate: empty body", "POST", "/v1/cache/invalidate", ``, 400, ""},
		{"invalidate: too large", "POST", "/v1/cache/invalidate", `{"keys":["` + long(200<<10) + `"]}`, 413, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, Deps{APIKeys: []string{testKey}, MaxBodyBytes: 200 << 10})
			auth := "Authorization: Bearer " + testKey
			// Entries a bad request must leave untouched: the key of every
			// request and t0 (a tag and key name the bodies use).
			for _, k := range []string{"k", "t0"} {
				e.mustStatus(e.do(http.MethodPut, cachePath(k), `{"value":{"v":1},"ttlMs":60000,"tags":["a","t0"]}`, auth), 204)
			}
			read := func() string {
				return string(e.do(http.MethodGet, "/v1/cache/k", "", auth).body) + string(e.do(http.MethodGet, "/v1/cache/t0", "", auth).body)
			}
			before := read()
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
			if after := read(); after != before {
				t.Fatalf("a bad request changed the cache:\n%s\n%s", before, after)
			}
		})
	}

	e := newEnv(t, Deps{MaxBodyBytes: 9 << 20})
	// The limits themselves are accepted.
	maxKey := cachePath(long(cache.MaxKeyLen))
	e.mustStatus(e.do(http.MethodPut, maxKey, `{"value":1,"ttlMs":2592000000,"tags":`+tagList(cache.MaxTags)+`}`), 204)
	wantValue(t, e.do(http.MethodGet, maxKey+"?"+tagQuery(cache.MaxTags)+"&waitMs=30000", ""), `1`)
	e.mustStatus(e.do(http.MethodPost, "/v1/cache/invalidate", `{"keys":`+tagList(maxCacheInvalidate)+`,"tags":`+tagList(maxCacheInvalidate)+`}`), 204)
	wantError(t, e.do(http.MethodGet, maxKey, ""), 404, "not_found") // its tags were invalidated
	// A value over the cache's limit (with a body limit above it).
	res := e.do(http.MethodPut, "/v1/cache/big", `{"value":"`+long(cache.MaxValueSize)+`","ttlMs":1000}`)
	if code, f := res.errorOf(t); res.status != 400 || code != "invalid_argument" || f != "value" {
		t.Fatalf("value over the limit: %d %s", res.status, res.body)
	}
	// Values are stored compacted: the limit is on the compacted JSON.
	e.mustStatus(e.do(http.MethodPut, "/v1/cache/spaced", `{"value":[ 1 , 2 ,`+strings.Repeat(" ", cache.MaxValueSize)+` 3 ],"ttlMs":1000}`), 204)
	wantValue(t, e.do(http.MethodGet, "/v1/cache/spaced", ""), `[1,2,3]`)

	// A well-formed lease that was never given is lost, not bad input; a
	// lease given with tags must be used with the same tags.
	wantError(t, e.do(http.MethodPut, "/v1/cache/k", `{"value":1,"ttlMs":1000,"lease":"never-given"}`), 409, "lease_lost")
	lease := leaseOf(t, e.do(http.MethodGet, "/v1/cache/lt?lease=1&tags=a&tags=b", ""))
	for _, tags := range []string{`[]`, `["a"]`, `["a","b","c"]`} {
		res := e.do(http.MethodPut, "/v1/cache/lt", `{"value":1,"ttlMs":1000,"lease":"`+lease+`","tags":`+tags+`}`)
		if code, f := res.errorOf(t); res.status != 400 || code != "invalid_argument" || f != "lease" {
			t.Fatalf("lease with tags %s: %d %s", tags, res.status, res.body)
		}
	}
	e.mustStatus(e.do(http.MethodPut, "/v1/cache/lt", `{"value":1,"ttlMs":1000,"lease":"`+lease+`","tags":["b","a"]}`), 204)

	// The routes need the API key like every /v1 route, and refuse
	// cross-site form posts without a JSON Content-Type.
	e = newEnv(t, Deps{APIKeys: []string{testKey}})
	for _, r := range [][2]string{{"GET", "/v1/cache/k"}, {"GET", "/v1/cache/k?lease=1"}, {"PUT", "/v1/cache/k"},
		{"DELETE", "/v1/cache/k"}, {"POST", "/v1/cache/invalidate"}} {
		wantError(t, e.do(r[0], r[1], `{}`, "Authorization: Bearer wrong"), 401, "unauthorized")
	}
	e = newEnv(t, Deps{})
	for _, ct := range []string{"application/x-www-form-urlencoded", "text/plain"} {
		wantError(t, e.do(http.MethodPost, "/v1/cache/invalidate", `{"keys":["k"]}`, "Content-Type: "+ct), 400, "invalid_argument")
		wantError(t, e.do(http.MethodPut, "/v1/cache/k", `{"value":1,"ttlMs":1000}`, "Content-Type: "+ct), 400, "invalid_argument")
	}
	// Other methods are 405 with the Allow header.
	res = e.do(http.MethodPost, "/v1/cache/k", `{}`)
	wantError(t, res, 405, "method_not_allowed")
	if got := res.header.Get("Allow"); got != "GET, HEAD, PUT, DELETE" {
		t.Errorf("Allow %q", got)
	}
}

// TestCacheSharedWithGoCallers: the HTTP namespace is "http" with the JSON
// text as the value, so a Go program on the same Store shares the entries
// (the default JSON codec, as json.RawMessage or as its own type), and a
// value the API cannot return is never answered as one.
func TestCacheSharedWithGoCallers(t *testing.T) {
	ctx := context.Background()
	store := cache.NewMemoryStore(cache.StoreConfig{})
	t.Cleanup(store.Close)
	e := newEnv(t, Deps{Cache: store})
	raw := cache.New(store, cache.Config[json.RawMessage]{Namespace: "http"})
	type expert struct {
		ID   int    `json:"id"`
		Name string `json:"name"`
	}
	typed := cache.New(store, cache.Config[expert]{Namespace: "http"})

	e.mustStatus(e.do(http.MethodPut, cachePath("expert:7"), `{"value":{"id":7, "name":"Jane"},"ttlMs":60000,"tags":["expert:7"]}`), 204)
	v, _, err := raw.Get(ctx, "expert:7")
	if err != nil || string(v) != `{"id":7,"name":"Jane"}` {
		t.Fatalf("Go read of an HTTP value: %s, %v (want it compacted)", v, err)
	}
	if x, _, err := typed.Get(ctx, "expert:7"); err != nil || x != (expert{7, "Jane"}) {
		t.Fatalf("typed Go read: %+v, %v", x, err)
	}
	if err := typed.Set(ctx, "expert:8", expert{8, "Ann"}, cache.Tags("expert:8")); err != nil {
		t.Fatal(err)
	}
	wantValue(t, e.do(http.MethodGet, cachePath("expert:8"), ""), `{"id":8,"name":"Ann"}`)
	// A Go lease filled over HTTP.
	_, _, lease, err := raw.Lease(ctx, "expert:9", 0)
	if lease == "" {
		t.Fatalf("no Go lease: %v", err)
	}
	e.mustStatus(e.do(http.MethodPut, cachePath("expert:9"), `{"value":9,"ttlMs":60000,"lease":"`+lease+`"}`), 204)
	if v, _, err := raw.Get(ctx, "expert:9"); err != nil || string(v) != "9" {
		t.Fatalf("after the HTTP fill: %s %v", v, err)
	}
	// Tag invalidation from Go reaches HTTP values, and the other way.
	if err := store.InvalidateTags(ctx, "expert:7"); err != nil {
		t.Fatal(err)
	}
	wantError(t, e.do(http.MethodGet, cachePath("expert:7"), ""), 404, "not_found")
	e.mustStatus(e.do(http.MethodPost, "/v1/cache/invalidate", `{"tags":["expert:8"]}`), 204)
	if _, _, err := typed.Get(ctx, "expert:8"); err == nil {
		t.Fatal("the HTTP tag invalidation did not reach the Go reader")
	}

	// Other namespaces are not visible over HTTP.
	other := cache.New(store, cache.Config[json.RawMessage]{Namespace: "profiles"})
	if err := other.Set(ctx, "p", json.RawMessage(`1`)); err != nil {
		t.Fatal(err)
	}
	wantError(t, e.do(http.MethodGet, cachePath("p"), ""), 404, "not_found")

	// Bytes that are not JSON (a Go caller with another codec): a miss
	// for a plain read and for a lease read, which gets a lease whose
	// PUT replaces them — never a malformed body.
	bin := cache.New(store, cache.Config[[]byte]{Namespace: "http", Codec: cache.Raw{}})
	if err := bin.Set(ctx, "bin", []byte("\x00not json")); err != nil {
		t.Fatal(err)
	}
	wantError(t, e.do(http.MethodGet, cachePath("bin"), ""), 404, "not_found")
	r := e.do(http.MethodGet, cachePath("bin")+"?lease=1", "")
	wantError(t, r, 404, "not_found")
	var miss struct {
		Lease string `json:"lease"`
	}
	if err := json.Unmarshal(r.body, &miss); err != nil || miss.Lease == "" {
		t.Fatalf("lease read over undecodable bytes: no lease in %s (%v)", r.body, err)
	}
	e.mustStatus(e.do(http.MethodPut, cachePath("bin"), `{"value":"json now","ttlMs":60000,"lease":"`+miss.Lease+`"}`), 204)
	wantValue(t, e.do(http.MethodGet, cachePath("bin")+"?lease=1", ""), `"json now"`)
}

// TestCacheUnavailableWhenRedisIsDown: with redis-server killed, every cache
// call answers 503 unavailable (the caller loads from its database), never a
// value and never success, within a bounded time; the same server works
// again once Redis is back.
func TestCacheUnavailableWhenRedisIsDown(t *testing.T) {
	srv := redistest.NewServer(t)
	cfg := elevaredis.Config{KeyPrefix: redistest.Prefix(t)}
	cfg.Cache.Timeout = 200 * time.Millisecond
	e := newBackendEnv(t, srv.URL(), cfg)
	// A value from before the outage (never read, so no copy of it is
	// kept in this process), for the reads below to find if they (wrongly)
	// answered from anywhere but Redis.
	e.mustStatus(e.do(http.MethodPut, cachePath("k"), `{"value":"before","ttlMs":60000,"tags":["t"]}`), 204)

	srv.Stop(t)
	calls := []struct{ method, path, body string }{
		{"GET", "/v1/cache/k", ``},
		{"GET", "/v1/cache/k?lease=1", ``},
		{"GET", "/v1/cache/cold?lease=1&waitMs=1000&tags=t", ``},
		{"PUT", "/v1/cache/k", `{"value":"during","ttlMs":60000}`},
		{"PUT", "/v1/cache/k", `{"value":"during","ttlMs":60000,"tags":["t"],"lease":"some-lease"}`},
		{"DELETE", "/v1/cache/k", ``},
		{"POST", "/v1/cache/invalidate", `{"keys":["k"]}`},
		{"POST", "/v1/cache/invalidate", `{"tags":["t"]}`},
	}
	for range 2 {
		for _, c := range calls {
			start := time.Now()
			res := e.do(c.method, c.path, c.body)
			took := time.Since(start)
			wantError(t, res, 503, "unavailable")
			if strings.Contains(string(res.body), srv.Addr) || strings.Contains(string(res.body), "before") {
				t.Errorf("%s %s: leaked: %s", c.method, c.path, res.body)
			}
			if took > 3*time.Second { // generous: bounded by the 200ms timeout
				t.Errorf("%s %s took %v with Redis down", c.method, c.path, took)
			}
		}
	}

	srv.Start(t) // a fresh server: nothing persisted
	deadline := time.Now().Add(10 * time.Second)
	for e.do(http.MethodPut, cachePath("k"), `{"value":"after","ttlMs":60000}`).status != 204 {
		if time.Now().After(deadline) {
			t.Fatal("no recovery within 10s")
		}
		time.Sleep(20 * time.Millisecond) // poll interval while the client reconnects
	}
	wantValue(t, e.do(http.MethodGet, cachePath("k"), ""), `"after"`)
	lease := leaseOf(t, e.do(http.MethodGet, cachePath("cold")+"?lease=1&tags=t", ""))
	if lease == "" {
		t.Fatal("no lease after recovery")
	}
	e.mustStatus(e.do(http.MethodPut, cachePath("cold"), `{"value":1,"ttlMs":60000,"tags":["t"],"lease":"`+lease+`"}`), 204)
	e.mustStatus(e.do(http.MethodPost, "/v1/cache/invalidate", `{"tags":["t"]}`), 204)
	wantError(t, e.do(http.MethodGet, cachePath("cold"), ""), 404, "not_found")
}
