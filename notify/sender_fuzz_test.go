package notify

import (
	"net/http"
	"testing"
	"time"
)

// FuzzByStatus: any status and Retry-After give a valid Delivery with a
// delay in [0, 24h], an error unless delivered, and the documented outcome
// for each class of status.
func FuzzByStatus(f *testing.F) {
	for _, s := range []struct {
		code int
		ra   string
	}{{200, ""}, {429, "3"}, {429, "Wed, 21 Oct 2015 07:28:00 GMT"}, {503, "99999999999"}, {422, "-1"}, {408, "x"}, {0, ""}, {999, "1.5"}} {
		f.Add(s.code, s.ra, true)
	}
	now := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, code int, ra string, perm bool) {
		h := http.Header{}
		h.Set("Retry-After", ra)
		d := byStatus("x", code, h, now, func(int) bool { return perm })
		if d.After < 0 || d.After > maxRetryAfter {
			t.Fatalf("after %v", d.After)
		}
		if (d.Outcome == OutcomeDelivered) != (d.Err == nil) {
			t.Fatalf("outcome %v with error %v", d.Outcome, d.Err)
		}
		var want Outcome
		switch {
		case code >= 200 && code < 300:
			want = OutcomeDelivered
		case code == 429:
			want = OutcomePause
		case code >= 400 && code < 500 && code != 408 && perm:
			want = OutcomePermanent
		default:
			want = OutcomeRetry
		}
		if d.Outcome != want {
			t.Fatalf("%d (permanent %v): %v, want %v", code, perm, d.Outcome, want)
		}
	})
}
