package tempdata

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/elevacare/eleva-redis/internal/keys"
)

// Header names of the idempotency middleware.
const (
	// IdempotencyKeyHeader is the request header of
	// draft-ietf-httpapi-idempotency-key-header.
	IdempotencyKeyHeader = "Idempotency-Key"
	// ReplayedHeader ("true") marks a response replayed from the record of
	// an earlier request rather than produced by the handler.
	ReplayedHeader = "Idempotent-Replayed"
	// BodyOmittedHeader ("true") marks a replay whose body was too large to
	// record (see IdempotencyMiddleware).
	BodyOmittedHeader = "Idempotent-Body-Omitted"
)

// MaxIdempotencyKeyLen is the longest accepted Idempotency-Key value.
const MaxIdempotencyKeyLen = 255

// Defaults of IdempotencyOptions.
const (
	DefaultIdempotencyTTL = 24 * time.Hour
	DefaultInProgressTTL  = time.Minute
	DefaultMaxBodyBytes   = 1 << 20
)

// IdempotencyOptions configures IdempotencyMiddleware. The zero value is the
// documented default: POST and PATCH, header optional, one shared scope,
// bodies up to 1 MiB, a one-minute in-progress lease, responses kept 24
// hours, 5xx responses not stored, slog.Default().
type IdempotencyOptions struct {
	// Methods the middleware applies to; nil means POST and PATCH (the
	// methods that are not idempotent by definition). Other requests pass
	// through untouched.
	Methods []string
	// Require answers 400 to a request of those methods without an
	// Idempotency-Key header; false lets it through unprotected.
	Require bool
	// KeyScope returns the client a request belongs to (an API key id, a
	// user id), so that two clients' keys never collide: a key is only
	// ever matched against earlier requests of the same scope. nil (or "")
	// means one scope shared by every client, which is only right when
	// keys are unguessable and clients trust each other. Keep scopes short
	// (a scope and key together must fit MaxNameLen).
	KeyScope func(*http.Request) string
	// MaxBodyBytes bounds the request body the fingerprint is computed
	// over; a larger body gets 413. 0 means DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// InProgressTTL is the lease of a request being handled: if the
	// process dies mid-request, the key may be used again after this long.
	// Set it above the handler's longest run (the server's WriteTimeout),
	// or a slow first request and its retry may both run. 0 means
	// DefaultInProgressTTL.
	InProgressTTL time.Duration
	// TTL is how long a completed response is kept for replay; 0 means
	// DefaultIdempotencyTTL.
	TTL time.Duration
	// StoreServerErrors records 5xx responses for replay like any other.
	// By default a 5xx (like a panic) fails the record instead, so that a
	// retry runs the handler again: right when a 5xx means nothing was
	// done, wrong when the handler can fail after a side effect (make such
	// handlers transactional, or set this).
	StoreServerErrors bool
	// Logger receives store errors (never keys, bodies or responses); nil
	// means slog.Default().
	Logger *slog.Logger
}

func (o IdempotencyOptions) logger() *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return slog.Default()
}

