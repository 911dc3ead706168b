package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/elevacare/eleva-redis/ratelimit"
)

// limitFields are the request fields that describe one rule. Pointers tell
// "absent" from zero, so a missing field and a zero one get different
// messages (both are 400 naming the field).
type limitFields struct {
	Key       *string `json:"key"`
	Limit     *int    `json:"limit"`
	WindowMs  *int64  `json:"windowMs"`
	Algorithm *string `json:"algorithm"`
	// Burst is GCRA's bucket size. HTTP-API.md lists it for allow only; peek
	// and record accept it too, because a GCRA rule's capacity depends on it
	// and a peek or record with another burst would describe another rule.
	Burst *int `json:"burst"`
}

// allowRequest is the body of allow and record. The request types are flat
// (no embedding) so encoding/json's error paths are the JSON field names.
type allowRequest struct {
	Key       *string `json:"key"`
	Limit     *int    `json:"limit"`
	WindowMs  *int64  `json:"windowMs"`
	Algorithm *string `json:"algorithm"`
	Burst     *int    `json:"burst"`
	Cost      *int    `json:"cost"`
}

func (r allowRequest) fields() limitFields {
	return limitFields{Key: r.Key, Limit: r.Limit, WindowMs: r.WindowMs, Algorithm: r.Algorithm, Burst: r.Burst}
}

// peekRequest is the body of peek: a peek always evaluates one unit, so it
// has no cost.
type peekRequest struct {
	Key       *string `json:"key"`
	Limit     *int    `json:"limit"`
	WindowMs  *int64  `json:"windowMs"`
	Algorithm *string `json:"algorithm"`
	Burst     *int    `json:"burst"`
}

func (r peekRequest) fields() limitFields { return limitFields(r) }

type resetRequest struct {
	Key *string `json:"key"`
}

// decisionResponse is the 200 body of allow, peek and record.
type decisionResponse struct {
	Allowed      bool  `json:"allowed"`
	Limit        int   `json:"limit"`
	Remaining    int   `json:"remaining"`
	ResetAt      int64 `json:"resetAt"`
	RetryAfterMs int64 `json:"retryAfterMs"`
	Degraded     bool  `json:"degraded,omitempty"`
}

type policyAllowRequest struct {
	// Subjects are decoded value by value so that a value of the wrong type
	// is reported as "subjects.<name>".
	Subjects map[string]json.RawMessage `json:"subjects"`
	Cost     *int                       `json:"cost"`
}

type ruleDecision struct {
	Rule         string `json:"rule"`
	Allowed      bool   `json:"allowed"`
	Limit        int    `json:"limit"`
	Remaining    int    `json:"remaining"`
	ResetAt      int64  `json:"resetAt"`
	RetryAfterMs int64  `json:"retryAfterMs"`
}

type policyAllowResponse struct {
	Allowed      bool           `json:"allowed"`
	RetryAfterMs int64          `json:"retryAfterMs"`
	Decisions    []ruleDecision `json:"decisions"`
	Degraded     bool           `json:"degraded,omitempty"`
}

type policyView struct {
	Name           string     `json:"name"`
	Rules          []ruleView `json:"rules"`
	OnBackendError string     `json:"onBackendError"`
}

type ruleView struct {
	Name      string `json:"name"`
	Subject   string `json:"subject"`
	Limit     int    `json:"limit"`
	WindowMs  int64  `json:"windowMs"`
	Algorithm string `json:"algorithm"`
	Burst     int    `json:"burst,omitempty"`
}

// maxCost mirrors the limiter's own bound, so the error names the field.
const maxCost = 1_000_000_000

