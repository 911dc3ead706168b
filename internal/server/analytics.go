package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/elevacare/eleva-redis/analytics"
)

// The /v1/metrics and /v1/events routes: day counters, unique counts and
// PostHog events (package analytics). Events, their properties, members and
// user ids are never logged. Days are UTC, written YYYY-MM-DD in queries;
// at is epoch milliseconds. An event's timestamp is epoch milliseconds or an
// RFC 3339 string (PostHog's form).
//
// The forwarder that sends buffered events to PostHog is not part of the
// server: `eleva-redis serve` runs it when ELEVA_POSTHOG_API_KEY is set.

// maxEventsPerRequest bounds the events of one POST /v1/events.
const maxEventsPerRequest = 1000

type incrementRequest struct {
	Metric *string `json:"metric"`
	By     *int64  `json:"by"`
	UserID *string `json:"userId"`
	At     *int64  `json:"at"`
}

type uniqueRequest struct {
	Metric *string `json:"metric"`
	Member *string `json:"member"`
	At     *int64  `json:"at"`
}

type eventRequest struct {
	Event      *string         `json:"event"`
	DistinctID *string         `json:"distinctId"`
	Properties json.RawMessage `json:"properties"`
	Timestamp  json.RawMessage `json:"timestamp"`
	UUID       *string         `json:"uuid"`
}

type eventsRequest struct {
	// Each event is decoded on its own, so that errors name it
	// ("events[3].distinctId").
	Events *[]json.RawMessage `json:"events"`
}

type pointResponse struct {
	Date  string `json:"date"`
	Value int64  `json:"value"`
}

type seriesResponse struct {
	Metric string          `json:"metric"`
	Points []pointResponse `json:"points"`
	Total  int64           `json:"total"`
}

type eventStatsResponse struct {
	Buffered int64 `json:"buffered"`
	Sent     int64 `json:"sent"`
	Retrying int64 `json:"retrying"`
	Dead     int64 `json:"dead"`
}

// nameField checks a required name field as the analytics package will.
func nameField(field string, v *string) (string, *apiError) {
	if v == nil {
		return "", badInput(field, "%s is required", field)
	}
	if err := analytics.CheckMetric(*v); err != nil {
		return "", badInput(field, "%s must be 1 to %d bytes without control characters", field, analytics.MaxNameLen)
	}
	return *v, nil
}

// atField checks an optional epoch-ms instant: the zero time (now) when
// absent.
func atField(field string, v *int64) (time.Time, *apiError) {
	if v == nil {
		return time.Time{}, nil
	}
	if *v <= 0 || *v > maxNotifyTime {
		return time.Time{}, badInput(field, "%s must be epoch milliseconds between 1 and %d, got %d", field, int64(maxNotifyTime), *v)
	}
	return time.UnixMilli(*v), nil
}

// dayRange reads ?from=&to= (UTC days, both required) and the other allowed
// query parameters.
func dayRange(r *http.Request, allowed ...string) (from, to time.Time, vals map[string][]string, ae *apiError) {
	q, ae := parseQuery(r, append([]string{"from", "to"}, allowed...)...)
	if ae != nil {
		return from, to, nil, ae
	}
	for _, p := range []struct {
		name string
		dst  *time.Time
	}{{"from", &from}, {"to", &to}} {
		v, ok := q[p.name]
		if !ok {
			return from, to, nil, badInput(p.name, "%s is required (a UTC day, YYYY-MM-DD)", p.name)
		}
		d, err := time.Parse(time.DateOnly, v[0])
		if err != nil {
			return from, to, nil, badInput(p.name, "%s must be a day, YYYY-MM-DD, got %q", p.name, v[0])
		}
		*p.dst = d
	}
	switch n := int(to.Sub(from)/(24*time.Hour)) + 1; {
	case to.Before(from):
		return from, to, nil, badInput("to", "to must not be before from")
	case n > analytics.MaxRangeDays:
		return from, to, nil, badInput("from", "the range is %d days, at most %d", n, analytics.MaxRangeDays)
	}
	return from, to, q, nil
}

