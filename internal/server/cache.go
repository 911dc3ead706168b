package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/elevacare/eleva-redis/cache"
)

// The /v1/cache routes: the query cache (package cache) for callers that
// load from their own database, the TypeScript backend above all. Values are
// any JSON value, stored as the compacted JSON text received and returned as
// the same value.
//
// Every HTTP caller shares one cache namespace, CacheNamespace, with the
// pass-through codec jsonText. A Go program on the same Store (ev.Cache of
// elevaredis.Open, same Redis and key prefix) shares the entries with
// cache.New[json.RawMessage](store, cache.Config[json.RawMessage]{Namespace:
// "http"}) — the default JSON codec writes and reads the same bytes — and
// can read them into any Go type whose JSON matches.
//
// The lease protocol (GET ?lease=1, then PUT with the lease) is Cache.Lease
// and Cache.Fill: one caller of the fleet loads a missing key, the others
// wait for its value, and a load that began before an invalidation never
// writes its stale value back.
//
// Failure: the shared level failing is 503 unavailable on every route; the
// caller then loads from its database itself (and does not write back).

// CacheNamespace is the cache namespace of every HTTP caller.
const CacheNamespace = "http"

// MaxCacheWait bounds waitMs of GET /v1/cache/{key}?lease=1. A request that
// waits holds a connection for that long; a caller that needs to wait longer
// asks again.
const MaxCacheWait = 30 * time.Second

// maxCacheInvalidate bounds keys and tags of one POST /v1/cache/invalidate,
// so one request's work is bounded; more are sent in several requests.
const maxCacheInvalidate = 1000

// maxLeaseLen bounds the lease field. Leases are a 22-character token plus,
// when given with tags, one version (at most 20 digits) per tag.
const maxLeaseLen = 1024

// jsonText is the codec of the HTTP cache: the JSON text itself. The
// handlers compact values before storing them; Encode and Decode only check
// that the bytes are JSON, so a value a Go caller stored in the namespace
// with another codec is never answered as a malformed JSON body.
type jsonText struct{}

var errNotJSON = errors.New("not a JSON value")

// Encode implements cache.Codec.
func (jsonText) Encode(v json.RawMessage) ([]byte, error) {
	if !json.Valid(v) {
		return nil, errNotJSON
	}
	return v, nil
}

// Decode implements cache.Codec.
func (jsonText) Decode(b []byte) (json.RawMessage, error) {
	if !json.Valid(b) {
		return nil, errNotJSON
	}
	return json.RawMessage(b), nil
}

// newHTTPCache returns the typed cache the /v1/cache routes serve.
//
// Its local level is off: in tracking mode rueidis's client-side cache
// (bounded in bytes) already serves repeated reads from memory, and in
// Pub/Sub mode every read then goes to Redis, so an invalidation of a key on
// one instance is seen by every other at once. A local level bounded by a count
// of entries that may each be as large as a request body is a memory hazard
// a shared HTTP cache does without.
func newHTTPCache(store *cache.Store) *cache.Cache[json.RawMessage] {
	return cache.New(store, cache.Config[json.RawMessage]{
		Namespace: CacheNamespace,
		Codec:     jsonText{},
		LocalSize: -1,
	})
}

type cachePutRequest struct {
	Value json.RawMessage `json:"value"`
	TTLMs *int64          `json:"ttlMs"`
	Tags  []string        `json:"tags"`
	Lease *string         `json:"lease"`
}

type cacheInvalidateRequest struct {
	Keys []string `json:"keys"`
	Tags []string `json:"tags"`
}

// cacheEntryResponse is a hit: the value and when it was cached and
// expires (epoch ms).
type cacheEntryResponse struct {
	Value     json.RawMessage `json:"value"`
	CachedAt  int64           `json:"cachedAt"`
	ExpiresAt int64           `json:"expiresAt"`
}

// cacheMissResponse is the 404 of GET ?lease=1: the error object, and the
// lease when this caller must load.
type cacheMissResponse struct {
	Error *apiError `json:"error"`
	Lease string    `json:"lease,omitempty"`
}

// cacheQuery is the query string of GET /v1/cache/{key}.
type cacheQuery struct {
	lease bool
	wait  time.Duration
	tags  []string
}

