package server

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/elevacare/eleva-redis/notify"
)

// The /v1/notifications and /v1/users/{userId}/notifications routes: the
// notification queue (package notify). Titles, messages and data are health
// data: they are stored and returned, never logged (nor are user ids).
// scheduledFor and expiresAt are epoch milliseconds; data is any JSON value,
// returned as the same value (null when absent).
//
// Ids are unique per user, not globally, so the dead-letter requeue route
// takes the user as a required userId query parameter (HTTP-API.md has no
// user in that route; docs/notify.md says why).
//
// Delivery workers are not part of the server: the queue is filled and read
// here; a worker claims from the same backend.

// maxNotifyTime is the latest scheduledFor and expiresAt the queue accepts
// (epoch ms, year 2255: scores must stay exact).
const maxNotifyTime = 9_000_000_000_000

// defaultPendingLimit and defaultDeadLimit are the limits when the query
// has none (the queue's own defaults).
const (
	defaultPendingLimit = 10
	defaultDeadLimit    = 100
)

type enqueueRequest struct {
	ID           *string         `json:"id"`
	UserID       *string         `json:"userId"`
	Type         *string         `json:"type"`
	Title        *string         `json:"title"`
	Message      *string         `json:"message"`
	Data         json.RawMessage `json:"data"`
	Priority     *string         `json:"priority"`
	ScheduledFor *int64          `json:"scheduledFor"`
	ExpiresAt    *int64          `json:"expiresAt"`
	MaxAttempts  *int            `json:"maxAttempts"`
}

type removeNotificationsRequest struct {
	IDs *[]string `json:"ids"`
}

// enqueuedResponse is the answer of POST /v1/notifications and of a requeue.
type enqueuedResponse struct {
	ID    string       `json:"id"`
	State notify.State `json:"state"`
}

// notificationResponse is the Notification of HTTP-API.md.
type notificationResponse struct {
	ID           string          `json:"id"`
	UserID       string          `json:"userId"`
	Type         string          `json:"type"`
	Title        string          `json:"title"`
	Message      string          `json:"message"`
	Data         json.RawMessage `json:"data"`
	Priority     string          `json:"priority"`
	ScheduledFor int64           `json:"scheduledFor"`
	ExpiresAt    *int64          `json:"expiresAt,omitempty"`
	Attempts     int             `json:"attempts"`
	MaxAttempts  int             `json:"maxAttempts"`
	State        notify.State    `json:"state"`
	LastError    string          `json:"lastError,omitempty"`
}

type notificationListResponse struct {
	Notifications []notificationResponse `json:"notifications"`
}

type removedResponse struct {
	Removed int `json:"removed"`
}

type notifyStatsResponse struct {
	Scheduled int64 `json:"scheduled"`
	Pending   int64 `json:"pending"`
	Inflight  int64 `json:"inflight"`
	Retrying  int64 `json:"retrying"`
	Dead      int64 `json:"dead"`
	Delivered int64 `json:"delivered"`
}

func notificationJSON(n notify.Notification) notificationResponse {
	out := notificationResponse{
		ID:           n.ID,
		UserID:       n.UserID,
		Type:         n.Type,
		Title:        n.Title,
		Message:      n.Message,
		Data:         n.Data,
		Priority:     n.Priority.String(),
		ScheduledFor: n.ScheduledFor.UnixMilli(),
		Attempts:     n.Attempts,
		MaxAttempts:  n.MaxAttempts,
		State:        n.State,
		LastError:    n.LastError,
	}
	if !n.ExpiresAt.IsZero() {
		ms := n.ExpiresAt.UnixMilli()
		out.ExpiresAt = &ms
	}
	if len(out.Data) == 0 || !json.Valid(out.Data) {
		// The queue checks data on the way in; a record a library caller
		// wrote without data reads back as null.
		out.Data = nil
	}
	return out
}

func writeNotifications(w http.ResponseWriter, list []notify.Notification) {
	out := notificationListResponse{Notifications: make([]notificationResponse, 0, len(list))}
	for _, n := range list {
		out.Notifications = append(out.Notifications, notificationJSON(n))
	}
	writeJSON(w, http.StatusOK, out)
}

// notifyUser returns the {userId} path parameter.
func notifyUser(r *http.Request) (string, *apiError) {
	return pathText(r, "userId", notify.MaxUserIDLen)
}

// notifyText checks a required string field of at most maxLen bytes (0: no
// own bound); JSON strings are always valid UTF-8 once decoded.
func notifyText(field string, v *string, maxLen int, nonEmpty bool) (string, *apiError) {
	switch {
	case v == nil:
		return "", badInput(field, "%s is required", field)
	case nonEmpty && *v == "":
		return "", badInput(field, "%s must not be empty", field)
	case maxLen > 0 && len(*v) > maxLen:
		return "", badInput(field, "%s must be at most %d bytes, got %d", field, maxLen, len(*v))
	}
	return *v, nil
}