// IdempotencyMiddleware makes non-idempotent requests safe to retry, after
// draft-ietf-httpapi-idempotency-key-header: a client sends a unique
// Idempotency-Key header (an sf-string such as "8e03978e-40d5", or the bare
// value; printable ASCII, at most MaxIdempotencyKeyLen characters) and may
// repeat the request as often as it likes; the handler runs once.
//
// For a request of one of opts.Methods with the header:
//
//   - The body is read (up to opts.MaxBodyBytes, else 413
//     payload_too_large) and given back to the handler unchanged. The
//     request's fingerprint is the SHA-256 of its method, its path and
//     query (URL.RequestURI) and its body.
//   - The first request with a key runs the handler. Its response (status,
//     the headers the handler set, body) is buffered, recorded in store
//     (Store.Complete), then sent.
//   - A duplicate that arrives while the first is running gets 409
//     in_progress; one that arrives after it completed gets the recorded
//     response replayed: the same status, headers and body bytes, plus the
//     header Idempotent-Replayed: true.
//   - The same key with a different fingerprint (another body, path or
//     method) gets 422 fingerprint_mismatch.
//   - A handler that panics, or answers 5xx (unless
//     opts.StoreServerErrors), fails the record (Store.Fail): nothing is
//     replayed and a retry runs the handler again. A panic is re-raised
//     after the record is failed.
//   - When the store cannot be reached the request gets 503 unavailable
//     and the handler does not run: the middleware fails closed.
//
// Recorded headers are those the handler added or changed (headers set by
// outer middleware before it are theirs to set again), except hop-by-hop
// headers (Connection, Keep-Alive, Transfer-Encoding, Upgrade, TE, Trailer,
// Proxy-*) and Set-Cookie, which is never stored or replayed: a session
// cookie does not belong in a shared store at rest, and a replay must not
// hand out credentials. Trailers and 1xx responses are not recorded.
//
// Responses are buffered, so Flush has no effect before the handler returns.
// A response body larger than MaxValueSize is streamed to the client as the
// handler writes it, and recorded without its body: replays get the status
// and headers, an empty body and Idempotent-Body-Omitted: true.
//
// Requests of other methods, and requests without the header (unless
// opts.Require, which answers 400 invalid_argument), pass through untouched.
// Errors use the service's JSON shape
// {"error":{"code":"...","message":"..."}}.
func IdempotencyMiddleware(store Store, opts IdempotencyOptions) func(http.Handler) http.Handler {
	methods := opts.Methods
	if methods == nil {
		methods = []string{http.MethodPost, http.MethodPatch}
	}
	maxBody := opts.MaxBodyBytes
	if maxBody <= 0 {
		maxBody = DefaultMaxBodyBytes
	}
	leaseTTL := opts.InProgressTTL
	if leaseTTL <= 0 {
		leaseTTL = DefaultInProgressTTL
	}
	ttl := opts.TTL
	if ttl <= 0 {
		ttl = DefaultIdempotencyTTL
	}
	log := opts.logger()
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !slices.Contains(methods, r.Method) {
				next.ServeHTTP(w, r)
				return
			}
			vals := r.Header.Values(IdempotencyKeyHeader)
			if len(vals) == 0 {
				if opts.Require {
					idemWriteError(w, http.StatusBadRequest, "invalid_argument", "the Idempotency-Key header is required", IdempotencyKeyHeader)
					return
				}
				next.ServeHTTP(w, r)
				return
			}
			idemKey, ok := parseIdempotencyKey(vals)
			if !ok {
				idemWriteError(w, http.StatusBadRequest, "invalid_argument",
					"Idempotency-Key must be one sf-string of 1 to 255 printable ASCII characters", IdempotencyKeyHeader)
				return
			}
			body, status := idemReadBody(r, maxBody)
			switch status {
			case http.StatusRequestEntityTooLarge:
				idemWriteError(w, status, "payload_too_large", "request body over "+strconv.FormatInt(maxBody, 10)+" bytes", "")
				return
			case http.StatusBadRequest:
				idemWriteError(w, status, "invalid_argument", "cannot read the request body", "")
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
			r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }

			scope := ""
			if opts.KeyScope != nil {
				scope = opts.KeyScope(r)
			}
			key := idemStoreKey(scope, idemKey)
			rec, err := store.Begin(r.Context(), key, idemFingerprint(r, body), leaseTTL)
			switch {
			case err == nil:
			case errors.Is(err, ErrInProgress):
				idemWriteError(w, http.StatusConflict, "in_progress", "a request with this Idempotency-Key is still being processed; retry later", "")
				return
			case errors.Is(err, ErrFingerprintMismatch):
				idemWriteError(w, http.StatusUnprocessableEntity, "fingerprint_mismatch", "this Idempotency-Key was used for a different request", "")
				return
			case errors.Is(err, ErrInvalidArgument):
				idemWriteError(w, http.StatusBadRequest, "invalid_argument", "Idempotency-Key too long for this client", IdempotencyKeyHeader)
				return
			case errors.Is(err, ErrBackend):
				log.Warn("tempdata: idempotency middleware cannot reach its store; refusing the request", "err", err)
				idemWriteError(w, http.StatusServiceUnavailable, "unavailable", "idempotency store unavailable", "")
				return
			case r.Context().Err() != nil:
				return // the client is gone
			default:
				log.Error("tempdata: idempotency middleware failed", "err", err)
				idemWriteError(w, http.StatusInternalServerError, "internal", "internal error", "")
				return
			}
			if rec.State == Completed {
				if err := idemReplay(w, rec.Response); err != nil {
					log.Error("tempdata: idempotency middleware cannot decode a stored response", "err", err)
					idemWriteError(w, http.StatusInternalServerError, "internal", "internal error", "")
				}
				return
			}
			idemRun(w, r, next, store, key, ttl, opts.StoreServerErrors, log)
		})
	}
}

