package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// SSE defaults.
const (
	DefaultPingInterval = 15 * time.Second
	DefaultWriteTimeout = 10 * time.Second
	DefaultRetry        = 2 * time.Second
	// DefaultSSEQueueSize is the events that may wait for one browser: a
	// stream's writer drains its queue whenever it is not empty, so only a
	// client that stopped reading fills it, and it then resumes with
	// Last-Event-ID. Smaller than DefaultQueueSize: every idle connection
	// holds one.
	DefaultSSEQueueSize = 64
	// MaxEventIDLen bounds the Last-Event-ID header the gateway parses.
	MaxEventIDLen = MaxChannels * 64
)

// SSEConfig configures SSEHandler. The zero value is the documented default.
type SSEConfig struct {
	// Tokens verifies the subscription tokens given in ?token= or
	// "Authorization: Bearer"; nil accepts none.
	Tokens *Tokens
	// Authorize, when not nil, is asked first: true lets the request read
	// every channel without a token and without expiry (the service passes
	// its API-key check).
	Authorize func(r *http.Request) bool
	// PingInterval is the idle time after which a ": ping" comment is sent;
	// 0 means DefaultPingInterval (15s).
	PingInterval time.Duration
	// QueueSize bounds the events waiting for one connection; a client that
	// falls further behind is disconnected (it resumes with Last-Event-ID).
	// 0 means DefaultSSEQueueSize (64).
	QueueSize int
	// WriteTimeout bounds each write to the client; 0 means
	// DefaultWriteTimeout (10s).
	WriteTimeout time.Duration
	// Retry is the reconnection delay sent to browsers (retry:); 0 means
	// DefaultRetry (2s).
	Retry time.Duration
	// OnError answers a request refused before the stream starts; nil
	// means a plain-text answer with the status of StatusOf(err).
	OnError func(w http.ResponseWriter, r *http.Request, err error)
	// Logger receives stream failures (never payloads or tokens); nil
	// means slog.Default().
	Logger *slog.Logger
	// Registerer receives the SSE metrics; nil means none.
	Registerer prometheus.Registerer
}

// StatusOf is the HTTP status for an error of this package.
func StatusOf(err error) int {
	switch {
	case errors.Is(err, ErrInvalidArgument):
		return http.StatusBadRequest
	case errors.Is(err, ErrUnauthorized):
		return http.StatusUnauthorized
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, ErrBackend), errors.Is(err, ErrClosed):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

type sseHandler struct {
	b   Broker
	cfg SSEConfig
	m   *metrics
	log *slog.Logger
}

// SSEHandler serves Server-Sent Events for GET ?channels=a,b[&token=...]:
//
//   - Each event carries id: the position of every channel of the
//     connection, in the order of the channels parameter (EncodeEventID);
//     the browser sends it back as Last-Event-ID when it reconnects, and the
//     stream resumes every channel after it with no gap and no duplicate.
//   - event: message, data: {"channel","offset","data"} (data is the
//     published JSON, or a JSON string when it is not JSON).
//   - event: reset, data: {"channel"} when a channel cannot be resumed (its
//     gap is older than history, or its epoch changed); delivery then
//     continues from the channel's current position.
//   - Without Last-Event-ID delivery starts with what is published after the
//     connection opens; the stream's first bytes are retry: and an id: with
//     no data, which sets the browser's Last-Event-ID without an event.
//   - a ": ping" comment every PingInterval, so that proxies keep idle
//     connections open.
//
// A token's channels must include every requested channel (else 403); the
// stream ends when the token expires. A client that does not read is
// disconnected once QueueSize events wait for it.
func SSEHandler(b Broker, cfg SSEConfig) http.Handler {
	h := &sseHandler{b: b, cfg: cfg, m: newMetrics(cfg.Registerer), log: cfg.Logger}
	if h.log == nil {
		h.log = slog.Default()
	}
	return h
}

func (h *sseHandler) fail(w http.ResponseWriter, r *http.Request, err error) {
	if h.cfg.OnError != nil {
		h.cfg.OnError(w, r, err)
		return
	}
	code := StatusOf(err)
	msg := err.Error()
	if code >= 500 {
		msg = http.StatusText(code)
	}
	http.Error(w, msg, code)
}

// SSEChannels parses the channels query parameter (comma-separated; the
// parameter may repeat).
func SSEChannels(r *http.Request) ([]string, error) {
	var chans []string
	for _, v := range r.URL.Query()["channels"] {
		chans = append(chans, strings.Split(v, ",")...)
	}
	if err := checkChannels(chans, nil); err != nil {
		return nil, &FieldError{Field: "channels", Err: err}
	}
	return chans, nil
}

// authorize returns the expiry of the request's grant (zero: none).
func (h *sseHandler) authorize(r *http.Request, channels []string) (time.Time, error) {
	if h.cfg.Authorize != nil && h.cfg.Authorize(r) {
		return time.Time{}, nil
	}
	tok := r.URL.Query().Get("token")
	if tok == "" {
		if scheme, t, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
			tok = strings.TrimSpace(t)
		}
	}
	if tok == "" || h.cfg.Tokens == nil {
		return time.Time{}, fmt.Errorf("%w: a subscription token is required (?token= or Authorization: Bearer)", ErrUnauthorized)
	}
	c, err := h.cfg.Tokens.Verify(tok)
	if err != nil {
		return time.Time{}, err
	}
	for _, ch := range channels {
		if !c.Allows(ch) {
			return time.Time{}, fmt.Errorf("%w: %q", ErrForbidden, ch)
		}
	}
	return c.ExpiresAt, nil
}

