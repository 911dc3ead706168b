package notify

import (
	"context"
	"fmt"
	"maps"
	"os"
	"strings"
	"sync"
	"syscall"
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
	// helperExtend, when set, is the worker's WorkerConfig.ExtendEvery.
	helperExtend = "ELEVA_NOTIFY_HELPER_EXTEND"
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
	var wcfg WorkerConfig
	if e := os.Getenv(helperExtend); e != "" {
		if wcfg.ExtendEvery, err = time.ParseDuration(e); err != nil {
			return err
		}
	}
	err = NewWorker(q, s, wcfg).Run(context.Background())
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
	for _, tg := range redisTopologies {
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
			proc := startWorkerProcess(t, url, prefix, fake.srv.URL, lease)
			select {
			case <-held:
			case <-time.After(20 * time.Second):
				t.Fatalf("the worker process never sent the batch; its output:\n%s", proc.Output())
			}
			for _, id := range []string{"n1", "n2", "n3"} {
				if a := fake.acceptedCount(id); a != 1 {
					t.Fatalf("before the kill: %s accepted %d times", id, a)
				}
			}
			proc.Kill(t)
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

// TestWorkerSIGSTOP (acceptance 3): a worker process sends a
// notification and is frozen with SIGSTOP before the answer arrives. Its
// lease expires; another worker takes the user over and delivers (the
// same Idempotency-Key: the fake counts one delivery). The first process
// is resumed with SIGCONT, gets its answer, and its Ack finds the lease
// taken over (ErrLeaseLost, logged by the worker) and writes nothing: the
// queue's data and counters are what the second worker left. The frozen
// worker renews its lease only every minute, so that the fenced call it
// makes on waking is its Ack, not a renewal.
func TestWorkerSIGSTOP(t *testing.T) {
	t.Parallel()
	const lease = time.Second
	url, prefix := redistest.URL(t), redistest.Prefix(t)
	arrived, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	fake := newFakeNovu(t, func(key string, n int) fakeReply {
		if n == 1 {
			once.Do(func() { close(arrived) })
			return fakeReply{accept: true, waitFor: release}
		}
		return fakeReply{accept: true}
	})
	q := NewRedis(redistest.Client(t, url), quiet(Config{Prefix: prefix, Lease: lease, Timeout: 10 * time.Second}))
	testutil.Must[Result](t, "Enqueue")(q.Enqueue(ctxb, Notification{ID: "n1", UserID: "patient-1", Type: "reminder"}))
	proc := startWorkerProcess(t, url, prefix, fake.srv.URL, lease, helperExtend+"=1m")
	select {
	case <-arrived:
	case <-time.After(20 * time.Second):
		t.Fatalf("the worker process never sent; its output:\n%s", proc.Output())
	}
	if err := proc.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	startWorker(t, NewWorker(NewRedis(redistest.Client(t, url), quiet(Config{Prefix: prefix, Lease: lease, Timeout: 10 * time.Second})),
		fake.sender(t, 10*time.Second), quietWorker(WorkerConfig{IdleWait: time.Minute})))
	until(t, "the other worker's delivery", lease+10*time.Second, func() bool { return stats(t, q).Delivered == 1 })
	before := checkInvariants(t, q)
	close(release) // the frozen process's answer is waiting in its socket
	if err := proc.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	until(t, "the resumed worker's lease-lost ack", 20*time.Second, func() bool {
		return strings.Contains(proc.Output(), "worker ack found its lease taken over")
	})
	if s := stats(t, q); s != (Stats{Delivered: 1}) {
		t.Errorf("after the stale ack: %+v, want only the one delivery", s)
	}
	if after := checkInvariants(t, q); !maps.Equal(before, after) {
		t.Errorf("the stale ack changed the queue: %v, then %v", before, after)
	}
	if a, r := fake.acceptedCount("n1"), fake.requestCount("n1"); a != 1 || r != 2 {
		t.Errorf("n1 accepted %d times of %d requests, want once of 2", a, r)
	}
}

// startWorkerProcess starts helperWorker on the queue (url, prefix) with
// the given lease, sending to the fake Novu at novuURL. The process is
// killed when the test ends, if it is still running.
func startWorkerProcess(t *testing.T, url, prefix, novuURL string, lease time.Duration, env ...string) *testutil.Process {
	t.Helper()
	// TestMain runs helperWorker.
	return testutil.StartProcess(t, append([]string{helperEnv + "=1", helperRedis + "=" + url, helperPrefix + "=" + prefix,
		helperNovu + "=" + novuURL, helperLease + "=" + lease.String()}, env...)...)
}
