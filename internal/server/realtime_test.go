package server

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/realtime"
)

// realtimeTargets are the brokers the realtime routes are tested on.
func realtimeTargets(t *testing.T) []struct {
	name string
	mk   func(t *testing.T) realtime.Broker
} {
	return []struct {
		name string
		mk   func(t *testing.T) realtime.Broker
	}{
		{"memory", func(t *testing.T) realtime.Broker { return realtime.NewMemory(realtime.Config{}) }},
		{"redis", func(t *testing.T) realtime.Broker {
			b, err := realtime.NewRedis(redistest.Client(t, redistest.URL(t)), realtime.Config{Prefix: redistest.Prefix(t)})
			if err != nil {
				t.Fatal(err)
			}
			return b
		}},
	}
}

func TestRealtimeChannelEndpoints(t *testing.T) {
	for _, tg := range realtimeTargets(t) {
		t.Run(tg.name, func(t *testing.T) {
			b := tg.mk(t)
			defer b.Close()
			e := newEnv(t, Deps{Realtime: b})
			ch := "/v1/channels/" + url.PathEscape("appt:42")

			res := e.do(http.MethodPost, ch+"/publish", `{"data":{"status":"confirmed","version":2}}`)
			e.mustStatus(res, 200)
			p1 := decodeInto[struct {
				Epoch  string
				Offset uint64
			}](t, res)
			if p1.Epoch == "" || p1.Offset != 1 {
				t.Fatalf("publish = %+v", p1)
			}
			for range 2 {
				res = e.do(http.MethodPost, ch+"/publish", `{"data":"v3","idempotencyKey":"evt-3"}`)
				e.mustStatus(res, 200)
				if got := num(t, res.json(t), "offset"); got != 2 {
					t.Fatalf("idempotent publish: offset %d, want 2 both times", got)
				}
			}
			e.mustStatus(e.do(http.MethodPost, ch+"/publish", `{"data":[1,2,3]}`), 200)

			res = e.do(http.MethodGet, ch+"/history?sinceOffset=1&limit=5", "")
			e.mustStatus(res, 200)
			h := decodeInto[struct {
				Epoch    string
				Messages []struct {
					Offset      uint64
					Data        json.RawMessage
					PublishedAt int64
				}
			}](t, res)
			if h.Epoch != p1.Epoch || len(h.Messages) != 2 || h.Messages[0].Offset != 2 || string(h.Messages[0].Data) != `"v3"` ||
				string(h.Messages[1].Data) != `[1,2,3]` || h.Messages[1].PublishedAt <= 0 {
				t.Fatalf("history = %+v", h)
			}
			res = e.do(http.MethodGet, "/v1/channels/never/history", "")
			e.mustStatus(res, 200)
			if string(res.body) != `{"epoch":"","messages":[]}`+"\n" {
				t.Fatalf("empty history = %s", res.body)
			}

			bad := []struct {
				method, path, body, field string
			}{
				{http.MethodPost, "/v1/channels/a%2Cb/publish", `{"data":1}`, "channel"},
				{http.MethodPost, ch + "/publish", `{}`, "data"},
				{http.MethodPost, ch + "/publish", `{"data":1,"x":2}`, "x"},
				{http.MethodPost, ch + "/publish", `{"data":1,"idempotencyKey":""}`, "idempotencyKey"},
				{http.MethodPost, ch + "/publish", `{"data":"` + strings.Repeat("x", realtime.MaxDataLen) + `"}`, "data"},
				{http.MethodGet, ch + "/history?limit=0", "", "limit"},
				{http.MethodGet, ch + "/history?limit=1001", "", "limit"},
				{http.MethodGet, ch + "/history?sinceOffset=-1", "", "sinceOffset"},
			}
			for _, c := range bad {
				res := e.do(c.method, c.path, c.body)
				e.mustStatus(res, 400)
				if code, field := res.errorOf(t); code != codeInvalidArgument || field != c.field {
					t.Errorf("%s %s %.40s: %s/%s, want invalid_argument/%s", c.method, c.path, c.body, code, field, c.field)
				}
			}
		})
	}
}