func (h *sseHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		h.fail(w, r, fmt.Errorf("%w: method %s", ErrInvalidArgument, r.Method))
		return
	}
	channels, err := SSEChannels(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	exp, err := h.authorize(r, channels)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	var since []Position
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		if since, err = ParseEventID(id, len(channels)); err != nil {
			h.fail(w, r, &FieldError{Field: "Last-Event-ID", Err: err})
			return
		}
	}
	ctx := r.Context()
	if !exp.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, exp)
		defer cancel()
	}
	c := &sseStream{
		h:    h,
		ping: orDur(h.cfg.PingInterval, DefaultPingInterval),
		wt:   orDur(h.cfg.WriteTimeout, DefaultWriteTimeout),
	}
	// Counted open first: an overflow may end the stream (and count it
	// closed) as soon as Subscribe has joined its channels.
	h.m.sseOpen(1)
	sub, err := h.b.Subscribe(ctx, channels, since, WithQueueSize(orInt(h.cfg.QueueSize, DefaultSSEQueueSize)),
		WithDisconnectOnOverflow(), withNotify(c.wake))
	if err != nil {
		h.m.sseOpen(-1)
		if !exp.IsZero() && ctx.Err() != nil && r.Context().Err() == nil {
			err = fmt.Errorf("%w: token expired", ErrUnauthorized)
		}
		h.fail(w, r, err)
		return
	}
	c.mu.Lock()
	c.sub = sub
	c.mu.Unlock()
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-cache")
	hd.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	hijack := r.ProtoMajor == 1 && r.Method == http.MethodGet
	if hijack {
		// net/http then writes a body delimited by the connection's close
		// (no chunking) and says Connection: close: after the hijack the
		// stream writes raw event bytes.
		hd.Set("Transfer-Encoding", "identity")
	}
	w.WriteHeader(http.StatusOK)
	if hijack {
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			c.pos = sub.Positions()
			c.start(conn, h.preamble(c.pos), exp)
			return // the stream goes on without this goroutine
		}
	}
	// HTTP/2, HEAD, or a ResponseWriter that cannot be hijacked: stream on
	// this goroutine.
	reason := h.stream(ctx, r, w, sub, channels)
	if reason == "client" && !exp.IsZero() && r.Context().Err() == nil {
		reason = "token_expired"
	}
	_ = sub.Close()
	c.stop(reason)
}

// preamble is a stream's first bytes: the reconnection delay and the start
// position, as an id with no data (it sets the browser's Last-Event-ID
// without dispatching an event).
func (h *sseHandler) preamble(pos []Position) []byte {
	buf := make([]byte, 0, 64)
	buf = append(buf, "retry: "...)
	buf = strconv.AppendInt(buf, orDur(h.cfg.Retry, DefaultRetry).Milliseconds(), 10)
	buf = append(buf, "\nid: "...)
	buf = AppendEventID(buf, pos)
	return append(buf, "\n\n"...)
}

