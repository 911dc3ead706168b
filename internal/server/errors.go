package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/elevacare/eleva-redis/analytics"
	"github.com/elevacare/eleva-redis/cache"
	"github.com/elevacare/eleva-redis/lock"
	"github.com/elevacare/eleva-redis/notify"
	"github.com/elevacare/eleva-redis/ratelimit"
	"github.com/elevacare/eleva-redis/realtime"
	"github.com/elevacare/eleva-redis/session"
	"github.com/elevacare/eleva-redis/tempdata"
)

// Error codes of the API (HTTP-API.md, "Errors").
const (
	codeInvalidArgument  = "invalid_argument"
	codeUnauthorized     = "unauthorized"
	codeForbidden        = "forbidden"
	codeNotFound         = "not_found"
	codeMethodNotAllowed = "method_not_allowed"
	codeAlreadyExists    = "already_exists"
	codeLockHeld         = "lock_held"
	codeLockLost         = "lock_lost"
	codeLeaseLost        = "lease_lost"
	codeInProgress       = "in_progress"
	codeFingerprint      = "fingerprint_mismatch"
	codePayloadTooLarge  = "payload_too_large"
	codeUnavailable      = "unavailable"
	codeInternal         = "internal"
)

// apiError is an error answer: {"error": {"code", "message", "field"}}.
type apiError struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	// Field names the offending request field (JSON path, "subjects.user"),
	// only for bad input.
	Field string `json:"field,omitempty"`
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

var errInternal = &apiError{Status: http.StatusInternalServerError, Code: codeInternal, Message: "internal error"}

// badInput is a 400 invalid_argument naming field.
func badInput(field, format string, args ...any) *apiError {
	return &apiError{Status: http.StatusBadRequest, Code: codeInvalidArgument, Field: field, Message: fmt.Sprintf(format, args...)}
}

