package cache

import (
	"sync"
	"sync/atomic"
)

// memo maps logical keys to their backend keys. The mapping is pure (the
// same key always gives the same backend keys), so a forgotten entry only
// costs a recomputation: no eviction policy is needed, only a bound. It is on
// the path of every local hit, so a read is one lock-free sync.Map load (an
// otter lookup, with its frequency sketch and read buffer, cost about twice
// as much); when the map reaches its size it is replaced by an empty one.
type memo struct {
	size int64
	n    atomic.Int64
	m    atomic.Pointer[sync.Map]
}

func newMemo(size int) *memo {
	mo := &memo{size: int64(size)}
	mo.m.Store(new(sync.Map))
	return mo
}

func (mo *memo) get(key string) (rkey, bool) {
	v, ok := mo.m.Load().Load(key)
	if !ok {
		return rkey{}, false
	}
	return *v.(*rkey), true
}

func (mo *memo) set(key string, k rkey) {
	m := mo.m.Load()
	if _, loaded := m.LoadOrStore(key, &k); loaded {
		return
	}
	if mo.n.Add(1) > mo.size {
		// Start over with this key; concurrent sets may land in either
		// map, and both are correct.
		nm := new(sync.Map)
		nm.Store(key, &k)
		if mo.m.CompareAndSwap(m, nm) {
			mo.n.Store(1)
		}
	}
}
