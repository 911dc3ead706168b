package realtime

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/elevacare/eleva-redis/internal/testutil"
)

// sseEvent is one dispatched SSE event, or a comment.
type sseEvent struct {
	id      string
	hasID   bool
	event   string
	data    string
	comment string
}

// readSSE parses an event stream the way a browser does (WHATWG
// "event stream interpretation"): fields accumulate until an empty line
// dispatches; an id: field sets the last event id even when no data follows.
// fn returns false to stop.
func readSSE(r io.Reader, fn func(sseEvent) bool) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var cur sseEvent
	var data []string
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		if line == "" {
			if !cur.hasID && cur.event == "" && data == nil {
				continue // a blank line after a comment: nothing to dispatch
			}
			cur.data = strings.Join(data, "\n")
			if !fn(cur) {
				return nil
			}
			cur, data = sseEvent{}, nil
			continue
		}
		if c, ok := strings.CutPrefix(line, ":"); ok {
			if !fn(sseEvent{comment: strings.TrimPrefix(c, " ")}) {
				return nil
			}
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "id":
			cur.id, cur.hasID = value, true
		case "event":
			cur.event = value
		case "data":
			data = append(data, value)
		case "retry":
		default:
			return fmt.Errorf("unknown SSE field %q", field)
		}
	}
}

// sseMessage is the data of an event: message.
type sseMessage struct {
	Channel string          `json:"channel"`
	Offset  uint64          `json:"offset"`
	Data    json.RawMessage `json:"data"`
}

// openSSE opens a stream; the caller closes the body.
func openSSE(ctx context.Context, t *testing.T, base string, channels []string, lastID, token string) *http.Response {
	t.Helper()
	resp, err := dialSSE(ctx, base, channels, lastID, token)
	if err != nil {
		t.Fatalf("GET sse: %v", err)
	}
	return resp
}

func dialSSE(ctx context.Context, base string, channels []string, lastID, token string) (*http.Response, error) {
	q := url.Values{"channels": {strings.Join(channels, ",")}}
	if token != "" {
		q.Set("token", token)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	return http.DefaultClient.Do(req)
}

func allowAll(*http.Request) bool { return true }

// sseServer serves b with cfg (Authorize defaults to allowAll).
func sseServer(t *testing.T, b Broker, cfg SSEConfig) *httptest.Server {
	return sseServerMode(t, b, cfg, streamModes[0])
}

// streamMode is a way the gateway streams: hijacked from net/http (HTTP/1.x,
// the usual case) or on net/http's goroutine (HTTP/2, or a ResponseWriter
// that cannot be hijacked).
type streamMode struct {
	name string
	wrap func(http.Handler) http.Handler
}

var streamModes = []streamMode{
	{"hijacked", func(h http.Handler) http.Handler { return h }},
	{"net-http", func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Flushes but no Hijack (and no Unwrap to reach it).
			h.ServeHTTP(struct {
				http.ResponseWriter
				http.Flusher
			}{w, w.(http.Flusher)}, r)
		})
	}},
}

func sseServerMode(t *testing.T, b Broker, cfg SSEConfig, mode streamMode) *httptest.Server {
	if cfg.Authorize == nil && cfg.Tokens == nil {
		cfg.Authorize = allowAll
	}
	srv := httptest.NewServer(mode.wrap(SSEHandler(b, cfg)))
	t.Cleanup(srv.Close)
	return srv
}

// forEachMode is forEach for each stream mode, on an env of its own.
func forEachMode(t *testing.T, f func(t *testing.T, e env, mode streamMode)) {
	t.Parallel()
	for _, tg := range targets() {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			for _, m := range streamModes {
				t.Run(m.name, func(t *testing.T) { f(t, tg.newEnv(t), m) })
			}
		})
	}
}

