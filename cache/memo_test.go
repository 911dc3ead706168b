package cache

import (
	"fmt"
	"sync"
	"testing"
)

// TestMemo: a memo returns what was set, forgets everything when it fills
// (never holding much more than its size), and is safe for concurrent use.
func TestMemo(t *testing.T) {
	mo := newMemo(100)
	for i := range 1000 {
		k := fmt.Sprint("k", i)
		mo.set(k, rkey{value: "v" + k, lease: "l" + k})
		got, ok := mo.get(k)
		if !ok || got.value != "v"+k || got.lease != "l"+k {
			t.Fatalf("get(%s) = %+v, %v right after set", k, got, ok)
		}
		n := 0
		mo.m.Load().Range(func(any, any) bool { n++; return true })
		if n > 101 {
			t.Fatalf("after %d sets the memo holds %d entries, size 100", i+1, n)
		}
	}
	if _, ok := mo.get("never"); ok {
		t.Fatal("get of a key never set succeeded")
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				k := fmt.Sprint(g, "/", i%300)
				mo.set(k, rkey{value: k})
				if got, ok := mo.get(k); ok && got.value != k {
					t.Errorf("get(%s) = %q", k, got.value)
					return
				}
			}
		})
	}
	wg.Wait()
}
