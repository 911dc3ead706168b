package server

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// route is one entry of the API: the only place a route is declared. New
// registers exactly these, and the OpenAPI test checks the document against
// exactly these.
type route struct {
	method string
	// path is a Go 1.22 ServeMux path pattern; its {wildcards} are spelled
	// as OpenAPI path templates, so the two compare as strings.
	path string
	// auth: the route needs an API key (every /v1 route).
	auth    bool
	handler func(*server) http.Handler
}

// routeTable lists every route of the API.
func routeTable() []route {
	return []route{
		{http.MethodPost, "/v1/ratelimit/allow", true, hf((*server).handleAllow)},
		{http.MethodPost, "/v1/ratelimit/peek", true, hf((*server).handlePeek)},
		{http.MethodPost, "/v1/ratelimit/record", true, hf((*server).handleRecord)},
		{http.MethodPost, "/v1/ratelimit/reset", true, hf((*server).handleReset)},
		{http.MethodPost, "/v1/ratelimit/policies/{name}/allow", true, hf((*server).handlePolicyAllow)},
		{http.MethodGet, "/v1/ratelimit/policies", true, hf((*server).handlePolicies)},

		{http.MethodPost, "/v1/locks/{name}/acquire", true, hf((*server).handleLockAcquire)},
		{http.MethodPost, "/v1/locks/{name}/refresh", true, hf((*server).handleLockRefresh)},
		{http.MethodPost, "/v1/locks/{name}/release", true, hf((*server).handleLockRelease)},
		{http.MethodGet, "/v1/locks/{name}", true, hf((*server).handleLockInspect)},

		{http.MethodPut, "/v1/temp/{namespace}/{key}", true, hf((*server).handleTempPut)},
		{http.MethodGet, "/v1/temp/{namespace}/{key}", true, hf((*server).handleTempGet)},
		{http.MethodPost, "/v1/temp/{namespace}/{key}/take", true, hf((*server).handleTempTake)},
		{http.MethodDelete, "/v1/temp/{namespace}/{key}", true, hf((*server).handleTempDelete)},

		{http.MethodPost, "/v1/tokens", true, hf((*server).handleTokenIssue)},
		{http.MethodPost, "/v1/tokens/{token}/consume", true, hf((*server).handleTokenConsume)},

		{http.MethodPost, "/v1/idempotency/{key}/begin", true, hf((*server).handleIdemBegin)},
		{http.MethodPost, "/v1/idempotency/{key}/complete", true, hf((*server).handleIdemComplete)},
		{http.MethodPost, "/v1/idempotency/{key}/fail", true, hf((*server).handleIdemFail)},

		{http.MethodPut, "/v1/sessions/{id}", true, hf((*server).handleSessionCreate)},
		{http.MethodGet, "/v1/sessions/{id}", true, hf((*server).handleSessionGet)},
		{http.MethodPatch, "/v1/sessions/{id}", true, hf((*server).handleSessionUpdate)},
		{http.MethodPost, "/v1/sessions/{id}/touch", true, hf((*server).handleSessionTouch)},
		{http.MethodGet, "/v1/sessions/{id}/roles/{role}", true, hf((*server).handleSessionHasRole)},
		{http.MethodDelete, "/v1/sessions/{id}", true, hf((*server).handleSessionDelete)},
		{http.MethodGet, "/v1/users/{userId}/sessions", true, hf((*server).handleUserSessions)},
		{http.MethodDelete, "/v1/users/{userId}/sessions", true, hf((*server).handleUserRevoke)},
		{http.MethodPut, "/v1/users/{userId}/roles", true, hf((*server).handleUserRoles)},

		{http.MethodGet, "/v1/cache/{key}", true, hf((*server).handleCacheGet)},
		{http.MethodPut, "/v1/cache/{key}", true, hf((*server).handleCachePut)},
		{http.MethodDelete, "/v1/cache/{key}", true, hf((*server).handleCacheDelete)},
		{http.MethodPost, "/v1/cache/invalidate", true, hf((*server).handleCacheInvalidate)},

		{http.MethodPost, "/v1/notifications", true, hf((*server).handleNotifyEnqueue)},
		{http.MethodGet, "/v1/users/{userId}/notifications", true, hf((*server).handleNotifyPending)},
		{http.MethodPost, "/v1/users/{userId}/notifications/remove", true, hf((*server).handleNotifyRemove)},
		{http.MethodDelete, "/v1/users/{userId}/notifications/{id}", true, hf((*server).handleNotifyCancel)},
		{http.MethodGet, "/v1/notifications/stats", true, hf((*server).handleNotifyStats)},
		{http.MethodGet, "/v1/notifications/dead", true, hf((*server).handleNotifyDead)},
		{http.MethodPost, "/v1/notifications/dead/{id}/requeue", true, hf((*server).handleNotifyRequeue)},

		{http.MethodPost, "/v1/metrics/increment", true, hf((*server).handleMetricIncrement)},
		{http.MethodGet, "/v1/metrics/{metric}", true, hf((*server).handleMetricSeries)},
		{http.MethodPost, "/v1/metrics/unique", true, hf((*server).handleMetricUnique)},
		{http.MethodGet, "/v1/metrics/{metric}/unique", true, hf((*server).handleMetricUniqueCount)},
		{http.MethodPost, "/v1/events", true, hf((*server).handleEventsCapture)},
		{http.MethodGet, "/v1/events/stats", true, hf((*server).handleEventsStats)},

		{http.MethodPost, "/v1/channels/{channel}/publish", true, hf((*server).handlePublish)},
		{http.MethodGet, "/v1/channels/{channel}/history", true, hf((*server).handleHistory)},
		{http.MethodPost, "/v1/realtime/tokens", true, hf((*server).handleRealtimeToken)},
		// Also open to a subscription token instead of the API key (auth.go).
		{http.MethodGet, "/v1/realtime/sse", true, (*server).handleSSE},
		{http.MethodPut, "/v1/presence/{subject}", true, hf((*server).handlePresenceSet)},
		{http.MethodGet, "/v1/presence", true, hf((*server).handlePresenceGet)},

		{http.MethodGet, "/healthz", false, hf((*server).handleHealthz)},
		{http.MethodGet, "/readyz", false, hf((*server).handleReadyz)},
		// /metrics is unauthenticated like most Prometheus targets: it holds
		// counts per route and status, never keys, subjects or bodies.
		// Restrict it at the network level when that matters.
		{http.MethodGet, "/metrics", false, (*server).metricsHandler},
		{http.MethodGet, "/openapi.json", false, hf((*server).handleOpenAPI)},
	}
}