// collect reads events of resp until n dispatched events with data were
// seen (comments and id-only events are passed to seen but not counted).
func collect(t *testing.T, resp *http.Response, n int) (events []sseEvent, first sseEvent) {
	t.Helper()
	gotFirst := false
	err := readSSE(resp.Body, func(e sseEvent) bool {
		if e.comment != "" {
			return true
		}
		if !gotFirst {
			gotFirst, first = true, e
			if e.data == "" {
				return n > 0
			}
		}
		events = append(events, e)
		return len(events) < n
	})
	if err != nil {
		t.Fatalf("reading the stream after %d events: %v", len(events), err)
	}
	return events, first
}

func TestSSEDeliversAndResumes(t *testing.T) {
	forEachMode(t, func(t *testing.T, e env, mode streamMode) {
		b := e.broker(Config{HistorySize: 5})
		srv := sseServerMode(t, b, SSEConfig{}, mode)
		ctx, cancel := context.WithCancel(ctxb)
		defer cancel()
		chans := []string{"appt:1", "appt:2"}
		resp := openSSE(ctx, t, srv.URL, chans, "", "")
		if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
			t.Fatalf("status %d, Content-Type %q", resp.StatusCode, ct)
		}
		_, first := collect(t, resp, 0)
		if !first.hasID || first.id != ":0,:0" || first.data != "" {
			t.Fatalf("first event = %+v, want the id-only start position", first)
		}
		p1 := testutil.Must[Position](t, "Publish")(b.Publish(ctxb, "appt:1", []byte(`{"v":1}`)))
		testutil.Must[Position](t, "Publish")(b.Publish(ctxb, "appt:2", []byte(`not json`)))
		evs, _ := collect(t, resp, 2)
		_ = resp.Body.Close()
		got := map[string]sseMessage{}
		for _, ev := range evs {
			var m sseMessage
			if ev.event != "message" || json.Unmarshal([]byte(ev.data), &m) != nil {
				t.Fatalf("event %+v", ev)
			}
			got[m.Channel] = m
		}
		if string(got["appt:1"].Data) != `{"v":1}` || got["appt:1"].Offset != 1 || string(got["appt:2"].Data) != `"not json"` {
			t.Fatalf("messages = %+v", got)
		}
		last := evs[1].id
		pos := testutil.Must[[]Position](t, "ParseEventID")(ParseEventID(last, 2))
		if pos[0] != p1 || pos[1].Offset != 1 {
			t.Fatalf("last id %q = %+v", last, pos)
		}

		// Disconnected: two more on appt:2, then resume with Last-Event-ID.
		for i := 2; i <= 3; i++ {
			testutil.Must[Position](t, "Publish")(b.Publish(ctxb, "appt:2", []byte(strconv.Itoa(i))))
		}
		resp = openSSE(ctx, t, srv.URL, chans, last, "")
		evs, _ = collect(t, resp, 2)
		_ = resp.Body.Close()
		for i, ev := range evs {
			var m sseMessage
			_ = json.Unmarshal([]byte(ev.data), &m)
			if m.Channel != "appt:2" || m.Offset != uint64(i+2) {
				t.Fatalf("resumed event %d = %+v", i, ev)
			}
		}

		// Beyond history: an explicit reset, then live delivery.
		for i := 4; i <= 12; i++ {
			testutil.Must[Position](t, "Publish")(b.Publish(ctxb, "appt:2", []byte(strconv.Itoa(i))))
		}
		resp = openSSE(ctx, t, srv.URL, chans, evs[1].id, "")
		defer resp.Body.Close()
		evs, _ = collect(t, resp, 1)
		if evs[0].event != "reset" || evs[0].data != `{"channel":"appt:2"}` {
			t.Fatalf("resume beyond history: %+v, want reset", evs[0])
		}
		if pos := testutil.Must[[]Position](t, "ParseEventID")(ParseEventID(evs[0].id, 2)); pos[1].Offset != 12 || pos[0] != p1 {
			t.Fatalf("reset id = %+v", pos)
		}
		testutil.Must[Position](t, "Publish")(b.Publish(ctxb, "appt:2", []byte("13")))
		evs, _ = collect(t, resp, 1)
		if !strings.Contains(evs[0].data, `"offset":13`) {
			t.Fatalf("after reset: %+v", evs[0])
		}
	})
}

