package notify

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elevacare/eleva-redis/internal/testutil"
)

// lockedWriter serialises writes of concurrent loggers into one buffer.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func slogTo(buf *bytes.Buffer, mu *sync.Mutex) *slog.Logger {
	return slog.New(slog.NewJSONHandler(lockedWriter{mu, buf}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// fakeWebhook is a receiver that verifies the signature itself (not with
// VerifySignature) and the timestamp, then answers status (with
// Retry-After when set), or hangs until the client gives up.
type fakeWebhook struct {
	srv        *httptest.Server
	secret     []byte
	status     int
	retryAfter string
	hang       bool
	badSigs    atomic.Int32
	mu         sync.Mutex
	bodies     []WebhookBody
}

func newFakeWebhook(t *testing.T, secret []byte, status int) *fakeWebhook {
	f := &fakeWebhook{secret: secret, status: status}
	closing := make(chan struct{})
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		m := hmac.New(sha256.New, f.secret)
		m.Write(body)
		want := "sha256=" + hex.EncodeToString(m.Sum(nil))
		var wb WebhookBody
		ts, tsErr := strconv.ParseInt(r.Header.Get(HeaderTimestamp), 10, 64)
		if !hmac.Equal([]byte(r.Header.Get(HeaderSignature)), []byte(want)) || json.Unmarshal(body, &wb) != nil ||
			tsErr != nil || ts != wb.Timestamp || time.Since(time.Unix(ts, 0)).Abs() > 5*time.Minute {
			f.badSigs.Add(1)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		f.mu.Lock()
		f.bodies = append(f.bodies, wb)
		f.mu.Unlock()
		if f.hang {
			select {
			case <-r.Context().Done():
			case <-closing:
			}
			return
		}
		if f.retryAfter != "" {
			w.Header().Set("Retry-After", f.retryAfter)
		}
		w.WriteHeader(f.status)
	}))
	t.Cleanup(func() {
		close(closing)
		f.srv.Close()
	})
	return f
}

// TestWebhookSender: the receiver verifies the signature and timestamp;
// the answer decides the outcome of every item of the batch.
func TestWebhookSender(t *testing.T) {
	t.Parallel()
	secret := []byte("shared-secret")
	cases := []struct {
		name       string
		status     int
		retryAfter string
		hang       bool
		signWith   []byte
		want       Outcome
		after      time.Duration
		badSigs    int32
	}{
		{name: "200 delivered", status: 200, want: OutcomeDelivered},
		{name: "204 delivered", status: 204, want: OutcomeDelivered},
		{name: "400 permanent", status: 400, want: OutcomePermanent},
		{name: "404 permanent", status: 404, want: OutcomePermanent},
		{name: "408 retried", status: 408, want: OutcomeRetry},
		{name: "429 with Retry-After pauses", status: 429, retryAfter: "3", want: OutcomePause, after: 3 * time.Second},
		{name: "429 with a date pauses until then", status: 429, retryAfter: "in an hour", want: OutcomePause, after: time.Hour},
		{name: "500 retried", status: 500, want: OutcomeRetry},
		{name: "503 with Retry-After retried after it", status: 503, retryAfter: "2", want: OutcomeRetry, after: 2 * time.Second},
		{name: "timeout retried", hang: true, want: OutcomeRetry},
		{name: "a wrong secret is refused by the receiver", status: 200, signWith: []byte("other"), want: OutcomePermanent, badSigs: 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeWebhook(t, secret, c.status)
			f.retryAfter, f.hang = c.retryAfter, c.hang
			if c.retryAfter == "in an hour" {
				f.retryAfter = time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)
			}
			key := secret
			if c.signWith != nil {
				key = c.signWith
			}
			s, err := NewWebhookSender(WebhookConfig{URL: f.srv.URL + "/hook", Secret: key, Client: &http.Client{Timeout: 300 * time.Millisecond}})
			if err != nil {
				t.Fatal(err)
			}
			items := []Notification{
				{ID: "a", Type: "appointment-reminder", Title: "T", Data: json.RawMessage(`{"x":1}`), Priority: PriorityHigh, Attempts: 1},
				{ID: "b", Type: "payment-received", Attempts: 2},
			}
			res := s.Send(ctxb, "patient-7", items)
			if len(res) != 2 {
				t.Fatalf("%d results", len(res))
			}
			for i, d := range res {
				if d.Outcome != c.want {
					t.Fatalf("item %d: %v (%v), want %v", i, d.Outcome, d.Err, c.want)
				}
				// Dates round to seconds.
				if (d.After - c.after).Abs() > 2*time.Second {
					t.Fatalf("item %d: after %v, want %v", i, d.After, c.after)
				}
				if c.want != OutcomeDelivered && d.Err == nil {
					t.Fatalf("item %d: no error", i)
				}
			}
			if got := f.badSigs.Load(); got != c.badSigs {
				t.Fatalf("%d requests failed verification, want %d", got, c.badSigs)
			}
			if c.badSigs > 0 {
				return
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if len(f.bodies) != 1 {
				t.Fatalf("%d verified requests", len(f.bodies))
			}
			b := f.bodies[0]
			if b.UserID != "patient-7" || len(b.Notifications) != 2 || b.Notifications[0].ID != "a" || b.Notifications[0].Priority != "high" ||
				string(b.Notifications[0].Data) != `{"x":1}` || b.Notifications[1].Attempt != 2 || b.Notifications[1].Type != "payment-received" {
				t.Fatalf("body %+v", b)
			}
		})
	}
}

