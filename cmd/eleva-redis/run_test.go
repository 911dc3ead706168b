package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/notify"
)

var binDir string // the built binary's directory, removed after the tests

func TestMain(m *testing.M) {
	code := redistest.Run(m)
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// logSink collects run's log output (written from several goroutines) and
// reports the address of the "listening" line.
type logSink struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	partial []byte
	addr    chan string
	sent    bool
}

func newLogSink() *logSink { return &logSink{addr: make(chan string, 1)} }

var listeningRE = regexp.MustCompile(`msg=listening addr=(\S+)`)

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Write(p)
	s.partial = append(s.partial, p...)
	for {
		i := bytes.IndexByte(s.partial, '\n')
		if i < 0 {
			break
		}
		line := s.partial[:i]
		s.partial = s.partial[i+1:]
		if m := listeningRE.FindSubmatch(line); m != nil && !s.sent {
			s.sent = true
			s.addr <- string(m[1])
		}
	}
	return len(p), nil
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// env returns a getenv over m only: the tests never read the real
// environment.
func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// instance is run() serving in this process.
type instance struct {
	base   string
	logs   *logSink
	cancel context.CancelFunc
	done   chan int
}

// start runs `eleva-redis serve args...` in a goroutine and waits for its
// listening line. The instance is stopped when the test ends.
func start(t *testing.T, envm map[string]string, args ...string) *instance {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	in := &instance{logs: newLogSink(), cancel: cancel, done: make(chan int, 1)}
	go func() {
		in.done <- run(ctx, append([]string{"serve"}, args...), env(envm), io.Discard, in.logs)
	}()
	select {
	case addr := <-in.logs.addr:
		in.base = "http://" + addr
	case code := <-in.done:
		t.Fatalf("run exited with %d before listening:\n%s", code, in.logs)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatalf("no listening line after 30s:\n%s", in.logs)
	}
	t.Cleanup(func() { in.stop(t) })
	return in
}

// stop cancels run's context (what SIGTERM does in main) and returns its
// exit code; it fails the test when run does not return promptly.
func (in *instance) stop(t *testing.T) int {
	t.Helper()
	in.cancel()
	select {
	case code := <-in.done:
		in.done <- code // later calls see it too
		return code
	case <-time.After(15 * time.Second):
		t.Fatalf("run did not return within 15s of cancel:\n%s", in.logs)
		return -1
	}
}

type reply struct {
	status int
	header http.Header
	body   map[string]any
}

func call(t *testing.T, c *http.Client, method, url, body string, headers ...string) reply {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := reply{status: res.StatusCode, header: res.Header}
	if len(b) > 0 && strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(b, &r.body); err != nil {
			t.Fatalf("%s %s: body %q: %v", method, url, b, err)
		}
	}
	return r
}

func TestServeMemoryEndToEnd(t *testing.T) {
	in := start(t, nil, "--listen", "127.0.0.1:0")
	c := http.DefaultClient

	if r := call(t, c, "GET", in.base+"/healthz", ""); r.status != 200 || r.body["status"] != "ok" {
		t.Fatalf("healthz: %d %v", r.status, r.body)
	}
	if r := call(t, c, "GET", in.base+"/readyz", ""); r.status != 200 || r.body["backend"] != "memory" {
		t.Fatalf("readyz: %d %v", r.status, r.body)
	}
	// No keys: loopback clients may call /v1.
	body := `{"key":"k","limit":1,"windowMs":60000}`
	if r := call(t, c, "POST", in.base+"/v1/ratelimit/allow", body); r.status != 200 || r.body["allowed"] != true {
		t.Fatalf("allow: %d %v", r.status, r.body)
	}
	r := call(t, c, "POST", in.base+"/v1/ratelimit/allow", body)
	if r.status != 200 || r.body["allowed"] != false || r.header.Get("Retry-After") == "" {
		t.Fatalf("second allow: %d %v %v", r.status, r.body, r.header)
	}
	if r := call(t, c, "GET", in.base+"/openapi.json", ""); r.status != 200 || r.body["openapi"] != "3.1.0" {
		t.Fatalf("openapi: %d", r.status)
	}
	if r := call(t, c, "GET", in.base+"/metrics", ""); r.status != 200 {
		t.Fatalf("metrics: %d", r.status)
	}
	// The other capabilities are served too.
	r = call(t, c, "POST", in.base+"/v1/tokens", `{"purpose":"verify-email","data":{"userId":"42"},"ttlMs":60000}`)
	if r.status != 201 {
		t.Fatalf("issue: %d %v", r.status, r.body)
	}
	consume := in.base + "/v1/tokens/" + r.body["token"].(string) + "/consume"
	if r := call(t, c, "POST", consume, `{"purpose":"verify-email"}`); r.status != 200 || fmt.Sprint(r.body["data"]) != "map[userId:42]" {
		t.Fatalf("consume: %d %v", r.status, r.body)
	}
	if r := call(t, c, "POST", consume, `{"purpose":"verify-email"}`); r.status != 404 {
		t.Fatalf("second consume: %d %v", r.status, r.body)
	}
	if r := call(t, c, "POST", in.base+"/v1/locks/payment%3Aappt_1/acquire", `{"ttlMs":30000}`); r.status != 200 || r.body["token"] == "" {
		t.Fatalf("acquire: %d %v", r.status, r.body)
	}
	if r := call(t, c, "POST", in.base+"/v1/locks/payment%3Aappt_1/acquire", `{"ttlMs":30000}`); r.status != 409 {
		t.Fatalf("second acquire: %d %v", r.status, r.body)
	}

	// The cache: a PUT, then the value with its times.
	if r := call(t, c, "PUT", in.base+"/v1/cache/experts%3Atop", `{"value":[{"id":7}],"ttlMs":60000,"tags":["experts"]}`); r.status != 204 {
		t.Fatalf("cache put: %d %v", r.status, r.body)
	}
	if r := call(t, c, "GET", in.base+"/v1/cache/experts%3Atop", ""); r.status != 200 || fmt.Sprint(r.body["value"]) != "[map[id:7]]" ||
		r.body["cachedAt"] == nil || r.body["expiresAt"] == nil {
		t.Fatalf("cache get: %d %v", r.status, r.body)
	}
	if r := call(t, c, "GET", in.base+"/v1/cache/cold?lease=1&waitMs=100", ""); r.status != 404 || r.body["lease"] == nil {
		t.Fatalf("cache lease: %d %v", r.status, r.body)
	}

	// Notifications: queued once, listed.
	note := `{"userId":"patient-7","type":"appointment-reminder","title":"Your session","message":"in one hour","id":"reminder:appt-42"}`
	if r := call(t, c, "POST", in.base+"/v1/notifications", note); r.status != 202 || r.body["state"] != "pending" {
		t.Fatalf("enqueue: %d %v", r.status, r.body)
	}
	if r := call(t, c, "POST", in.base+"/v1/notifications", note); r.status != 200 {
		t.Fatalf("second enqueue: %d %v", r.status, r.body)
	}
	// The delivery worker runs on memory too, with the log sender.
	waitStats(t, c, in.base, "delivered 1", func(s map[string]any) bool {
		return s["delivered"] == float64(1) && s["pending"] == float64(0) && s["inflight"] == float64(0)
	})

	logs := in.logs.String()
	for _, want := range []string{
		`msg="starting eleva-redis"`,
		`backend=memory`,
		"ELEVA_REDIS_URL not set: using the in-process memory backend; state is not shared and not durable",
		"no API keys configured",
		"no policies file",
		"lock_timeout=500ms temp_timeout=500ms",
		"ELEVA_ENCRYPTION_KEY not set: encryption at rest is off",
		"capabilities=ratelimit,locks,temp,tokens,idempotency,sessions,cache,notifications",
		`msg=cache namespace=http coherence=memory`,
		`msg=notifications backend=memory`,
		`msg="notification delivery" workers=on sender=log concurrency=4`,
		`msg="notify: delivered (log sender)" id=reminder:appt-42 type=appointment-reminder`,
		`msg=request method=POST route=/v1/notifications status=202`,
		`msg=request method=POST route=/v1/ratelimit/allow status=200`,
		`msg=request method=POST route=/v1/tokens/{token}/consume status=404`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}

	startStop := time.Now()
	if code := in.stop(t); code != 0 {
		t.Fatalf("exit code %d after cancel, want 0:\n%s", code, in.logs)
	}
	if d := time.Since(startStop); d > 5*time.Second {
		t.Errorf("shutdown took %v", d)
	}
	if !strings.Contains(in.logs.String(), "msg=stopped") {
		t.Errorf("no stopped line:\n%s", in.logs)
	}
	if _, err := c.Get(in.base + "/healthz"); err == nil {
		t.Error("still serving after run returned")
	}
}

