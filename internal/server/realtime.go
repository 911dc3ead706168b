package server

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/elevacare/eleva-redis/realtime"
)

// The real-time routes (package realtime): publish and history of channels,
// subscription tokens for browsers, the SSE stream and presence. Messages
// carry ids and versions, not health data; they are never logged.
//
// data is any JSON value, stored as its JSON text and returned as the same
// value; a message a Go publisher stored that is not JSON reads back as a
// JSON string.

// sseRoute is the route that also accepts a subscription token (auth.go).
const sseRoute = "GET /v1/realtime/sse"

// History limits of GET /v1/channels/{channel}/history.
const (
	defaultHistoryLimit = 100
	maxHistoryLimit     = 1000
)

type publishRequest struct {
	Data           json.RawMessage `json:"data"`
	IdempotencyKey *string         `json:"idempotencyKey"`
}

type positionResponse struct {
	Epoch  string `json:"epoch"`
	Offset uint64 `json:"offset"`
}

type historyMessage struct {
	Offset      uint64          `json:"offset"`
	Data        json.RawMessage `json:"data"`
	PublishedAt int64           `json:"publishedAt"`
}

type historyResponse struct {
	Epoch    string           `json:"epoch"`
	Messages []historyMessage `json:"messages"`
}

type realtimeTokenRequest struct {
	Subject  *string  `json:"subject"`
	Channels []string `json:"channels"`
	TTLMs    *int64   `json:"ttlMs"`
}

type realtimeTokenResponse struct {
	Token     string `json:"token"`
	ExpiresAt int64  `json:"expiresAt"`
}

type presenceRequest struct {
	Status *string `json:"status"`
	TTLMs  *int64  `json:"ttlMs"`
}

type presenceSetResponse struct {
	Status    string `json:"status"`
	ExpiresAt int64  `json:"expiresAt"`
}

type presenceStatus struct {
	Status    string `json:"status"`
	UpdatedAt int64  `json:"updatedAt,omitempty"`
}

type presenceResponse struct {
	Statuses map[string]presenceStatus `json:"statuses"`
}

// newRealtimeTokens returns the token issuer for secret, or for a random
// secret of this process when secret is empty (tokens then do not survive
// a restart and are not accepted by other instances; the command logs so).
func newRealtimeTokens(secret []byte) *realtime.Tokens {
	if len(secret) == 0 {
		secret = make([]byte, 32)
		_, _ = rand.Read(secret)
	}
	t, err := realtime.NewTokens(secret)
	if err != nil {
		panic("server: Deps.RealtimeSecret: " + err.Error())
	}
	return t
}

// realtimeError turns a realtime.FieldError into the 400 naming its field;
// any other error is answered by the error table.
func realtimeError(err error) error {
	var fe *realtime.FieldError
	if errors.As(err, &fe) {
		return badInput(fe.Field, "%s", fe.Err.Error())
	}
	return err
}

func channelParam(r *http.Request) (string, *apiError) {
	ch := r.PathValue("channel")
	if err := realtime.CheckChannel(ch); err != nil {
		return "", badInput("channel", "%s", err.Error())
	}
	return ch, nil
}

// jsonData returns stored data as a JSON value.
func jsonData(b []byte) json.RawMessage {
	if json.Valid(b) {
		return b
	}
	q, _ := json.Marshal(string(b))
	return q
}

func (s *server) handlePublish(w http.ResponseWriter, r *http.Request) {
	ch, ae := channelParam(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	var req publishRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	if len(req.Data) == 0 {
		writeError(w, badInput("data", "data is required (any JSON value)"))
		return
	}
	if len(req.Data) > realtime.MaxDataLen {
		writeError(w, badInput("data", "data must be at most %d bytes of JSON, got %d", realtime.MaxDataLen, len(req.Data)))
		return
	}
	var opts []realtime.PublishOption
	if req.IdempotencyKey != nil {
		k := *req.IdempotencyKey
		if k == "" || len(k) > realtime.MaxIdempotencyKeyLen {
			writeError(w, badInput("idempotencyKey", "idempotencyKey must be 1 to %d bytes", realtime.MaxIdempotencyKeyLen))
			return
		}
		opts = append(opts, realtime.WithIdempotencyKey(k))
	}
	p, err := s.realtime.Publish(r.Context(), ch, req.Data, opts...)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, positionResponse{Epoch: p.Epoch, Offset: p.Offset})
}