// toLimit validates the rule fields, naming the first offending field, and
// returns the key and the rule. The limiter validates again (Limit.Validate):
// this copy exists to name fields in answers.
func (f limitFields) toLimit() (string, ratelimit.Limit, *apiError) {
	if f.Key == nil || *f.Key == "" {
		return "", ratelimit.Limit{}, badInput("key", "key is required and must not be empty")
	}
	if f.Limit == nil {
		return "", ratelimit.Limit{}, badInput("limit", "limit is required")
	}
	if f.WindowMs == nil {
		return "", ratelimit.Limit{}, badInput("windowMs", "windowMs is required")
	}
	l := ratelimit.Limit{Limit: *f.Limit}
	if f.Algorithm != nil {
		l.Algorithm = ratelimit.Algorithm(*f.Algorithm)
	}
	if !knownAlgorithm(l.Algorithm) {
		return "", l, badInput("algorithm", "unknown algorithm %q: want one of sliding-log, sliding-window, gcra, fixed-window", string(l.Algorithm))
	}
	if l.Limit <= 0 {
		return "", l, badInput("limit", "limit must be positive, got %d", l.Limit)
	}
	if l.Limit > maxCost {
		return "", l, badInput("limit", "limit must be at most %d", maxCost)
	}
	if (l.Algorithm == "" || l.Algorithm == ratelimit.SlidingLog) && l.Limit > ratelimit.MaxSlidingLogLimit {
		return "", l, badInput("limit", "sliding-log limit must be at most %d, got %d (use sliding-window or gcra for large limits)", ratelimit.MaxSlidingLogLimit, l.Limit)
	}
	const maxWindowMs = int64(ratelimit.MaxWindow / time.Millisecond)
	if w := *f.WindowMs; w <= 0 || w > maxWindowMs {
		return "", l, badInput("windowMs", "windowMs must be between 1 and %d, got %d", maxWindowMs, w)
	}
	l.Window = time.Duration(*f.WindowMs) * time.Millisecond
	if f.Burst != nil {
		if *f.Burst < 0 || *f.Burst > maxCost {
			return "", l, badInput("burst", "burst must be between 0 and %d, got %d", maxCost, *f.Burst)
		}
		l.Burst = *f.Burst
	}
	if err := l.Validate(); err != nil {
		// Not reachable with the checks above; kept so a future rule of the
		// limiter still answers 400 rather than reaching the backend.
		return "", l, badInput("", "%s", err.Error())
	}
	return *f.Key, l, nil
}

func knownAlgorithm(a ratelimit.Algorithm) bool {
	if a == "" {
		return true
	}
	for _, k := range ratelimit.Algorithms {
		if a == k {
			return true
		}
	}
	return false
}

// cost returns the request's cost: 1 when absent, 400 naming "cost" when not
// in 1..maxCost.
func cost(c *int) (int, *apiError) {
	if c == nil {
		return 1, nil
	}
	if *c <= 0 || *c > maxCost {
		return 0, badInput("cost", "cost must be between 1 and %d, got %d", maxCost, *c)
	}
	return *c, nil
}

// handleAllow serves POST /v1/ratelimit/allow: consumes cost only if it fits.
func (s *server) handleAllow(w http.ResponseWriter, r *http.Request) {
	s.handleConsume(w, r, s.limiter.AllowN)
}

// handleConsume decodes an allow or record body and answers the decision of
// consume (Limiter.AllowN or Limiter.Record).
func (s *server) handleConsume(w http.ResponseWriter, r *http.Request,
	consume func(ctx context.Context, key string, l ratelimit.Limit, n int) (ratelimit.Decision, error)) {
	var req allowRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	key, l, ae := req.fields().toLimit()
	if ae != nil {
		writeError(w, ae)
		return
	}
	n, ae := cost(req.Cost)
	if ae != nil {
		writeError(w, ae)
		return
	}
	d, err := consume(r.Context(), key, l, n)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.writeDecision(w, l, d)
}

// handlePeek serves POST /v1/ratelimit/peek.
func (s *server) handlePeek(w http.ResponseWriter, r *http.Request) {
	var req peekRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	key, l, ae := req.fields().toLimit()
	if ae != nil {
		writeError(w, ae)
		return
	}
	d, err := s.limiter.Peek(r.Context(), key, l)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.writeDecision(w, l, d)
}

// handleRecord serves POST /v1/ratelimit/record: consumes cost even over the
// limit.
func (s *server) handleRecord(w http.ResponseWriter, r *http.Request) {
	s.handleConsume(w, r, s.limiter.Record)
}

