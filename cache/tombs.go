package cache

import "time"

// tombs is a set of keys with an expiry each: the tombstones of keys (or tag
// keys) this instance changed and whose tracking push has not arrived yet.
// A push removes its key; a key whose push never comes (this client never
// read it, so it gets none) would stay forever, so an insert that takes the
// set past sweepAt removes every expired entry and moves sweepAt to twice
// the live size. The set thus stays proportional to the keys changed in the
// last tombstoneFor, at O(1) amortised cost per insert. Not safe for
// concurrent use: the owner's mutex guards it.
type tombs struct {
	m       map[string]time.Time
	sweepAt int
}

// tombsSweepMin is the smallest size at which a set sweeps.
const tombsSweepMin = 64

func newTombs() tombs { return tombs{m: make(map[string]time.Time), sweepAt: tombsSweepMin} }

// add sets k's tombstone until until; now is the current time.
func (t *tombs) add(k string, until, now time.Time) {
	t.m[k] = until
	if len(t.m) < t.sweepAt {
		return
	}
	for k, u := range t.m {
		if !now.Before(u) {
			delete(t.m, k)
		}
	}
	t.sweepAt = max(tombsSweepMin, 2*len(t.m))
}

// live reports whether k has a tombstone at now, forgetting an expired one.
func (t *tombs) live(k string, now time.Time) bool {
	if len(t.m) == 0 {
		return false
	}
	until, ok := t.m[k]
	if !ok {
		return false
	}
	if !now.Before(until) {
		delete(t.m, k)
		return false
	}
	return true
}

func (t *tombs) remove(k string) { delete(t.m, k) }

func (t *tombs) clear() { clear(t.m); t.sweepAt = tombsSweepMin }

func (t *tombs) len() int { return len(t.m) }
