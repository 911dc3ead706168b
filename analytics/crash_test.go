package analytics

import (
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/elevacare/eleva-redis/internal/testutil"
	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/redistest"
)

// The kill test's forwarder process: the test binary run again with
// helperEnv set and its configuration in the environment.
const (
	helperEnv     = "ELEVA_ANALYTICS_HELPER_FORWARDER"
	helperRedis   = "ELEVA_ANALYTICS_HELPER_REDIS"
	helperPrefix  = "ELEVA_ANALYTICS_HELPER_PREFIX"
	helperPostHog = "ELEVA_ANALYTICS_HELPER_POSTHOG"
)

// helperForwarder is the forwarder process that TestForwarderKill9 starts
// and kills. It returns only on a setup error.
func helperForwarder() error {
	opt, err := rueidis.ParseURL(os.Getenv(helperRedis))
	if err != nil {
		return err
	}
	client, err := rueidis.NewClient(opt)
	if err != nil {
		return err
	}
	defer client.Close()
	s := NewRedis(client, Config{Prefix: os.Getenv(helperPrefix), Timeout: 10 * time.Second})
	f, err := NewForwarder(s.Buffer(), ForwarderConfig{APIKey: fakeKey, Host: os.Getenv(helperPostHog),
		Consumer: "doomed", BatchSize: 10, Concurrency: 1, Wait: 50 * time.Millisecond, RequestTimeout: time.Hour})
	if err != nil {
		return err
	}
	f.Start()
	select {}
}

// TestForwarderKill9 (acceptance 2): a forwarder process sends batches of
// 10; the fake PostHog accepts two, receives the third and holds its
// answer; the process is then killed with SIGKILL mid-flush. A second
// forwarder takes the unacknowledged batch over (XAUTOCLAIM) and sends the
// rest: every captured uuid reaches PostHog, the held batch twice with
// byte-identical events (same uuids, so PostHog de-duplicates), and no uuid
// appears that was not captured.
func TestForwarderKill9(t *testing.T) {
	t.Parallel()
	for _, tg := range []struct {
		name string
		url  func(testing.TB) string
	}{{"redis", redistest.URL}, {"cluster", redistest.ClusterURL}} {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			url, prefix := tg.url(t), redistest.Prefix(t)
			held := make(chan struct{})
			var once sync.Once
			fake := newFakePostHog(t, func(n int, evs []wireEvent) (int, http.Header) {
				if n == 3 {
					once.Do(func() { close(held) })
					return 0, nil // hang: the process dies waiting
				}
				return http.StatusOK, nil
			})
			s := NewRedis(redistest.Client(t, url), quiet(Config{Prefix: prefix, Timeout: 10 * time.Second}))
			uuids := captureN(t, s, 50, nil)
			proc := startForwarderProcess(t, url, prefix, fake.srv.URL)
			select {
			case <-held:
			case <-time.After(30 * time.Second):
				t.Fatalf("the forwarder process never sent a third batch; its output:\n%s", proc.Output())
			}
			proc.Kill(t)
			st, err := s.Stats(ctxb)
			if err != nil || st.Sent != 20 || st.Buffered != 30 || st.Retrying != 10 {
				t.Fatalf("after the kill: %+v %v, want 20 sent, 30 buffered of which 10 unacknowledged", st, err)
			}
			testForwarder(t, s.Buffer(), fake.srv.URL, ForwarderConfig{Consumer: "survivor", ClaimAfter: 200 * time.Millisecond}).Start()
			until(t, "the takeover", 30*time.Second, func() bool {
				st, err := s.Stats(ctxb)
				return err == nil && st.Buffered == 0 && st.Sent == 50
			})
			got := fake.received()
			if len(got) != len(uuids) {
				t.Fatalf("PostHog saw %d distinct uuids, want %d", len(got), len(uuids))
			}
			dups := 0
			for _, u := range uuids {
				raws := got[u]
				if len(raws) == 0 {
					t.Fatalf("uuid %s never reached PostHog", u)
				}
				for _, r := range raws[1:] {
					if r != raws[0] {
						t.Fatalf("uuid %s sent twice with different events:\n%s\n%s", u, raws[0], r)
					}
				}
				if fake.acceptedCount(u) != 1 {
					t.Fatalf("uuid %s accepted %d times", u, fake.acceptedCount(u))
				}
				if len(raws) > 1 {
					dups++
				}
			}
			if dups != 10 {
				t.Fatalf("%d events sent twice, want the 10 of the held batch", dups)
			}
		})
	}
}

func startForwarderProcess(t *testing.T, url, prefix, posthog string) *testutil.Process {
	t.Helper()
	// TestMain runs helperForwarder.
	return testutil.StartProcess(t, helperEnv+"=1", helperRedis+"="+url, helperPrefix+"="+prefix, helperPostHog+"="+posthog)
}

func newRegistry() *prometheus.Registry { return prometheus.NewRegistry() }