// handleReset serves POST /v1/ratelimit/reset.
func (s *server) handleReset(w http.ResponseWriter, r *http.Request) {
	var req resetRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	if req.Key == nil || *req.Key == "" {
		writeError(w, badInput("key", "key is required and must not be empty"))
		return
	}
	if err := s.limiter.Reset(r.Context(), *req.Key); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handlePolicyAllow serves POST /v1/ratelimit/policies/{name}/allow: every
// rule of the policy, all-or-nothing.
func (s *server) handlePolicyAllow(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	p, ok := s.policies[name]
	if !ok {
		writeError(w, &apiError{Status: http.StatusNotFound, Code: codeNotFound, Message: fmt.Sprintf("no policy named %q", name)})
		return
	}
	var req policyAllowRequest
	if ae := decodeJSON(w, r, s.maxBody, &req); ae != nil {
		writeError(w, ae)
		return
	}
	if req.Subjects == nil {
		writeError(w, badInput("subjects", "subjects is required: an object mapping each subject of the policy's rules to its value"))
		return
	}
	n, ae := cost(req.Cost)
	if ae != nil {
		writeError(w, ae)
		return
	}
	subjects := make(map[string]string, len(req.Subjects))
	for name, raw := range req.Subjects {
		var v string
		if err := json.Unmarshal(raw, &v); err != nil {
			writeError(w, badInput("subjects."+name, "subjects.%s must be a string", name))
			return
		}
		subjects[name] = v
	}
	for _, rule := range p.Rules {
		if subjects[rule.Subject] == "" {
			writeError(w, badInput("subjects."+rule.Subject, "policy %q rule %q needs subject %q (a non-empty string)", p.Name, rule.Name, rule.Subject))
			return
		}
	}
	checks, err := p.Checks(subjects, n)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	res, err := s.limiter.AllowAll(r.Context(), checks...)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := policyAllowResponse{
		Allowed:      res.Allowed,
		RetryAfterMs: ceilMs(res.RetryAfter),
		Degraded:     res.Degraded,
		Decisions:    make([]ruleDecision, len(res.Decisions)),
	}
	names := make([]string, len(checks))
	limits := make([]ratelimit.Limit, len(checks))
	for i, d := range res.Decisions {
		out.Decisions[i] = ruleDecision{
			Rule:         checks[i].Name,
			Allowed:      d.Allowed,
			Limit:        d.Limit,
			Remaining:    d.Remaining,
			ResetAt:      epochMs(d.ResetAt),
			RetryAfterMs: ceilMs(d.RetryAfter),
		}
		names[i], limits[i] = checks[i].Name, checks[i].Limit
	}
	setRateLimitHeaders(w.Header(), res.Allowed, res.RetryAfter, names, limits, res.Decisions)
	writeJSON(w, http.StatusOK, out)
}

// handlePolicies serves GET /v1/ratelimit/policies.
func (s *server) handlePolicies(w http.ResponseWriter, _ *http.Request) {
	out := struct {
		Policies []policyView `json:"policies"`
	}{Policies: make([]policyView, 0, len(s.policies))}
	for _, name := range s.policies.Names() {
		p := s.policies[name]
		v := policyView{Name: name, OnBackendError: string(p.OnBackendError), Rules: make([]ruleView, len(p.Rules))}
		if v.OnBackendError == "" {
			v.OnBackendError = string(s.onBackendError)
		}
		for i, rule := range p.Rules {
			alg := rule.Algorithm
			if alg == "" {
				alg = ratelimit.SlidingLog
			}
			v.Rules[i] = ruleView{Name: rule.Name, Subject: rule.Subject, Limit: rule.Limit, WindowMs: rule.WindowMs, Algorithm: string(alg), Burst: rule.Burst}
		}
		out.Policies = append(out.Policies, v)
	}
	writeJSON(w, http.StatusOK, out)
}

// writeDecision writes a single-rule decision with its headers.
func (s *server) writeDecision(w http.ResponseWriter, l ratelimit.Limit, d ratelimit.Decision) {
	setRateLimitHeaders(w.Header(), d.Allowed, d.RetryAfter, []string{"default"}, []ratelimit.Limit{l}, []ratelimit.Decision{d})
	writeJSON(w, http.StatusOK, decisionResponse{
		Allowed:      d.Allowed,
		Limit:        d.Limit,
		Remaining:    d.Remaining,
		ResetAt:      epochMs(d.ResetAt),
		RetryAfterMs: ceilMs(d.RetryAfter),
		Degraded:     d.Degraded,
	})
}

// epochMs is t in Unix milliseconds, rounded up so that a caller waiting
// until resetAt never wakes before the reset.
func epochMs(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	ms := t.UnixMilli()
	if t.Sub(time.UnixMilli(ms)) > 0 {
		ms++
	}
	return ms
}

// ceilMs is d in whole milliseconds, rounded up (a retry after the rounded
// value is never early).
func ceilMs(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// setRateLimitHeaders sets RateLimit-Policy and RateLimit (the IETF draft's
// structured fields, written by ratelimit.SetHeaders, the same helper the
// ratelimit middleware uses) and, on a denial, Retry-After in whole seconds,
// rounded up, at least 1 and never earlier than the RateLimit field's t: the
// rule ratelimit.Middleware follows too, so both faces answer alike.
func setRateLimitHeaders(h http.Header, allowed bool, retryAfter time.Duration, names []string, limits []ratelimit.Limit, ds []ratelimit.Decision) {
	t := ratelimit.SetHeaders(h, time.Now(), names, limits, ds)
	if !allowed {
		secs := max((ceilMs(retryAfter)+999)/1000, t, 1)
		h.Set("Retry-After", strconv.FormatInt(secs, 10))
	}
}
