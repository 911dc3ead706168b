package redistest

import (
	"context"
	"os"
	"testing"
)

func TestMain(m *testing.M) { os.Exit(Run(m)) }

func TestStandaloneAndCluster(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		url  func(testing.TB) string
	}{{"standalone", URL}, {"cluster", ClusterURL}} {
		t.Run(tc.name, func(t *testing.T) {
			c := Client(t, tc.url(t))
			k := Prefix(t) + "x"
			if err := c.Do(ctx, c.B().Set().Key(k).Value("1").PxMilliseconds(60000).Build()).Error(); err != nil {
				t.Fatal(err)
			}
			v, err := c.Do(ctx, c.B().Get().Key(k).Build()).ToString()
			if err != nil || v != "1" {
				t.Fatalf("get = %q, %v", v, err)
			}
		})
	}
	// The cluster really is a cluster: keys spread over three masters.
	c := Client(t, ClusterURL(t))
	if n := len(c.Nodes()); n != 3 {
		t.Fatalf("cluster client sees %d nodes, want 3", n)
	}
}

func TestStopStart(t *testing.T) {
	ctx := context.Background()
	s := NewServer(t)
	c := Client(t, s.URL())
	if err := c.Do(ctx, c.B().Ping().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	s.Stop(t)
	if err := c.Do(ctx, c.B().Ping().Build()).Error(); err == nil {
		t.Fatal("ping succeeded on a stopped server")
	}
	s.Start(t)
	if err := c.Do(ctx, c.B().Ping().Build()).Error(); err != nil {
		t.Fatalf("ping after restart: %v", err)
	}
}