func TestRealtimePresenceEndpoints(t *testing.T) {
	for _, tg := range realtimeTargets(t) {
		t.Run(tg.name, func(t *testing.T) {
			b := tg.mk(t)
			defer b.Close()
			e := newEnv(t, Deps{Realtime: b})
			sub, err := b.Subscribe(context.Background(), []string{realtime.PresenceChannel("expert:7")}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			res := e.do(http.MethodPut, "/v1/presence/"+url.PathEscape("expert:7"), `{"status":"busy","ttlMs":60000}`)
			e.mustStatus(res, 200)
			set := res.json(t)
			if set["status"] != "busy" || num(t, set, "expiresAt") <= time.Now().UnixMilli() {
				t.Fatalf("PUT presence = %v", set)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			ev, err := sub.Next(ctx)
			if err != nil || !strings.Contains(string(ev.Message.Data), `"status":"busy"`) {
				t.Fatalf("presence channel: %+v %v", ev, err)
			}
			res = e.do(http.MethodGet, "/v1/presence?subjects="+url.QueryEscape("expert:7,expert:8"), "")
			e.mustStatus(res, 200)
			got := decodeInto[struct {
				Statuses map[string]struct {
					Status    string
					UpdatedAt int64
				}
			}](t, res)
			if got.Statuses["expert:7"].Status != "busy" || got.Statuses["expert:7"].UpdatedAt <= 0 || got.Statuses["expert:8"].Status != "offline" {
				t.Fatalf("GET presence = %s", res.body)
			}
			for _, c := range []struct{ method, path, body, field string }{
				{http.MethodPut, "/v1/presence/x", `{"status":"away"}`, "status"},
				{http.MethodPut, "/v1/presence/x", `{}`, "status"},
				{http.MethodPut, "/v1/presence/x", `{"status":"online","ttlMs":0}`, "ttlMs"},
				{http.MethodPut, "/v1/presence/a%2Cb", `{"status":"online"}`, "subject"},
				{http.MethodGet, "/v1/presence", "", "subjects"},
				{http.MethodGet, "/v1/presence?subjects=a,,b", "", "subjects"},
			} {
				res := e.do(c.method, c.path, c.body)
				e.mustStatus(res, 400)
				if code, field := res.errorOf(t); code != codeInvalidArgument || field != c.field {
					t.Errorf("%s %s %s: %s/%s, want invalid_argument/%s", c.method, c.path, c.body, code, field, c.field)
				}
			}
		})
	}
}

// Acceptance 2 through the service: a token minted by POST
// /v1/realtime/tokens reads its own appointment's channel, gets 403 for
// another's, and its stream ends when it expires. The API key also opens
// the stream; nothing else does.
func TestRealtimeTokensAndSSE(t *testing.T) {
	e := newEnv(t, Deps{APIKeys: []string{"key-1"}, RealtimeSecret: []byte(strings.Repeat("s", 32)), RealtimePing: time.Hour})
	srv := httptest.NewServer(e.h)
	defer srv.Close()
	auth := "Authorization: Bearer key-1"

	res := e.do(http.MethodPost, "/v1/realtime/tokens", `{"subject":"patient:1","channels":["appt:1"],"ttlMs":1500}`, auth)
	e.mustStatus(res, 201)
	tok := decodeInto[struct {
		Token     string
		ExpiresAt int64
	}](t, res)
	if tok.Token == "" || tok.ExpiresAt < time.Now().Add(time.Second).UnixMilli() {
		t.Fatalf("token = %+v", tok)
	}
	for _, c := range []struct{ body, field string }{
		{`{"subject":"p","channels":["a"]}`, "ttlMs"},
		{`{"subject":"p","channels":["a"],"ttlMs":86400001}`, "ttlMs"},
		{`{"subject":"p","ttlMs":1000}`, "channels"},
		{`{"subject":"p","channels":[],"ttlMs":1000}`, "channels"},
		{`{"subject":"p","channels":["a,b"],"ttlMs":1000}`, "channels"},
		{`{"subject":"","channels":["a"],"ttlMs":1000}`, "subject"},
		{`{"channels":["a"],"ttlMs":1000}`, "subject"},
	} {
		res := e.do(http.MethodPost, "/v1/realtime/tokens", c.body, auth)
		e.mustStatus(res, 400)
		if code, field := res.errorOf(t); code != codeInvalidArgument || field != c.field {
			t.Errorf("%s: %s/%s, want invalid_argument/%s", c.body, code, field, c.field)
		}
	}
	e.mustStatus(e.do(http.MethodPost, "/v1/realtime/tokens", `{"subject":"p","channels":["a"],"ttlMs":1000}`), 401)

	get := func(query, header string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/realtime/sse?"+query, nil)
		if header != "" {
			req.Header.Set("Authorization", header)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	wantCode := func(resp *http.Response, status int, code string) {
		t.Helper()
		defer resp.Body.Close()
		var body struct{ Error struct{ Code string } }
		_ = json.NewDecoder(resp.Body).Decode(&body)
		if resp.StatusCode != status || body.Error.Code != code {
			t.Fatalf("status %d code %q, want %d %q", resp.StatusCode, body.Error.Code, status, code)
		}
	}
	wantCode(get("channels=appt:2&token="+tok.Token, ""), 403, "forbidden")
	wantCode(get("channels=appt:1,appt:2", "Bearer "+tok.Token), 403, "forbidden")
	wantCode(get("channels=appt:1", ""), 401, "unauthorized")
	wantCode(get("channels=appt:1&token=forged", ""), 401, "unauthorized")
	wantCode(get("channels=appt:1", "Bearer wrong-key"), 401, "unauthorized")
	wantCode(get("token="+tok.Token, ""), 400, "invalid_argument")

	// The API key reads any channel, without expiry.
	keyed := get("channels=appt:2", "Bearer key-1")
	defer keyed.Body.Close()
	if keyed.StatusCode != 200 || keyed.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("API key stream: %d %s", keyed.StatusCode, keyed.Header.Get("Content-Type"))
	}

	// The token's stream delivers what is published, then ends at expiry.
	stream := get("channels=appt:1&token="+tok.Token, "")
	defer stream.Body.Close()
	if stream.StatusCode != 200 {
		t.Fatalf("token stream: %d", stream.StatusCode)
	}
	br := bufio.NewReader(stream.Body)
	readUntil := func(prefix string) string {
		t.Helper()
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("stream ended before %q: %v", prefix, err)
			}
			if strings.HasPrefix(line, prefix) {
				return line
			}
		}
	}
	readUntil("id: ") // the start position: subscribed
	e.mustStatus(e.do(http.MethodPost, "/v1/channels/appt:1/publish", `{"data":{"v":1}}`, auth), 200)
	if line := readUntil("data: "); line != `data: {"channel":"appt:1","offset":1,"data":{"v":1}}`+"\n" {
		t.Fatalf("event data %q", line)
	}
	done := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, br); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("stream ended with %v, want a clean end", err)
		}
		if time.Now().UnixMilli() < tok.ExpiresAt {
			t.Fatal("the stream ended before the token expired")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the stream outlived its token by 30s")
	}
	wantCode(get("channels=appt:1&token="+tok.Token, ""), 401, "unauthorized")
}