// TestWebhookWorker: a worker delivers through the webhook; the fake
// receiver saw every id once, correctly signed.
func TestWebhookWorker(t *testing.T) {
	t.Parallel()
	secret := []byte("s3cret")
	f := newFakeWebhook(t, secret, http.StatusOK)
	q := NewMemory(quiet(Config{}))
	for i := range 12 {
		testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, Notification{ID: strconv.Itoa(i), UserID: "u" + strconv.Itoa(i%3), Type: "t"}))
	}
	s, err := NewWebhookSender(WebhookConfig{URL: f.srv.URL, Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	startWorker(t, NewWorker(q, s, quietWorker(WorkerConfig{})))
	until(t, "delivery", 10*time.Second, func() bool { return stats(t, q).Delivered == 12 })
	f.mu.Lock()
	defer f.mu.Unlock()
	seen := map[string]int{}
	for _, b := range f.bodies {
		for _, n := range b.Notifications {
			seen[b.UserID+"/"+n.ID]++
		}
	}
	if len(seen) != 12 || f.badSigs.Load() != 0 {
		t.Fatalf("seen %v, bad signatures %d", seen, f.badSigs.Load())
	}
	for k, n := range seen {
		if n != 1 {
			t.Fatalf("%s received %d times", k, n)
		}
	}
}

func TestSignature(t *testing.T) {
	t.Parallel()
	body := []byte(`{"x":1}`)
	sig := Sign([]byte("k"), body)
	m := hmac.New(sha256.New, []byte("k"))
	m.Write(body)
	if sig != "sha256="+hex.EncodeToString(m.Sum(nil)) {
		t.Fatalf("Sign = %s", sig)
	}
	if !VerifySignature([]byte("k"), body, sig) || VerifySignature([]byte("k2"), body, sig) || VerifySignature([]byte("k"), []byte(`{"x":2}`), sig) {
		t.Fatal("VerifySignature")
	}
}

func TestNewWebhookSenderConfig(t *testing.T) {
	t.Parallel()
	for _, c := range []WebhookConfig{{}, {URL: "http://x"}, {URL: "mailto:x", Secret: []byte("s")}, {URL: "::", Secret: []byte("s")}} {
		if _, err := NewWebhookSender(c); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
}
