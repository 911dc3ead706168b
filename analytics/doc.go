// Package analytics counts things per UTC day, estimates unique users, and
// forwards product events to PostHog through a durable buffer, on one
// process (memory backend) or shared by many instances through Redis, Redis
// Sentinel or Redis Cluster (Redis backend).
//
// It replaces counters written with INCR and then EXPIRE in two calls (a
// crash between them left keys that never expired) and PostHog events sent
// from scattered places and lost when a process stopped. Here:
//
//   - Incr adds to a day bucket (and a user's day bucket) and sets the TTL,
//     end of the day plus Config.Retention (90 days), in one Lua script.
//     Series returns every day of a range, zeros included; Total sums it.
//   - AddUnique and CountUnique: a HyperLogLog per metric and day, unioned
//     over a range by one PFCOUNT (~0.81% standard error; exact on memory).
//   - Capture never waits for PostHog: it appends the event (with a uuid, so
//     PostHog de-duplicates retries) to a Redis Stream within
//     Config.Timeout, or to a bounded in-process buffer on memory, and
//     returns an error (counted) when it cannot.
//   - A Forwarder reads the buffer through a consumer group (XREADGROUP),
//     posts batches to PostHog's /batch/ endpoint, acknowledges them (XACK)
//     on 2xx, retries 5xx, 408 and 429 with backoff and Retry-After, moves
//     events PostHog refuses (400) to a dead-letter stream, and takes over
//     the entries of a crashed forwarder (XAUTOCLAIM). Close flushes within
//     a deadline.
//   - QueryCache caches expensive dashboard queries through the cache
//     package, stale-while-revalidate, with the time each result was cached.
//
// See docs/analytics.md.
package analytics
