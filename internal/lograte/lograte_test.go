package lograte

import (
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/elevacare/eleva-redis/internal/testlog"
)

// TestLimiter: of many concurrent failures within one interval exactly one
// line is written; the next line, once the interval has passed, counts the
// others; a line within the interval again is suppressed.
func TestLimiter(t *testing.T) {
	var buf testlog.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, nil)), time.Minute)
	var now atomic.Int64
	now.Store(time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC).UnixNano())
	l.now = func() time.Time { return time.Unix(0, now.Load()) }
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				l.Log(slog.LevelWarn, "failed", "op", "x")
			}
		})
	}
	wg.Wait()
	tests := []struct {
		advance time.Duration
		lines   int
		want    string
	}{
		{0, 1, "level=WARN msg=failed op=x suppressed_since_last_log=0"},
		{59 * time.Second, 1, ""},
		{time.Second, 2, "level=ERROR msg=failed op=y suppressed_since_last_log=800"},
	}
	for i, tt := range tests {
		if i > 0 {
			now.Add(int64(tt.advance))
			l.Log(slog.LevelError, "failed", "op", "y")
		}
		out := buf.String()
		if n := strings.Count(out, "msg=failed"); n != tt.lines {
			t.Fatalf("step %d: %d lines, want %d:\n%s", i, n, tt.lines, out)
		}
		if tt.want != "" && !strings.Contains(out, tt.want) {
			t.Fatalf("step %d: no %q in:\n%s", i, tt.want, out)
		}
	}
}
