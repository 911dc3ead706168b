package notify

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/internal/testutil"
)

// The crash test's worker process: the test binary run again with
// helperEnv set (and the rest of its configuration in the environment).
const (
	helperEnv    = "ELEVA_NOTIFY_HELPER_WORKER"
	helperRedis  = "ELEVA_NOTIFY_HELPER_REDIS"
	helperPrefix = "ELEVA_NOTIFY_HELPER_PREFIX"
	helperNovu   = "ELEVA_NOTIFY_HELPER_NOVU"
	helperLease  = "ELEVA_NOTIFY_HELPER_LEASE"
)

// helperWorker is the worker process that TestWorkerCrashRedelivery starts
// and kills: TestMain runs it instead of the tests when helperEnv is set. It
// returns only on a setup error; otherwise the parent kills the process.
func helperWorker() error {
	lease, err := time.ParseDuration(os.Getenv(helperLease))
	if err != nil {
		return err
	}
	opt, err := rueidis.ParseURL(os.Getenv(helperRedis))
	if err != nil {
		return err
	}
	client, err := rueidis.NewClient(opt)
	if err != nil {
		return err
	}
	defer client.Close()
	q := NewRedis(client, Config{Prefix: os.Getenv(helperPrefix), Lease: lease, Timeout: 10 * time.Second})
	s, err := NewNovuSender(NovuConfig{APIKey: fakeNovuKey, BaseURL: os.Getenv(helperNovu)})
	if err != nil {
		return err
	}
	err = NewWorker(q, s, WorkerConfig{}).Run(context.Background())
	return fmt.Errorf("the worker's Run returned: %v", err)
}

// TestWorkerCrashRedelivery: a worker process sends a batch of three to
// the fake Novu, which accepts all three but holds its answer to the last
// one; the process is then killed with SIGKILL, before its ack. Another
// worker gets the batch again once the lease has expired (within the
// lease of the kill: the dead process renewed it at most a third of a
// lease before), sends the same Idempotency-Keys, and the fake counts
// exactly one accepted delivery per notification.
func TestWorkerCrashRedelivery(t *testing.T) {
	t.Parallel()
	for _, tg := range []struct {
		name string
		url  func(testing.TB) string
	}{{"redis", redistest.URL}, {"cluster", redistest.ClusterURL}} {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			const lease = 2 * time.Second
			url, prefix := tg.url(t), redistest.Prefix(t)
			held := make(chan struct{})
			var once sync.Once
			fake := newFakeNovu(t, func(key string, n int) fakeReply {
				if key == "n3" && n == 1 {
					once.Do(func() { close(held) })
					return fakeReply{accept: true, hang: true}
				}
				return fakeReply{accept: true}
			})
			q := NewRedis(redistest.Client(t, url), quiet(Config{Prefix: prefix, Lease: lease, Timeout: 10 * time.Second}))
			for _, id := range []string{"n1", "n2", "n3"} {
				testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, Notification{ID: id, UserID: "patient-1", Type: "reminder"}))
			}
			var out bytes.Buffer
			var outMu sync.Mutex
			output := func() string { outMu.Lock(); defer outMu.Unlock(); return out.String() }
			cmd := exec.Command(os.Args[0]) // TestMain runs helperWorker
			cmd.Env = append(os.Environ(), helperEnv+"=1", helperRedis+"="+url, helperPrefix+"="+prefix,
				helperNovu+"="+fake.srv.URL, helperLease+"="+lease.String())
			cmd.Stdout = lockedWriter{&outMu, &out}
			cmd.Stderr = cmd.Stdout
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := false
			t.Cleanup(func() {
				if !exited {
					_ = cmd.Process.Kill()
					_ = cmd.Wait()
				}
			})
			select {
			case <-held:
			case <-time.After(20 * time.Second):
				t.Fatalf("the worker process never sent the batch; its output:\n%s", output())
			}
			for _, id := range []string{"n1", "n2", "n3"} {
				if a := fake.acceptedCount(id); a != 1 {
					t.Fatalf("before the kill: %s accepted %d times", id, a)
				}
			}
			if err := cmd.Process.Kill(); err != nil { // SIGKILL
				t.Fatal(err)
			}
			_ = cmd.Wait()
			exited = true
			killed := time.Now()
			if s := stats(t, q); s.Inflight != 3 || s.Delivered != 0 {
				t.Fatalf("after the kill: %+v, want 3 inflight", s)
			}
			startWorker(t, NewWorker(NewRedis(redistest.Client(t, url), quiet(Config{Prefix: prefix, Lease: lease, Timeout: 10 * time.Second})),
				fake.sender(t, 10*time.Second), quietWorker(WorkerConfig{IdleWait: time.Minute})))
			until(t, "the redelivery", lease+10*time.Second, func() bool { return stats(t, q).Delivered == 3 })
			took := time.Since(killed)
			t.Logf("%s: redelivered %v after the SIGKILL (lease %v)", tg.name, took, lease)
			if took > lease+time.Second {
				t.Fatalf("redelivered %v after the kill, more than the lease %v", took, lease)
			}
			for _, id := range []string{"n1", "n2", "n3"} {
				if a, r := fake.acceptedCount(id), fake.requestCount(id); a != 1 || r != 2 {
					t.Errorf("%s: accepted %d times of %d requests, want once of 2 (the same Idempotency-Key again)", id, a, r)
				}
			}
			if s := stats(t, q); s.Inflight+s.Pending+s.Retrying+s.Dead != 0 {
				t.Fatalf("stats %+v", s)
			}
		})
	}
}
