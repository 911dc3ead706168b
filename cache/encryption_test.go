package cache

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/redis/rueidis"

	"github.com/elevacare/eleva-redis/internal/redistest"
	"github.com/elevacare/eleva-redis/internal/seal"
	"github.com/elevacare/eleva-redis/internal/testutil"
)

// TestEncryptionAtRest: with a Keyring the shared level holds no plaintext;
// a value sealed under an older key is read after rotation; a value that
// does not open (its key removed, copied from another key, or read without
// encryption) is a miss that loads again — on memory, Redis and Cluster.
func TestEncryptionAtRest(t *testing.T) {
	k1, k2 := testutil.KeyEntry("k1", 1), testutil.KeyEntry("k2", 2)
	const secret = "Jane Doe, diabetes type 2"
	ctx := context.Background()
	for _, tg := range []struct {
		name string
		url  func(testing.TB) string
	}{{"memory", nil}, {"redis", redistest.URL}, {"cluster", redistest.ClusterURL}} {
		t.Run(tg.name, func(t *testing.T) {
			var shared *Store // memory: one Store stands for the shared level
			store := func(kr *seal.Keyring) *Store {
				if tg.url == nil {
					if shared == nil {
						shared = NewMemoryStore(StoreConfig{Keyring: kr})
						t.Cleanup(shared.Close)
					}
					return shared
				}
				return redisStoreCfg(t, tg.url(t), "tracking", StoreConfig{Keyring: kr})
			}
			writer := New[string](store(testutil.Keyring(t, k1)), Config[string]{Namespace: "n", LocalSize: -1})
			if err := writer.Set(ctx, "patient:1", secret); err != nil {
				t.Fatal(err)
			}
			e, _, err := writer.s.b.read(ctx, writer.rk("patient:1"), false)
			if err != nil || e == nil {
				t.Fatalf("raw read: %v, %v", e, err)
			}
			if bytes.Contains(e.data, []byte("diabetes")) {
				t.Fatalf("the shared level holds the plaintext: %q", e.data)
			}
			if v, _, err := writer.Get(ctx, "patient:1"); err != nil || v != secret {
				t.Fatalf("Get with the sealing key: %q, %v", v, err)
			}
			if tg.url == nil {
				return // one Store, one keyring: the rest needs separate instances
			}
			rotated := New[string](store(testutil.Keyring(t, k2+","+k1)), Config[string]{Namespace: "n", LocalSize: -1})
			if v, _, err := rotated.Get(ctx, "patient:1"); err != nil || v != secret {
				t.Fatalf("Get after rotation (k2 current, k1 kept): %q, %v", v, err)
			}
			for _, tt := range []struct {
				name string
				kr   *seal.Keyring
			}{{"k1 removed", testutil.Keyring(t, k2)}, {"encryption off", nil}} {
				c := New[string](store(tt.kr), Config[string]{Namespace: "n", LocalSize: -1})
				if _, _, err := c.Get(ctx, "patient:1"); !errors.Is(err, ErrNotFound) {
					t.Fatalf("%s: Get = %v, want a miss", tt.name, err)
				}
				loads := 0
				v, m, err := c.GetOrLoad(ctx, "patient:1", func(context.Context) (string, error) { loads++; return "reloaded", nil })
				if err != nil || v != "reloaded" || loads != 1 || m.Source != SourceLoader {
					t.Fatalf("%s: GetOrLoad = %q, %+v, %v, %d loads; want a load", tt.name, v, m, err, loads)
				}
				if err := c.Set(ctx, "patient:1", secret); err != nil { // back to sealed under k1 below
					t.Fatal(err)
				}
				if err := writer.Set(ctx, "patient:1", secret); err != nil {
					t.Fatal(err)
				}
			}
			// Bytes copied to another key do not open there.
			opt, err := rueidis.ParseURL(tg.url(t))
			if err != nil {
				t.Fatal(err)
			}
			raw, err := rueidis.NewClient(opt)
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			if err := writer.Set(ctx, "patient:2", "Other Person"); err != nil {
				t.Fatal(err)
			}
			src, dst := writer.rk("patient:1").value, writer.rk("patient:2").value
			b, err := raw.Do(ctx, raw.B().Get().Key(src).Build()).AsBytes()
			if err != nil {
				t.Fatal(err)
			}
			if err := raw.Do(ctx, raw.B().Set().Key(dst).Value(string(b)).Build()).Error(); err != nil {
				t.Fatal(err)
			}
			if v, _, err := rotated.Get(ctx, "patient:2"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("patient:1's sealed bytes under patient:2's key: Get = %q, %v; want a miss", v, err)
			}
		})
	}
}