// epochMsField checks an optional epoch-ms field: the zero time when absent.
func epochMsField(field string, v *int64) (time.Time, *apiError) {
	if v == nil {
		return time.Time{}, nil
	}
	if *v <= 0 || *v > maxNotifyTime {
		return time.Time{}, badInput(field, "%s must be epoch milliseconds between 1 and %d, got %d", field, int64(maxNotifyTime), *v)
	}
	return time.UnixMilli(*v), nil
}

// toNotification checks the body of POST /v1/notifications as the queue
// will, naming the field.
func toNotification(req enqueueRequest, now time.Time) (notify.Notification, *apiError) {
	var n notify.Notification
	var ae *apiError
	if n.UserID, ae = notifyText("userId", req.UserID, notify.MaxUserIDLen, true); ae != nil {
		return n, ae
	}
	if req.ID != nil {
		if n.ID, ae = notifyText("id", req.ID, notify.MaxIDLen, true); ae != nil {
			return n, ae
		}
	}
	if n.Type, ae = notifyText("type", req.Type, notify.MaxTypeLen, true); ae != nil {
		return n, ae
	}
	if n.Title, ae = notifyText("title", req.Title, 0, false); ae != nil {
		return n, ae
	}
	if n.Message, ae = notifyText("message", req.Message, 0, false); ae != nil {
		return n, ae
	}
	n.Data = req.Data
	if size := len(n.Type) + len(n.Title) + len(n.Message) + len(n.Data); size > notify.MaxPayloadSize {
		// Name the largest part: it is the one to shrink.
		field, largest := "title", len(n.Title)
		if len(n.Message) > largest {
			field, largest = "message", len(n.Message)
		}
		if len(n.Data) > largest {
			field = "data"
		}
		return n, badInput(field, "type, title, message and data must be at most %d bytes together, got %d", notify.MaxPayloadSize, size)
	}
	if req.Priority != nil {
		p, err := notify.ParsePriority(*req.Priority)
		if err != nil || *req.Priority == "" {
			return n, badInput("priority", "priority must be high, normal or low")
		}
		n.Priority = p
	}
	if n.ScheduledFor, ae = epochMsField("scheduledFor", req.ScheduledFor); ae != nil {
		return n, ae
	}
	if n.ExpiresAt, ae = epochMsField("expiresAt", req.ExpiresAt); ae != nil {
		return n, ae
	}
	if !n.ExpiresAt.IsZero() {
		start, what := n.ScheduledFor, "scheduledFor"
		if start.IsZero() {
			start, what = now, "now"
		}
		if !n.ExpiresAt.After(start) {
			return n, badInput("expiresAt", "expiresAt must be after %s", what)
		}
	}
	if req.MaxAttempts != nil {
		if *req.MaxAttempts < 1 || *req.MaxAttempts > notify.MaxAttemptsLimit {
			return n, badInput("maxAttempts", "maxAttempts must be between 1 and %d, got %d", notify.MaxAttemptsLimit, *req.MaxAttempts)
		}
		n.MaxAttempts = *req.MaxAttempts
	}
	return n, nil
}

// parseQuery reads a query string that may hold only the parameters in
// allowed, each at most once. Unknown parameters are refused as unknown body
// fields are.
func parseQuery(r *http.Request, allowed ...string) (url.Values, *apiError) {
	vals, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, badInput("", "malformed query string")
	}
	names := make([]string, 0, len(vals))
	for name := range vals {
		names = append(names, name)
	}
	slices.Sort(names) // the first bad parameter is always the same one
	for _, name := range names {
		if !slices.Contains(allowed, name) {
			return nil, badInput(name, "unknown query parameter %q", name)
		}
		if len(vals[name]) != 1 {
			return nil, badInput(name, "%s must be given once, got %d", name, len(vals[name]))
		}
	}
	return vals, nil
}

// queryLimit reads ?limit= (1 to max; def when absent) and nothing else.
func queryLimit(r *http.Request, def, max int) (int, *apiError) {
	vals, ae := parseQuery(r, "limit")
	if ae != nil {
		return 0, ae
	}
	v, ok := vals["limit"]
	if !ok {
		return def, nil
	}
	n, err := strconv.Atoi(v[0])
	if err != nil || n < 1 || n > max {
		return 0, badInput("limit", "limit must be an integer between 1 and %d, got %q", max, v[0])
	}
	return n, nil
}