func (s *server) handleHistory(w http.ResponseWriter, r *http.Request) {
	ch, ae := channelParam(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	q := r.URL.Query()
	var since uint64
	if v := q.Get("sinceOffset"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeError(w, badInput("sinceOffset", "sinceOffset must be a non-negative integer"))
			return
		}
		since = n
	}
	limit := defaultHistoryLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxHistoryLimit {
			writeError(w, badInput("limit", "limit must be an integer from 1 to %d", maxHistoryLimit))
			return
		}
		limit = n
	}
	h, err := s.realtime.History(r.Context(), ch, since, limit)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := historyResponse{Epoch: h.Epoch, Messages: make([]historyMessage, 0, len(h.Messages))}
	for _, m := range h.Messages {
		out.Messages = append(out.Messages, historyMessage{Offset: m.Offset, Data: jsonData(m.Data), PublishedAt: m.PublishedAt.UnixMilli()})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) handleRealtimeToken(w http.ResponseWriter, r *http.Request) {
	var req realtimeTokenRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	if req.Subject == nil {
		writeError(w, badInput("subject", "subject is required"))
		return
	}
	if req.Channels == nil {
		writeError(w, badInput("channels", "channels is required"))
		return
	}
	if req.TTLMs == nil || *req.TTLMs <= 0 || *req.TTLMs > realtime.MaxTokenTTL.Milliseconds() {
		writeError(w, badInput("ttlMs", "ttlMs is required, from 1 to %d", realtime.MaxTokenTTL.Milliseconds()))
		return
	}
	tok, exp, err := s.rtTokens.Issue(*req.Subject, req.Channels, time.Duration(*req.TTLMs)*time.Millisecond)
	if err != nil {
		s.fail(w, r, realtimeError(err))
		return
	}
	writeJSON(w, http.StatusCreated, realtimeTokenResponse{Token: tok, ExpiresAt: exp.UnixMilli()})
}

// handleSSE serves the stream: requireAuth let the request through with a
// valid API key or with a token for the SSE handler to verify.
func (s *server) handleSSE() http.Handler {
	return realtime.SSEHandler(s.realtime, realtime.SSEConfig{
		Tokens:       s.rtTokens,
		Authorize:    s.auth.allow,
		PingInterval: s.rtPing,
		Logger:       s.log,
		Registerer:   s.registry,
		OnError:      func(w http.ResponseWriter, r *http.Request, err error) { s.fail(w, r, realtimeError(err)) },
	})
}

func (s *server) handlePresenceSet(w http.ResponseWriter, r *http.Request) {
	subject := r.PathValue("subject")
	if err := realtime.CheckSubject(subject); err != nil {
		writeError(w, badInput("subject", "%s", err.Error()))
		return
	}
	var req presenceRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	if req.Status == nil {
		writeError(w, badInput("status", "status is required: online, busy or offline"))
		return
	}
	st := realtime.Status(*req.Status)
	switch st {
	case realtime.StatusOnline, realtime.StatusBusy, realtime.StatusOffline:
	default:
		writeError(w, badInput("status", "status must be online, busy or offline"))
		return
	}
	var ttl time.Duration
	if req.TTLMs != nil {
		if *req.TTLMs <= 0 || *req.TTLMs > int64(24*time.Hour/time.Millisecond) {
			writeError(w, badInput("ttlMs", "ttlMs must be from 1 to %d", int64(24*time.Hour/time.Millisecond)))
			return
		}
		ttl = time.Duration(*req.TTLMs) * time.Millisecond
	}
	ps, err := s.realtime.SetPresence(r.Context(), subject, st, ttl)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, presenceSetResponse{Status: string(ps.Status), ExpiresAt: ps.ExpiresAt.UnixMilli()})
}

func (s *server) handlePresenceGet(w http.ResponseWriter, r *http.Request) {
	var subjects []string
	for _, v := range r.URL.Query()["subjects"] {
		subjects = append(subjects, strings.Split(v, ",")...)
	}
	if len(subjects) == 0 || len(subjects) > realtime.MaxChannels {
		writeError(w, badInput("subjects", "subjects must list 1 to %d subjects, comma-separated", realtime.MaxChannels))
		return
	}
	for _, sub := range subjects {
		if err := realtime.CheckSubject(sub); err != nil {
			writeError(w, badInput("subjects", "%s", err.Error()))
			return
		}
	}
	got, err := s.realtime.Presence(r.Context(), subjects)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := presenceResponse{Statuses: make(map[string]presenceStatus, len(got))}
	for sub, ps := range got {
		st := presenceStatus{Status: string(ps.Status)}
		if !ps.UpdatedAt.IsZero() {
			st.UpdatedAt = ps.UpdatedAt.UnixMilli()
		}
		out.Statuses[sub] = st
	}
	writeJSON(w, http.StatusOK, out)
}
