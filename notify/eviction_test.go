package notify

import (
	"errors"
	"strings"
	"testing"

	"github.com/elevacare/eleva-redis/internal/redistest"
)

// TestCheckEviction: CheckEviction accepts noeviction only, on a dedicated
// redis-server whose policy the test sets, and on the 3-node Cluster
// (every master checked).
func TestCheckEviction(t *testing.T) {
	t.Parallel()
	srv := redistest.NewServer(t)
	client := redistest.Client(t, srv.URL())
	for _, c := range []struct {
		policy string
		ok     bool
	}{
		{"noeviction", true},
		{"allkeys-lru", false},
		{"volatile-lru", false},
		{"allkeys-lfu", false},
		{"volatile-ttl", false},
		{"allkeys-random", false},
	} {
		if err := client.Do(ctxb, client.B().ConfigSet().ParameterValue().ParameterValue("maxmemory-policy", c.policy).Build()).Error(); err != nil {
			t.Fatal(err)
		}
		err := CheckEviction(ctxb, client)
		if c.ok {
			if err != nil {
				t.Errorf("%s: %v", c.policy, err)
			}
			continue
		}
		if !errors.Is(err, ErrEvictionPolicy) {
			t.Fatalf("%s: %v, want ErrEvictionPolicy", c.policy, err)
		}
		for _, want := range []string{"maxmemory-policy", "noeviction", c.policy, srv.Addr} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %q does not name %q", c.policy, err, want)
			}
		}
	}
	cl := redistest.Client(t, redistest.ClusterURL(t))
	if err := CheckEviction(ctxb, cl); err != nil {
		t.Errorf("cluster: %v", err)
	}
	// One master of three with another policy is found, by name. (No
	// maxmemory is set on the test cluster, so nothing is evicted
	// meanwhile.)
	for addr, node := range cl.Nodes() {
		set := func(p string) error {
			return node.Do(ctxb, node.B().ConfigSet().ParameterValue().ParameterValue("maxmemory-policy", p).Build()).Error()
		}
		if err := set("volatile-lru"); err != nil {
			t.Fatal(err)
		}
		err := CheckEviction(ctxb, cl)
		if rerr := set("noeviction"); rerr != nil {
			t.Fatal(rerr)
		}
		if !errors.Is(err, ErrEvictionPolicy) || !strings.Contains(err.Error(), addr) {
			t.Errorf("cluster node %s with volatile-lru: %v", addr, err)
		}
	}
	if err := CheckEviction(ctxb, nil); !errors.Is(err, ErrBackend) {
		t.Errorf("nil client: %v", err)
	}
}