func TestSSEPing(t *testing.T) {
	for _, mode := range streamModes {
		t.Run(mode.name, func(t *testing.T) {
			b := NewMemory(quiet(Config{}))
			srv := sseServerMode(t, b, SSEConfig{PingInterval: 20 * time.Millisecond}, mode)
			resp := openSSE(ctxb, t, srv.URL, []string{"quiet"}, "", "")
			defer resp.Body.Close()
			pings := 0
			if err := readSSE(resp.Body, func(e sseEvent) bool {
				if e.comment == "ping" {
					pings++
				}
				return pings < 2
			}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestSSEBadRequests(t *testing.T) {
	b := NewMemory(quiet(Config{}))
	srv := sseServer(t, b, SSEConfig{})
	tests := []struct {
		name, query, lastID string
		want                int
	}{
		{"no channels", "", "", 400},
		{"empty channel", "channels=a,,b", "", 400},
		{"duplicate", "channels=a,a", "", 400},
		{"bad id", "channels=a", "x", 400},
		{"id count", "channels=a", ":0,:0", 400},
		{"id offset without epoch", "channels=a", ":5", 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, srv.URL+"?"+tc.query, nil)
			if tc.lastID != "" {
				req.Header.Set("Last-Event-ID", tc.lastID)
			}
			resp := testutil.Must[*http.Response](t, "GET")(http.DefaultClient.Do(req))
			_ = resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
	resp := testutil.Must[*http.Response](t, "POST")(http.Post(srv.URL+"?channels=a", "text/plain", nil))
	_ = resp.Body.Close()
	if resp.StatusCode != 400 || resp.Header.Get("Allow") == "" {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
}

// Acceptance 2: a token for one appointment's channel cannot read another's
// (403); an expired token ends the stream.
func TestSSETokens(t *testing.T) {
	forEachMode(t, func(t *testing.T, e env, mode streamMode) {
		reg := prometheus.NewRegistry()
		b := e.broker(Config{})
		tokens := testutil.Must[*Tokens](t, "NewTokens")(NewTokens([]byte(strings.Repeat("s", 32))))
		srv := sseServerMode(t, b, SSEConfig{Tokens: tokens, Registerer: reg}, mode)
		tok, exp, err := tokens.Issue("patient:1", []string{"appt:1", "presence:expert:9"}, 1500*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		other := testutil.Must[*Tokens](t, "NewTokens")(NewTokens([]byte(strings.Repeat("o", 32))))
		forged, _, _ := other.Issue("patient:1", []string{"appt:2"}, time.Minute)
		tests := []struct {
			name     string
			channels []string
			token    string
			bearer   bool
			want     int
		}{
			{"own channel", []string{"appt:1"}, tok, false, 200},
			{"own channels by bearer", []string{"presence:expert:9", "appt:1"}, tok, true, 200},
			{"another appointment", []string{"appt:2"}, tok, false, 403},
			{"one of two outside", []string{"appt:1", "appt:2"}, tok, false, 403},
			{"no token", []string{"appt:1"}, "", false, 401},
			{"garbage", []string{"appt:1"}, "abc.def.ghi", false, 401},
			{"other secret", []string{"appt:2"}, forged, false, 401},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				q := url.Values{"channels": {strings.Join(tc.channels, ",")}}
				if !tc.bearer && tc.token != "" {
					q.Set("token", tc.token)
				}
				req, _ := http.NewRequest(http.MethodGet, srv.URL+"?"+q.Encode(), nil)
				if tc.bearer {
					req.Header.Set("Authorization", "Bearer "+tc.token)
				}
				ctx, cancel := context.WithCancel(ctxb)
				defer cancel()
				resp := testutil.Must[*http.Response](t, "GET")(http.DefaultClient.Do(req.WithContext(ctx)))
				defer resp.Body.Close()
				if resp.StatusCode != tc.want {
					body, _ := io.ReadAll(resp.Body)
					t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tc.want)
				}
			})
		}
		// The stream of a valid token ends at its expiry.
		resp := openSSE(ctxb, t, srv.URL, []string{"appt:1"}, "", tok)
		defer resp.Body.Close()
		waitStreamEnd(t, resp, 30*time.Second, "its token")
		if time.Now().Before(exp) {
			t.Fatalf("stream ended before the token's expiry %v", exp)
		}
		if n := testutil.Sum(t, reg, metricSSEClosed, "reason", "token_expired"); n != 1 {
			t.Fatalf("token_expired disconnects = %v, want 1", n)
		}
		// And the expired token opens nothing.
		resp2 := openSSE(ctxb, t, srv.URL, []string{"appt:1"}, "", tok)
		_ = resp2.Body.Close()
		if resp2.StatusCode != 401 {
			t.Fatalf("expired token: %d, want 401", resp2.StatusCode)
		}
	})
}

// Acceptance 3: a client that never reads is disconnected, and the server's
// memory stays bounded meanwhile.
func TestSSESlowClientDisconnected(t *testing.T) {
	forEachMode(t, func(t *testing.T, e env, mode streamMode) {
		reg := prometheus.NewRegistry()
		b := e.broker(Config{})
		srv := sseServerMode(t, b, SSEConfig{QueueSize: 16, WriteTimeout: 200 * time.Millisecond, Registerer: reg}, mode)
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// A small receive buffer: the server's writes block sooner.
		_ = conn.(*net.TCPConn).SetReadBuffer(4 << 10)
		fmt.Fprintf(conn, "GET /?channels=slow HTTP/1.1\r\nHost: x\r\n\r\n")
		// Wait until the stream is subscribed (the gauge counts it).
		for testutil.Sum(t, reg, metricSSEConnections) < 1 {
			time.Sleep(5 * time.Millisecond)
		}
		before := rss(t)
		data := []byte(`"` + strings.Repeat("x", 1000) + `"`)
		ended := func() bool {
			return testutil.Sum(t, reg, metricSSEClosed, "reason", "overflow")+testutil.Sum(t, reg, metricSSEClosed, "reason", "write_error") >= 1
		}
		sent := 0
		for ; sent < 50000 && !ended(); sent++ {
			if _, err := b.Publish(ctxb, "slow", data); err != nil {
				t.Fatal(err)
			}
		}
		deadline := time.Now().Add(20 * time.Second)
		for !ended() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if !ended() {
			t.Fatalf("a client that never reads was still connected after %d messages of 1 KB", sent)
		}
		t.Logf("%s: the non-reading client was disconnected after %d messages of 1 KB; RSS %d KiB before, %d KiB after",
			t.Name(), sent, before>>10, rss(t)>>10)
	})
}

// Closing the broker (the service shutting down) ends every stream, counted
// as shutdown; browsers then reconnect to another instance.
func TestSSEBrokerClosedEndsStreams(t *testing.T) {
	forEachMode(t, func(t *testing.T, e env, mode streamMode) {
		reg := prometheus.NewRegistry()
		b := e.broker(Config{})
		srv := sseServerMode(t, b, SSEConfig{Registerer: reg}, mode)
		resp := openSSE(ctxb, t, srv.URL, []string{"appt:1"}, "", "")
		defer resp.Body.Close()
		collect(t, resp, 0) // the stream is open
		_ = b.Close()
		waitStreamEnd(t, resp, 20*time.Second, "its broker")
		if n := testutil.Sum(t, reg, metricSSEClosed, "reason", "shutdown"); n != 1 {
			t.Fatalf("shutdown disconnects = %v, want 1", n)
		}
		if n := testutil.Sum(t, reg, metricSSEConnections); n != 0 {
			t.Fatalf("open connections = %v, want 0", n)
		}
	})
}

// waitStreamEnd reads resp until the server ends the stream (EOF), failing
// when that takes longer than within (what should have ended it: cause).
func waitStreamEnd(t *testing.T, resp *http.Response, within time.Duration, cause string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- readSSE(resp.Body, func(sseEvent) bool { return true }) }()
	select {
	case err := <-done:
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("stream ended with %v, want EOF", err)
		}
	case <-time.After(within):
		t.Fatalf("the stream outlived %s by %v", cause, within)
	}
}
