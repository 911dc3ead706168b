package server

import (
	"encoding/json"
	"net/http"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/elevacare/eleva-redis/session"
)

// The /v1/sessions and /v1/users/{userId}/... session routes. deviceInfo and
// preferences are any JSON value: stored as the JSON text received (sealed
// at rest when encryption is on) and returned as the same value; absent
// reads back as null.

type createSessionRequest struct {
	UserID        *string         `json:"userId"`
	Roles         *[]string       `json:"roles"`
	DeviceInfo    json.RawMessage `json:"deviceInfo"`
	Preferences   json.RawMessage `json:"preferences"`
	TTLMs         *int64          `json:"ttlMs"`
	IdleTimeoutMs *int64          `json:"idleTimeoutMs"`
}

type updateSessionRequest struct {
	// Roles is raw so that an explicit null is told from an absent field.
	Roles       json.RawMessage `json:"roles"`
	DeviceInfo  json.RawMessage `json:"deviceInfo"`
	Preferences json.RawMessage `json:"preferences"`
}

type setUserRolesRequest struct {
	Roles *[]string `json:"roles"`
}

// sessionResponse is the Session of HTTP-API.md.
type sessionResponse struct {
	ID             string          `json:"id"`
	UserID         string          `json:"userId"`
	Roles          []string        `json:"roles"`
	DeviceInfo     json.RawMessage `json:"deviceInfo"`
	Preferences    json.RawMessage `json:"preferences"`
	CreatedAt      int64           `json:"createdAt"`
	LastActivityAt int64           `json:"lastActivityAt"`
	ExpiresAt      int64           `json:"expiresAt"`
}

type sessionListResponse struct {
	Sessions []sessionResponse `json:"sessions"`
}

type hasRoleResponse struct {
	HasRole bool `json:"hasRole"`
}

type revokedResponse struct {
	Revoked int `json:"revoked"`
}

type updatedResponse struct {
	Updated int `json:"updated"`
}

// pathText returns a path parameter that must be 1 to maxLen bytes of valid
// UTF-8 (it is returned in JSON), or the answer naming it.
func pathText(r *http.Request, param string, maxLen int) (string, *apiError) {
	v, ae := pathName(r, param, maxLen)
	if ae != nil {
		return "", ae
	}
	if !utf8.ValidString(v) {
		return "", badInput(param, "%s must be valid UTF-8", param)
	}
	return v, nil
}

// sessionRoles checks a roles array as the store will (the store drops
// duplicates, so they do not count towards the limit).
func sessionRoles(field string, roles []string) *apiError {
	var distinct []string
	for _, r := range roles {
		if r == "" || len(r) > session.MaxRoleLen {
			return badInput(field, "every role must be 1 to %d bytes", session.MaxRoleLen)
		}
		if !slices.Contains(distinct, r) {
			distinct = append(distinct, r)
		}
	}
	if len(distinct) > session.MaxRoles {
		return badInput(field, "at most %d distinct roles, got %d", session.MaxRoles, len(distinct))
	}
	return nil
}

// sessionValue checks an optional JSON value field: nil when absent.
func sessionValue(field string, v json.RawMessage) ([]byte, *apiError) {
	if len(v) > session.MaxFieldSize {
		return nil, badInput(field, "%s must be at most %d bytes of JSON, got %d", field, session.MaxFieldSize, len(v))
	}
	return v, nil
}

// optionalMs is an optional duration field: 0 (the store's default) when
// absent.
func optionalMs(field string, v *int64) (time.Duration, *apiError) {
	if v == nil {
		return 0, nil
	}
	return durationMs(field, v, session.MaxTTL)
}

// sessionJSON is the answer for a session, or false when a stored value
// cannot be returned as JSON (see storedJSON).
func (s *server) sessionJSON(r *http.Request, sess session.Session) (sessionResponse, bool) {
	out := sessionResponse{
		ID:             sess.ID,
		UserID:         sess.UserID,
		Roles:          sess.Roles,
		CreatedAt:      sess.CreatedAt.UnixMilli(),
		LastActivityAt: sess.LastActivityAt.UnixMilli(),
		ExpiresAt:      expiryMs(sess.ExpiresAt),
	}
	for _, f := range []struct {
		dst *json.RawMessage
		v   []byte
	}{{&out.DeviceInfo, sess.DeviceInfo}, {&out.Preferences, sess.Preferences}} {
		if f.v == nil {
			continue // null
		}
		v, ok := s.storedJSON(r, f.v)
		if !ok {
			return sessionResponse{}, false
		}
		*f.dst = v
	}
	if out.Roles == nil {
		out.Roles = []string{}
	}
	return out, true
}

// writeSession answers status with the session.
func (s *server) writeSession(w http.ResponseWriter, r *http.Request, status int, sess session.Session) {
	out, ok := s.sessionJSON(r, sess)
	if !ok {
		writeError(w, errInternal)
		return
	}
	writeJSON(w, status, out)
}

func sessionID(r *http.Request) (string, *apiError) { return pathText(r, "id", session.MaxIDLen) }

func userID(r *http.Request) (string, *apiError) {
	return pathText(r, "userId", session.MaxUserIDLen)
}

