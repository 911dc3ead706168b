package notify

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// DefaultNovuURL is Novu's API (the US region; the EU one is
// https://eu.api.novu.co).
const DefaultNovuURL = "https://api.novu.co"

// NovuConfig configures a NovuSender.
type NovuConfig struct {
	// APIKey is the Novu secret key (required); sent as
	// "Authorization: ApiKey <key>".
	APIKey string
	// BaseURL is the API's base; "" means DefaultNovuURL.
	BaseURL string
	// Client sends the requests; nil means one with a 10s timeout.
	Client *http.Client
	// Bulk lets a Worker send full chunks of NovuBulkSize notifications,
	// across users, in one POST {base}/v1/events/trigger/bulk instead of
	// one trigger each (off by default; see NovuSender for the trade-off).
	Bulk bool
}

// NovuBulkSize is the most events Novu's bulk trigger takes, and the size
// of every bulk request NovuSender sends.
const NovuBulkSize = 100

// NovuSender triggers one Novu workflow per notification: POST
// {base}/v1/events/trigger with name = Type, to.subscriberId = the user id,
// payload = {title, message, data}, transactionId = the notification id and
// the header Idempotency-Key = the notification id, so a batch sent again
// after a crash or a lost lease is not delivered twice.
//
// Answers: 2xx delivered (unless Novu says acknowledged: false:
// permanent); 429 pauses every send for Retry-After without using an
// attempt (the rest of the batch is not sent and waits too); 400, 413 and
// 422 permanent (dead); 408, 409 (the same key still being processed),
// 5xx, timeouts and other failures retry.
//
// With NovuConfig.Bulk, full chunks of NovuBulkSize go to the bulk trigger
// (one request instead of 100). Each event still carries its
// transactionId, and the request's Idempotency-Key is derived from the
// chunk's ids, so the same chunk sent again is recognised. But a chunk
// redelivered after a crash is usually composed differently (other users
// are due by then), and Novu's per-event answer is then the only guard
// against a second delivery: bulk trades some of the exactly-once
// guarantee for far fewer requests, which is why it is off by default.
// The answer is handled per event (acknowledged: false is permanent for
// that event only; a missing answer is a retry); a 429 pauses the whole
// chunk, 5xx and timeouts retry it, and a 400, 413 or 422 for the whole
// request (one bad event spoils a bulk request) makes each event go
// through the single trigger, so that only the bad one is dead.
type NovuSender struct {
	cfg     NovuConfig
	trigger string
	bulk    string
}

// NewNovuSender checks cfg and returns the sender.
func NewNovuSender(cfg NovuConfig) (*NovuSender, error) {
	if cfg.APIKey == "" {
		return nil, errors.Join(ErrSenderConfig, errors.New("notify: Novu API key is required"))
	}
	if cfg.BaseURL == "" {
		cfg.BaseURL = DefaultNovuURL
	}
	u, err := url.Parse(cfg.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.Join(ErrSenderConfig, errors.New("notify: Novu base URL must be an absolute http(s) URL"))
	}
	if cfg.Client == nil {
		cfg.Client = defaultHTTPClient()
	}
	base := strings.TrimRight(cfg.BaseURL, "/")
	return &NovuSender{cfg: cfg, trigger: base + "/v1/events/trigger", bulk: base + "/v1/events/trigger/bulk"}, nil
}

// NovuEvent is the body of one trigger.
type NovuEvent struct {
	Name          string      `json:"name"`
	To            NovuTo      `json:"to"`
	Payload       NovuPayload `json:"payload"`
	TransactionID string      `json:"transactionId"`
}

// NovuTo is a trigger's recipient.
type NovuTo struct {
	SubscriberID string `json:"subscriberId"`
}

// NovuPayload is the payload of a trigger, passed to the workflow.
type NovuPayload struct {
	Title   string          `json:"title,omitempty"`
	Message string          `json:"message,omitempty"`
	Data    json.RawMessage `json:"data,omitempty"`
}

// novuPermanent: Novu's answers that no retry will fix.
func novuPermanent(code int) bool {
	switch code {
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusUnprocessableEntity:
		return true
	}
	return false
}

// Send triggers items one after the other.
func (s *NovuSender) Send(ctx context.Context, userID string, items []Notification) []Delivery {
	bi := make([]BulkItem, len(items))
	for i, n := range items {
		bi[i] = BulkItem{UserID: userID, Notification: n}
	}
	return s.each(ctx, bi)
}

func novuEvent(userID string, n Notification) NovuEvent {
	return NovuEvent{Name: n.Type, To: NovuTo{SubscriberID: userID},
		Payload: NovuPayload{Title: n.Title, Message: n.Message, Data: n.Data}, TransactionID: n.ID}
}

// novuAck is Novu's answer for one event.
type novuAck struct {
	Acknowledged  *bool  `json:"acknowledged"`
	Status        string `json:"status"`
	TransactionID string `json:"transactionId"`
}

// verdict is the Delivery of an event Novu answered for.
func (a novuAck) verdict() Delivery {
	if a.Acknowledged != nil && !*a.Acknowledged {
		return Permanent(errors.Join(ErrSendRejected, errors.New("notify: novu: not acknowledged: "+truncate(a.Status, 64))))
	}
	return Delivered()
}

