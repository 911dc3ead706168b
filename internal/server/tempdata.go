package server

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/elevacare/eleva-redis/tempdata"
)

// The /v1/temp, /v1/tokens and /v1/idempotency routes. Values, token data
// and idempotency responses are any JSON value: the handlers store the JSON
// text as received (sealed at rest when encryption is on) and return it as a
// JSON value, so a number, a string, an object or null round-trips as the
// same value.

// idemKeyPrefix starts the store key of every idempotency key of the API.
// tempdata.IdempotencyMiddleware keys start with "http:", so keys created
// through this API and keys of the middleware (on the same store) can never
// be equal: they differ in their first byte. Without it, a client could
// begin "http::<key>" and block, or read the recorded response of, a request
// handled by the middleware.
const idemKeyPrefix = "api:"

// maxIdemKeyLen is the longest idempotency key of the API: the store's limit
// less the prefix.
const maxIdemKeyLen = tempdata.MaxNameLen - len(idemKeyPrefix)

type putRequest struct {
	Value    json.RawMessage `json:"value"`
	TTLMs    *int64          `json:"ttlMs"`
	IfAbsent *bool           `json:"ifAbsent"`
}

type getResponse struct {
	Value     json.RawMessage `json:"value"`
	ExpiresAt int64           `json:"expiresAt"`
}

type valueResponse struct {
	Value json.RawMessage `json:"value"`
}

type issueRequest struct {
	Purpose *string         `json:"purpose"`
	Data    json.RawMessage `json:"data"`
	TTLMs   *int64          `json:"ttlMs"`
}

type issueResponse struct {
	Token     string `json:"token"`
	ExpiresAt int64  `json:"expiresAt"`
}

type consumeRequest struct {
	Purpose *string `json:"purpose"`
}

type dataResponse struct {
	Data json.RawMessage `json:"data"`
}

type beginRequest struct {
	TTLMs       *int64  `json:"ttlMs"`
	Fingerprint *string `json:"fingerprint"`
}

type beginResponse struct {
	State    string          `json:"state"`
	Response json.RawMessage `json:"response,omitempty"`
}

type completeRequest struct {
	Response json.RawMessage `json:"response"`
	TTLMs    *int64          `json:"ttlMs"`
}

type stateResponse struct {
	State string `json:"state"`
}

// pathName returns the path parameter param, or the answer to an empty or
// too long one (field: the parameter's name).
func pathName(r *http.Request, param string, maxLen int) (string, *apiError) {
	v := r.PathValue(param)
	if v == "" || len(v) > maxLen {
		return "", badInput(param, "%s must be 1 to %d bytes, got %d", param, maxLen, len(v))
	}
	return v, nil
}

// bodyName checks a required name field of a body.
func bodyName(field string, v *string) (string, *apiError) {
	if v == nil || *v == "" {
		return "", badInput(field, "%s is required and must not be empty", field)
	}
	if len(*v) > tempdata.MaxNameLen {
		return "", badInput(field, "%s must be at most %d bytes, got %d", field, tempdata.MaxNameLen, len(*v))
	}
	return *v, nil
}

// jsonValue checks a required "any JSON value" field. encoding/json has
// already checked that it is JSON; a JSON null is a value (absent is not).
func jsonValue(field string, v json.RawMessage) ([]byte, *apiError) {
	if v == nil {
		return nil, badInput(field, "%s is required (any JSON value)", field)
	}
	if len(v) > tempdata.MaxValueSize {
		return nil, badInput(field, "%s must be at most %d bytes of JSON, got %d", field, tempdata.MaxValueSize, len(v))
	}
	return v, nil
}

// storedJSON returns a stored value for a response. Values written through
// this API are JSON; a value a Go program stored through the library in the
// same namespace may not be, and cannot be answered as a JSON value: that is
// a 500 with a log line rather than a malformed body.
func (s *server) storedJSON(r *http.Request, v []byte) (json.RawMessage, bool) {
	if !json.Valid(v) {
		s.log.Error("stored value is not JSON (written by a library caller, not through the API); cannot return it",
			"route", routeLabel(r.Pattern), "bytes", len(v))
		return nil, false
	}
	return v, true
}

// tempNames returns the {namespace} and {key} path parameters.
func tempNames(r *http.Request) (ns, key string, ae *apiError) {
	if ns, ae = pathName(r, "namespace", tempdata.MaxNameLen); ae != nil {
		return "", "", ae
	}
	if key, ae = pathName(r, "key", tempdata.MaxNameLen); ae != nil {
		return "", "", ae
	}
	return ns, key, nil
}

// handleTempPut serves PUT /v1/temp/{namespace}/{key}.
func (s *server) handleTempPut(w http.ResponseWriter, r *http.Request) {
	ns, key, ae := tempNames(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	var req putRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	value, ae := jsonValue("value", req.Value)
	if ae != nil {
		writeError(w, ae)
		return
	}
	ttl, ae := durationMs("ttlMs", req.TTLMs, tempdata.MaxTTL)
	if ae != nil {
		writeError(w, ae)
		return
	}
	put := s.temp.Put
	if req.IfAbsent != nil && *req.IfAbsent {
		put = s.temp.PutIfAbsent
	}
	exp, err := put(r.Context(), ns, key, value, ttl)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, expiresResponse{ExpiresAt: expiryMs(exp)})
}