// stream writes events until the client leaves, the token expires or the
// connection must end; it returns the reason.
func (h *sseHandler) stream(ctx context.Context, r *http.Request, w http.ResponseWriter, sub *Subscription, channels []string) string {
	rc := http.NewResponseController(w)
	// The server's ReadTimeout would end the stream: the request is read,
	// and only the client's going away matters now.
	_ = rc.SetReadDeadline(time.Time{})
	if r.Method == http.MethodHead {
		return "client"
	}
	idx := make(map[string]int, len(channels))
	for i, ch := range channels {
		idx[ch] = i
	}
	pos := sub.Positions()
	buf := h.preamble(pos)
	wt := orDur(h.cfg.WriteTimeout, DefaultWriteTimeout)
	flush := func() bool {
		_ = rc.SetWriteDeadline(time.Now().Add(wt))
		if _, err := w.Write(buf); err != nil {
			return false
		}
		buf = buf[:0]
		return rc.Flush() == nil
	}
	if !flush() {
		return "write_error"
	}
	ping := orDur(h.cfg.PingInterval, DefaultPingInterval)
	for {
		pctx, cancel := context.WithTimeout(ctx, ping)
	events:
		for {
			ev, err := sub.Next(pctx)
			if err != nil {
				pingDue := pctx.Err() != nil
				cancel()
				switch {
				case errors.Is(err, ErrOverflow), errors.Is(err, ErrClosed):
					return h.endReason(err)
				case ctx.Err() != nil:
					return "client"
				case !pingDue:
					return h.endReason(err)
				}
				buf = append(buf, ": ping\n\n"...)
				if !flush() {
					return "write_error"
				}
				break events
			}
			// Write this event and whatever else is ready, then flush once.
			for {
				i := idx[ev.Channel]
				pos[i] = ev.Position
				buf = appendEvent(buf, ev, pos)
				if len(buf) > 32<<10 {
					break
				}
				var ok bool
				ev, ok, err = sub.TryNext(ctx)
				if err != nil || !ok {
					break // an error shows again in Next
				}
			}
			if !flush() {
				cancel()
				return "write_error"
			}
		}
	}
}

func appendEvent(buf []byte, ev Event, pos []Position) []byte {
	buf = append(buf, "id: "...)
	buf = AppendEventID(buf, pos)
	if ev.Kind == EventReset {
		buf = append(buf, "\nevent: reset\ndata: {\"channel\":"...)
		buf = appendJSONString(buf, ev.Channel)
		return append(buf, "}\n\n"...)
	}
	buf = append(buf, "\nevent: message\n"...)
	buf = append(buf, ev.Message.sseData()...)
	return append(buf, "\n\n"...)
}

// sseCache holds a Message's encoded "data:" line, shared by every
// connection that sends the message.
type sseCache struct{ p atomic.Pointer[[]byte] }

func (m *Message) sseData() []byte {
	if b := m.sse.p.Load(); b != nil {
		return *b
	}
	b := make([]byte, 0, len(m.Data)+len(m.Channel)+48)
	b = append(b, `data: {"channel":`...)
	b = appendJSONString(b, m.Channel)
	b = append(b, `,"offset":`...)
	b = strconv.AppendUint(b, m.Offset, 10)
	b = append(b, `,"data":`...)
	if json.Valid(m.Data) && !strings.ContainsAny(string(m.Data), "\r\n") {
		b = append(b, m.Data...)
	} else {
		// Not JSON (a Go publisher's bytes), or JSON spread over lines,
		// which one data: line cannot hold: send it as a JSON string.
		b = appendJSONString(b, string(m.Data))
	}
	b = append(b, '}')
	m.sse.p.Store(&b)
	return b
}

func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string always marshals; escapes \r and \n
	return append(b, q...)
}

// AppendEventID appends the SSE id of positions: for each channel, in the
// connection's order, "<epoch>:<offset>", joined by ",". The zero Position
// (nothing published yet) is ":0".
func AppendEventID(b []byte, positions []Position) []byte {
	for i, p := range positions {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, p.Epoch...)
		b = append(b, ':')
		b = strconv.AppendUint(b, p.Offset, 10)
	}
	return b
}

// EncodeEventID is AppendEventID to a string.
func EncodeEventID(positions []Position) string { return string(AppendEventID(nil, positions)) }

// ParseEventID parses an id of EncodeEventID for n channels. Every failure
// wraps ErrInvalidArgument.
func ParseEventID(id string, n int) ([]Position, error) {
	if len(id) > MaxEventIDLen {
		return nil, fmt.Errorf("%w: Last-Event-ID longer than %d bytes", ErrInvalidArgument, MaxEventIDLen)
	}
	if n <= 0 || n > MaxChannels {
		return nil, fmt.Errorf("%w: %d channels", ErrInvalidArgument, n)
	}
	out := make([]Position, 0, n)
	for part := range strings.SplitSeq(id, ",") {
		if len(out) == n {
			return nil, fmt.Errorf("%w: Last-Event-ID holds more than %d positions", ErrInvalidArgument, n)
		}
		e, o, ok := strings.Cut(part, ":")
		if !ok || !validEpoch(e) {
			return nil, fmt.Errorf("%w: malformed position in Last-Event-ID", ErrInvalidArgument)
		}
		off, err := strconv.ParseUint(o, 10, 64)
		if err != nil || (e == "" && off != 0) || (o != "0" && o[0] == '0') {
			return nil, fmt.Errorf("%w: malformed offset in Last-Event-ID", ErrInvalidArgument)
		}
		out = append(out, Position{Epoch: e, Offset: off})
	}
	if len(out) != n {
		return nil, fmt.Errorf("%w: Last-Event-ID holds %d positions for %d channels", ErrInvalidArgument, len(out), n)
	}
	return out, nil
}