// post sends body to endpoint with the Idempotency-Key key and returns the
// status's Delivery and, when it is delivered, the answer's body (read up
// to limit bytes).
func (s *NovuSender) post(ctx context.Context, endpoint, key string, body []byte, limit int64) (Delivery, []byte) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return Retry(errors.Join(ErrSendFailed, err), 0), nil
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "ApiKey "+s.cfg.APIKey)
	req.Header.Set("Idempotency-Key", key)
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		return transportErr("novu", err), nil
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	d := byStatus("novu", resp.StatusCode, resp.Header, time.Now(), novuPermanent)
	if d.Outcome == OutcomeDelivered && err != nil {
		// Accepted, but the answer was cut off: sending again is safe
		// (same Idempotency-Key).
		return transportErr("novu", err), nil
	}
	return d, raw
}

func (s *NovuSender) trigger1(ctx context.Context, userID string, n Notification) Delivery {
	body, err := json.Marshal(novuEvent(userID, n))
	if err != nil {
		return Permanent(errors.Join(ErrSendRejected, errors.New("notify: novu: the event does not encode")))
	}
	d, raw := s.post(ctx, s.trigger, n.ID, body, 64<<10)
	if d.Outcome != OutcomeDelivered {
		return d
	}
	var ack struct {
		Data *novuAck `json:"data"`
	}
	if json.Unmarshal(raw, &ack) == nil && ack.Data != nil {
		return ack.Data.verdict()
	}
	return d
}

// BulkSize is NovuBulkSize with NovuConfig.Bulk, 0 (no bulk) without.
func (s *NovuSender) BulkSize() int {
	if s.cfg.Bulk {
		return NovuBulkSize
	}
	return 0
}

// SendBulk triggers items in bulk requests of at most NovuBulkSize (see
// NovuSender for how answers are handled).
func (s *NovuSender) SendBulk(ctx context.Context, items []BulkItem) []Delivery {
	out := make([]Delivery, 0, len(items))
	for len(items) > 0 {
		n := min(len(items), NovuBulkSize)
		out = append(out, s.bulk1(ctx, items[:n])...)
		items = items[n:]
	}
	return out
}

func (s *NovuSender) bulk1(ctx context.Context, items []BulkItem) []Delivery {
	out := make([]Delivery, len(items))
	fill := func(d Delivery) []Delivery {
		for i := range out {
			out[i] = d
		}
		return out
	}
	if err := ctx.Err(); err != nil {
		return fill(transportErr("novu", err))
	}
	var req struct {
		Events []NovuEvent `json:"events"`
	}
	ids := make([]string, len(items))
	for i, it := range items {
		req.Events = append(req.Events, novuEvent(it.UserID, it.Notification))
		ids[i] = it.ID
	}
	body, err := json.Marshal(req)
	if err != nil {
		return s.each(ctx, items)
	}
	d, raw := s.post(ctx, s.bulk, bulkKey(ids), body, 1<<20)
	switch d.Outcome {
	case OutcomeDelivered:
	case OutcomePermanent:
		return s.each(ctx, items)
	default:
		return fill(d)
	}
	var ack struct {
		Data []novuAck `json:"data"`
	}
	if json.Unmarshal(raw, &ack) != nil {
		// Accepted, answer unreadable: send the chunk again (the same
		// Idempotency-Key) rather than guess.
		return fill(Retry(errors.Join(ErrSendFailed, errors.New("notify: novu: unreadable bulk answer")), 0))
	}
	byID := make(map[string]novuAck, len(ack.Data))
	for _, a := range ack.Data {
		if a.TransactionID != "" {
			byID[a.TransactionID] = a
		}
	}
	for i, it := range items {
		a, ok := byID[it.ID]
		if !ok && i < len(ack.Data) && ack.Data[i].TransactionID == "" {
			a, ok = ack.Data[i], true // answers without ids are in request order
		}
		if !ok {
			out[i] = Retry(errors.Join(ErrSendFailed, errors.New("notify: novu: no answer for the event in the bulk answer")), 0)
			continue
		}
		out[i] = a.verdict()
	}
	return out
}

// each triggers items one after the other (Send, and a bulk chunk that
// Novu refused as a whole, so that only the bad events are dead). After a
// 429 the rest is not sent: it waits for the pause too.
func (s *NovuSender) each(ctx context.Context, items []BulkItem) []Delivery {
	out := make([]Delivery, len(items))
	for i, it := range items {
		if err := ctx.Err(); err != nil {
			out[i] = transportErr("novu", err)
			continue
		}
		out[i] = s.trigger1(ctx, it.UserID, it.Notification)
		if out[i].Outcome == OutcomePause {
			for j := i + 1; j < len(items); j++ {
				out[j] = out[i]
			}
			break
		}
	}
	return out
}

// bulkKey is a bulk request's Idempotency-Key: a digest of its ids, so the
// same chunk sent again has the same key.
func bulkKey(ids []string) string {
	h := sha256.New()
	for _, id := range ids {
		h.Write([]byte(id))
		h.Write([]byte{0})
	}
	return "bulk-" + hex.EncodeToString(h.Sum(nil)[:16])
}
