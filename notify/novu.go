package notify

import (
	"bytes"
	"context"
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
}

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
// 5xx, timeouts and other failures retry. The bulk endpoint is not used.
type NovuSender struct {
	cfg     NovuConfig
	trigger string
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
	return &NovuSender{cfg: cfg, trigger: strings.TrimRight(cfg.BaseURL, "/") + "/v1/events/trigger"}, nil
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
	out := make([]Delivery, len(items))
	for i, n := range items {
		if err := ctx.Err(); err != nil {
			out[i] = transportErr("novu", err)
			continue
		}
		out[i] = s.trigger1(ctx, userID, n)
		if out[i].Outcome == OutcomePause {
			// The rest waits for the pause too, unsent.
			for j := i + 1; j < len(items); j++ {
				out[j] = out[i]
			}
			break
		}
	}
	return out
}

func (s *NovuSender) trigger1(ctx context.Context, userID string, n Notification) Delivery {
	body, err := json.Marshal(NovuEvent{Name: n.Type, To: NovuTo{SubscriberID: userID},
		Payload: NovuPayload{Title: n.Title, Message: n.Message, Data: n.Data}, TransactionID: n.ID})
	if err != nil {
		return Permanent(errors.Join(ErrSendRejected, errors.New("notify: novu: the event does not encode")))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.trigger, bytes.NewReader(body))
	if err != nil {
		return Retry(errors.Join(ErrSendFailed, err), 0)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "ApiKey "+s.cfg.APIKey)
	req.Header.Set("Idempotency-Key", n.ID)
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		return transportErr("novu", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	d := byStatus("novu", resp.StatusCode, resp.Header, time.Now(), novuPermanent)
	if d.Outcome != OutcomeDelivered {
		return d
	}
	if err != nil {
		// Accepted, but the answer was cut off: sending again is safe
		// (same Idempotency-Key).
		return transportErr("novu", err)
	}
	var ack struct {
		Data *struct {
			Acknowledged *bool  `json:"acknowledged"`
			Status       string `json:"status"`
		} `json:"data"`
	}
	if json.Unmarshal(raw, &ack) == nil && ack.Data != nil && ack.Data.Acknowledged != nil && !*ack.Data.Acknowledged {
		return Permanent(errors.Join(ErrSendRejected, errors.New("notify: novu: not acknowledged: "+truncate(ack.Data.Status, 64))))
	}
	return d
}
