// Package server is the HTTP API of eleva-redis (see
// /docs and the OpenAPI document served at GET /openapi.json).
//
// New builds an http.Handler from Deps. Every route is declared once, in the
// table in routes.go: the mux, the auth requirement and the OpenAPI test are
// all derived from it. Every response that is not a success is the JSON error
// of errors.go; bad input is a 4xx with the offending field, never a 5xx.
package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net/http"
	"path"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/elevacare/eleva-redis/analytics"
	"github.com/elevacare/eleva-redis/cache"
	"github.com/elevacare/eleva-redis/lock"
	"github.com/elevacare/eleva-redis/notify"
	"github.com/elevacare/eleva-redis/ratelimit"
	"github.com/elevacare/eleva-redis/realtime"
	"github.com/elevacare/eleva-redis/session"
	"github.com/elevacare/eleva-redis/tempdata"
)

// DefaultMaxBodyBytes is the request body limit when Deps.MaxBodyBytes is 0.
const DefaultMaxBodyBytes = 1 << 20

// readyTimeout bounds the backend ping of GET /readyz.
const readyTimeout = time.Second

// Backend is what /readyz needs to know about the state backend.
type Backend interface {
	// Backend names the backend: "memory" or "redis".
	Backend() string
	// Ping measures one round trip to the backend.
	Ping(ctx context.Context) (time.Duration, error)
}

// Deps are the server's dependencies. Limiter, Locks, Temp, Sessions, Cache
// and Notify are required (elevaredis.Open builds them all on one backend); the
// zero value of every other field is its documented default.
type Deps struct {
	// Limiter decides the /v1/ratelimit calls. Required.
	Limiter ratelimit.Limiter
	// Locks serves /v1/locks. Required.
	Locks lock.Locker
	// Temp serves /v1/temp, /v1/tokens and /v1/idempotency. Required.
	Temp tempdata.Store
	// Sessions serves /v1/sessions and /v1/users/{userId}/sessions and
	// /roles. Required.
	Sessions session.Store
	// Cache is the shared level /v1/cache serves, in the namespace
	// CacheNamespace (see cache.go). Required.
	Cache *cache.Store
	// Notify serves /v1/notifications and /v1/users/{userId}/notifications.
	// Required.
	Notify notify.Queue
	// Analytics serves /v1/metrics and /v1/events; nil means an in-process
	// memory store (analytics.NewMemory) of this server alone.
	Analytics analytics.Store
	// Realtime serves /v1/channels, /v1/realtime and /v1/presence; nil
	// means an in-process memory broker (realtime.NewMemory) of this server
	// alone.
	Realtime realtime.Broker
	// RealtimeSecret signs and verifies the subscription tokens of
	// /v1/realtime (HS256, at least 32 bytes); empty means a random secret
	// of this process: tokens then die with it and other instances refuse
	// them.
	RealtimeSecret []byte
	// RealtimePing is the SSE ping interval; 0 means
	// realtime.DefaultPingInterval (15s).
	RealtimePing time.Duration
	// Policies are the named policies of /v1/ratelimit/policies; nil means none.
	Policies ratelimit.Policies
	// OnBackendError is the limiter's default failure policy, reported by
	// GET /v1/ratelimit/policies for policies that do not set their own;
	// "" means ratelimit.FailLocal (the limiter's own default).
	OnBackendError ratelimit.FailurePolicy
	// APIKeys are the accepted bearer tokens of the /v1 routes. With none,
	// only loopback clients may call /v1 (the command also refuses to listen
	// on a non-loopback address without keys).
	APIKeys []string
	// Backend answers /readyz; nil means the process itself is the backend
	// (always ready, reported as "memory").
	Backend Backend
	// Logger receives one line per request and every internal error; nil
	// means slog.Default().
	Logger *slog.Logger
	// Registry receives the HTTP metrics and is what GET /metrics serves; nil
	// means a private registry holding only the HTTP metrics.
	Registry *prometheus.Registry
	// MaxBodyBytes limits request bodies; 0 means DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// Version is the build's version, reported as info.version of the
	// OpenAPI document; "" means "dev".
	Version string
}