// cacheKey returns the {key} path parameter: 1 to cache.MaxKeyLen bytes of
// UTF-8. Keys and tags are UTF-8 everywhere because JSON bodies can carry
// nothing else: a key in the path that no {"keys": [...]} could name would
// be out of reach of POST /v1/cache/invalidate, and a tag in the query that
// no PUT body could repeat would make its lease unusable.
func cacheKey(r *http.Request) (string, *apiError) {
	return pathText(r, "key", cache.MaxKeyLen)
}

// cacheNames checks a list of keys or tags: each 1 to cache.MaxKeyLen bytes
// of UTF-8, at most max of them.
func cacheNames(field string, names []string, max int) *apiError {
	if len(names) > max {
		return badInput(field, "at most %d %s, got %d", max, field, len(names))
	}
	for _, n := range names {
		if n == "" || len(n) > cache.MaxKeyLen || !utf8.ValidString(n) {
			return badInput(field, "every entry of %s must be 1 to %d bytes of UTF-8", field, cache.MaxKeyLen)
		}
	}
	return nil
}

// parseCacheQuery reads lease, waitMs and tags. Unknown parameters are
// refused as unknown body fields are; waitMs and tags only go with lease=1.
func parseCacheQuery(r *http.Request) (cacheQuery, *apiError) {
	var q cacheQuery
	vals, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return q, badInput("", "malformed query string")
	}
	names := make([]string, 0, len(vals))
	for name := range vals {
		names = append(names, name)
	}
	slices.Sort(names) // the first bad parameter is always the same one
	for _, name := range names {
		v := vals[name]
		switch name {
		case "lease", "waitMs":
			if len(v) != 1 {
				return q, badInput(name, "%s must be given once, got %d", name, len(v))
			}
		case "tags":
		default:
			return q, badInput(name, "unknown query parameter %q (want lease, waitMs, tags)", name)
		}
	}
	if v, ok := vals["lease"]; ok {
		switch v[0] {
		case "1", "true":
			q.lease = true
		case "0", "false":
		default:
			return q, badInput("lease", "lease must be 1 or 0, got %q", v[0])
		}
	}
	if v, ok := vals["waitMs"]; ok {
		if !q.lease {
			return q, badInput("waitMs", "waitMs is only for lease=1")
		}
		maxMs := int64(MaxCacheWait / time.Millisecond)
		ms, err := strconv.ParseInt(v[0], 10, 64)
		if err != nil || ms < 0 || ms > maxMs {
			return q, badInput("waitMs", "waitMs must be an integer between 0 and %d, got %q", maxMs, v[0])
		}
		q.wait = time.Duration(ms) * time.Millisecond
	}
	if v, ok := vals["tags"]; ok {
		if !q.lease {
			return q, badInput("tags", "tags is only for lease=1 (a read needs no tags: the value records its own)")
		}
		if ae := cacheNames("tags", v, cache.MaxTags); ae != nil {
			return q, ae
		}
		q.tags = v
	}
	return q, nil
}

// writeCacheEntry answers 200 with a hit.
func writeCacheEntry(w http.ResponseWriter, v json.RawMessage, m cache.Meta) {
	writeJSON(w, http.StatusOK, cacheEntryResponse{
		Value:     v,
		CachedAt:  m.CachedAt.UnixMilli(),
		ExpiresAt: expiryMs(m.ExpiresAt),
	})
}