// handleMetricIncrement serves POST /v1/metrics/increment: the day's total
// after the increment.
func (s *server) handleMetricIncrement(w http.ResponseWriter, r *http.Request) {
	var req incrementRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	metric, ae := nameField("metric", req.Metric)
	if ae != nil {
		writeError(w, ae)
		return
	}
	by := int64(1)
	if req.By != nil {
		by = *req.By
		if by > analytics.MaxIncrement || by < -analytics.MaxIncrement {
			writeError(w, badInput("by", "by must be within ±%d, got %d", int64(analytics.MaxIncrement), by))
			return
		}
	}
	var opts []analytics.Option
	if req.UserID != nil {
		user, ae := nameField("userId", req.UserID)
		if ae != nil {
			writeError(w, ae)
			return
		}
		opts = append(opts, analytics.ForUser(user))
	}
	at, ae := atField("at", req.At)
	if ae != nil {
		writeError(w, ae)
		return
	}
	v, err := s.analytics.Incr(r.Context(), metric, by, at, opts...)
	if err != nil {
		s.failField(w, r, err, "at")
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Value int64 `json:"value"`
	}{v})
}

// failField is fail, naming field for an invalid-argument error that got
// past the handler's own checks (an instant outside the retention).
func (s *server) failField(w http.ResponseWriter, r *http.Request, err error, field string) {
	ae := toAPIError(err)
	if ae.Status == http.StatusBadRequest && ae.Field == "" {
		ae.Field = field
	}
	if ae.Status >= 500 {
		s.fail(w, r, err)
		return
	}
	writeError(w, ae)
}

// handleMetricSeries serves GET /v1/metrics/{metric}?from&to&userId.
func (s *server) handleMetricSeries(w http.ResponseWriter, r *http.Request) {
	metric, ae := pathText(r, "metric", analytics.MaxNameLen)
	if ae != nil {
		writeError(w, ae)
		return
	}
	if _, ae := nameField("metric", &metric); ae != nil {
		writeError(w, ae)
		return
	}
	from, to, q, ae := dayRange(r, "userId")
	if ae != nil {
		writeError(w, ae)
		return
	}
	var opts []analytics.Option
	if v, ok := q["userId"]; ok {
		user, ae := nameField("userId", &v[0])
		if ae != nil {
			writeError(w, ae)
			return
		}
		opts = append(opts, analytics.ForUser(user))
	}
	ps, err := s.analytics.Series(r.Context(), metric, from, to, opts...)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := seriesResponse{Metric: metric, Points: make([]pointResponse, len(ps))}
	for i, p := range ps {
		out.Points[i] = pointResponse{Date: p.Date.Format(time.DateOnly), Value: p.Value}
		out.Total += p.Value
	}
	writeJSON(w, http.StatusOK, out)
}