// handleNotifyEnqueue serves POST /v1/notifications: 202 when queued, 200
// with the stored state when (userId, id) was queued before.
func (s *server) handleNotifyEnqueue(w http.ResponseWriter, r *http.Request) {
	var req enqueueRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	n, ae := toNotification(req, time.Now())
	if ae != nil {
		writeError(w, ae)
		return
	}
	res, err := s.notify.Enqueue(r.Context(), n)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	status := http.StatusAccepted
	if !res.Created {
		status = http.StatusOK
	}
	writeJSON(w, status, enqueuedResponse{ID: res.ID, State: res.State})
}

// handleNotifyPending serves GET /v1/users/{userId}/notifications: the due
// ones, high before normal before low, then oldest first. Nothing is
// claimed.
func (s *server) handleNotifyPending(w http.ResponseWriter, r *http.Request) {
	user, ae := notifyUser(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	limit, ae := queryLimit(r, defaultPendingLimit, notify.MaxPendingLimit)
	if ae != nil {
		writeError(w, ae)
		return
	}
	list, err := s.notify.Pending(r.Context(), user, limit)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeNotifications(w, list)
}

// handleNotifyRemove serves POST /v1/users/{userId}/notifications/remove:
// the app delivered these itself.
func (s *server) handleNotifyRemove(w http.ResponseWriter, r *http.Request) {
	user, ae := notifyUser(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	var req removeNotificationsRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	if req.IDs == nil {
		writeError(w, badInput("ids", "ids is required (an array of notification ids, may be empty)"))
		return
	}
	ids := *req.IDs
	if len(ids) > notify.MaxBatch {
		writeError(w, badInput("ids", "at most %d ids, got %d", notify.MaxBatch, len(ids)))
		return
	}
	for _, id := range ids {
		if id == "" || len(id) > notify.MaxIDLen {
			writeError(w, badInput("ids", "every id must be 1 to %d bytes", notify.MaxIDLen))
			return
		}
	}
	n, err := s.notify.Remove(r.Context(), user, ids...)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, removedResponse{Removed: n})
}

// handleNotifyCancel serves DELETE /v1/users/{userId}/notifications/{id}:
// 204, or 404 when the user has no such notification.
func (s *server) handleNotifyCancel(w http.ResponseWriter, r *http.Request) {
	user, ae := notifyUser(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	id, ae := pathText(r, "id", notify.MaxIDLen)
	if ae != nil {
		writeError(w, ae)
		return
	}
	if err := s.notify.Cancel(r.Context(), user, id); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleNotifyStats serves GET /v1/notifications/stats.
func (s *server) handleNotifyStats(w http.ResponseWriter, r *http.Request) {
	if _, ae := parseQuery(r); ae != nil {
		writeError(w, ae)
		return
	}
	st, err := s.notify.Stats(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, notifyStatsResponse{
		Scheduled: st.Scheduled, Pending: st.Pending, Inflight: st.Inflight,
		Retrying: st.Retrying, Dead: st.Dead, Delivered: st.Delivered,
	})
}

// handleNotifyDead serves GET /v1/notifications/dead: most recent first,
// with lastError.
func (s *server) handleNotifyDead(w http.ResponseWriter, r *http.Request) {
	limit, ae := queryLimit(r, defaultDeadLimit, notify.MaxDeadLimit)
	if ae != nil {
		writeError(w, ae)
		return
	}
	list, err := s.notify.ListDead(r.Context(), limit)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeNotifications(w, list)
}

// handleNotifyRequeue serves POST /v1/notifications/dead/{id}/requeue?userId=:
// the dead notification is due again now, its attempts reset.
func (s *server) handleNotifyRequeue(w http.ResponseWriter, r *http.Request) {
	id, ae := pathText(r, "id", notify.MaxIDLen)
	if ae != nil {
		writeError(w, ae)
		return
	}
	vals, ae := parseQuery(r, "userId")
	if ae != nil {
		writeError(w, ae)
		return
	}
	user := vals.Get("userId")
	switch {
	case user == "" || len(user) > notify.MaxUserIDLen:
		writeError(w, badInput("userId", "the userId query parameter is required: 1 to %d bytes (ids are unique per user)", notify.MaxUserIDLen))
		return
	case !utf8.ValidString(user):
		writeError(w, badInput("userId", "userId must be valid UTF-8"))
		return
	}
	if ae := decodeEmpty(w, r, s.maxBody); ae != nil {
		writeError(w, ae)
		return
	}
	if err := s.notify.RequeueDead(r.Context(), user, id); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, enqueuedResponse{ID: id, State: notify.StatePending})
}