// handleSessionCreate serves PUT /v1/sessions/{id}: creates the session, or
// replaces the one stored under id.
func (s *server) handleSessionCreate(w http.ResponseWriter, r *http.Request) {
	id, ae := sessionID(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	var req createSessionRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	ns := session.NewSession{}
	switch {
	case req.UserID == nil || *req.UserID == "":
		ae = badInput("userId", "userId is required and must not be empty")
	case len(*req.UserID) > session.MaxUserIDLen:
		ae = badInput("userId", "userId must be at most %d bytes, got %d", session.MaxUserIDLen, len(*req.UserID))
	case req.Roles == nil:
		ae = badInput("roles", "roles is required (an array of strings, may be empty)")
	}
	if ae == nil {
		ns.UserID, ns.Roles = *req.UserID, *req.Roles
		ae = sessionRoles("roles", ns.Roles)
	}
	if ae == nil {
		ns.DeviceInfo, ae = sessionValue("deviceInfo", req.DeviceInfo)
	}
	if ae == nil {
		ns.Preferences, ae = sessionValue("preferences", req.Preferences)
	}
	if ae == nil {
		ns.TTL, ae = optionalMs("ttlMs", req.TTLMs)
	}
	if ae == nil {
		ns.IdleTimeout, ae = optionalMs("idleTimeoutMs", req.IdleTimeoutMs)
	}
	if ae != nil {
		writeError(w, ae)
		return
	}
	sess, err := s.sessions.Create(r.Context(), id, ns)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.writeSession(w, r, http.StatusCreated, sess)
}

// handleSessionGet serves GET /v1/sessions/{id}.
func (s *server) handleSessionGet(w http.ResponseWriter, r *http.Request) {
	id, ae := sessionID(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	sess, err := s.sessions.Get(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.writeSession(w, r, http.StatusOK, sess)
}

// handleSessionUpdate serves PATCH /v1/sessions/{id}: each field given
// replaces the stored one, independently of concurrent updates of the
// others; an update is activity.
func (s *server) handleSessionUpdate(w http.ResponseWriter, r *http.Request) {
	id, ae := sessionID(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	var req updateSessionRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	var u session.Update
	if req.Roles != nil {
		if err := json.Unmarshal(req.Roles, &u.Roles); err != nil || u.Roles == nil {
			writeError(w, badInput("roles", "roles must be an array of strings (omit it to leave the roles unchanged)"))
			return
		}
		if ae := sessionRoles("roles", u.Roles); ae != nil {
			writeError(w, ae)
			return
		}
	}
	if u.DeviceInfo, ae = sessionValue("deviceInfo", req.DeviceInfo); ae != nil {
		writeError(w, ae)
		return
	}
	if u.Preferences, ae = sessionValue("preferences", req.Preferences); ae != nil {
		writeError(w, ae)
		return
	}
	sess, err := s.sessions.Update(r.Context(), id, u)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.writeSession(w, r, http.StatusOK, sess)
}

// handleSessionTouch serves POST /v1/sessions/{id}/touch: 204, whether or
// not the activity was written (it is throttled).
func (s *server) handleSessionTouch(w http.ResponseWriter, r *http.Request) {
	id, ae := sessionID(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	if ae := decodeEmpty(w, r, s.maxBody); ae != nil {
		writeError(w, ae)
		return
	}
	if err := s.sessions.Touch(r.Context(), id); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleSessionHasRole serves GET /v1/sessions/{id}/roles/{role}.
func (s *server) handleSessionHasRole(w http.ResponseWriter, r *http.Request) {
	id, ae := sessionID(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	role, ae := pathText(r, "role", session.MaxRoleLen)
	if ae != nil {
		writeError(w, ae)
		return
	}
	has, err := s.sessions.HasRole(r.Context(), id, role)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, hasRoleResponse{HasRole: has})
}

// handleSessionDelete serves DELETE /v1/sessions/{id}: 204 whether or not
// the session was there.
func (s *server) handleSessionDelete(w http.ResponseWriter, r *http.Request) {
	id, ae := sessionID(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	if err := s.sessions.Delete(r.Context(), id); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleUserSessions serves GET /v1/users/{userId}/sessions.
func (s *server) handleUserSessions(w http.ResponseWriter, r *http.Request) {
	user, ae := userID(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	list, err := s.sessions.List(r.Context(), user)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := sessionListResponse{Sessions: make([]sessionResponse, 0, len(list))}
	for _, sess := range list {
		j, ok := s.sessionJSON(r, sess)
		if !ok {
			writeError(w, errInternal)
			return
		}
		out.Sessions = append(out.Sessions, j)
	}
	writeJSON(w, http.StatusOK, out)
}

// handleUserRevoke serves DELETE /v1/users/{userId}/sessions: log out
// everywhere.
func (s *server) handleUserRevoke(w http.ResponseWriter, r *http.Request) {
	user, ae := userID(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	n, err := s.sessions.RevokeUser(r.Context(), user)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, revokedResponse{Revoked: n})
}

// handleUserRoles serves PUT /v1/users/{userId}/roles.
func (s *server) handleUserRoles(w http.ResponseWriter, r *http.Request) {
	user, ae := userID(r)
	if ae != nil {
		writeError(w, ae)
		return
	}
	var req setUserRolesRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	if req.Roles == nil {
		writeError(w, badInput("roles", "roles is required (an array of strings, may be empty)"))
		return
	}
	if ae := sessionRoles("roles", *req.Roles); ae != nil {
		writeError(w, ae)
		return
	}
	n, err := s.sessions.SetUserRoles(r.Context(), user, *req.Roles)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, updatedResponse{Updated: n})
}
