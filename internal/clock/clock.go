// Package clock holds the fake clock that tests inject into the memory
// backends (their Config.Now), so that expiry and window arithmetic can be
// checked to the microsecond without sleeping.
package clock

import (
	"sync"
	"time"
)

// Fake is a settable clock, safe for concurrent use. Pass its Now method as a
// backend's Config.Now.
type Fake struct {
	mu   sync.Mutex
	t    time.Time
	step time.Duration
}

// NewFake returns a clock reading t.
func NewFake(t time.Time) *Fake { return &Fake{t: t} }

// Now returns the current reading, then advances the clock by the step set
// with SetStep (zero by default), so that every reading can be distinct.
func (c *Fake) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.t
	c.t = c.t.Add(c.step)
	return t
}

// Advance moves the clock forward by d (backwards for a negative d).
func (c *Fake) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// Set moves the clock to t.
func (c *Fake) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// SetStep makes every Now advance the clock by d afterwards.
func (c *Fake) SetStep(d time.Duration) {
	c.mu.Lock()
	c.step = d
	c.mu.Unlock()
}
