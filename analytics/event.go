package analytics

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// Event is one PostHog event.
type Event struct {
	// Event is the event name ("appointment_booked"); required.
	Event string
	// DistinctID identifies the person in PostHog; required.
	DistinctID string
	// Properties are sent as they are; they may be nil.
	Properties map[string]any
	// Timestamp is when it happened; zero means when captured.
	Timestamp time.Time
	// UUID identifies the event, so that PostHog de-duplicates a retried
	// batch; empty means a new UUIDv7. A given one must be a UUID in the
	// canonical 8-4-4-4-12 hex form.
	UUID string
}

// wireEvent is an event as PostHog's /batch/ endpoint takes it, and as the
// buffer stores it.
type wireEvent struct {
	Event      string         `json:"event"`
	DistinctID string         `json:"distinct_id"`
	Properties map[string]any `json:"properties,omitempty"`
	Timestamp  string         `json:"timestamp"`
	UUID       string         `json:"uuid"`
}

// prepare validates ev, fills in its defaults and encodes it as PostHog
// wants it.
func (c Config) prepare(ev Event) (Event, []byte, error) {
	if err := checkName("event", ev.Event); err != nil {
		return ev, nil, err
	}
	if err := checkName("distinct id", ev.DistinctID); err != nil {
		return ev, nil, err
	}
	if ev.UUID == "" {
		ev.UUID = NewUUID()
	} else if !validUUID(ev.UUID) {
		return ev, nil, fmt.Errorf("%w: uuid %q is not a canonical UUID", ErrInvalidArgument, ev.UUID)
	}
	if ev.Timestamp.IsZero() {
		ev.Timestamp = c.now()
	}
	b, err := json.Marshal(wireEvent{
		Event: ev.Event, DistinctID: ev.DistinctID, Properties: ev.Properties,
		Timestamp: ev.Timestamp.UTC().Format(time.RFC3339Nano), UUID: ev.UUID,
	})
	if err != nil {
		return ev, nil, fmt.Errorf("%w: properties: %v", ErrInvalidArgument, err)
	}
	if len(b) > c.maxEventBytes() {
		return ev, nil, fmt.Errorf("%w: event of %d bytes (max %d)", ErrInvalidArgument, len(b), c.maxEventBytes())
	}
	return ev, b, nil
}

// DecodeEvent decodes a buffered event (Entry.Data).
func DecodeEvent(data []byte) (Event, error) {
	var w wireEvent
	if err := json.Unmarshal(data, &w); err != nil {
		return Event{}, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	ts, err := time.Parse(time.RFC3339Nano, w.Timestamp)
	if err != nil {
		return Event{}, fmt.Errorf("%w: timestamp: %v", ErrInvalidArgument, err)
	}
	return Event{Event: w.Event, DistinctID: w.DistinctID, Properties: w.Properties, Timestamp: ts, UUID: w.UUID}, nil
}

// NewUUID returns a random UUIDv7 (RFC 9562): 48 bits of Unix milliseconds,
// then 74 random bits from crypto/rand.
func NewUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	ms := uint64(time.Now().UnixMilli())
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], ms)
	copy(b[:6], ts[2:])
	b[6] = b[6]&0x0f | 0x70
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

func validUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < 36; i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}
