package lock

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/keys"
	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/internal/testlog"
	"github.com/elevacare/eleva-redis/internal/testutil"
)

// redisTargets are the two deployments every Redis-only test runs on.
var redisTargets = []struct {
	name string
	url  func(testing.TB) string
}{{"redis", redistest.URL}, {"cluster", redistest.ClusterURL}}

func newTestRedis(t *testing.T, client rueidis.Client, cfg Config) *locker {
	t.Helper()
	if cfg.Prefix == "" {
		cfg.Prefix = redistest.Prefix(t)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return NewRedis(client, cfg).(*locker)
}

func pttl(t *testing.T, c rueidis.Client, key string) time.Duration {
	t.Helper()
	n, err := c.Do(context.Background(), c.B().Pttl().Key(key).Build()).AsInt64()
	if err != nil {
		t.Fatalf("PTTL %s: %v", key, err)
	}
	return time.Duration(n) * time.Millisecond
}

// TestRedisKeys checks the key layout and the project rule that every key
// has a TTL: the lock key lives for the lease, the fence key for the lease
// plus 24h, both refreshed together and in one Cluster slot with the release
// channel; with KeyHashSecret the name does not appear in any key.
func TestRedisKeys(t *testing.T) {
	t.Parallel()
	for _, target := range redisTargets {
		t.Run(target.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			c := redistest.Client(t, target.url(t))
			prefix := redistest.Prefix(t)
			l := newTestRedis(t, c, Config{Prefix: prefix})
			rb := l.b.(*redisBackend)
			lease := mustAcquire(t, l, "payment:appt-42", 10*time.Second)
			lk, fk, ch := rb.keysOf("payment:appt-42")
			if want := prefix + "lock:{payment%3Aappt-42}"; lk != want || fk != want+":fence" || ch != want+":released" {
				t.Errorf("keys %q %q %q, want %q + '', ':fence', ':released'", lk, fk, ch, want)
			}
			if v, err := c.Do(ctx, c.B().Get().Key(lk).Build()).ToString(); err != nil || v != lease.Token {
				t.Errorf("GET lock key: %q, %v; want the token", v, err)
			}
			if v, err := c.Do(ctx, c.B().Get().Key(fk).Build()).ToString(); err != nil || v != strconv.FormatUint(lease.Fence, 10) {
				t.Errorf("GET fence key: %q, %v; want %d", v, err, lease.Fence)
			}
			if d := pttl(t, c, lk); d <= 9*time.Second || d > 10*time.Second {
				t.Errorf("lock key TTL %v, want about 10s", d)
			}
			if d := pttl(t, c, fk); d <= 24*time.Hour+9*time.Second || d > 24*time.Hour+10*time.Second {
				t.Errorf("fence key TTL %v, want about 24h10s", d)
			}
			if err := lease.Refresh(ctx, 20*time.Second); err != nil {
				t.Fatal(err)
			}
			if d := pttl(t, c, lk); d <= 19*time.Second || d > 20*time.Second {
				t.Errorf("lock key TTL after Refresh %v, want about 20s", d)
			}
			if d := pttl(t, c, fk); d <= 24*time.Hour+19*time.Second || d > 24*time.Hour+20*time.Second {
				t.Errorf("fence key TTL after Refresh %v, want about 24h20s", d)
			}
			if err := lease.Release(ctx); err != nil {
				t.Fatal(err)
			}
			if d := pttl(t, c, lk); d != -2*time.Millisecond {
				t.Errorf("lock key after Release: PTTL %v, want gone", d)
			}
			if d := pttl(t, c, fk); d <= 24*time.Hour {
				t.Errorf("fence key after Release: PTTL %v, want kept with its TTL", d)
			}
			if target.name == "cluster" {
				slot := func(k string) int64 {
					n, err := c.Do(ctx, c.B().ClusterKeyslot().Key(k).Build()).AsInt64()
					if err != nil {
						t.Fatalf("CLUSTER KEYSLOT: %v", err)
					}
					return n
				}
				if s := slot(lk); slot(fk) != s || slot(ch) != s {
					t.Errorf("lock key, fence key and channel in slots %d, %d, %d: want one slot", s, slot(fk), slot(ch))
				}
			}

			// KeyHashSecret keeps the name out of Redis.
			hl := newTestRedis(t, c, Config{Prefix: prefix, KeyHashSecret: []byte("secret")})
			hlease := mustAcquire(t, hl, "patient@example.com", 10*time.Second)
			hk, hf, hc := hl.b.(*redisBackend).keysOf("patient@example.com")
			for _, k := range []string{hk, hf, hc} {
				if strings.Contains(k, "patient") || !strings.HasPrefix(k, prefix+"lock:{") {
					t.Errorf("hashed key %q: want %slock:{<hmac>}... without the name", k, prefix)
				}
			}
			if v, err := c.Do(ctx, c.B().Get().Key(hk).Build()).ToString(); err != nil || v != hlease.Token {
				t.Errorf("GET hashed lock key: %q, %v", v, err)
			}
			if err := hlease.Release(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestRedisFailClosed is acceptance 6 (locks): with redis-server stopped,
// Acquire (with and without Wait), Refresh, Release and Inspect return
// errors wrapping ErrBackend within the timeout, never success; when the
// server is back, the same Locker works again.
func TestRedisFailClosed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv := redistest.NewServer(t)
	reg := prometheus.NewRegistry()
	const timeout = 200 * time.Millisecond
	l := newTestRedis(t, redistest.Client(t, srv.URL()), Config{Timeout: timeout, Registerer: reg})
	lease := mustAcquire(t, l, "pay", time.Minute)

	srv.Stop(t)
	const bound = timeout + 2*time.Second // generous: "did not hang", not a latency check
	calls := []struct {
		name string
		call func() error
	}{
		{"Acquire", func() error { _, err := l.Acquire(ctx, "other", time.Minute); return err }},
		{"Acquire with Wait", func() error { _, err := l.Acquire(ctx, "pay", time.Minute, Wait(10*time.Second)); return err }},
		{"Lease.Refresh", func() error { return lease.Refresh(ctx, time.Minute) }},
		{"Refresh", func() error { _, err := l.Refresh(ctx, "pay", lease.Token, time.Minute); return err }},
		{"Inspect", func() error { _, err := l.Inspect(ctx, "pay"); return err }},
		{"Release", func() error { return l.Release(ctx, "pay", lease.Token) }},
		{"Lease.Release", func() error { return lease.Release(ctx) }},
		{"Do", func() error {
			return Do(ctx, l, "do", time.Minute, func(context.Context, uint64) error {
				t.Error("Do ran fn while Redis was down")
				return nil
			})
		}},
	}
	for _, c := range calls {
		start := time.Now()
		err := c.call()
		took := time.Since(start)
		if !errors.Is(err, ErrBackend) {
			t.Errorf("%s with Redis down: %v, want ErrBackend", c.name, err)
		}
		if errors.Is(err, ErrLost) || errors.Is(err, ErrHeld) {
			t.Errorf("%s with Redis down: %v: a guess about the lock's state", c.name, err)
		}
		if took > bound {
			t.Errorf("%s with Redis down took %v, want within %v", c.name, took, bound)
		}
	}
	if closed(lease.Lost()) {
		t.Error("Lost() closed by backend errors: only a real loss or expiry closes it")
	}
	if n := testutil.Sum(t, reg, metricAcquire, "outcome", outcomeError); n != 3 {
		t.Errorf("acquire outcome=error counted %v times, want 3", n)
	}
	if n := testutil.Sum(t, reg, metricBackendErrors); n < 8 {
		t.Errorf("backend errors counted %v, want >= 8", n)
	}

	srv.Start(t)
	deadline := time.Now().Add(10 * time.Second)
	var next *Lease
	for {
		var err error
		next, err = l.Acquire(ctx, "pay", time.Minute)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrBackend) {
			t.Fatalf("Acquire while Redis restarts: %v, want ErrBackend until it answers", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("Acquire still failing 10s after the restart: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The restarted server lost its data (no persistence), as a failover
	// to a lagging replica can: the old lease is reported lost, not held.
	if err := lease.Release(ctx); !errors.Is(err, ErrLost) {
		t.Errorf("old lease's Release after the restart: %v, want ErrLost", err)
	}
	if info := mustInspect(t, l, "pay"); !info.Held || info.Fence != next.Fence {
		t.Errorf("Inspect after restart: %+v, want held with fence %d", info, next.Fence)
	}
	if err := next.Refresh(ctx, time.Minute); err != nil {
		t.Errorf("Refresh after restart: %v", err)
	}
	if err := next.Release(ctx); err != nil {
		t.Errorf("Release after restart: %v", err)
	}
}

// TestRedisWaitSurvivesReconnect: a waiting Acquire retries backend errors
// for up to Config.Timeout, so Redis coming back within that time (a
// restart, a reconnect) does not end the wait.
func TestRedisWaitSurvivesReconnect(t *testing.T) {
	t.Parallel()
	srv := redistest.NewServer(t)
	reg := prometheus.NewRegistry()
	l := newTestRedis(t, redistest.Client(t, srv.URL()), Config{Timeout: 3 * time.Second, Registerer: reg})
	srv.Stop(t)
	type result struct {
		le  *Lease
		err error
	}
	res := make(chan result, 1)
	go func() {
		le, err := l.Acquire(context.Background(), "w", time.Minute, Wait(20*time.Second))
		res <- result{le, err}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for testutil.Sum(t, reg, metricBackendErrors) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the waiting Acquire saw no backend error within 5s of the stop")
		}
		time.Sleep(5 * time.Millisecond)
	}
	srv.Start(t)
	select {
	case r := <-res:
		if r.err != nil {
			t.Fatalf("Acquire across the restart: %v, want the lock", r.err)
		}
		if info := mustInspect(t, l, "w"); !info.Held || info.Fence != r.le.Fence {
			t.Errorf("Inspect: %+v, want held with fence %d", info, r.le.Fence)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Acquire did not return within 20s")
	}
}

// TestRedisDoLosesLockWhileRedisDown: when Redis stops answering, Do's
// watchdog cannot refresh; once the lease's expiry passes it cancels fn's
// ctx with cause ErrLost (the lock may be someone else's by then), and Do
// returns ErrLost.
func TestRedisDoLosesLockWhileRedisDown(t *testing.T) {
	t.Parallel()
	srv := redistest.NewServer(t)
	reg := prometheus.NewRegistry()
	l := newTestRedis(t, redistest.Client(t, srv.URL()), Config{Timeout: 100 * time.Millisecond, Registerer: reg})
	var cause error
	var cancelledAt, expiresAt time.Time
	done := make(chan error, 1)
	// Do's acquire has the 100 ms timeout too; on a loaded machine it may
	// time out before fn runs: try again (a few times) rather than hang.
	for attempt := 1; ; attempt++ {
		started := make(chan struct{})
		go func() {
			done <- Do(context.Background(), l, "job", 300*time.Millisecond, func(ctx context.Context, _ uint64) error {
				close(started)
				<-ctx.Done()
				cancelledAt, cause = time.Now(), context.Cause(ctx)
				return ctx.Err()
			})
		}()
		select {
		case <-started:
		case err := <-done:
			if attempt == 5 {
				t.Fatalf("Do returned before running fn, 5 times: %v", err)
			}
			continue
		}
		break
	}
	srv.Stop(t)
	stoppedAt := time.Now()
	select {
	case err := <-done:
		if !errors.Is(err, ErrLost) || !errors.Is(cause, ErrLost) {
			t.Errorf("Do: %v (fn's ctx cause %v), want ErrLost", err, cause)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("fn's ctx not cancelled 10s after Redis stopped")
	}
	// The lease ends at most one ttl after its last refresh, which was
	// before the stop.
	expiresAt = stoppedAt.Add(300 * time.Millisecond)
	if cancelledAt.After(expiresAt.Add(2 * time.Second)) {
		t.Errorf("fn cancelled %v after Redis stopped, want about one ttl (300ms)", cancelledAt.Sub(stoppedAt))
	}
	if n := testutil.Sum(t, reg, metricLost); n != 1 {
		t.Errorf("lost counted %v times, want 1", n)
	}
}

// TestRedisNotifications: a release is published on the lock's channel; the
// waiters of one Locker share one subscription, which is removed from the
// server once they are gone; a waiter whose subscription connection is
// killed still gets the lock, and the subscription comes back.
func TestRedisNotifications(t *testing.T) {
	t.Parallel()
	for _, target := range redisTargets {
		t.Run(target.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			url := target.url(t)
			raw := redistest.Client(t, url)
			prefix := redistest.Prefix(t)
			holderL := newTestRedis(t, redistest.Client(t, url), Config{Prefix: prefix})
			// Named, so that the kill below cuts only this test's
			// subscription: other tests share the servers.
			waitName := strings.TrimSuffix(prefix, ":") + "-waiter"
			waitL := newTestRedis(t, redistest.ClientNamed(t, url, waitName), Config{Prefix: prefix})
			sharded := raw.Mode() == rueidis.ClientModeCluster
			if holderL.b.(*redisBackend).publish != map[bool]string{true: "SPUBLISH", false: "PUBLISH"}[sharded] {
				t.Fatalf("publish command %q on a %s client", holderL.b.(*redisBackend).publish, raw.Mode())
			}
			notify := waitL.b.(*redisBackend).notify
			notify.linger = 20 * time.Millisecond
			_, _, ch := waitL.b.(*redisBackend).keysOf("n")
			numsub := func() int64 {
				t.Helper()
				cmd := raw.B().PubsubNumsub().Channel(ch).Build()
				if sharded {
					cmd = raw.B().PubsubShardnumsub().Channel(ch).Build()
				}
				v, err := raw.Do(ctx, cmd).ToArray()
				if err != nil || len(v) != 2 {
					t.Fatalf("PUBSUB NUMSUB: %v %v", v, err)
				}
				n, _ := v[1].AsInt64()
				return n
			}
			eventually := func(what string, cond func() bool) {
				t.Helper()
				deadline := time.Now().Add(5 * time.Second)
				for !cond() {
					if time.Now().After(deadline) {
						t.Fatalf("%s: not within 5s", what)
					}
					time.Sleep(5 * time.Millisecond)
				}
			}

			// A raw subscriber sees the release.
			msgs := make(chan rueidis.PubSubMessage, 4)
			subscribed := make(chan struct{})
			var once sync.Once
			rctx, rcancel := context.WithCancel(ctx)
			recvDone := make(chan struct{})
			go func() {
				defer close(recvDone)
				cmd := raw.B().Subscribe().Channel(ch).Build()
				if sharded {
					cmd = raw.B().Ssubscribe().Channel(ch).Build()
				}
				hctx := rueidis.WithOnSubscriptionHook(rctx, func(rueidis.PubSubSubscription) { once.Do(func() { close(subscribed) }) })
				_ = raw.Receive(hctx, cmd, func(m rueidis.PubSubMessage) { msgs <- m })
			}()
			<-subscribed
			le := mustAcquire(t, holderL, "n", longTTL)
			if err := le.Release(ctx); err != nil {
				t.Fatal(err)
			}
			select {
			case m := <-msgs:
				if m.Channel != ch {
					t.Errorf("message on %q, want %q", m.Channel, ch)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no release message within 5s")
			}
			rcancel()
			<-recvDone
			if err := raw.Do(ctx, map[bool]rueidis.Completed{
				false: raw.B().Unsubscribe().Channel(ch).Build(),
				true:  raw.B().Sunsubscribe().Channel(ch).Build(),
			}[sharded]).Error(); err != nil {
				t.Fatalf("raw unsubscribe: %v", err)
			}
			eventually("raw subscriber gone", func() bool { return numsub() == 0 })

			// Five waiters in one Locker: one subscription.
			holder := mustAcquire(t, holderL, "n", longTTL)
			const waiters = 5
			errs := make(chan error, waiters)
			for range waiters {
				go func() {
					le, err := waitL.Acquire(ctx, "n", longTTL, Wait(10*time.Second))
					if err == nil {
						err = le.Release(ctx)
					}
					errs <- err
				}()
			}
			eventually("5 waiters queued", func() bool { return waitL.queue.len("n") == waiters })
			eventually("subscribed", func() bool { return numsub() == 1 })
			eventually("subscription confirmed to the notifier", func() bool {
				notify.mu.Lock()
				defer notify.mu.Unlock()
				s := notify.subs[ch]
				return s != nil && s.readyDone
			})
			if n := notify.subscribed(); n != 1 {
				t.Errorf("notifier holds %d subscriptions for one lock, want 1", n)
			}

			// Kill the subscription's connection: the waiters still get the
			// lock (poll, then resubscription), and it is subscribed again.
			killed := 0
			for _, n := range raw.Nodes() {
				ids, err := redistest.ClientIDs(ctx, n, "pubsub", waitName)
				if err != nil {
					t.Fatalf("CLIENT LIST: %v", err)
				}
				for _, id := range ids {
					if n.Do(ctx, n.B().Arbitrary("CLIENT", "KILL", "ID").Args(strconv.FormatInt(id, 10)).Build()).Error() == nil {
						killed++
					}
				}
			}
			if killed < 1 {
				t.Fatalf("killed %d Pub/Sub connections of the waiting Locker, want its subscriber's", killed)
			}
			eventually("resubscribed", func() bool { return numsub() == 1 })
			if err := holder.Release(ctx); err != nil {
				t.Fatal(err)
			}
			for range waiters {
				if err := <-errs; err != nil {
					t.Errorf("waiter: %v", err)
				}
			}
			// The last waiter gone and the linger passed: unsubscribed on
			// the server too.
			eventually("notifier empty", func() bool { return notify.subscribed() == 0 })
			eventually("server unsubscribed", func() bool { return numsub() == 0 })
		})
	}
}

// TestRedisBadConfig: an unusable configuration makes every call fail with a
// clear error instead of panicking or using another key space.
func TestRedisBadConfig(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := redistest.Client(t, redistest.URL(t))
	discard := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		name   string
		client rueidis.Client
		cfg    Config
		want   error
	}{
		{"bad prefix", c, Config{Prefix: "{x}", Logger: discard}, keys.ErrInvalidPrefix},
		{"nil client", nil, Config{Logger: discard}, ErrBackend},
	} {
		l := NewRedis(tc.client, tc.cfg)
		if _, err := l.Acquire(ctx, "x", time.Second); !errors.Is(err, tc.want) {
			t.Errorf("%s: Acquire: %v, want %v", tc.name, err, tc.want)
		}
		if _, err := l.Inspect(ctx, "x"); !errors.Is(err, tc.want) {
			t.Errorf("%s: Inspect: %v, want %v", tc.name, err, tc.want)
		}
		if _, err := l.Refresh(ctx, "x", "t", time.Second); !errors.Is(err, tc.want) {
			t.Errorf("%s: Refresh: %v, want %v", tc.name, err, tc.want)
		}
		if err := l.Release(ctx, "x", "t"); !errors.Is(err, tc.want) {
			t.Errorf("%s: Release: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// A client closed under a waiting Locker (the process shutting down) ends
// its release subscription at once: the notifier does not retry a closed
// client, nor log "interrupted" warnings while the waiters give up.
func TestRedisNotifierStopsOnClosedClient(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := redistest.URL(t)
	prefix := redistest.Prefix(t)
	holderL := newTestRedis(t, redistest.Client(t, url), Config{Prefix: prefix})
	logger, logs := testlog.Logger()
	c := redistest.Client(t, url) // closed below; closing again at cleanup is harmless
	waitL := newTestRedis(t, c, Config{Prefix: prefix, Logger: logger})
	holder := mustAcquire(t, holderL, "n", longTTL)
	defer holder.Release(ctx)
	errc := make(chan error, 1)
	go func() {
		_, err := waitL.Acquire(ctx, "n", longTTL, Wait(5*time.Second))
		errc <- err
	}()
	notify := waitL.b.(*redisBackend).notify
	_, _, ch := waitL.b.(*redisBackend).keysOf("n")
	var s *subscription
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		notify.mu.Lock()
		if x := notify.subs[ch]; x != nil && x.readyDone {
			s = x
		}
		notify.mu.Unlock()
		if s != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the waiter's subscription was not confirmed within 5s")
		}
	}
	c.Close()
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the notifier still runs 10s after its client closed")
	}
	if err := <-errc; err == nil {
		t.Error("Acquire on a closed client succeeded")
	}
	if strings.Contains(logs.String(), "interrupted") {
		t.Errorf("the notifier logged a lost subscription for a closed client:\n%s", logs.String())
	}
}