// handleTempGet serves GET /v1/temp/{namespace}/{key}.
func (s *server) handleTempGet(w http.ResponseWriter, r *http.Request) {
	ns, key, ae := tempNames(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	item, err := s.temp.Get(r.Context(), ns, key)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	v, ok := s.storedJSON(r, item.Value)
	if !ok {
		writeError(w, errInternal)
		return
	}
	writeJSON(w, http.StatusOK, getResponse{Value: v, ExpiresAt: expiryMs(item.ExpiresAt)})
}

// handleTempTake serves POST /v1/temp/{namespace}/{key}/take: of any number
// of concurrent callers, on any number of instances, exactly one gets 200.
func (s *server) handleTempTake(w http.ResponseWriter, r *http.Request) {
	ns, key, ae := tempNames(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	if ae := decodeEmpty(w, r, s.maxBody); ae != nil {
		writeError(w, ae)
		return
	}
	value, err := s.temp.Take(r.Context(), ns, key)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	v, ok := s.storedJSON(r, value)
	if !ok {
		writeError(w, errInternal)
		return
	}
	writeJSON(w, http.StatusOK, valueResponse{Value: v})
}

// handleTempDelete serves DELETE /v1/temp/{namespace}/{key}: 204 whether or
// not a value was there.
func (s *server) handleTempDelete(w http.ResponseWriter, r *http.Request) {
	ns, key, ae := tempNames(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	if err := s.temp.Delete(r.Context(), ns, key); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleTokenIssue serves POST /v1/tokens.
func (s *server) handleTokenIssue(w http.ResponseWriter, r *http.Request) {
	var req issueRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	purpose, ae := bodyName("purpose", req.Purpose)
	if ae != nil {
		writeError(w, ae)
		return
	}
	data, ae := jsonValue("data", req.Data)
	if ae != nil {
		writeError(w, ae)
		return
	}
	ttl, ae := durationMs("ttlMs", req.TTLMs, tempdata.MaxTTL)
	if ae != nil {
		writeError(w, ae)
		return
	}
	token, exp, err := s.temp.Issue(r.Context(), purpose, data, ttl)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, issueResponse{Token: token, ExpiresAt: expiryMs(exp)})
}

// handleTokenConsume serves POST /v1/tokens/{token}/consume: 200 exactly
// once; 404 for a used, expired, wrong-purpose or malformed token alike.
func (s *server) handleTokenConsume(w http.ResponseWriter, r *http.Request) {
	var req consumeRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	purpose, ae := bodyName("purpose", req.Purpose)
	if ae != nil {
		writeError(w, ae)
		return
	}
	// The token is not checked here: a malformed one gets the same 404 as
	// a used one (tempdata.Store.Consume), so its shape reveals nothing.
	data, err := s.temp.Consume(r.Context(), purpose, r.PathValue("token"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	v, ok := s.storedJSON(r, data)
	if !ok {
		writeError(w, errInternal)
		return
	}
	writeJSON(w, http.StatusOK, dataResponse{Data: v})
}

// idemKey returns the store key of the {key} path parameter (see
// idemKeyPrefix).
func idemKey(r *http.Request) (string, *apiError) {
	k, ae := pathName(r, "key", maxIdemKeyLen)
	if ae != nil {
		return "", ae
	}
	return idemKeyPrefix + k, nil
}

// handleIdemBegin serves POST /v1/idempotency/{key}/begin.
func (s *server) handleIdemBegin(w http.ResponseWriter, r *http.Request) {
	key, ae := idemKey(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	var req beginRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	ttl, ae := durationMs("ttlMs", req.TTLMs, tempdata.MaxTTL)
	if ae != nil {
		writeError(w, ae)
		return
	}
	fp := ""
	if req.Fingerprint != nil {
		if fp = *req.Fingerprint; len(fp) > tempdata.MaxNameLen {
			writeError(w, badInput("fingerprint", "fingerprint must be at most %d bytes, got %d", tempdata.MaxNameLen, len(fp)))
			return
		}
	}
	rec, err := s.temp.Begin(r.Context(), key, fp, ttl)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if rec.State == tempdata.Started {
		writeJSON(w, http.StatusCreated, beginResponse{State: string(tempdata.Started)})
		return
	}
	v, ok := s.storedJSON(r, rec.Response)
	if !ok {
		writeError(w, errInternal)
		return
	}
	writeJSON(w, http.StatusOK, beginResponse{State: string(tempdata.Completed), Response: v})
}

// handleIdemComplete serves POST /v1/idempotency/{key}/complete.
func (s *server) handleIdemComplete(w http.ResponseWriter, r *http.Request) {
	key, ae := idemKey(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	var req completeRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	resp, ae := jsonValue("response", req.Response)
	if ae != nil {
		writeError(w, ae)
		return
	}
	var ttl time.Duration // 0: keep the TTL begin set
	if req.TTLMs != nil {
		if ttl, ae = durationMs("ttlMs", req.TTLMs, tempdata.MaxTTL); ae != nil {
			writeError(w, ae)
			return
		}
	}
	if err := s.temp.Complete(r.Context(), key, resp, ttl); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, stateResponse{State: string(tempdata.Completed)})
}

// handleIdemFail serves POST /v1/idempotency/{key}/fail: the in-progress
// record is deleted and the key may begin again. A key with no record is not
// an error (it may have expired); a completed one is kept and answers 409
// already_exists.
func (s *server) handleIdemFail(w http.ResponseWriter, r *http.Request) {
	key, ae := idemKey(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	if ae := decodeEmpty(w, r, s.maxBody); ae != nil {
		writeError(w, ae)
		return
	}
	if err := s.temp.Fail(r.Context(), key); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, stateResponse{State: stateFailed})
}

// stateFailed is the state fail answers: the key has no in-progress record
// and may begin again.
const stateFailed = "failed"
