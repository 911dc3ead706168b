package server

import (
	"context"
	"net/http"
	"time"

	"github.com/elevacare/eleva-redis/lock"
)

// MaxLockWait bounds waitMs of POST /v1/locks/{name}/acquire. A request that
// waits holds a connection (and, through a proxy, often a worker) for that
// long; a caller that needs to wait longer retries.
const MaxLockWait = 30 * time.Second

// acquireRequest is the body of POST /v1/locks/{name}/acquire. Pointers tell
// a missing field from a zero one, so each gets its own message.
type acquireRequest struct {
	TTLMs  *int64 `json:"ttlMs"`
	WaitMs *int64 `json:"waitMs"`
}

type refreshRequest struct {
	Token *string `json:"token"`
	TTLMs *int64  `json:"ttlMs"`
}

type releaseRequest struct {
	Token *string `json:"token"`
}

type acquireResponse struct {
	Name      string `json:"name"`
	Token     string `json:"token"`
	Fence     uint64 `json:"fence"`
	ExpiresAt int64  `json:"expiresAt"`
}

type expiresResponse struct {
	ExpiresAt int64 `json:"expiresAt"`
}

type releaseResponse struct {
	Released bool `json:"released"`
}

// lockInfoResponse never carries the token: whoever has it can release the
// lock.
type lockInfoResponse struct {
	Name      string  `json:"name"`
	Held      bool    `json:"held"`
	ExpiresAt *int64  `json:"expiresAt,omitempty"`
	Fence     *uint64 `json:"fence,omitempty"`
}

// lockName returns the {name} path parameter, or the answer to a bad one.
func lockName(r *http.Request) (string, *apiError) {
	name := r.PathValue("name")
	if name == "" || len(name) > lock.MaxNameLen {
		return "", badInput("name", "lock name must be 1 to %d bytes, got %d", lock.MaxNameLen, len(name))
	}
	return name, nil
}

// durationMs checks a required millisecond field against [1ms, max].
func durationMs(field string, v *int64, max time.Duration) (time.Duration, *apiError) {
	if v == nil {
		return 0, badInput(field, "%s is required", field)
	}
	maxMs := int64(max / time.Millisecond)
	if *v <= 0 || *v > maxMs {
		return 0, badInput(field, "%s must be between 1 and %d, got %d", field, maxMs, *v)
	}
	return time.Duration(*v) * time.Millisecond, nil
}

// lockToken checks the token field: required, not empty, not absurdly long.
func lockToken(v *string) (string, *apiError) {
	if v == nil || *v == "" {
		return "", badInput("token", "token is required and must not be empty")
	}
	if len(*v) > lock.MaxNameLen {
		return "", badInput("token", "token must be at most %d bytes, got %d", lock.MaxNameLen, len(*v))
	}
	return *v, nil
}

// expiryMs is t in Unix milliseconds, rounded down: an expiry reported to a
// lock holder must never be later than the real one, so a holder that plans
// by it stops in time. Zero for the zero time.
func expiryMs(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// handleLockAcquire serves POST /v1/locks/{name}/acquire.
func (s *server) handleLockAcquire(w http.ResponseWriter, r *http.Request) {
	name, ae := lockName(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	var req acquireRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	ttl, ae := durationMs("ttlMs", req.TTLMs, lock.MaxTTL)
	if ae != nil {
		writeError(w, ae)
		return
	}
	var wait time.Duration
	if req.WaitMs != nil {
		maxMs := int64(MaxLockWait / time.Millisecond)
		if *req.WaitMs < 0 || *req.WaitMs > maxMs {
			writeError(w, badInput("waitMs", "waitMs must be between 0 and %d, got %d", maxMs, *req.WaitMs))
			return
		}
		wait = time.Duration(*req.WaitMs) * time.Millisecond
	}
	lease, err := s.locks.Acquire(r.Context(), name, ttl, lock.Wait(wait))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if r.Context().Err() != nil {
		// The client is gone and will never learn the token: release now
		// rather than block everyone else for the whole ttl.
		_ = lease.Release(context.WithoutCancel(r.Context()))
		return
	}
	writeJSON(w, http.StatusOK, acquireResponse{
		Name:      lease.Name,
		Token:     lease.Token,
		Fence:     lease.Fence,
		ExpiresAt: expiryMs(lease.ExpiresAt),
	})
}

// handleLockRefresh serves POST /v1/locks/{name}/refresh.
func (s *server) handleLockRefresh(w http.ResponseWriter, r *http.Request) {
	name, ae := lockName(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	var req refreshRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	token, ae := lockToken(req.Token)
	if ae != nil {
		writeError(w, ae)
		return
	}
	ttl, ae := durationMs("ttlMs", req.TTLMs, lock.MaxTTL)
	if ae != nil {
		writeError(w, ae)
		return
	}
	exp, err := s.locks.Refresh(r.Context(), name, token, ttl)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, expiresResponse{ExpiresAt: expiryMs(exp)})
}

// handleLockRelease serves POST /v1/locks/{name}/release.
func (s *server) handleLockRelease(w http.ResponseWriter, r *http.Request) {
	name, ae := lockName(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	var req releaseRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	token, ae := lockToken(req.Token)
	if ae != nil {
		writeError(w, ae)
		return
	}
	// Release runs even when the request's ctx is cancelled (the Locker's
	// contract): a client that hangs up after asking still frees the lock.
	if err := s.locks.Release(r.Context(), name, token); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, releaseResponse{Released: true})
}

// handleLockInspect serves GET /v1/locks/{name}.
func (s *server) handleLockInspect(w http.ResponseWriter, r *http.Request) {
	name, ae := lockName(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	info, err := s.locks.Inspect(r.Context(), name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := lockInfoResponse{Name: name, Held: info.Held}
	if info.Held {
		exp, fence := expiryMs(info.ExpiresAt), info.Fence
		out.ExpiresAt, out.Fence = &exp, &fence
	}
	writeJSON(w, http.StatusOK, out)
}