// handleCacheGet serves GET /v1/cache/{key}: a read, or with lease=1 the
// first step of the lease protocol.
func (s *server) handleCacheGet(w http.ResponseWriter, r *http.Request) {
	key, ae := cacheKey(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	q, ae := parseCacheQuery(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	if q.lease && r.Method == http.MethodHead {
		// The answer to HEAD has no body: the lease would be given to no
		// one and hold the key for its whole lifetime.
		writeError(w, badInput("lease", "lease=1 needs GET: the answer to HEAD has no body to carry the lease"))
		return
	}
	if !q.lease {
		v, m, err := s.cache.Get(r.Context(), key)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		writeCacheEntry(w, v, m)
		return
	}
	var opts []cache.Option
	if len(q.tags) > 0 {
		opts = append(opts, cache.Tags(q.tags...))
	}
	v, m, lease, err := s.cache.Lease(r.Context(), key, q.wait, opts...)
	switch {
	case err == nil:
		writeCacheEntry(w, v, m)
	case errors.Is(err, cache.ErrNotFound) && lease != "":
		if r.Context().Err() != nil {
			// The client is gone and will never load: give the lease up
			// (an invalidation deletes it) so the callers waiting for it
			// get one at once rather than when it expires.
			_ = s.cache.Invalidate(context.WithoutCancel(r.Context()), key)
			return
		}
		writeJSON(w, http.StatusNotFound, cacheMissResponse{
			Error: &apiError{Status: http.StatusNotFound, Code: codeNotFound,
				Message: "not in the cache: load the value and PUT it with this lease"},
			Lease: lease,
		})
	case errors.Is(err, cache.ErrNotFound):
		// Another caller holds the lease and waitMs ran out (or a Go
		// caller cached a not-found): no lease, the usual 404.
		writeJSON(w, http.StatusNotFound, cacheMissResponse{Error: toAPIError(err)})
	default:
		s.fail(w, r, err)
	}
}

// handleCachePut serves PUT /v1/cache/{key}: without a lease a plain write
// (which also cancels any lease: a load in flight will not overwrite it),
// with one the last step of the lease protocol.
func (s *server) handleCachePut(w http.ResponseWriter, r *http.Request) {
	key, ae := cacheKey(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	var req cachePutRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	if req.Value == nil {
		writeError(w, badInput("value", "value is required (any JSON value)"))
		return
	}
	var value bytes.Buffer
	if err := json.Compact(&value, req.Value); err != nil {
		// encoding/json has checked it already.
		writeError(w, badInput("value", "value must be a JSON value"))
		return
	}
	if value.Len() > cache.MaxValueSize {
		writeError(w, badInput("value", "value must be at most %d bytes of JSON, got %d", cache.MaxValueSize, value.Len()))
		return
	}
	ttl, ae := durationMs("ttlMs", req.TTLMs, cache.MaxTTL)
	if ae != nil {
		writeError(w, ae)
		return
	}
	if ae := cacheNames("tags", req.Tags, cache.MaxTags); ae != nil {
		writeError(w, ae)
		return
	}
	if req.Lease != nil && (*req.Lease == "" || len(*req.Lease) > maxLeaseLen) {
		writeError(w, badInput("lease", "lease must be 1 to %d bytes (the lease GET ?lease=1 answered), got %d", maxLeaseLen, len(*req.Lease)))
		return
	}
	opts := []cache.Option{cache.TTL(ttl)}
	if len(req.Tags) > 0 {
		opts = append(opts, cache.Tags(req.Tags...))
	}
	var err error
	if req.Lease == nil {
		err = s.cache.Set(r.Context(), key, value.Bytes(), opts...)
	} else {
		err = s.cache.Fill(r.Context(), key, *req.Lease, value.Bytes(), opts...)
		if errors.Is(err, cache.ErrInvalidArgument) {
			// Everything else was checked above: the lease is malformed,
			// or was given with other tags than these.
			writeError(w, badInput("lease", "%s", err.Error()))
			return
		}
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleCacheDelete serves DELETE /v1/cache/{key}: 204 whether or not a
// value was there. It also deletes the key's lease: a caller that got a
// lease and cannot load gives it up this way, and the callers waiting for
// it get a fresh one at once.
func (s *server) handleCacheDelete(w http.ResponseWriter, r *http.Request) {
	key, ae := cacheKey(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	if err := s.cache.Invalidate(r.Context(), key); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleCacheInvalidate serves POST /v1/cache/invalidate: the keys, then the
// tags. When it answers 204, this instance serves no old value of them; no
// lease given before it can write one of the keys back on any instance, nor
// a value under one of the tags on this one. Other instances see the tags'
// change within their invalidation latency (docs/cache.md).
func (s *server) handleCacheInvalidate(w http.ResponseWriter, r *http.Request) {
	var req cacheInvalidateRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	if ae := cacheNames("keys", req.Keys, maxCacheInvalidate); ae != nil {
		writeError(w, ae)
		return
	}
	if ae := cacheNames("tags", req.Tags, maxCacheInvalidate); ae != nil {
		writeError(w, ae)
		return
	}
	if len(req.Keys) > 0 {
		if err := s.cache.Invalidate(r.Context(), req.Keys...); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	if len(req.Tags) > 0 {
		if err := s.cache.InvalidateTags(r.Context(), req.Tags...); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	w.WriteHeader(http.StatusNoContent)
}
