package ratelimit

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// DefaultIPv6PrefixLen is how many leading bits of an IPv6 client address the
// middleware's "ip" subject keeps by default. One IPv6 subscriber usually gets
// a whole /64 and can pick any of its 2^64 addresses, so limiting per address
// would be trivially evaded; /64 is the smallest block normally assigned to
// one site.
const DefaultIPv6PrefixLen = 64

// Subject names the middleware fills in itself.
const (
	// SubjectIP is the client IP (see ClientIP and MiddlewareOptions.IPv6PrefixLen).
	SubjectIP = "ip"
	// SubjectUser is the value of MiddlewareOptions.UserID.
	SubjectUser = "user"
)

// MiddlewareOptions configures Middleware. The zero value is the documented
// default: the client IP is the peer address (no proxy trusted), IPv6 clients
// are grouped by /64, no user subject, cost 1, time.Now, slog.Default().
type MiddlewareOptions struct {
	// TrustedProxies are the prefixes of the reverse proxies (load balancers,
	// CDNs) whose X-Forwarded-For is believed; see ClientIP. Empty means none:
	// the client IP is the peer address and X-Forwarded-For is ignored.
	// ParseTrustedProxies reads them from a configuration string.
	TrustedProxies []netip.Prefix
	// IPv6PrefixLen is how many leading bits of an IPv6 client address form
	// its "ip" subject; 0 (and anything outside 1..128) means
	// DefaultIPv6PrefixLen, 128 means one counter per address. IPv4 addresses
	// are always counted per address.
	IPv6PrefixLen int
	// UserID returns the authenticated user of the request, the "user"
	// subject; "" means anonymous. nil means no request has a user.
	UserID func(*http.Request) string
	// Subjects returns further subjects of the request by name (a tenant, an
	// API key id, an email being verified). Its values take precedence over
	// "ip" and "user", so an application can replace either. nil means none.
	Subjects func(*http.Request) map[string]string
	// Cost returns the number of units the request takes; nil or 0 means 1.
	// A negative or too large cost is a bug in the caller and gets 500.
	Cost func(*http.Request) int
	// Now is the clock used to turn the limiter's ResetAt into the delta
	// seconds of the RateLimit header; nil means time.Now. Tests give it the
	// same fake clock as the memory backend's Config.Now.
	Now func() time.Time
	// Logger receives limiter errors (never the request's subjects); nil
	// means slog.Default().
	Logger *slog.Logger
}

func (o MiddlewareOptions) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

func (o MiddlewareOptions) logger() *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return slog.Default()
}