func TestServeRedisWithKeysAndPolicies(t *testing.T) {
	const key1, key2 = "k1-0123456789abcdef", "k2-0123456789abcdef"
	dir := t.TempDir()
	policies := filepath.Join(dir, "policies.yaml")
	if err := os.WriteFile(policies, []byte(`
login:
  onBackendError: closed
  rules:
    - {name: user, subject: user, limit: 1, windowMs: 60000}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	prefix := redistest.Prefix(t)
	in := start(t, map[string]string{
		"ELEVA_REDIS_URL":       redistest.URL(t),
		"ELEVA_API_KEYS":        key1 + ", " + key2,
		"ELEVA_KEY_PREFIX":      prefix,
		"ELEVA_POLICIES_FILE":   policies,
		"ELEVA_KEY_HASH_SECRET": "hash-secret-xyz",
		"ELEVA_ENCRYPTION_KEY":  encKey2 + "," + encKey1,
		"ELEVA_LISTEN":          "127.0.0.1:1", // the flag wins
		// Not a test of the 50ms default: a loaded CI machine must not
		// turn the first decision into a degraded (closed) denial.
		"ELEVA_RATELIMIT_TIMEOUT": "2s",
	}, "--listen", "127.0.0.1:0", "--log-format", "text")
	c := http.DefaultClient

	if r := call(t, c, "GET", in.base+"/readyz", ""); r.status != 200 || r.body["backend"] != "redis" {
		t.Fatalf("readyz: %d %v", r.status, r.body)
	}
	pol := in.base + "/v1/ratelimit/policies/login/allow"
	body := `{"subjects":{"user":"jane@example.com"}}`
	if r := call(t, c, "POST", pol, body); r.status != 401 {
		t.Fatalf("without a key: %d", r.status)
	}
	if r := call(t, c, "POST", pol, body, "Authorization", "Bearer nope"); r.status != 401 {
		t.Fatalf("wrong key: %d", r.status)
	}
	if r := call(t, c, "POST", pol, body, "Authorization", "Bearer "+key2); r.status != 200 || r.body["allowed"] != true {
		t.Fatalf("first: %d %v", r.status, r.body)
	}
	if r := call(t, c, "POST", pol, body, "Authorization", "Bearer "+key1); r.status != 200 || r.body["allowed"] != false {
		t.Fatalf("second: %d %v", r.status, r.body)
	}
	r := call(t, c, "GET", in.base+"/v1/ratelimit/policies", "", "Authorization", "Bearer "+key1)
	if r.status != 200 || fmt.Sprint(r.body["policies"]) == "[]" {
		t.Fatalf("policies: %d %v", r.status, r.body)
	}

	// Encryption at rest: what the API stores is sealed in Redis, and reads
	// back in the clear through the API.
	const plain = "patient-jane-diagnosis"
	put := in.base + "/v1/temp/intake/jane%40example.com"
	if r := call(t, c, "PUT", put, `{"value":{"note":"`+plain+`"},"ttlMs":60000}`, "Authorization", "Bearer "+key1); r.status != 200 {
		t.Fatalf("put: %d %v", r.status, r.body)
	}
	if r := call(t, c, "POST", in.base+"/v1/tokens", `{"purpose":"p","data":"`+plain+`","ttlMs":60000}`, "Authorization", "Bearer "+key1); r.status != 201 {
		t.Fatalf("issue: %d %v", r.status, r.body)
	}
	if r := call(t, c, "GET", put, "", "Authorization", "Bearer "+key2); r.status != 200 || fmt.Sprint(r.body["value"]) != "map[note:"+plain+"]" {
		t.Fatalf("get: %d %v", r.status, r.body)
	}
	sealed := rawStrings(t, redistest.URL(t), prefix)
	if len(sealed) < 2 {
		t.Fatalf("found %d string values under the prefix, want the value and the token", len(sealed))
	}
	for _, v := range sealed {
		if strings.Contains(v, plain) || !strings.HasPrefix(v, "\xe1\x02k2") {
			t.Errorf("stored value %q is not sealed under k2", v)
		}
	}

	logs := in.logs.String()
	for _, want := range []string{"backend=redis", "api_keys=2", "policies loaded", "names=login",
		"encryption at rest on", "current_key_id=k2", "older_key_ids=k1", "msg=cache namespace=http coherence=tracking",
		"msg=notifications backend=redis"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
	for _, secret := range []string{key1, key2, "hash-secret-xyz", "jane@example.com", encKey1[3:], encKey2[3:], plain, "jane%40"} {
		if strings.Contains(logs, secret) {
			t.Errorf("logs contain %q", secret)
		}
	}
	if code := in.stop(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// Two encryption keys (kid:base64 of 32 bytes) for the tests.
const (
	encKey1 = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
	encKey2 = "k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="
)

// rawStrings returns every string value stored under prefix on the server
// at url, as Redis holds it.
func rawStrings(t *testing.T, url, prefix string) []string {
	t.Helper()
	c := redistest.Client(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	keys, err := c.Do(ctx, c.B().Keys().Pattern(prefix+"*").Build()).AsStrSlice()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range keys {
		if typ, _ := c.Do(ctx, c.B().Type().Key(k).Build()).ToString(); typ != "string" {
			continue
		}
		v, err := c.Do(ctx, c.B().Get().Key(k).Build()).ToString()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

func TestServeNonLoopbackWithKeys(t *testing.T) {
	in := start(t, map[string]string{"ELEVA_API_KEYS": "key-0123456789abcdef"}, "--listen", "0.0.0.0:0")
	_, port, err := net.SplitHostPort(strings.TrimPrefix(in.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	base := "http://127.0.0.1:" + port
	if r := call(t, http.DefaultClient, "POST", base+"/v1/ratelimit/reset", `{"key":"k"}`); r.status != 401 {
		t.Fatalf("without a key: %d", r.status)
	}
	if r := call(t, http.DefaultClient, "POST", base+"/v1/ratelimit/reset", `{"key":"k"}`, "Authorization", "Bearer key-0123456789abcdef"); r.status != 204 {
		t.Fatalf("with the key: %d", r.status)
	}
}

func TestCommands(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		code     int
		stdout   string // substring
		stderr   string // substring
		noStderr string // must not appear
	}{
		{"version", []string{"version"}, nil, 0, "eleva-redis ", "", ""},
		{"help", []string{"help"}, nil, 0, "eleva-redis version", "", ""},
		{"serve -h", []string{"serve", "-h"}, nil, 0, "-redis-url", "", ""},
		{"--help without command", []string{"--help"}, nil, 0, "ELEVA_LISTEN", "", ""},
		{"unknown command", []string{"bogus"}, nil, 2, "", `unknown command "bogus"`, ""},
		{"version with arguments", []string{"version", "x"}, nil, 2, "", "unexpected arguments", ""},
		{"unknown flag", []string{"serve", "--nope"}, nil, 2, "", "flag provided but not defined: -nope", ""},
		{"extra argument", []string{"serve", "extra"}, nil, 2, "", "unexpected arguments", ""},
		{"non-loopback without keys", []string{"serve", "--listen", "0.0.0.0:0"}, nil, 2, "", "refusing to listen on \"0.0.0.0:0\" without API keys", ""},
		{"all interfaces without keys", []string{"--listen", ":0"}, nil, 2, "", "without API keys", ""},
		{"non-loopback from env without keys", nil, map[string]string{"ELEVA_LISTEN": "[::]:0"}, 2, "", "without API keys", ""},
		{"blank keys are no keys", []string{"--listen", "0.0.0.0:0", "--api-keys", " , "}, nil, 2, "", "without API keys", ""},
		{"bad listen", []string{"--listen", "nonsense"}, nil, 2, "", "want host:port", ""},
		{"bad log format", []string{"--log-format", "xml"}, nil, 2, "", "--log-format", ""},
		{"bad log level", nil, map[string]string{"ELEVA_LOG_LEVEL": "loud"}, 2, "", "--log-level", ""},
		{"bad env number", nil, map[string]string{"ELEVA_MAX_BODY_BYTES": "abc"}, 2, "", "ELEVA_MAX_BODY_BYTES", ""},
		{"zero body limit", []string{"--max-body-bytes", "0"}, nil, 2, "", "--max-body-bytes", ""},
		{"bad failure policy", []string{"--ratelimit-on-error", "maybe"}, nil, 2, "", "--ratelimit-on-error", ""},
		{"bad timeout", nil, map[string]string{"ELEVA_RATELIMIT_TIMEOUT": "soon"}, 2, "", "ELEVA_RATELIMIT_TIMEOUT", ""},
		{"redis connections not a power of two", []string{"--redis-connections", "3"}, nil, 2, "", "--redis-connections must be 0 (one per two CPUs) or a power of two", ""},
		{"negative redis connections", nil, map[string]string{"ELEVA_REDIS_CONNECTIONS": "-2"}, 2, "", "--redis-connections", ""},
		{"zero lock timeout", []string{"--lock-timeout", "0s"}, nil, 2, "", "--lock-timeout must be positive", ""},
		{"bad temp timeout", nil, map[string]string{"ELEVA_TEMP_TIMEOUT": "-1s"}, 2, "", "--temp-timeout must be positive", ""},
		{"encryption key without id", nil, map[string]string{"ELEVA_ENCRYPTION_KEY": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}, 2, "", "--encryption-key", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"},
		{"encryption key too short", []string{"--encryption-key", "k1:c2hvcnQta2V5LW1hdGVyaWFs"}, nil, 2, "", "decodes to 18 bytes, want 32", "c2hvcnQta2V5LW1hdGVyaWFs"},
		{"encryption key not base64", nil, map[string]string{"ELEVA_ENCRYPTION_KEY": "k1:not*base64*secret"}, 2, "", "not valid base64", "not*base64*secret"},
		{"missing policies file", []string{"--listen", "127.0.0.1:0", "--policies", "/nonexistent/p.json"}, nil, 2, "", "cannot load the policies file", ""},
		{"webhook without url", []string{"--notify-sender", "webhook", "--webhook-secret", "whsec-hidden"}, nil, 2, "", "--webhook-url", "whsec-hidden"},
		{"webhook without secret", nil, map[string]string{"ELEVA_NOTIFY_SENDER": "webhook", "ELEVA_WEBHOOK_URL": "https://u:pw-hidden@h.example.com/x?token=tk-hidden"}, 2, "", "--webhook-secret", "hidden"},
		{"webhook url not http", []string{"--notify-sender", "webhook", "--webhook-url", "ftp://tk-hidden@h.example.com", "--webhook-secret", "whsec-hidden"}, nil, 2, "", "--webhook-url: want an absolute http(s) URL", "hidden"},
		{"novu without key", nil, map[string]string{"ELEVA_NOTIFY_SENDER": "novu"}, 2, "", "--novu-api-key", ""},
		{"novu bad url", []string{"--notify-sender", "novu", "--novu-api-key", "nv-hidden", "--novu-url", "api.novu.co"}, nil, 2, "", "--novu-url", "nv-hidden"},
		{"unknown sender", []string{"--notify-sender", "sms"}, nil, 2, "", `--notify-sender "sms": want log, webhook or novu`, ""},
		{"novu key without novu sender", nil, map[string]string{"ELEVA_NOVU_API_KEY": "nv-hidden"}, 2, "", "--novu-api-key / --novu-url / --novu-bulk are set but --notify-sender is log", "nv-hidden"},
		{"novu bulk without novu sender", []string{"--novu-bulk"}, nil, 2, "", "--novu-bulk are set but --notify-sender is log", ""},
		{"webhook secret with novu sender", []string{"--notify-sender", "novu", "--novu-api-key", "nv-hidden", "--webhook-secret", "whsec-hidden"}, nil, 2, "", "--webhook-url / --webhook-secret are set but --notify-sender is novu", "hidden"},
		{"zero notify concurrency", []string{"--notify-concurrency", "0"}, nil, 2, "", "--notify-concurrency must be positive", ""},
		{"bad no-workers env", nil, map[string]string{"ELEVA_NOTIFY_NO_WORKERS": "maybe"}, 2, "", "ELEVA_NOTIFY_NO_WORKERS", ""},
		{"bad allow-eviction env", nil, map[string]string{"ELEVA_NOTIFY_ALLOW_EVICTION": "perhaps"}, 2, "", "ELEVA_NOTIFY_ALLOW_EVICTION", ""},
		{"unreachable redis", []string{"--listen", "127.0.0.1:0"}, map[string]string{"ELEVA_REDIS_URL": "redis://:sekret-pw@127.0.0.1:1"}, 1, "", "cannot open the backend", "sekret-pw"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			code := run(ctx, tc.args, env(tc.env), &stdout, &stderr)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, &stdout, &stderr)
			}
			if !strings.Contains(stdout.String(), tc.stdout) {
				t.Errorf("stdout lacks %q:\n%s", tc.stdout, &stdout)
			}
			if !strings.Contains(stderr.String(), tc.stderr) {
				t.Errorf("stderr lacks %q:\n%s", tc.stderr, &stderr)
			}
			if tc.noStderr != "" && strings.Contains(stderr.String(), tc.noStderr) {
				t.Errorf("stderr contains %q:\n%s", tc.noStderr, &stderr)
			}
			if strings.Contains(stderr.String(), "msg=listening") {
				t.Errorf("started listening:\n%s", &stderr)
			}
		})
	}
}

func TestFlagWinsOverEnv(t *testing.T) {
	e := env(map[string]string{
		"ELEVA_LISTEN":                    "127.0.0.1:1111",
		"ELEVA_API_KEYS":                  "a-key,b-key",
		"ELEVA_MAX_BODY_BYTES":            "2048",
		"ELEVA_RATELIMIT_TIMEOUT":         "75ms",
		"ELEVA_RATELIMIT_LOCAL_INSTANCES": "3",
		"ELEVA_LOCK_TIMEOUT":              "2s",
		"ELEVA_TEMP_TIMEOUT":              "3s",
		"ELEVA_ENCRYPTION_KEY":            encKey1,
		"ELEVA_NOTIFY_CONCURRENCY":        "7",
		"ELEVA_NOTIFY_NO_WORKERS":         "true",
		"ELEVA_NOTIFY_ALLOW_EVICTION":     "true",
		"ELEVA_NOTIFY_SENDER":             "novu",
		"ELEVA_NOVU_API_KEY":              "nv-key",
		"ELEVA_NOVU_URL":                  "https://eu.api.novu.co",
		"ELEVA_NOVU_BULK":                 "true",
	})
	c, err := parseConfig([]string{"--listen", "127.0.0.1:2222", "--max-body-bytes", "4096", "--notify-concurrency", "9"}, e, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.listen != "127.0.0.1:2222" || c.maxBodyBytes != 4096 {
		t.Errorf("flags did not win: listen=%q max=%d", c.listen, c.maxBodyBytes)
	}
	if fmt.Sprint(c.keys()) != "[a-key b-key]" || c.rlTimeout != 75*time.Millisecond || c.localInstances != 3 ||
		c.lockTimeout != 2*time.Second || c.tempTimeout != 3*time.Second || c.encryptionKey != encKey1 {
		t.Errorf("env not applied: keys=%q timeout=%v instances=%d lock=%v temp=%v", c.keys(), c.rlTimeout, c.localInstances, c.lockTimeout, c.tempTimeout)
	}
	if c.notifyConc != 9 || !c.noWorkers || !c.allowEviction || c.notifySender != "novu" || c.novuAPIKey != "nv-key" || c.novuURL != "https://eu.api.novu.co" || !c.novuBulk {
		t.Errorf("notify settings: concurrency=%d no_workers=%v allow_eviction=%v sender=%q url=%q bulk=%v", c.notifyConc, c.noWorkers, c.allowEviction, c.notifySender, c.novuURL, c.novuBulk)
	}
	d, err := parseConfig(nil, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if d.listen != "127.0.0.1:8080" || d.maxBodyBytes != 1<<20 || d.rlOnError != "local" || d.logFormat != "text" ||
		d.lockTimeout != 500*time.Millisecond || d.tempTimeout != 500*time.Millisecond || d.encryptionKey != "" ||
		d.noWorkers || d.notifyConc != 4 || d.notifySender != "log" || d.novuURL != "https://api.novu.co" || d.allowEviction {
		t.Errorf("defaults: %+v", d)
	}
}

func TestLoopbackHost(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8080": true, "127.9.9.9:1": true, "[::1]:80": true, "localhost:80": true, "LOCALHOST:80": true,
		"[::ffff:127.0.0.1]:80": true,
		"0.0.0.0:80":            false, ":80": false, "[::]:80": false, "10.0.0.1:80": false, "example.com:80": false,
		"localhost.example.com:80": false, "nonsense": false,
	} {
		if got := loopbackHost(addr); got != want {
			t.Errorf("loopbackHost(%q) = %v, want %v", addr, got, want)
		}
	}
}

// binary builds the command once per test binary run.
var binary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "eleva-redis-bin-")
	if err != nil {
		return "", err
	}
	binDir = dir
	bin := filepath.Join(dir, "eleva-redis")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// process is the built binary serving in a child process.
type process struct {
	cmd  *exec.Cmd
	base string
	logs *logSink
	done chan error
}

func startProcess(t *testing.T, envm map[string]string, args ...string) *process {
	t.Helper()
	bin, err := binary()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append([]string{"serve", "--listen", "127.0.0.1:0"}, args...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range envm {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p := &process{cmd: cmd, logs: newLogSink(), done: make(chan error, 1)}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			_, _ = p.logs.Write(append(sc.Bytes(), '\n'))
		}
		p.done <- cmd.Wait()
	}()
	select {
	case addr := <-p.logs.addr:
		p.base = "http://" + addr
	case err := <-p.done:
		t.Fatalf("process exited before listening: %v\n%s", err, p.logs)
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("no listening line after 30s:\n%s", p.logs)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// terminate sends SIGTERM and expects a clean exit 0 within 15s.
func (p *process) terminate(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v\n%s", err, p.logs)
		}
	case <-time.After(15 * time.Second):
		t.Errorf("no exit within 15s of SIGTERM\n%s", p.logs)
	}
}

// TestAcceptance3TwoProcesses is Acceptance 3 for the service: two real
// eleva-redis processes share one Redis (standalone, then the 3-node
// Cluster); 800 concurrent requests (4 x 200) for one key, spread over both
// processes, with a limit of 50 per hour, admit exactly 50 for each
// algorithm.
func TestAcceptance3TwoProcesses(t *testing.T) {
	const (
		apiKey   = "acceptance-key-0123456789"
		limit    = 50
		requests = 4 * 200
	)
	for _, backend := range []struct{ name, url string }{
		{"standalone", redistest.URL(t)},
		{"cluster", redistest.ClusterURL(t)},
	} {
		t.Run(backend.name, func(t *testing.T) {
			envm := map[string]string{
				"ELEVA_REDIS_URL":  backend.url,
				"ELEVA_API_KEYS":   apiKey,
				"ELEVA_KEY_PREFIX": redistest.Prefix(t),
				// A decision must come from Redis: under this load a 50ms
				// timeout could hand some to the local fallback, and a
				// degraded answer would make the count meaningless.
				"ELEVA_RATELIMIT_TIMEOUT":  "10s",
				"ELEVA_RATELIMIT_ON_ERROR": "closed",
			}
			procs := []*process{startProcess(t, envm), startProcess(t, envm)}
			client := &http.Client{
				Timeout:   60 * time.Second,
				Transport: &http.Transport{MaxIdleConnsPerHost: requests, MaxConnsPerHost: 0, IdleConnTimeout: 30 * time.Second},
			}
			defer client.CloseIdleConnections()

			for _, alg := range []struct{ name, extra string }{
				{"sliding-log", ""},
				{"gcra", `,"burst":50`},
				{"fixed-window", ""},
			} {
				t.Run(alg.name, func(t *testing.T) {
					if alg.name == "fixed-window" {
						// A fixed window restarts at each multiple of the
						// window since the epoch: stay clear of the next one.
						waitClearOfBoundary(t, time.Hour, time.Minute)
					}
					body := fmt.Sprintf(`{"key":"acceptance-3:%s","limit":%d,"windowMs":3600000,"algorithm":%q%s}`,
						alg.name, limit, alg.name, alg.extra)
					var (
						wg                        sync.WaitGroup
						mu                        sync.Mutex
						allowed, denied, perProc0 int
						failures                  []string
					)
					startGate := make(chan struct{})
					for i := range requests {
						wg.Add(1)
						go func() {
							defer wg.Done()
							p := procs[i%2]
							req, _ := http.NewRequest("POST", p.base+"/v1/ratelimit/allow", strings.NewReader(body))
							req.Header.Set("Content-Type", "application/json")
							req.Header.Set("Authorization", "Bearer "+apiKey)
							<-startGate
							res, err := client.Do(req)
							var d struct {
								Allowed  bool
								Degraded bool
							}
							if err == nil {
								err = json.NewDecoder(res.Body).Decode(&d)
								res.Body.Close()
								if err == nil && res.StatusCode != 200 {
									err = fmt.Errorf("status %d", res.StatusCode)
								}
							}
							mu.Lock()
							defer mu.Unlock()
							switch {
							case err != nil:
								failures = append(failures, err.Error())
							case d.Degraded:
								failures = append(failures, "degraded decision")
							case d.Allowed:
								allowed++
								if i%2 == 0 {
									perProc0++
								}
							default:
								denied++
							}
						}()
					}
					close(startGate)
					wg.Wait()
					if len(failures) > 0 {
						t.Fatalf("%d failed requests, first: %s", len(failures), failures[0])
					}
					if allowed != limit || denied != requests-limit {
						t.Fatalf("allowed %d, denied %d; want exactly %d allowed of %d", allowed, denied, limit, requests)
					}
					t.Logf("%d allowed (%d through process 1, %d through process 2), %d denied", allowed, perProc0, allowed-perProc0, denied)
				})
			}
			// Connections the transport dialed but never used are "new" to
			// the server, which waits 5s before treating them as idle on
			// shutdown: close them first.
			client.CloseIdleConnections()
			for _, p := range procs {
				p.terminate(t)
			}
		})
	}
}

// waitClearOfBoundary waits, when the next multiple of window since the
// epoch is less than margin away, until it has passed.
func waitClearOfBoundary(t *testing.T, window, margin time.Duration) {
	now := time.Now()
	next := now.Truncate(window).Add(window)
	if left := next.Sub(now); left < margin {
		t.Logf("waiting %v for the window boundary to pass", left+time.Second)
		time.Sleep(left + time.Second)
	}
}

// concurrentPosts sends n POSTs of body at once, request i to
// bases[i%len(bases)]+path, and counts the answers by status. Transport
// errors fail the test.
func concurrentPosts(t *testing.T, client *http.Client, bases []string, path, body, apiKey string, n int) map[int]int {
	t.Helper()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		counts   = map[int]int{}
		failures []string
	)
	gate := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			req, _ := http.NewRequest("POST", bases[i%len(bases)]+path, strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+apiKey)
			<-gate
			res, err := client.Do(req)
			if err == nil {
				_, err = io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failures = append(failures, err.Error())
				return
			}
			counts[res.StatusCode]++
		})
	}
	close(gate)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d requests failed, first: %s", len(failures), failures[0])
	}
	return counts
}

// TestAcceptance4TwoProcesses is Acceptance 4 (and the exactly-once take)
// for the service: two real eleva-redis processes share one Redis
// (standalone, then the 3-node Cluster). One token is issued, then 1000
// concurrent consumes, split over both processes, get exactly one 200 and
// 999 × 404; the same for 1000 concurrent takes of one temporary value.
// Then a lock is handed between the processes: the second acquirer gets
// lock_held, a release through the other process frees it, a waiter on one
// process gets it when the holder on the other releases, and the fence
// increases at each acquire.
func TestAcceptance4TwoProcesses(t *testing.T) {
	const (
		apiKey   = "acceptance-key-0123456789"
		requests = 1000
	)
	for _, backend := range []struct{ name, url string }{
		{"standalone", redistest.URL(t)},
		{"cluster", redistest.ClusterURL(t)},
	} {
		t.Run(backend.name, func(t *testing.T) {
			envm := map[string]string{
				"ELEVA_REDIS_URL":  backend.url,
				"ELEVA_API_KEYS":   apiKey,
				"ELEVA_KEY_PREFIX": redistest.Prefix(t),
				// Every answer must come from Redis: a 503 under this load
				// would be neither the one 200 nor a 404.
				"ELEVA_TEMP_TIMEOUT": "10s",
				"ELEVA_LOCK_TIMEOUT": "10s",
			}
			procs := []*process{startProcess(t, envm), startProcess(t, envm)}
			bases := []string{procs[0].base, procs[1].base}
			client := &http.Client{
				Timeout:   60 * time.Second,
				Transport: &http.Transport{MaxIdleConnsPerHost: requests, IdleConnTimeout: 30 * time.Second},
			}
			defer client.CloseIdleConnections()
			auth := []string{"Authorization", "Bearer " + apiKey}

			t.Run("token consumed exactly once", func(t *testing.T) {
				r := call(t, client, "POST", procs[0].base+"/v1/tokens", `{"purpose":"oauth-state","data":{"next":"/book"},"ttlMs":60000}`, auth...)
				if r.status != 201 {
					t.Fatalf("issue: %d %v", r.status, r.body)
				}
				counts := concurrentPosts(t, client, bases, "/v1/tokens/"+r.body["token"].(string)+"/consume", `{"purpose":"oauth-state"}`, apiKey, requests)
				if counts[200] != 1 || counts[404] != requests-1 {
					t.Fatalf("consume answers %v; want exactly one 200 and %d × 404", counts, requests-1)
				}
				t.Logf("consume: %v", counts)
			})

			t.Run("temp value taken exactly once", func(t *testing.T) {
				put := procs[1].base + "/v1/temp/setup/" + "user%3A42"
				if r := call(t, client, "PUT", put, `{"value":{"step":3},"ttlMs":60000}`, auth...); r.status != 200 {
					t.Fatalf("put: %d %v", r.status, r.body)
				}
				counts := concurrentPosts(t, client, bases, "/v1/temp/setup/user%3A42/take", "", apiKey, requests)
				if counts[200] != 1 || counts[404] != requests-1 {
					t.Fatalf("take answers %v; want exactly one 200 and %d × 404", counts, requests-1)
				}
				t.Logf("take: %v", counts)
			})

			t.Run("lock handed between processes", func(t *testing.T) {
				lockURL := func(p int, op string) string { return procs[p].base + "/v1/locks/payment%3Aappt_123" + op }
				r := call(t, client, "POST", lockURL(0, "/acquire"), `{"ttlMs":30000}`, auth...)
				if r.status != 200 {
					t.Fatalf("acquire on process 1: %d %v", r.status, r.body)
				}
				tok1, fence1 := r.body["token"].(string), r.body["fence"].(float64)
				if r := call(t, client, "POST", lockURL(1, "/acquire"), `{"ttlMs":30000}`, auth...); r.status != 409 || errCode(r) != "lock_held" {
					t.Fatalf("second acquirer on process 2: %d %v", r.status, r.body)
				}
				if r := call(t, client, "GET", lockURL(1, ""), "", auth...); r.status != 200 || r.body["held"] != true || r.body["fence"] != fence1 || r.body["token"] != nil {
					t.Fatalf("inspect on process 2: %d %v", r.status, r.body)
				}
				// The token works through either process.
				if r := call(t, client, "POST", lockURL(1, "/release"), `{"token":"`+tok1+`"}`, auth...); r.status != 200 || r.body["released"] != true {
					t.Fatalf("release on process 2: %d %v", r.status, r.body)
				}
				r = call(t, client, "POST", lockURL(1, "/acquire"), `{"ttlMs":30000}`, auth...)
				if r.status != 200 || r.body["fence"].(float64) <= fence1 {
					t.Fatalf("acquire after release: %d %v (first fence %v)", r.status, r.body, fence1)
				}
				tok2, fence2 := r.body["token"].(string), r.body["fence"].(float64)
				// A waiter on process 1 gets the lock when process 2's holder
				// releases (whichever comes first, it must end up holding it).
				var wg sync.WaitGroup
				var waiter reply
				wg.Go(func() {
					waiter = call(t, client, "POST", lockURL(0, "/acquire"), `{"ttlMs":30000,"waitMs":20000}`, auth...)
				})
				if r := call(t, client, "POST", lockURL(1, "/release"), `{"token":"`+tok2+`"}`, auth...); r.status != 200 {
					t.Fatalf("release: %d %v", r.status, r.body)
				}
				wg.Wait()
				if waiter.status != 200 || waiter.body["fence"].(float64) <= fence2 {
					t.Fatalf("waiter: %d %v (previous fence %v)", waiter.status, waiter.body, fence2)
				}
				// The old token cannot touch the new holder's lock.
				if r := call(t, client, "POST", lockURL(0, "/release"), `{"token":"`+tok2+`"}`, auth...); r.status != 409 || errCode(r) != "lock_lost" {
					t.Fatalf("stale release: %d %v", r.status, r.body)
				}
			})

			client.CloseIdleConnections() // see TestAcceptance3TwoProcesses
			for _, p := range procs {
				p.terminate(t)
				if strings.Contains(p.logs.String(), "appt_123") {
					t.Errorf("logs contain a lock name:\n%s", p.logs)
				}
			}
		})
	}
}

func errCode(r reply) string {
	e, _ := r.body["error"].(map[string]any)
	code, _ := e["code"].(string)
	return code
}

// TestAcceptance6FailClosed is Acceptance 6 for the service: with its
// redis-server killed, a running eleva-redis answers acquire, take and
// consume (and the other lock and temp calls) with 503 unavailable, never
// 200, each within a bound; once redis-server is back the same process
// serves them again.
func TestAcceptance6FailClosed(t *testing.T) {
	const apiKey = "acceptance-key-0123456789"
	srv := redistest.NewServer(t)
	p := startProcess(t, map[string]string{
		"ELEVA_REDIS_URL":      srv.URL(),
		"ELEVA_API_KEYS":       apiKey,
		"ELEVA_LOCK_TIMEOUT":   "300ms",
		"ELEVA_TEMP_TIMEOUT":   "300ms",
		"ELEVA_ENCRYPTION_KEY": encKey1,
	})
	c := &http.Client{Timeout: 30 * time.Second}
	auth := []string{"Authorization", "Bearer " + apiKey}

	// State before the outage, which a wrong answer could come from.
	if r := call(t, c, "PUT", p.base+"/v1/temp/ns/k", `{"value":1,"ttlMs":60000}`, auth...); r.status != 200 {
		t.Fatalf("put: %d %v", r.status, r.body)
	}
	r := call(t, c, "POST", p.base+"/v1/tokens", `{"purpose":"p","data":1,"ttlMs":60000}`, auth...)
	if r.status != 201 {
		t.Fatalf("issue: %d %v", r.status, r.body)
	}
	tok := r.body["token"].(string)

	srv.Stop(t)
	for _, call1 := range []struct{ method, path, body string }{
		{"POST", "/v1/locks/l/acquire", `{"ttlMs":30000}`},
		{"POST", "/v1/locks/l/acquire", `{"ttlMs":30000,"waitMs":1000}`},
		{"POST", "/v1/temp/ns/k/take", ``},
		{"POST", "/v1/tokens/" + tok + "/consume", `{"purpose":"p"}`},
		{"GET", "/v1/temp/ns/k", ``},
		{"POST", "/v1/tokens", `{"purpose":"p","data":1,"ttlMs":60000}`},
		{"POST", "/v1/idempotency/i/begin", `{"ttlMs":60000}`},
	} {
		start := time.Now()
		r := call(t, c, call1.method, p.base+call1.path, call1.body, auth...)
		took := time.Since(start)
		if r.status != 503 || errCode(r) != "unavailable" {
			t.Errorf("%s %s with Redis down: %d %v; want 503 unavailable", call1.method, call1.path, r.status, r.body)
		}
		// Generous bound: the calls give up after their 300ms timeout (a
		// waiting acquire retries for one more), never after rueidis' own.
		if took > 5*time.Second {
			t.Errorf("%s %s took %v with Redis down", call1.method, call1.path, took)
		}
		t.Logf("%s %s: %d in %v", call1.method, strings.ReplaceAll(call1.path, tok, "{token}"), r.status, took.Round(time.Millisecond))
	}
	if r := call(t, c, "GET", p.base+"/readyz", ""); r.status != 503 {
		t.Errorf("readyz with Redis down: %d", r.status)
	}

	srv.Start(t) // empty: the test servers do not persist
	if r := call(t, c, "GET", p.base+"/readyz", ""); r.status != 200 {
		t.Fatalf("readyz after restart: %d %v", r.status, r.body)
	}
	if r := call(t, c, "POST", p.base+"/v1/locks/l/acquire", `{"ttlMs":30000}`, auth...); r.status != 200 {
		t.Fatalf("acquire after restart: %d %v", r.status, r.body)
	}
	if r := call(t, c, "PUT", p.base+"/v1/temp/ns/k", `{"value":2,"ttlMs":60000}`, auth...); r.status != 200 {
		t.Fatalf("put after restart: %d %v", r.status, r.body)
	}
	if r := call(t, c, "POST", p.base+"/v1/temp/ns/k/take", ``, auth...); r.status != 200 || r.body["value"] != float64(2) {
		t.Fatalf("take after restart: %d %v", r.status, r.body)
	}
	r = call(t, c, "POST", p.base+"/v1/tokens", `{"purpose":"p","data":3,"ttlMs":60000}`, auth...)
	if r.status != 201 {
		t.Fatalf("issue after restart: %d %v", r.status, r.body)
	}
	if r := call(t, c, "POST", p.base+"/v1/tokens/"+r.body["token"].(string)+"/consume", `{"purpose":"p"}`, auth...); r.status != 200 || r.body["data"] != float64(3) {
		t.Fatalf("consume after restart: %d %v", r.status, r.body)
	}
	p.terminate(t)
	if strings.Contains(p.logs.String(), encKey1[3:]) {
		t.Error("logs contain the encryption key")
	}
}

// waitStats polls GET /v1/notifications/stats until ok accepts it, for at
// most 15s.
func waitStats(t *testing.T, c *http.Client, base, what string, ok func(map[string]any) bool, headers ...string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		r := call(t, c, "GET", base+"/v1/notifications/stats", "", headers...)
		if r.status == 200 && ok(r.body) {
			return r.body
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats never showed %s: %d %v", what, r.status, r.body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fakeWebhook is a receiver of the webhook sender: it checks every
// request's signature with notify.VerifySignature (401 when it is wrong)
// and records the bodies it accepted.
type fakeWebhook struct {
	*httptest.Server
	secret []byte
	mu     sync.Mutex
	bodies []notify.WebhookBody
	badSig int
}

func newFakeWebhook(t *testing.T, secret string) *fakeWebhook {
	t.Helper()
	f := &fakeWebhook{secret: []byte(secret)}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, err := io.ReadAll(r.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		if !notify.VerifySignature(f.secret, raw, r.Header.Get(notify.HeaderSignature)) {
			f.badSig++
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var b notify.WebhookBody
		if err := json.Unmarshal(raw, &b); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		f.bodies = append(f.bodies, b)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(f.Close)
	return f
}

// received returns the accepted bodies and the count of bad signatures.
func (f *fakeWebhook) received() ([]notify.WebhookBody, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.bodies), f.badSig
}

// waitReceived polls until the fake has accepted n bodies, for at most 15s.
func (f *fakeWebhook) waitReceived(t *testing.T, n int) []notify.WebhookBody {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		got, bad := f.received()
		if bad > 0 {
			t.Fatalf("%d webhook requests had a bad signature", bad)
		}
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("the webhook received %d bodies, want %d", len(got), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestServeWebhookDelivery: serve on Redis delivers an enqueued
// notification to a webhook through its worker, signed; the stats show it
// delivered, and no secret, URL token or payload reaches the logs.
func TestServeWebhookDelivery(t *testing.T) {
	const secret, token = "whsec-0123456789abcdef", "tok-in-query-987"
	hook := newFakeWebhook(t, secret)
	p := startProcess(t, map[string]string{
		"ELEVA_REDIS_URL":      redistest.URL(t),
		"ELEVA_KEY_PREFIX":     redistest.Prefix(t),
		"ELEVA_WEBHOOK_SECRET": secret,
	}, "--notify-sender", "webhook", "--webhook-url", hook.URL+"/hook?token="+token)
	c := &http.Client{Timeout: 10 * time.Second}

	note := `{"userId":"patient-7","type":"appointment-reminder","title":"Secret title","message":"Dr. Silva, 10:00","data":{"appointmentId":"appt-42"},"id":"reminder:appt-42"}`
	if r := call(t, c, "POST", p.base+"/v1/notifications", note); r.status != 202 {
		t.Fatalf("enqueue: %d %v", r.status, r.body)
	}
	got := hook.waitReceived(t, 1)
	if len(got) != 1 || got[0].UserID != "patient-7" || len(got[0].Notifications) != 1 {
		t.Fatalf("webhook bodies: %+v", got)
	}
	if n := got[0].Notifications[0]; n.ID != "reminder:appt-42" || n.Title != "Secret title" || n.Attempt != 1 || string(n.Data) != `{"appointmentId":"appt-42"}` {
		t.Fatalf("webhook notification: %+v", n)
	}
	waitStats(t, c, p.base, "delivered 1", func(s map[string]any) bool {
		return s["delivered"] == float64(1) && s["pending"] == float64(0) && s["inflight"] == float64(0)
	})
	if r := call(t, c, "GET", p.base+"/metrics", ""); r.status != 200 {
		t.Fatalf("metrics: %d", r.status)
	}
	c.CloseIdleConnections()
	p.terminate(t)

	logs := p.logs.String()
	if want := `msg="notification delivery" workers=on sender=webhook concurrency=4 target=` + hook.URL; !strings.Contains(logs, want) {
		t.Errorf("logs lack %q:\n%s", want, logs)
	}
	for _, leak := range []string{secret, token, "Secret title", "Dr. Silva", "patient-7"} {
		if strings.Contains(logs, leak) {
			t.Errorf("logs contain %q:\n%s", leak, logs)
		}
	}
}

// TestServeNoWorkers: with --no-workers nothing is delivered and the item
// stays pending; a process with workers on the same queue then delivers
// it (it was deliverable all along).
func TestServeNoWorkers(t *testing.T) {
	const secret = "whsec-0123456789abcdef"
	hook := newFakeWebhook(t, secret)
	envm := map[string]string{
		"ELEVA_REDIS_URL":      redistest.URL(t),
		"ELEVA_KEY_PREFIX":     redistest.Prefix(t),
		"ELEVA_NOTIFY_SENDER":  "webhook",
		"ELEVA_WEBHOOK_URL":    hook.URL,
		"ELEVA_WEBHOOK_SECRET": secret,
	}
	off := startProcess(t, envm, "--no-workers")
	c := &http.Client{Timeout: 10 * time.Second}
	note := `{"userId":"patient-7","type":"t","title":"x","message":"y","id":"n-1"}`
	if r := call(t, c, "POST", off.base+"/v1/notifications", note); r.status != 202 || r.body["state"] != "pending" {
		t.Fatalf("enqueue: %d %v", r.status, r.body)
	}
	// An observation window, not a synchronisation: a worker delivers in
	// milliseconds (TestServeWebhookDelivery), here nothing may come.
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if got, bad := hook.received(); len(got) > 0 || bad > 0 {
			t.Fatalf("delivered with --no-workers: %+v (%d bad signatures)", got, bad)
		}
		r := call(t, c, "GET", off.base+"/v1/notifications/stats", "")
		if r.status != 200 || r.body["pending"] != float64(1) || r.body["delivered"] != float64(0) || r.body["inflight"] != float64(0) {
			t.Fatalf("stats with --no-workers: %d %v", r.status, r.body)
		}
	}
	r := call(t, c, "GET", off.base+"/v1/users/patient-7/notifications", "")
	if ns, _ := r.body["notifications"].([]any); r.status != 200 || len(ns) != 1 || ns[0].(map[string]any)["attempts"] != float64(0) {
		t.Fatalf("due list with --no-workers: %d %v", r.status, r.body)
	}
	c.CloseIdleConnections()
	off.terminate(t)
	if want := `msg="notification delivery" workers="off (--no-workers)`; !strings.Contains(off.logs.String(), want) {
		t.Errorf("logs lack %q:\n%s", want, off.logs)
	}

	on := startProcess(t, envm)
	if got := hook.waitReceived(t, 1); got[0].Notifications[0].ID != "n-1" {
		t.Fatalf("webhook bodies: %+v", got)
	}
	waitStats(t, c, on.base, "delivered 1", func(s map[string]any) bool { return s["delivered"] == float64(1) && s["pending"] == float64(0) })
	c.CloseIdleConnections()
	on.terminate(t)
}

// runBinary runs the built binary to its end (at most 30s) and returns its
// exit code and combined output.
func runBinary(t *testing.T, envm map[string]string, args ...string) (int, string) {
	t.Helper()
	bin, err := binary()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range envm {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee) && ctx.Err() == nil:
		return ee.ExitCode(), string(out)
	}
	t.Fatalf("%s: %v\n%s", bin, err, out)
	return -1, ""
}

