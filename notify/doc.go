// Package notify is a per-user notification queue, on one process (memory
// backend) or shared by many instances through Redis, Redis Sentinel or
// Redis Cluster (Redis backend).
//
// It replaces a queue kept as one JSON array per user, edited with GET and
// SET under a 1-hour TTL, which lost concurrent enqueues, dropped anything
// scheduled more than an hour out and let two workers send one batch. Here:
//
//   - Every state change is one Lua script; all of a user's keys share one
//     hash tag (the user's shard), so every script runs in one Cluster slot.
//     (An enqueue call carries up to 32 items and a claim call up to 32
//     users: of one shard on Cluster, of several on a single Redis, where
//     there are no slots. A claim is two calls: due users, then leases.)
//   - A sharded due index (user -> earliest due time) doubles as the lease
//     table: while a user's batch is claimed its score is the lease expiry,
//     so an expired lease simply makes the user due again, with no
//     recoverer. At most one lease per user; Ack, Nack and Extend are fenced
//     by the lease token (ErrLeaseLost, nothing changed).
//   - No key has a TTL: a notification scheduled a week ahead stays until it
//     is delivered, cancelled or expires (ExpiresAt: it then goes to the
//     dead set with LastError "expired"). Lease and due times come from
//     Redis TIME.
//   - Ids are the caller's (or generated), unique per user: the same id
//     enqueued twice is stored once.
//   - Priority high before normal before low, oldest first within one.
//   - Failed deliveries retry with exponential backoff and full jitter; after
//     MaxAttempts, or on a permanent failure, they go to a capped dead set
//     with their last error (RequeueDead puts one back).
//
// Apps that deliver themselves use Pending and Remove; workers use Claim,
// Ack, Nack and Extend. When Redis is unreachable or slower than
// Config.Timeout, calls return an error wrapping ErrBackend: nothing is
// silently dropped. See docs/notify.md.
package notify