// errorTable maps the library's sentinel errors to HTTP answers: the one
// place where a library error becomes a status code. The first entry that
// matches (errors.Is) wins, so an error wrapping a sentinel and a context
// error (a Wait that ended with the request) is answered by its sentinel.
// Errors found in no entry are 500 internal.
//
// field names the request field an invalid-input error is about when the
// sentinel alone says which (lock names, TTLs, tokens); the handlers check
// their input first and name the field themselves, so these rows are the
// fallback that keeps any missed case a 400 rather than a 500.
var errorTable = []struct {
	err    error
	status int
	code   string
	field  string
}{
	{ratelimit.ErrInvalidLimit, http.StatusBadRequest, codeInvalidArgument, ""},
	{ratelimit.ErrUnknownAlgorithm, http.StatusBadRequest, codeInvalidArgument, ""},
	{ratelimit.ErrInvalidKey, http.StatusBadRequest, codeInvalidArgument, ""},
	{ratelimit.ErrMissingSubject, http.StatusBadRequest, codeInvalidArgument, ""},
	{ratelimit.ErrUnknownPolicy, http.StatusNotFound, codeNotFound, ""},
	{ratelimit.ErrBackend, http.StatusServiceUnavailable, codeUnavailable, ""},

	{lock.ErrInvalidName, http.StatusBadRequest, codeInvalidArgument, "name"},
	{lock.ErrInvalidTTL, http.StatusBadRequest, codeInvalidArgument, "ttlMs"},
	{lock.ErrInvalidToken, http.StatusBadRequest, codeInvalidArgument, "token"},
	{lock.ErrHeld, http.StatusConflict, codeLockHeld, ""},
	{lock.ErrLost, http.StatusConflict, codeLockLost, ""},
	// Locks fail closed: nothing is granted, refreshed or released on a
	// guess, and the caller is told the backend is the problem.
	{lock.ErrBackend, http.StatusServiceUnavailable, codeUnavailable, ""},

	{tempdata.ErrInvalidArgument, http.StatusBadRequest, codeInvalidArgument, ""},
	{tempdata.ErrNotFound, http.StatusNotFound, codeNotFound, ""},
	{tempdata.ErrExists, http.StatusConflict, codeAlreadyExists, ""},
	{tempdata.ErrInProgress, http.StatusConflict, codeInProgress, ""},
	{tempdata.ErrFingerprintMismatch, http.StatusUnprocessableEntity, codeFingerprint, ""},
	{tempdata.ErrBackend, http.StatusServiceUnavailable, codeUnavailable, ""},
	// A stored value that cannot be decrypted (its key was removed from
	// ELEVA_ENCRYPTION_KEY too early, or the data was tampered with) is the
	// service's own problem, not the caller's and not a backend outage: 500,
	// logged at error level. Retrying cannot help, so it is not a 503.
	{tempdata.ErrUnreadable, http.StatusInternalServerError, codeInternal, ""},

	{session.ErrInvalidArgument, http.StatusBadRequest, codeInvalidArgument, ""},
	{session.ErrNotFound, http.StatusNotFound, codeNotFound, ""},
	{session.ErrExists, http.StatusConflict, codeAlreadyExists, ""},
	// Sessions fail closed: no session is found, touched or revoked on a
	// guess.
	{session.ErrBackend, http.StatusServiceUnavailable, codeUnavailable, ""},
	// As for temporary data: the service's own problem, logged, not retried.
	{session.ErrUnreadable, http.StatusInternalServerError, codeInternal, ""},

	{cache.ErrInvalidArgument, http.StatusBadRequest, codeInvalidArgument, ""},
	{cache.ErrNotFound, http.StatusNotFound, codeNotFound, ""},
	// The key was invalidated (or set) since the lease was given: the value,
	// loaded from data older than that change, was not written.
	{cache.ErrLeaseLost, http.StatusConflict, codeLeaseLost, ""},
	// The cache fails open, to the caller's database: 503 tells the caller
	// to load the value itself (and not write it back). Nothing is served
	// as a value that is not one.
	{cache.ErrBackend, http.StatusServiceUnavailable, codeUnavailable, ""},
	// A stored value that is not JSON (a Go caller wrote the namespace with
	// another codec): the service's own problem, logged, not retried.
	{cache.ErrCodec, http.StatusInternalServerError, codeInternal, ""},

	{notify.ErrInvalidArgument, http.StatusBadRequest, codeInvalidArgument, ""},
	{notify.ErrNotFound, http.StatusNotFound, codeNotFound, ""},
	// A worker's batch was taken over (its lease expired and another
	// worker claimed the user): the call changed nothing.
	{notify.ErrLeaseLost, http.StatusConflict, codeLeaseLost, ""},
	// Enqueue fails rather than drops: 503 tells the caller that nothing
	// may have been queued; retrying with the same id is safe.
	{notify.ErrBackend, http.StatusServiceUnavailable, codeUnavailable, ""},

	{analytics.ErrInvalidArgument, http.StatusBadRequest, codeInvalidArgument, ""},
	// Counter writes and captures fail rather than block: the caller decides
	// whether to retry (the failure is counted in eleva_analytics_errors_total).
	{analytics.ErrBackend, http.StatusServiceUnavailable, codeUnavailable, ""},
	// The memory backend's event buffer is full: the events were dropped
	// (counted); retrying later may succeed.
	{analytics.ErrBufferFull, http.StatusServiceUnavailable, codeUnavailable, ""},

	{realtime.ErrInvalidArgument, http.StatusBadRequest, codeInvalidArgument, ""},
	// A missing, forged or expired subscription token.
	{realtime.ErrUnauthorized, http.StatusUnauthorized, codeUnauthorized, ""},
	// A valid token that does not list a requested channel.
	{realtime.ErrForbidden, http.StatusForbidden, codeForbidden, ""},
	// Publish fails rather than drops: 503 tells the caller the message may
	// or may not be published; retrying with an idempotencyKey is safe.
	{realtime.ErrBackend, http.StatusServiceUnavailable, codeUnavailable, ""},
	{realtime.ErrClosed, http.StatusServiceUnavailable, codeUnavailable, ""},

	{context.DeadlineExceeded, http.StatusServiceUnavailable, codeUnavailable, ""},
	{context.Canceled, http.StatusServiceUnavailable, codeUnavailable, ""},
}

// toAPIError maps any error to its answer (see errorTable).
func toAPIError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	for _, e := range errorTable {
		if errors.Is(err, e.err) {
			msg := err.Error()
			if e.status >= 500 {
				// Backend errors can carry addresses and internals: say what
				// failed, not how.
				msg = e.err.Error()
			}
			return &apiError{Status: e.status, Code: e.code, Message: msg, Field: e.field}
		}
	}
	return errInternal
}

// fail writes the answer for err, logging the errors that are ours (5xx).
func (s *server) fail(w http.ResponseWriter, r *http.Request, err error) {
	ae := toAPIError(err)
	if ae.Status >= 500 {
		level := slog.LevelError
		if ae.Status == http.StatusServiceUnavailable {
			level = slog.LevelWarn // the backend's trouble, not a bug of ours
		}
		s.log.LogAttrs(r.Context(), level, "request failed",
			slog.String("route", routeLabel(r.Pattern)), slog.String("code", ae.Code), slog.String("error", err.Error()))
	}
	writeError(w, ae)
}