// server holds the resolved dependencies shared by the handlers.
type server struct {
	limiter        ratelimit.Limiter
	locks          lock.Locker
	temp           tempdata.Store
	sessions       session.Store
	cache          *cache.Cache[json.RawMessage]
	notify         notify.Queue
	analytics      analytics.Store
	realtime       realtime.Broker
	rtTokens       *realtime.Tokens
	rtPing         time.Duration
	policies       ratelimit.Policies
	onBackendError ratelimit.FailurePolicy
	auth           authenticator
	backend        Backend
	log            *slog.Logger
	registry       *prometheus.Registry
	metrics        *httpMetrics
	maxBody        int64
	version        string
	mux            *http.ServeMux
	openapiOnce    sync.Once
	openapi        []byte
	// methods are the table's methods, probed to tell 405 from 404.
	methods []string
}

// New returns the HTTP handler of the API. It panics when a required
// dependency is nil (a programming error, found at start-up).
func New(deps Deps) http.Handler {
	switch {
	case deps.Limiter == nil:
		panic("server: Deps.Limiter is required")
	case deps.Locks == nil:
		panic("server: Deps.Locks is required")
	case deps.Temp == nil:
		panic("server: Deps.Temp is required")
	case deps.Sessions == nil:
		panic("server: Deps.Sessions is required")
	case deps.Cache == nil:
		panic("server: Deps.Cache is required")
	case deps.Notify == nil:
		panic("server: Deps.Notify is required")
	}
	s := &server{
		limiter:        deps.Limiter,
		locks:          deps.Locks,
		temp:           deps.Temp,
		sessions:       deps.Sessions,
		cache:          newHTTPCache(deps.Cache),
		notify:         deps.Notify,
		analytics:      deps.Analytics,
		realtime:       deps.Realtime,
		rtTokens:       newRealtimeTokens(deps.RealtimeSecret),
		rtPing:         deps.RealtimePing,
		policies:       deps.Policies,
		onBackendError: deps.OnBackendError,
		auth:           newAuthenticator(deps.APIKeys),
		backend:        deps.Backend,
		log:            deps.Logger,
		registry:       deps.Registry,
		maxBody:        deps.MaxBodyBytes,
		version:        deps.Version,
		mux:            http.NewServeMux(),
	}
	if s.onBackendError == ratelimit.FailDefault {
		s.onBackendError = ratelimit.FailLocal
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.analytics == nil {
		s.analytics = analytics.NewMemory(analytics.Config{Logger: s.log})
	}
	if s.registry == nil {
		s.registry = prometheus.NewRegistry()
	}
	if s.realtime == nil {
		s.realtime = realtime.NewMemory(realtime.Config{Logger: s.log})
	}
	if s.maxBody <= 0 {
		s.maxBody = DefaultMaxBodyBytes
	}
	if s.version == "" {
		s.version = "dev"
	}
	s.metrics = newHTTPMetrics(s.registry)
	seen := map[string]bool{}
	for _, rt := range routeTable() {
		h := rt.handler(s)
		if rt.auth {
			h = s.requireAuth(h)
		}
		s.mux.Handle(rt.method+" "+rt.path, h)
		if !seen[rt.method] {
			seen[rt.method] = true
			s.methods = append(s.methods, rt.method)
		}
	}
	return s
}

// ServeHTTP is the outermost layer: request id, panic recovery, one log line
// and the metrics of every request, then dispatch through the mux.
func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rid := requestID(r)
	sw := &statusWriter{ResponseWriter: w}
	sw.Header().Set("X-Request-Id", rid)

	_, pattern := s.mux.Handler(r)
	if !cleanPath(r.URL.EscapedPath()) {
		// The mux would redirect to the cleaned path ("/v1/x/../y" to
		// "/v1/y"); the API has no redirects, and a client sending such a
		// path has a bug worth a clear 404. The escaped path is what the mux
		// cleans: a path parameter holding "/" or ".." sent escaped
		// ("a%2F..%2Fb") is a name, not a path step.
		pattern = ""
	}
	route := routeLabel(pattern)
	var h http.Handler = s.mux // lets the mux set r.Pattern and the path values
	if pattern == "" {
		// No route matched. Our own fallback gives 404 or 405 in the API's
		// JSON error format instead of the mux's plain-text answers.
		h = http.HandlerFunc(s.unmatched)
	}

	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			s.log.Error("panic serving request", "request_id", rid, "method", r.Method, "route", route,
				"panic", v, "stack", string(debug.Stack()))
			if !sw.wroteHeader {
				writeError(sw, errInternal)
			}
		}
		d := time.Since(start)
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		s.metrics.observe(route, r.Method, status, d)
		level := slog.LevelInfo
		switch {
		case status >= 500:
			level = slog.LevelError
		case isOpsRoute(route):
			// Probes and scrapes arrive every few seconds: keep them out of
			// the default log level.
			level = slog.LevelDebug
		}
		s.log.LogAttrs(r.Context(), level, "request",
			slog.String("method", r.Method),
			slog.String("route", route),
			slog.Int("status", status),
			slog.Float64("duration_ms", float64(d.Microseconds())/1000),
			slog.String("request_id", rid),
		)
	}()
	h.ServeHTTP(sw, r)
}

