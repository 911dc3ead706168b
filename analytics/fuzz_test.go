package analytics

import (
	"errors"
	"testing"
	"time"
)

// FuzzRetryAfter: any header value parses to a wait in [0, 24h], no panic.
func FuzzRetryAfter(f *testing.F) {
	for _, s := range []string{"", "1", "-5", "120", "Wed, 21 Oct 2015 07:28:00 GMT", "99999999999999999999", " 3 "} {
		f.Add(s)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		if d := RetryAfter(v, now); d < 0 || d > 24*time.Hour {
			t.Fatalf("RetryAfter(%q) = %v", v, d)
		}
	})
}

// FuzzEvent: any event either is refused with ErrInvalidArgument or encodes
// to JSON that decodes back to the same event, with a canonical uuid.
func FuzzEvent(f *testing.F) {
	f.Add("booked", "patient-1", "", "k", "v")
	f.Add("", "d", "0190a0b0-0000-7000-8000-000000000000", "", "")
	f.Add("e\x00", "d", "x", "k", "\xff")
	cfg := Config{}
	f.Fuzz(func(t *testing.T, name, distinct, uuid, pk, pv string) {
		ev := Event{Event: name, DistinctID: distinct, UUID: uuid, Properties: map[string]any{pk: pv}}
		got, data, err := cfg.prepare(ev)
		if err != nil {
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("prepare: %v", err)
			}
			return
		}
		if !validUUID(got.UUID) || (uuid != "" && got.UUID != uuid) {
			t.Fatalf("uuid %q from %q", got.UUID, uuid)
		}
		back, err := DecodeEvent(data)
		if err != nil {
			t.Fatalf("DecodeEvent(%s): %v", data, err)
		}
		if back.Event != name || back.DistinctID != distinct || back.UUID != got.UUID || !back.Timestamp.Equal(got.Timestamp) {
			t.Fatalf("round trip: %+v -> %+v", got, back)
		}
	})
}

// FuzzMetricName: checkName never panics and accepts only what keys can
// carry.
func FuzzMetricName(f *testing.F) {
	for _, s := range []string{"bookings", "", "a:b{c}", "\x7f", "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if err := CheckMetric(s); err != nil && !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("CheckMetric(%q): %v", s, err)
		}
	})
}
