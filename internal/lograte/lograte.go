// Package lograte limits how often a failure is logged: an outage at
// thousands of calls per second must not flood the log, yet the first
// failure is logged at once and the next line says how many were left out.
package lograte

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"
)

// DefaultEvery is the interval of a Limiter whose Every is 0.
const DefaultEvery = 5 * time.Second

// Limiter logs at most one line per Every through Log. The zero value is not
// ready for use: build it with New. It is safe for concurrent use.
type Limiter struct {
	log        *slog.Logger
	every      time.Duration
	now        func() time.Time // time.Now; a test's clock
	last       atomic.Int64     // unix ns of the last line logged; 0: none yet
	suppressed atomic.Int64
}

// New returns a Limiter writing to log, one line per every at most (0 means
// DefaultEvery).
func New(log *slog.Logger, every time.Duration) *Limiter {
	if every <= 0 {
		every = DefaultEvery
	}
	return &Limiter{log: log, every: every, now: time.Now}
}

// Log writes msg at level with args and "suppressed_since_last_log" (the
// lines left out since the last one written), unless a line was written less
// than Every ago: then it only counts this one as suppressed.
func (l *Limiter) Log(level slog.Level, msg string, args ...any) {
	now := l.now().UnixNano()
	last := l.last.Load()
	if last != 0 && now-last < int64(l.every) || !l.last.CompareAndSwap(last, now) {
		l.suppressed.Add(1)
		return
	}
	l.log.Log(context.Background(), level, msg, append(args, "suppressed_since_last_log", l.suppressed.Swap(0))...)
}
