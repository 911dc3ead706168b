package lock

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/elevacare/eleva-redis/internal/redistest"
)

// TestRedisFenceRule checks each branch of the fence rule of acquire.lua and
// handoff.lua, fence = max(previous + 1, Redis TIME in µs), on a real Redis
// and Cluster, by planting the previous fence in the fence key: the scripts
// compare decimal strings (by length, then bytewise) instead of numbers, so
// the rows cover shorter and equal-length previous values on both sides of
// the clock. (A longer one, 17 digits, is above 2^53, where Lua's doubles and
// so the scripts' replies are no longer exact: fences reach it in year 2255.) After every acquire the fence key holds the fence
// issued, with the TTL of the lock's ttl + 24h.
func TestRedisFenceRule(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const hour = uint64(time.Hour / time.Microsecond)
	for _, target := range redisTargets {
		t.Run(target.name, func(t *testing.T) {
			t.Parallel()
			c := redistest.Client(t, target.url(t))
			l := newTestRedis(t, c, Config{})
			b := l.b.(*redisBackend)
			nowUS := func() uint64 { return uint64(time.Now().UnixMicro()) }
			cases := []struct {
				name string
				prev func() string // "" leaves the fence key absent
				// wantNext: the fence must be prev + 1; otherwise the clock.
				wantNext bool
			}{
				{"no previous fence: the clock", func() string { return "" }, false},
				{"short previous fence: the clock", func() string { return "42" }, false},
				{"previous fence an hour ago: the clock", func() string { return strconv.FormatUint(nowUS()-hour, 10) }, false},
				{"previous fence an hour ahead (clock stepped back): previous + 1", func() string { return strconv.FormatUint(nowUS()+hour, 10) }, true},
			}
			for i, tc := range cases {
				for _, how := range []string{"acquire", "handoff"} {
					name := "fence-" + strconv.Itoa(i) + "-" + how
					_, fk := b.lockKeys(name)
					var holder *Lease
					if how == "handoff" {
						// The holder's fence is issued first, then replaced
						// by the planted one.
						holder = mustAcquire(t, l, name, longTTL)
					}
					prev := tc.prev()
					if prev == "" {
						if err := c.Do(ctx, c.B().Del().Key(fk).Build()).Error(); err != nil {
							t.Fatal(err)
						}
					} else if err := c.Do(ctx, c.B().Set().Key(fk).Value(prev).Px(time.Minute).Build()).Error(); err != nil {
						t.Fatal(err)
					}
					before := nowUS()
					var fence uint64
					if how == "acquire" {
						fence = mustAcquire(t, l, name, 10*time.Second).Fence
					} else {
						var err error
						if fence, err = b.handoff(ctx, name, holder.Token, newToken(), 10*time.Second); err != nil {
							t.Fatalf("%s, %s: handoff: %v", tc.name, how, err)
						}
					}
					after := nowUS()
					if tc.wantNext {
						p, _ := strconv.ParseUint(prev, 10, 64)
						if fence != p+1 {
							t.Errorf("%s, %s: fence %d, want previous + 1 = %d", tc.name, how, fence, p+1)
						}
					} else if s := uint64(slack / time.Microsecond); fence < before-s || fence > after+s {
						t.Errorf("%s, %s: fence %d, want the clock in µs, within [%d, %d]", tc.name, how, fence, before, after)
					}
					if v, err := c.Do(ctx, c.B().Get().Key(fk).Build()).ToString(); err != nil || v != strconv.FormatUint(fence, 10) {
						t.Errorf("%s, %s: fence key holds %q (%v), want %d", tc.name, how, v, err, fence)
					}
					if d := pttl(t, c, fk); d <= 24*time.Hour+9*time.Second || d > 24*time.Hour+10*time.Second {
						t.Errorf("%s, %s: fence key TTL %v, want about 24h10s", tc.name, how, d)
					}
				}
			}
		})
	}
}
