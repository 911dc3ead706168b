package notify

import (
	"fmt"
	"testing"
)

// FuzzParseMeta: parseMeta never panics, and reads back every meta that
// common.lua's fmt can write (whatever the last error holds: '|', newlines).
func FuzzParseMeta(f *testing.F) {
	f.Add("q|0000000000000001|1|1700000000000|1700000000000|0|0|10|", int64(1700000000000), 3, "novu: 503 | retry\n")
	f.Add("d|00000000000000ff|2|1|1|2|10|10|expired", int64(0), 0, "")
	f.Add("x", int64(-1), -1, "|||")
	f.Fuzz(func(t *testing.T, raw string, due int64, attempts int, lastError string) {
		if m, err := parseMeta(raw); err == nil {
			switch m.state(due) {
			case StateScheduled, StatePending, StateInflight, StateRetrying, StateDead:
			default:
				t.Fatalf("state %q of %q", m.state(due), raw)
			}
		}
		if due < 0 || attempts < 0 {
			return
		}
		s := fmt.Sprintf("f|%016x|%d|%d|%d|%d|%d|%d|%s", attempts, attempts%3, due, due, due/2, attempts, attempts+1, lastError)
		m, err := parseMeta(s)
		if err != nil {
			t.Fatalf("parseMeta(%q): %v", s, err)
		}
		want := meta{st: 'f', band: attempts % 3, due: due, sched: due, expires: due / 2, attempts: attempts, maxAttempt: attempts + 1, lastError: lastError}
		if m != want || m.state(0) != StateInflight {
			t.Fatalf("parseMeta(%q) = %+v, want %+v", s, m, want)
		}
	})
}
