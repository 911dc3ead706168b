package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Webhook headers.
const (
	// HeaderSignature is "sha256=" and the hex HMAC-SHA256 of the body
	// under the shared secret.
	HeaderSignature = "X-Eleva-Signature"
	// HeaderTimestamp is the Unix time (seconds) of the request; the body
	// carries it too ("timestamp"), so the signature covers it: receivers
	// should refuse old requests (replays).
	HeaderTimestamp = "X-Eleva-Timestamp"
)

// WebhookConfig configures a WebhookSender.
type WebhookConfig struct {
	// URL receives the POSTs (required, http or https).
	URL string
	// Secret signs every body (required).
	Secret []byte
	// Client sends the requests; nil means one with a 10s timeout.
	Client *http.Client
	// Now stamps the requests; nil means time.Now.
	Now func() time.Time
}

// WebhookSender POSTs each batch as JSON (WebhookBody) to a URL, signed
// with HMAC-SHA256. The answer decides for the whole batch: 2xx delivered;
// 429 pause (Retry-After); 408, 5xx, timeouts and other failures retry;
// any other 4xx permanent (dead). Receivers must deduplicate by
// notification id: a batch can arrive twice.
type WebhookSender struct {
	cfg WebhookConfig
}

// ErrSenderConfig: a sender was given an unusable configuration.
var ErrSenderConfig = errors.New("notify: invalid sender configuration")

// NewWebhookSender checks cfg and returns the sender.
func NewWebhookSender(cfg WebhookConfig) (*WebhookSender, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.Join(ErrSenderConfig, errors.New("notify: webhook URL must be an absolute http(s) URL"))
	}
	if len(cfg.Secret) == 0 {
		return nil, errors.Join(ErrSenderConfig, errors.New("notify: webhook secret is required"))
	}
	if cfg.Client == nil {
		cfg.Client = defaultHTTPClient()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.Secret = bytes.Clone(cfg.Secret)
	return &WebhookSender{cfg: cfg}, nil
}

// WebhookBody is the JSON a WebhookSender posts.
type WebhookBody struct {
	UserID string `json:"userId"`
	// Timestamp is HeaderTimestamp's value.
	Timestamp     int64                 `json:"timestamp"`
	Notifications []WebhookNotification `json:"notifications"`
}

// WebhookNotification is one notification of a WebhookBody.
type WebhookNotification struct {
	ID           string          `json:"id"`
	Type         string          `json:"type"`
	Title        string          `json:"title,omitempty"`
	Message      string          `json:"message,omitempty"`
	Data         json.RawMessage `json:"data,omitempty"`
	Priority     string          `json:"priority"`
	ScheduledFor time.Time       `json:"scheduledFor"`
	// Attempt is the number of this delivery (1 the first time).
	Attempt int `json:"attempt"`
}

// Sign returns the HeaderSignature value of body under secret.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// VerifySignature reports, in constant time, whether header is body's
// HeaderSignature under secret.
func VerifySignature(secret, body []byte, header string) bool {
	return hmac.Equal([]byte(Sign(secret, body)), []byte(header))
}

// Send posts items in one request.
func (s *WebhookSender) Send(ctx context.Context, userID string, items []Notification) []Delivery {
	now := s.cfg.Now()
	wb := WebhookBody{UserID: userID, Timestamp: now.Unix(), Notifications: make([]WebhookNotification, len(items))}
	for i, n := range items {
		wb.Notifications[i] = WebhookNotification{ID: n.ID, Type: n.Type, Title: n.Title, Message: n.Message, Data: n.Data,
			Priority: n.Priority.String(), ScheduledFor: n.ScheduledFor.UTC(), Attempt: n.Attempts}
	}
	d := s.post(ctx, wb, now)
	out := make([]Delivery, len(items))
	for i := range out {
		out[i] = d
	}
	return out
}

func (s *WebhookSender) post(ctx context.Context, wb WebhookBody, now time.Time) Delivery {
	body, err := json.Marshal(wb)
	if err != nil {
		return Permanent(errors.Join(ErrSendRejected, errors.New("notify: webhook: the batch does not encode")))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return Retry(errors.Join(ErrSendFailed, err), 0)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderSignature, Sign(s.cfg.Secret, body))
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(wb.Timestamp, 10))
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		return transportErr("webhook", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	return byStatus("webhook", resp.StatusCode, resp.Header, now, func(int) bool { return true })
}