// Middleware limits the requests passing through it with the rules of p,
// decided all-or-nothing by l.AllowAll: a request is admitted only when every
// applicable rule allows it, and a denied request consumes nothing.
//
// Each rule counts one subject of the request: "ip" is the client IP (see
// ClientIP; IPv6 grouped by MiddlewareOptions.IPv6PrefixLen), "user" comes
// from MiddlewareOptions.UserID, any other name from
// MiddlewareOptions.Subjects. A rule whose subject is missing or empty for a
// request is skipped for that request: an anonymous request is not counted by
// a "user" rule. An application that wants anonymous requests limited too
// adds an "ip" rule, or returns a stand-in user id (say "anonymous") to make
// them share one counter. When no rule applies the request passes without
// rate-limit headers.
//
// Admitted requests get the RateLimit-Policy and RateLimit headers (see
// SetHeaders; they describe the rules that applied to the request) and reach
// next. Denied requests get 429 with the headers, Retry-After and the JSON
// body
//
//	{"error":{"code":"rate_limited","message":"..."},"retryAfterMs":N}
//
// N is the limiter's RetryAfter in milliseconds, rounded up: when the same
// request would fit again. Retry-After is that in whole seconds, rounded up,
// but never earlier than the RateLimit header's t, so the two never disagree; for
// SlidingLog and GCRA t (time until the rule is back to full capacity) can be
// later than N.
//
// Degraded decisions (the backend was unreachable and the policy's
// OnBackendError decided) are answered like any other decision. An error from
// the limiter means no decision could be made at all: ErrBackend gets 503
// "unavailable"; anything else (an invalid policy or cost, a bug) gets 500
// "internal" with a generic message, and the error is logged. An invalid
// policy is reported on every request rather than panicking at start-up.
//
// Usage:
//
//	p := ratelimit.Policy{Name: "verify", OnBackendError: ratelimit.FailClosed, Rules: []ratelimit.Rule{
//		{Name: "user", Subject: "user", Limit: 3, WindowMs: 3_600_000},
//		{Name: "ip", Subject: "ip", Limit: 10, WindowMs: 3_600_000},
//	}}
//	proxies, err := ratelimit.ParseTrustedProxies(os.Getenv("TRUSTED_PROXIES"))
//	if err != nil { ... }
//	limit := ratelimit.Middleware(limiter, p, ratelimit.MiddlewareOptions{
//		TrustedProxies: proxies,
//		UserID:         func(r *http.Request) string { return userFromSession(r) },
//	})
//	mux.Handle("POST /verify", limit(verifyHandler))
func Middleware(l Limiter, p Policy, opts MiddlewareOptions) func(http.Handler) http.Handler {
	policyErr := p.Validate()
	log := opts.logger()
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if policyErr != nil {
				log.Error("ratelimit: middleware policy is invalid", "policy", p.Name, "err", policyErr)
				mwWriteError(w, http.StatusInternalServerError, "internal", "internal error")
				return
			}
			subjects := mwSubjects(r, opts)
			applied := p
			applied.Rules = mwApplicableRules(p.Rules, subjects)
			if len(applied.Rules) == 0 {
				next.ServeHTTP(w, r)
				return
			}
			cost := 1
			if opts.Cost != nil {
				if c := opts.Cost(r); c != 0 {
					cost = c
				}
			}
			checks, err := applied.Checks(subjects, cost)
			var res Result
			if err == nil {
				res, err = l.AllowAll(r.Context(), checks...)
			}
			if err != nil {
				if errors.Is(err, ErrBackend) {
					log.Warn("ratelimit: middleware could not decide", "policy", p.Name, "err", err)
					mwWriteError(w, http.StatusServiceUnavailable, "unavailable", "rate limiter unavailable")
					return
				}
				log.Error("ratelimit: middleware failed", "policy", p.Name, "err", err)
				mwWriteError(w, http.StatusInternalServerError, "internal", "internal error")
				return
			}
			names := make([]string, len(checks))
			limits := make([]Limit, len(checks))
			for i, c := range checks {
				names[i], limits[i] = c.Name, c.Limit
			}
			t := SetHeaders(w.Header(), opts.now(), names, limits, res.Decisions)
			if res.Allowed {
				next.ServeHTTP(w, r)
				return
			}
			retry := max(mwCeilSeconds(res.RetryAfter), t)
			w.Header().Set("Retry-After", strconv.FormatInt(retry, 10))
			mwWriteJSON(w, http.StatusTooManyRequests, mwRateLimitedBody{
				Error:        mwErrorBody{Code: "rate_limited", Message: "rate limit exceeded, retry later"},
				RetryAfterMs: mwCeilMillis(res.RetryAfter),
			})
		})
	}
}

// mwSubjects collects the request's subjects: "ip", "user", then
// opts.Subjects (which wins on a clash).
func mwSubjects(r *http.Request, opts MiddlewareOptions) map[string]string {
	ip := ClientIP(r, opts.TrustedProxies)
	if ip == "" {
		// RemoteAddr carried no address at all (not possible over TCP). One
		// shared counter keeps such requests limited instead of skipping the
		// "ip" rules for them.
		ip = "unknown"
	}
	subjects := map[string]string{SubjectIP: cipSubject(ip, opts.IPv6PrefixLen)}
	if opts.UserID != nil {
		if u := opts.UserID(r); u != "" {
			subjects[SubjectUser] = u
		}
	}
	if opts.Subjects != nil {
		for k, v := range opts.Subjects(r) {
			subjects[k] = v
		}
	}
	return subjects
}

// mwApplicableRules returns the rules whose subject the request has, without
// modifying rules.
func mwApplicableRules(rules []Rule, subjects map[string]string) []Rule {
	out := make([]Rule, 0, len(rules))
	for _, r := range rules {
		if subjects[r.Subject] != "" {
			out = append(out, r)
		}
	}
	return out
}

type mwErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

type mwRateLimitedBody struct {
	Error        mwErrorBody `json:"error"`
	RetryAfterMs int64       `json:"retryAfterMs"`
}

func mwWriteError(w http.ResponseWriter, status int, code, msg string) {
	mwWriteJSON(w, status, struct {
		Error mwErrorBody `json:"error"`
	}{mwErrorBody{Code: code, Message: msg}})
}

func mwWriteJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil { // cannot happen for the fixed shapes above
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// SetHeaders sets the RateLimit-Policy and RateLimit header fields of
// draft-ietf-httpapi-ratelimit-headers (structured fields) for one decision of
// several rules: names[i], limits[i] and decisions[i] describe rule i, now is
// the clock the decisions' ResetAt are measured against. It returns the t
// value written (see below), which callers use to keep Retry-After from being
// earlier; with no rules it sets nothing and returns 0.
//
// RateLimit-Policy lists every rule, in order:
//
//	RateLimit-Policy: "user";q=3;w=3600, "ip";q=10;w=3600
//
// q is the rule's Limit and w its Window in seconds, rounded up. RateLimit
// carries only the most restrictive rule: a denying rule before an allowing
// one, then the lowest remaining, then the longest wait:
//
//	RateLimit: "user";r=2;t=3540
//
// r is Remaining and t delta seconds, rounded up, so client clock skew does
// not matter: for a denying rule the time until the same request could pass
// (its RetryAfter), otherwise the time until the rule is back to full capacity
// (its ResetAt; 0 when that has passed). Both fields replace any
// earlier value. Names are the rule names, serialised as structured-field
// strings (backslash and double quote escaped, any byte outside printable
// ASCII replaced by '?'); no partition key ("pk") is ever sent, so user ids
// and addresses never reach a header.
//
// SetHeaders sets nothing when the slices differ in length.
func SetHeaders(h http.Header, now time.Time, names []string, limits []Limit, decisions []Decision) int64 {
	if len(names) == 0 || len(names) != len(limits) || len(names) != len(decisions) {
		return 0
	}
	var policy strings.Builder
	best, bestT := -1, int64(0)
	for i := range names {
		if i > 0 {
			policy.WriteString(", ")
		}
		mwWriteSFString(&policy, names[i])
		policy.WriteString(";q=")
		policy.WriteString(strconv.Itoa(limits[i].Limit))
		policy.WriteString(";w=")
		policy.WriteString(strconv.FormatInt(max(mwCeilSeconds(limits[i].Window), 1), 10))

		t := mwResetSeconds(now, decisions[i])
		if best < 0 || mwMoreRestrictive(decisions[i], t, decisions[best], bestT) {
			best, bestT = i, t
		}
	}
	var rl strings.Builder
	mwWriteSFString(&rl, names[best])
	rl.WriteString(";r=")
	rl.WriteString(strconv.Itoa(max(decisions[best].Remaining, 0)))
	rl.WriteString(";t=")
	rl.WriteString(strconv.FormatInt(bestT, 10))
	h.Set("RateLimit-Policy", policy.String())
	h.Set("RateLimit", rl.String())
	return bestT
}

// mwResetSeconds is the t of a rule: for a denial, the time until the same
// request could pass (RetryAfter), because that is what a client that reads
// r=0 needs to know and it is exact for every algorithm; for an allowed
// request, the time until the rule is back to full capacity (ResetAt).
func mwResetSeconds(now time.Time, d Decision) int64 {
	if !d.Allowed {
		return mwCeilSeconds(d.RetryAfter)
	}
	return mwCeilSeconds(d.ResetAt.Sub(now))
}

// SetHeader is SetHeaders for a single rule (Limiter.Allow and friends).
func SetHeader(h http.Header, now time.Time, name string, l Limit, d Decision) int64 {
	return SetHeaders(h, now, []string{name}, []Limit{l}, []Decision{d})
}

// mwMoreRestrictive reports whether decision a (t seconds to reset) restricts
// the client more than b (bt seconds).
func mwMoreRestrictive(a Decision, at int64, b Decision, bt int64) bool {
	if a.Allowed != b.Allowed {
		return !a.Allowed
	}
	if a.Remaining != b.Remaining {
		return a.Remaining < b.Remaining
	}
	return at > bt
}

// mwWriteSFString writes s as an RFC 8941 sf-string: printable ASCII only,
// with '\' and '"' escaped.
func mwWriteSFString(b *strings.Builder, s string) {
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' || c == '"':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c > 0x7e:
			b.WriteByte('?')
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
}

// mwCeilSeconds is d in whole seconds, rounded up; 0 for d <= 0.
func mwCeilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	s := int64(d / time.Second)
	if d%time.Second != 0 {
		s++ // no overflow: d/time.Second is far below MaxInt64
	}
	return s
}

// mwCeilMillis is d in whole milliseconds, rounded up; 0 for d <= 0.
func mwCeilMillis(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	ms := int64(d / time.Millisecond)
	if d%time.Millisecond != 0 {
		ms++
	}
	return ms
}