// hf adapts a handler method to the table's constructor type.
func hf(m func(*server, http.ResponseWriter, *http.Request)) func(*server) http.Handler {
	return func(s *server) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { m(s, w, r) })
	}
}

// isOpsRoute reports the routes probed by orchestrators and scrapers.
func isOpsRoute(route string) bool {
	switch route {
	case "/healthz", "/readyz", "/metrics":
		return true
	}
	return false
}

// handleHealthz serves GET /healthz: the process is up and serving.
func (s *server) handleHealthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// handleReadyz serves GET /readyz: 200 when the backend answers a ping
// within readyTimeout, 503 unavailable otherwise.
func (s *server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	name := "memory"
	var latency time.Duration
	var err error
	if s.backend != nil {
		name = s.backend.Backend()
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		latency, err = s.backend.Ping(ctx)
		cancel()
	}
	if err != nil {
		s.log.Warn("readiness check failed", "backend", name, "error", err.Error())
		writeJSON(w, http.StatusServiceUnavailable, struct {
			Error   *apiError `json:"error"`
			Backend string    `json:"backend"`
		}{&apiError{Code: codeUnavailable, Message: "backend " + name + " is not reachable"}, name})
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Status    string `json:"status"`
		Backend   string `json:"backend"`
		LatencyMs int64  `json:"latencyMs"`
	}{"ok", name, ceilMs(latency)})
}

func (s *server) metricsHandler() http.Handler {
	return promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{
		ErrorLog: slogPrinter{s.log},
		// Serve what could be gathered rather than a 500 for a single bad
		// collector.
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// slogPrinter adapts the logger to promhttp's Println interface.
type slogPrinter struct {
	log interface{ Error(string, ...any) }
}

func (p slogPrinter) Println(v ...any) { p.log.Error("metrics: gather failed", "error", v) }