// idemRun runs the handler of a started record and completes or fails it.
func idemRun(w http.ResponseWriter, r *http.Request, next http.Handler, store Store, key string, ttl time.Duration, storeServerErrors bool, log *slog.Logger) {
	cw := &idemWriter{w: w, before: w.Header().Clone()}
	// Complete and Fail run even when the client has gone: the handler's
	// work happened (or did not) either way.
	ctx := context.WithoutCancel(r.Context())
	panicked := true
	defer func() {
		if !panicked {
			return
		}
		if err := store.Fail(ctx, key); err != nil {
			log.Error("tempdata: idempotency middleware cannot fail the record of a panicked request; the key stays in progress until its lease ends", "err", err)
		}
	}()
	next.ServeHTTP(cw, r)
	panicked = false

	if !cw.wrote {
		cw.status = http.StatusOK
	}
	if cw.status >= 500 && !storeServerErrors {
		if err := store.Fail(ctx, key); err != nil {
			log.Error("tempdata: idempotency middleware cannot fail the record of a 5xx response; the key stays in progress until its lease ends", "err", err)
		}
	} else {
		if cw.sent == nil {
			cw.sent = cw.recordedHeader()
		}
		resp := encodeResponse(cw.status, cw.sent, cw.buf.Bytes(), cw.streaming)
		if len(resp) > MaxValueSize {
			resp = encodeResponse(cw.status, cw.sent, nil, true)
		}
		if err := store.Complete(ctx, key, resp, ttl); err != nil {
			// The response is still sent: the handler's work is done. A
			// duplicate gets 409 until the lease ends, and may run again
			// after that.
			log.Error("tempdata: idempotency middleware cannot record a response", "err", err)
		}
	}
	if !cw.streaming {
		w.WriteHeader(cw.status)
		_, _ = w.Write(cw.buf.Bytes())
	}
}

// idemWriter buffers the handler's response so it can be recorded before the
// client sees it, and switches to streaming when the body outgrows
// MaxValueSize.
type idemWriter struct {
	w         http.ResponseWriter
	before    http.Header // the headers before the handler ran
	status    int
	wrote     bool
	buf       bytes.Buffer
	streaming bool
	sent      http.Header // recorded headers, taken when the status is sent
}

func (c *idemWriter) Header() http.Header { return c.w.Header() }

func (c *idemWriter) WriteHeader(code int) {
	if code < 100 || code > 999 {
		// What net/http does: a bug in the handler, handled like a panic
		// (the record is failed).
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if c.wrote {
		return
	}
	if code >= 100 && code < 200 {
		// Informational (103 Early Hints): sent at once, not recorded.
		c.w.WriteHeader(code)
		return
	}
	c.status, c.wrote = code, true
}

func (c *idemWriter) Write(p []byte) (int, error) {
	if !c.wrote {
		c.WriteHeader(http.StatusOK)
	}
	if c.streaming {
		return c.w.Write(p)
	}
	if c.buf.Len()+len(p) <= MaxValueSize {
		return c.buf.Write(p)
	}
	// Too large to record: send what we have and stream the rest.
	c.streaming = true
	c.sent = c.recordedHeader()
	c.w.WriteHeader(c.status)
	if _, err := c.w.Write(c.buf.Bytes()); err != nil {
		return 0, err
	}
	c.buf = bytes.Buffer{}
	return c.w.Write(p)
}

// recordedHeader returns the headers the handler added or changed, without
// the ones that must not be stored.
func (c *idemWriter) recordedHeader() http.Header {
	h := c.w.Header()
	out := make(http.Header, len(h))
	for name, vals := range h {
		if !idemRecordable(name, h) || slices.Equal(c.before[name], vals) {
			continue
		}
		out[name] = slices.Clone(vals)
	}
	return out
}

// idemRecordable reports whether header name may be stored and replayed.
func idemRecordable(name string, h http.Header) bool {
	switch http.CanonicalHeaderKey(name) {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Set-Cookie", ReplayedHeader, BodyOmittedHeader:
		return false
	}
	// Headers named by Connection are hop-by-hop too.
	for _, v := range h.Values("Connection") {
		for _, f := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), name) {
				return false
			}
		}
	}
	return true
}

// idemReplay writes a recorded response.
func idemReplay(w http.ResponseWriter, resp []byte) error {
	status, header, body, omitted, err := decodeResponse(resp)
	if err != nil {
		return err
	}
	h := w.Header()
	for name, vals := range header {
		h[name] = vals
	}
	h.Set(ReplayedHeader, "true")
	if omitted {
		h.Del("Content-Length")
		h.Set(BodyOmittedHeader, "true")
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
	return nil
}

// idemReadBody reads the whole body, up to max bytes. It returns 413 for a
// larger body and 400 when the body cannot be read.
func idemReadBody(r *http.Request, max int64) ([]byte, int) {
	if r.Body == nil || r.Body == http.NoBody {
		return []byte{}, 0
	}
	if r.ContentLength > max {
		return nil, http.StatusRequestEntityTooLarge
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, max+1))
	_ = r.Body.Close()
	if err != nil {
		return nil, http.StatusBadRequest
	}
	if int64(len(body)) > max {
		return nil, http.StatusRequestEntityTooLarge
	}
	return body, 0
}