// handleMetricUnique serves POST /v1/metrics/unique: 204.
func (s *server) handleMetricUnique(w http.ResponseWriter, r *http.Request) {
	var req uniqueRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	metric, ae := nameField("metric", req.Metric)
	if ae != nil {
		writeError(w, ae)
		return
	}
	member, ae := nameField("member", req.Member)
	if ae != nil {
		writeError(w, ae)
		return
	}
	at, ae := atField("at", req.At)
	if ae != nil {
		writeError(w, ae)
		return
	}
	if err := s.analytics.AddUnique(r.Context(), metric, member, at); err != nil {
		s.failField(w, r, err, "at")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleMetricUniqueCount serves GET /v1/metrics/{metric}/unique?from&to.
func (s *server) handleMetricUniqueCount(w http.ResponseWriter, r *http.Request) {
	metric, ae := pathText(r, "metric", analytics.MaxNameLen)
	if ae != nil {
		writeError(w, ae)
		return
	}
	if _, ae := nameField("metric", &metric); ae != nil {
		writeError(w, ae)
		return
	}
	from, to, _, ae := dayRange(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	n, err := s.analytics.CountUnique(r.Context(), metric, from, to)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Count int64 `json:"count"`
	}{n})
}

// toEvent checks one event of POST /v1/events, naming the field.
func toEvent(i int, req eventRequest) (analytics.Event, *apiError) {
	at := func(f string) string { return fmt.Sprintf("events[%d].%s", i, f) }
	var ev analytics.Event
	var ae *apiError
	if ev.Event, ae = nameField(at("event"), req.Event); ae != nil {
		return ev, ae
	}
	if ev.DistinctID, ae = nameField(at("distinctId"), req.DistinctID); ae != nil {
		return ev, ae
	}
	if req.UUID != nil {
		if *req.UUID == "" {
			return ev, badInput(at("uuid"), "uuid must not be empty (leave it out to get one)")
		}
		ev.UUID = *req.UUID
	}
	if p := bytes.TrimSpace(req.Properties); len(p) > 0 && !bytes.Equal(p, []byte("null")) {
		if p[0] != '{' {
			return ev, badInput(at("properties"), "properties must be an object")
		}
		if err := json.Unmarshal(p, &ev.Properties); err != nil {
			return ev, badInput(at("properties"), "properties must be an object")
		}
	}
	if ts := bytes.TrimSpace(req.Timestamp); len(ts) > 0 && !bytes.Equal(ts, []byte("null")) {
		var ms int64
		var str string
		switch {
		case json.Unmarshal(ts, &ms) == nil:
			if ms <= 0 || ms > maxNotifyTime {
				return ev, badInput(at("timestamp"), "timestamp must be epoch milliseconds between 1 and %d", int64(maxNotifyTime))
			}
			ev.Timestamp = time.UnixMilli(ms)
		case json.Unmarshal(ts, &str) == nil:
			t, err := time.Parse(time.RFC3339Nano, str)
			if err != nil {
				return ev, badInput(at("timestamp"), "timestamp must be epoch milliseconds or an RFC 3339 string")
			}
			ev.Timestamp = t
		default:
			return ev, badInput(at("timestamp"), "timestamp must be epoch milliseconds or an RFC 3339 string")
		}
	}
	return ev, nil
}

// handleEventsCapture serves POST /v1/events: 202 once every event is in
// the buffer (durable on Redis); PostHog is not waited for.
func (s *server) handleEventsCapture(w http.ResponseWriter, r *http.Request) {
	var req eventsRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	if req.Events == nil {
		writeError(w, badInput("events", "events is required (an array of events)"))
		return
	}
	list := *req.Events
	if len(list) > maxEventsPerRequest {
		writeError(w, badInput("events", "at most %d events per request, got %d", maxEventsPerRequest, len(list)))
		return
	}
	evs := make([]analytics.Event, len(list))
	for i, raw := range list {
		var e eventRequest
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			ae := decodeError(err, s.maxBody)
			if ae.Field == "" {
				ae.Field = fmt.Sprintf("events[%d]", i)
			} else {
				ae.Field = fmt.Sprintf("events[%d].%s", i, ae.Field)
			}
			writeError(w, ae)
			return
		}
		ev, ae := toEvent(i, e)
		if ae != nil {
			writeError(w, ae)
			return
		}
		evs[i] = ev
	}
	n, err := s.analytics.CaptureMany(r.Context(), evs)
	if err != nil {
		// The library names the event ("event 3: ...") for the checks it
		// alone makes (uuid form, encoded size).
		s.failField(w, r, err, "events")
		return
	}
	writeJSON(w, http.StatusAccepted, struct {
		Accepted int `json:"accepted"`
	}{n})
}

// handleEventsStats serves GET /v1/events/stats.
func (s *server) handleEventsStats(w http.ResponseWriter, r *http.Request) {
	if _, ae := parseQuery(r); ae != nil {
		writeError(w, ae)
		return
	}
	st, err := s.analytics.Stats(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, eventStatsResponse{Buffered: st.Buffered, Sent: st.Sent, Retrying: st.Retrying, Dead: st.Dead})
}
