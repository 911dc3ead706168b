package server

import (
	"crypto/sha256"
	"crypto/subtle"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// authenticator checks the bearer API key of /v1 requests.
type authenticator struct {
	// digests are SHA-256 digests of the configured keys: comparing fixed-
	// length digests keeps ConstantTimeCompare from leaking a key's length.
	digests [][sha256.Size]byte
}

func newAuthenticator(keys []string) authenticator {
	var a authenticator
	for _, k := range keys {
		if k == "" {
			continue
		}
		a.digests = append(a.digests, sha256.Sum256([]byte(k)))
	}
	return a
}

// enabled reports whether any API key is configured.
func (a authenticator) enabled() bool { return len(a.digests) > 0 }

// allow reports whether r may call a /v1 route. With keys configured it needs
// "Authorization: Bearer <key>" matching one of them; the presented key is
// compared with every configured key, without stopping at a match, so the
// time taken reveals neither which key matched nor how much of one did.
// Without keys only loopback clients are allowed.
func (a authenticator) allow(r *http.Request) bool {
	if !a.enabled() {
		return isLoopback(r.RemoteAddr)
	}
	token, ok := bearer(r.Header.Get("Authorization"))
	if !ok {
		return false
	}
	d := sha256.Sum256([]byte(token))
	match := 0
	for i := range a.digests {
		match |= subtle.ConstantTimeCompare(d[:], a.digests[i][:])
	}
	return match == 1
}

// bearer extracts the token of an "Authorization: Bearer <token>" value (the
// scheme is case-insensitive, RFC 9110 section 11.1).
func bearer(h string) (string, bool) {
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// isLoopback reports whether a RemoteAddr ("ip:port") is a loopback address.
func isLoopback(remoteAddr string) bool {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	return ip.Unmap().IsLoopback()
}

// requireAuth answers 401 unless the request may call the API.
func (s *server) requireAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.auth.allow(r) && !subscriptionTokenRequest(r) {
			msg := "missing or invalid API key (Authorization: Bearer <key>)"
			if !s.auth.enabled() {
				msg = "no API keys are configured: only loopback clients may call the API"
			} else {
				w.Header().Set("WWW-Authenticate", `Bearer realm="eleva-redis"`)
			}
			writeError(w, &apiError{Status: http.StatusUnauthorized, Code: codeUnauthorized, Message: msg})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// subscriptionTokenRequest reports whether r is an SSE request carrying a
// credential other than an API key (?token=, or a bearer that is not a
// key): the SSE handler verifies it as a subscription token and answers
// 401 or 403 itself.
func subscriptionTokenRequest(r *http.Request) bool {
	if r.Pattern != sseRoute {
		return false
	}
	if r.URL.Query().Get("token") != "" {
		return true
	}
	_, ok := bearer(r.Header.Get("Authorization"))
	return ok
}