// parseIdempotencyKey reads the header's single value: an RFC 8941
// sf-string ("..." with \" and \\ escapes) or, leniently, the bare value.
func parseIdempotencyKey(vals []string) (string, bool) {
	if len(vals) != 1 {
		return "", false
	}
	v := strings.TrimSpace(vals[0])
	if strings.HasPrefix(v, `"`) {
		if len(v) < 2 || v[len(v)-1] != '"' {
			return "", false
		}
		var b strings.Builder
		in := v[1 : len(v)-1]
		for i := 0; i < len(in); i++ {
			c := in[i]
			switch c {
			case '\\':
				if i+1 >= len(in) || (in[i+1] != '"' && in[i+1] != '\\') {
					return "", false
				}
				i++
				b.WriteByte(in[i])
			case '"':
				return "", false
			default:
				b.WriteByte(c)
			}
		}
		v = b.String()
	}
	if v == "" || len(v) > MaxIdempotencyKeyLen {
		return "", false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] > 0x7e {
			return "", false
		}
	}
	return v, true
}

// idemStoreKey is the Store key of a client's Idempotency-Key. Escape never
// produces ':', so distinct (scope, key) pairs give distinct store keys.
func idemStoreKey(scope, key string) string {
	return "http:" + keys.Escape(scope) + ":" + key
}

// idemFingerprint is the hex SHA-256 of method, path and query, and body.
// Method and request URI cannot contain '\n', so the input is unambiguous.
func idemFingerprint(r *http.Request, body []byte) string {
	h := sha256.New()
	io.WriteString(h, r.Method)
	io.WriteString(h, "\n")
	io.WriteString(h, r.URL.RequestURI())
	io.WriteString(h, "\n")
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))
}

// The recorded response format (version 1):
//
//	byte     1 (version)
//	byte     flags: bit 0 = body omitted
//	uint16   status, big-endian
//	uvarint  number of header names, then per name (sorted):
//	         uvarint len, name, uvarint number of values, per value: uvarint len, value
//	rest     the body
const respVersion = 1

func encodeResponse(status int, h http.Header, body []byte, omitted bool) []byte {
	names := make([]string, 0, len(h))
	for name := range h {
		names = append(names, name)
	}
	slices.Sort(names)
	b := make([]byte, 0, 64+len(body))
	var flags byte
	if omitted {
		flags = 1
		body = nil
	}
	b = append(b, respVersion, flags)
	b = binary.BigEndian.AppendUint16(b, uint16(status))
	b = binary.AppendUvarint(b, uint64(len(names)))
	for _, name := range names {
		b = binary.AppendUvarint(b, uint64(len(name)))
		b = append(b, name...)
		b = binary.AppendUvarint(b, uint64(len(h[name])))
		for _, v := range h[name] {
			b = binary.AppendUvarint(b, uint64(len(v)))
			b = append(b, v...)
		}
	}
	return append(b, body...)
}

var errBadResponse = errors.New("tempdata: malformed recorded response")

func decodeResponse(b []byte) (status int, h http.Header, body []byte, omitted bool, err error) {
	if len(b) < 4 || b[0] != respVersion || b[1]&^1 != 0 {
		return 0, nil, nil, false, errBadResponse
	}
	omitted = b[1]&1 != 0
	status = int(binary.BigEndian.Uint16(b[2:4]))
	if status < 200 || status > 999 {
		return 0, nil, nil, false, errBadResponse
	}
	rest := b[4:]
	next := func() (uint64, bool) {
		v, n := binary.Uvarint(rest)
		if n <= 0 {
			return 0, false
		}
		rest = rest[n:]
		return v, true
	}
	str := func() (string, bool) {
		n, ok := next()
		if !ok || n > uint64(len(rest)) {
			return "", false
		}
		s := string(rest[:n])
		rest = rest[n:]
		return s, true
	}
	nNames, ok := next()
	if !ok || nNames > uint64(len(rest)) {
		return 0, nil, nil, false, errBadResponse
	}
	h = make(http.Header, nNames)
	for i := uint64(0); i < nNames; i++ {
		name, ok := str()
		if !ok {
			return 0, nil, nil, false, errBadResponse
		}
		nVals, ok := next()
		if !ok || nVals > uint64(len(rest)) {
			return 0, nil, nil, false, errBadResponse
		}
		vals := make([]string, 0, nVals)
		for j := uint64(0); j < nVals; j++ {
			v, ok := str()
			if !ok {
				return 0, nil, nil, false, errBadResponse
			}
			vals = append(vals, v)
		}
		h[name] = vals
	}
	if omitted && len(rest) > 0 {
		return 0, nil, nil, false, errBadResponse
	}
	return status, h, rest, omitted, nil
}

type idemErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

func idemWriteError(w http.ResponseWriter, status int, code, msg, field string) {
	body, _ := json.Marshal(struct {
		Error idemErrorBody `json:"error"`
	}{idemErrorBody{Code: code, Message: msg, Field: field}})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}