// writeError writes {"error": ae} with ae.Status.
func writeError(w http.ResponseWriter, ae *apiError) {
	writeJSON(w, ae.Status, struct {
		Error *apiError `json:"error"`
	}{ae})
}

// writeJSON writes v as the JSON body with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only our own response types reach here; they always marshal.
		status = http.StatusInternalServerError
		b = []byte(`{"error":{"code":"internal","message":"internal error"}}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// decodeJSON decodes the request body into dst strictly: one JSON object,
// no unknown fields, no trailing data, at most maxBytes. Every failure is an
// *apiError: 413 for an oversized body, 400 naming the field otherwise.
func decodeJSON(w http.ResponseWriter, r *http.Request, maxBytes int64, dst any) *apiError {
	if ae := checkContentType(r); ae != nil {
		return ae
	}
	body := http.MaxBytesReader(w, r.Body, maxBytes)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return decodeError(err, maxBytes)
	}
	// Exactly one value: anything but whitespace after it is an error.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return tooLarge(maxBytes)
		}
		return badInput("", "request body must be a single JSON object (unexpected data after it)")
	}
	return nil
}

// checkContentType refuses a request whose Content-Type is set and is not
// JSON. Refusing other types keeps browsers' "simple" cross-site requests
// (text/plain, forms) from reaching a loopback instance without keys: a
// page could otherwise make a visitor's browser take a value or consume a
// token on a developer's machine.
func checkContentType(r *http.Request) *apiError {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return badInput("", "Content-Type must be application/json")
		}
	}
	return nil
}

// decodeEmpty reads the body of a route that takes no input (take, fail):
// no body, or whitespace only, or an empty JSON object. Anything else is
// answered as decodeJSON answers it (an unknown field, malformed JSON), so
// such routes are as strict as the others without forcing clients to send
// "{}".
func decodeEmpty(w http.ResponseWriter, r *http.Request, maxBytes int64) *apiError {
	// Checked even without a body: an empty cross-site form post must not
	// take a value.
	if ae := checkContentType(r); ae != nil {
		return ae
	}
	if r.Body == nil {
		return nil
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return tooLarge(maxBytes)
		}
		return badInput("", "cannot read the request body")
	}
	if len(bytes.TrimLeft(b, " \t\r\n")) == 0 {
		return nil
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	var none struct{}
	return decodeJSON(w, r, maxBytes, &none)
}

func tooLarge(maxBytes int64) *apiError {
	return &apiError{Status: http.StatusRequestEntityTooLarge, Code: codePayloadTooLarge,
		Message: fmt.Sprintf("request body is larger than %d bytes", maxBytes)}
}

// decodeError turns an encoding/json error into the answer naming the field.
func decodeError(err error, maxBytes int64) *apiError {
	var (
		mbe *http.MaxBytesError
		se  *json.SyntaxError
		te  *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &mbe):
		return tooLarge(maxBytes)
	case errors.Is(err, io.EOF):
		return badInput("", "request body is empty: want a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badInput("", "request body is truncated JSON")
	case errors.As(err, &se):
		return badInput("", "malformed JSON at byte %d: %s", se.Offset, se.Error())
	case errors.As(err, &te):
		if te.Field == "" {
			return badInput("", "request body must be a JSON object, got %s", te.Value)
		}
		return badInput(te.Field, "%s: want %s, got %s", te.Field, jsonTypeName(te.Type.Kind().String()), te.Value)
	}
	if name, ok := unknownField(err); ok {
		return badInput(name, "unknown field %q", name)
	}
	return badInput("", "invalid JSON: %s", err.Error())
}

// unknownField extracts the name from encoding/json's `json: unknown field "x"`
// (the package exports no type for it).
func unknownField(err error) (string, bool) {
	rest, ok := strings.CutPrefix(err.Error(), "json: unknown field ")
	if !ok {
		return "", false
	}
	name, err := strconv.Unquote(rest)
	if err != nil {
		return rest, true
	}
	return name, true
}

func jsonTypeName(kind string) string {
	switch {
	case strings.HasPrefix(kind, "int"), strings.HasPrefix(kind, "uint"):
		return "an integer"
	case strings.HasPrefix(kind, "float"):
		return "a number"
	case kind == "string":
		return "a string"
	case kind == "bool":
		return "a boolean"
	case kind == "map", kind == "struct":
		return "an object"
	case kind == "slice", kind == "array":
		return "an array"
	}
	return kind
}
