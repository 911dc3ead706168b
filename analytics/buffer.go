package analytics

import (
	"context"
	"time"
)

// Entry is one buffered event, as a Forwarder reads it.
type Entry struct {
	// ID is the buffer's id of the entry (a stream id on Redis).
	ID string
	// Data is the event encoded as PostHog's /batch/ endpoint takes it
	// (DecodeEvent reads it).
	Data []byte
}

// Buffer is the durable (Redis) or bounded in-process (memory) event buffer
// between Capture and a Forwarder. Delivery is at least once: an entry read
// and never settled is read again, by any consumer, once claimAfter has
// passed since it was last read.
type Buffer interface {
	// Read returns up to max entries for consumer: first those another
	// consumer (or this one) read at least claimAfter ago and never settled
	// (taken over, on Redis by XAUTOCLAIM), then new ones. When there are
	// none it waits up to wait for new ones (wait 0: no waiting). An empty
	// result with a nil error means nothing to send.
	Read(ctx context.Context, consumer string, max int, claimAfter, wait time.Duration) ([]Entry, error)
	// Ack settles entries as sent: they leave the buffer. Ids already
	// settled are ignored.
	Ack(ctx context.Context, ids []string) error
	// Dead settles entries as refused: they move to the dead-letter buffer
	// with reason (an HTTP status, never a payload). Entries already
	// settled are ignored.
	Dead(ctx context.Context, entries []Entry, reason string) error
	// Stats describes the buffer.
	Stats(ctx context.Context) (Stats, error)
}