// unmatched answers a request no route matched: 405 with Allow when the path
// exists for other methods, 404 otherwise.
func (s *server) unmatched(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range s.methods {
		if m == r.Method || !cleanPath(r.URL.EscapedPath()) {
			continue
		}
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, p := s.mux.Handler(probe); p != "" {
			allow = append(allow, m)
			if m == http.MethodGet {
				allow = append(allow, http.MethodHead)
			}
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", joinComma(allow))
		writeError(w, &apiError{Status: http.StatusMethodNotAllowed, Code: codeMethodNotAllowed,
			Message: "method " + r.Method + " is not allowed on this path; allowed: " + joinComma(allow)})
		return
	}
	writeError(w, &apiError{Status: http.StatusNotFound, Code: codeNotFound, Message: "no such route"})
}

func joinComma(ss []string) string { return strings.Join(ss, ", ") }

// cleanPath reports whether p is already in the form path.Clean gives
// (trailing slash allowed), so the mux would not redirect it.
func cleanPath(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c == p
}

// routeLabel turns a mux pattern ("POST /v1/x/{name}") into the bounded route
// label of logs and metrics ("/v1/x/{name}"); unmatched requests share one.
func routeLabel(pattern string) string {
	if pattern == "" {
		return "unmatched"
	}
	for i := 0; i < len(pattern); i++ {
		if pattern[i] == ' ' {
			return pattern[i+1:]
		}
	}
	return pattern
}

// requestID returns the caller's X-Request-Id when it is short and plain
// (safe to log and echo), or a fresh random one.
func requestID(r *http.Request) string {
	if id := r.Header.Get("X-Request-Id"); id != "" && len(id) <= 64 && plainToken(id) {
		return id
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func plainToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// statusWriter remembers the status code for logs and metrics.
type statusWriter struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.status = code
		w.wroteHeader = true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.status = http.StatusOK
		w.wroteHeader = true
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer (flushes,
// deadlines).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// httpMetrics are the per-request Prometheus metrics.
type httpMetrics struct {
	requests *prometheus.CounterVec
	seconds  *prometheus.HistogramVec
}

func newHTTPMetrics(reg *prometheus.Registry) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eleva_http_requests_total",
			Help: "HTTP requests by route pattern, method and status code.",
		}, []string{"route", "method", "code"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "eleva_http_request_seconds",
			Help:    "HTTP request duration by route pattern.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"route"}),
	}
	m.requests = registerOrReuse(reg, m.requests)
	m.seconds = registerOrReuse(reg, m.seconds)
	return m
}

// registerOrReuse registers c, or returns the collector already registered
// under the same description (two servers sharing one registry).
func registerOrReuse[C prometheus.Collector](reg *prometheus.Registry, c C) C {
	if err := reg.Register(c); err != nil {
		if are, ok := err.(prometheus.AlreadyRegisteredError); ok {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic("server: registering metrics: " + err.Error())
	}
	return c
}

func (m *httpMetrics) observe(route, method string, status int, d time.Duration) {
	m.requests.WithLabelValues(route, methodLabel(method), strconv.Itoa(status)).Inc()
	m.seconds.WithLabelValues(route).Observe(d.Seconds())
}

// methodLabel bounds the method label: any method a client invents counts as
// "other".
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions:
		return m
	}
	return "other"
}
