package notify

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/redis/rueidis"
)

// ErrEvictionPolicy: a Redis node may evict keys (its maxmemory-policy is
// not noeviction), and an evicted key of the queue is a lost notification.
var ErrEvictionPolicy = errors.New("notify: Redis maxmemory-policy must be noeviction")

// CheckEviction returns an error wrapping ErrEvictionPolicy, naming the
// node and its policy, unless every node of client (each Cluster master,
// or the one server) runs with maxmemory-policy noeviction. It is meant
// for start-up: a service refuses to start the Redis queue on a server
// that can evict its keys, unless its operator explicitly overrides the
// check (a configuration flag of the caller; notify has none). When the
// policy cannot be read (CONFIG is disabled or forbidden by an ACL), the
// error wraps ErrBackend and says so: such a deployment must check the
// policy another way and override.
func CheckEviction(ctx context.Context, client rueidis.Client) error {
	if client == nil {
		return fmt.Errorf("%w: CheckEviction was given a nil client", ErrBackend)
	}
	nodes := client.Nodes()
	addrs := make([]string, 0, len(nodes))
	for a := range nodes {
		addrs = append(addrs, a)
	}
	slices.Sort(addrs)
	for _, addr := range addrs {
		c := nodes[addr]
		m, err := c.Do(ctx, c.B().ConfigGet().Parameter("maxmemory-policy").Build()).AsStrMap()
		if err != nil {
			return fmt.Errorf("%w: reading maxmemory-policy of %s (must be noeviction; override the check if CONFIG is unavailable): %w", ErrBackend, addr, err)
		}
		p, ok := m["maxmemory-policy"]
		if !ok {
			return fmt.Errorf("%w: %s did not report its maxmemory-policy (must be noeviction)", ErrBackend, addr)
		}
		if !strings.EqualFold(p, "noeviction") {
			return fmt.Errorf("%w: %s has maxmemory-policy %s, which can evict queued notifications; set maxmemory-policy noeviction", ErrEvictionPolicy, addr, p)
		}
	}
	return nil
}