// TestServeEvictionPolicy: on a Redis that may evict keys, serve refuses
// to start (exit 1, before listening), naming maxmemory-policy and
// noeviction; --allow-eviction starts it with a warning.
func TestServeEvictionPolicy(t *testing.T) {
	srv := redistest.NewServer(t)
	rc := redistest.Client(t, srv.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rc.Do(ctx, rc.B().ConfigSet().ParameterValue().ParameterValue("maxmemory-policy", "allkeys-lru").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	envm := map[string]string{"ELEVA_REDIS_URL": srv.URL(), "ELEVA_KEY_PREFIX": redistest.Prefix(t)}

	code, out := runBinary(t, envm, "serve", "--listen", "127.0.0.1:0")
	if code != 1 {
		t.Fatalf("exit %d on allkeys-lru, want 1:\n%s", code, out)
	}
	for _, want := range []string{"refusing to start", "maxmemory-policy allkeys-lru", "set maxmemory-policy noeviction", "--allow-eviction"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "msg=listening") {
		t.Errorf("listened before refusing:\n%s", out)
	}

	p := startProcess(t, envm, "--allow-eviction")
	if r := call(t, http.DefaultClient, "GET", p.base+"/readyz", ""); r.status != 200 {
		t.Fatalf("readyz: %d %v", r.status, r.body)
	}
	p.terminate(t)
	logs := p.logs.String()
	if !regexp.MustCompile(`level=WARN msg="--allow-eviction: starting although Redis may evict.*maxmemory-policy allkeys-lru`).MatchString(logs) {
		t.Errorf("no eviction warning:\n%s", logs)
	}

	// The same Redis with noeviction starts without the flag or a warning.
	if err := rc.Do(ctx, rc.B().ConfigSet().ParameterValue().ParameterValue("maxmemory-policy", "noeviction").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	p = startProcess(t, envm)
	p.terminate(t)
	if strings.Contains(p.logs.String(), "maxmemory-policy") {
		t.Errorf("eviction warning on noeviction:\n%s", p.logs)
	}
}

// TestServeNotifyConfigErrorsBinary: bad delivery settings stop the built
// binary with exit 2, naming the flag, without echoing a secret.
func TestServeNotifyConfigErrorsBinary(t *testing.T) {
	for _, tc := range []struct {
		env       map[string]string
		args      []string
		want, not string
	}{
		{map[string]string{"ELEVA_NOTIFY_SENDER": "webhook", "ELEVA_WEBHOOK_SECRET": "whsec-hidden-1"}, nil, "--webhook-url", "whsec-hidden-1"},
		{map[string]string{"ELEVA_WEBHOOK_URL": "https://u:pw-hidden-2@hooks.example.com/h"}, []string{"--notify-sender", "webhook"}, "--webhook-secret", "pw-hidden-2"},
		{map[string]string{"ELEVA_NOVU_API_KEY": "nv-hidden-3"}, []string{"--notify-sender", "webhook"}, "--novu-api-key", "nv-hidden-3"},
		{nil, []string{"--notify-sender", "novu"}, "--novu-api-key", ""},
	} {
		code, out := runBinary(t, tc.env, append([]string{"serve", "--listen", "127.0.0.1:0"}, tc.args...)...)
		if code != 2 || !strings.Contains(out, tc.want) || tc.not != "" && strings.Contains(out, tc.not) {
			t.Errorf("%v %v: exit %d, want 2 naming %s without %q:\n%s", tc.env, tc.args, code, tc.want, tc.not, out)
		}
	}
}

// TestServeShutdownStopsWorker: a send that hangs does not hold SIGTERM
// past --shutdown-timeout: the send is cancelled, its item stays leased
// (delivered again after the lease) and the process exits 0.
func TestServeShutdownStopsWorker(t *testing.T) {
	const secret = "whsec-0123456789abcdef"
	got := make(chan struct{}, 1)
	release := make(chan struct{})
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case got <- struct{}{}:
		default:
		}
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(hook.Close)
	t.Cleanup(func() { close(release) }) // before Close: LIFO
	p := startProcess(t, map[string]string{
		"ELEVA_REDIS_URL":        redistest.URL(t),
		"ELEVA_KEY_PREFIX":       redistest.Prefix(t),
		"ELEVA_NOTIFY_SENDER":    "webhook",
		"ELEVA_WEBHOOK_URL":      hook.URL,
		"ELEVA_WEBHOOK_SECRET":   secret,
		"ELEVA_SHUTDOWN_TIMEOUT": "1s",
	})
	c := &http.Client{Timeout: 10 * time.Second}
	if r := call(t, c, "POST", p.base+"/v1/notifications", `{"userId":"u","type":"t","title":"x","message":"y","id":"n-1"}`); r.status != 202 {
		t.Fatalf("enqueue: %d %v", r.status, r.body)
	}
	select {
	case <-got:
	case <-time.After(15 * time.Second):
		t.Fatal("the webhook never received the send")
	}
	c.CloseIdleConnections()
	began := time.Now()
	p.terminate(t)
	if d := time.Since(began); d > 4*time.Second {
		t.Errorf("shutdown with a hanging send took %v (--shutdown-timeout 1s)", d)
	}
	logs := p.logs.String()
	for _, want := range []string{"send interrupted; items stay leased", "msg=stopped"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
}

// TestServePostHogForwarding: with ELEVA_POSTHOG_API_KEY set, serve runs the
// forwarder: events accepted by POST /v1/events reach PostHog's /batch/
// endpoint (the host from ELEVA_POSTHOG_HOST) with the key and their uuids,
// including those captured just before the shutdown (flushed before run
// returns). The start-up log says forwarding is on and never holds the key.
func TestServePostHogForwarding(t *testing.T) {
	const key = "phc_secret_project_key"
	var mu sync.Mutex
	got := map[string]int{}
	keys := map[string]bool{}
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			APIKey string `json:"api_key"`
			Batch  []struct {
				UUID string `json:"uuid"`
			} `json:"batch"`
		}
		if r.URL.Path != "/batch/" || json.NewDecoder(r.Body).Decode(&body) != nil {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		mu.Lock()
		keys[body.APIKey] = true
		for _, e := range body.Batch {
			got[e.UUID]++
		}
		mu.Unlock()
		_, _ = w.Write([]byte(`{"status":1}`))
	}))
	t.Cleanup(fake.Close)
	in := start(t, map[string]string{"ELEVA_POSTHOG_API_KEY": key, "ELEVA_POSTHOG_HOST": fake.URL})
	c := &http.Client{Timeout: 10 * time.Second}
	uuids := []string{"0190a0b0-0000-7000-8000-000000000001", "0190a0b0-0000-7000-8000-000000000002"}
	for _, u := range uuids {
		r := call(t, c, "POST", in.base+"/v1/events", `{"events":[{"event":"booked","distinctId":"patient-1","uuid":"`+u+`"}]}`)
		if r.status != 202 || r.body["accepted"] != float64(1) {
			t.Fatalf("capture: %d %v", r.status, r.body)
		}
	}
	c.CloseIdleConnections()
	if code := in.stop(t); code != 0 {
		t.Fatalf("exit %d:\n%s", code, in.logs)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, u := range uuids {
		if got[u] != 1 {
			t.Errorf("uuid %s reached PostHog %d times, want once (flushed at the latest on shutdown)", u, got[u])
		}
	}
	if len(keys) != 1 || !keys[key] {
		t.Errorf("api keys sent: %v", keys)
	}
	logs := in.logs.String()
	if !strings.Contains(logs, `posthog_forwarding=on`) || strings.Contains(logs, key) {
		t.Errorf("start-up log must say forwarding is on and never hold the key:\n%s", logs)
	}
}
