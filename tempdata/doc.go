// Package tempdata keeps short-lived state with a TTL, on one process
// (memory backend) or shared by many instances through Redis, Redis Sentinel
// or Redis Cluster (Redis backend):
//
//   - Temporary values in namespaces (setup progress, form state): Put,
//     PutIfAbsent, Get, Delete, and Take, an atomic get-and-delete of which
//     exactly one concurrent caller gets the value.
//   - One-time tokens (OAuth state, email verification, password reset):
//     Issue returns 256 random bits; Consume returns the token's data
//     exactly once. A used, expired, malformed or wrong-purpose token gets
//     the same ErrNotFound, and only a hash of the token is stored.
//   - Idempotency records (Begin, Complete, Fail) and IdempotencyMiddleware,
//     which honours the Idempotency-Key header so that a retried or
//     double-submitted request runs its handler once and gets the first
//     response replayed.
//
// Every state change is one atomic step — one GETDEL or one Lua script on
// Redis, with the key's TTL set in that same step — so the old layer's flaw
// (GET then DEL: two concurrent callbacks both consume a token) cannot
// happen.
//
// With Config.Keyring set, values, token data and idempotency responses are
// sealed with AES-256-GCM at rest, each bound to its logical key (see
// internal/seal and ELEVA_ENCRYPTION_KEY).
//
// The Store fails closed: when Redis is unreachable or slower than
// Config.Timeout (default 500ms), calls return an error wrapping ErrBackend,
// never a guess; the same Store works again once Redis is back. See
// docs/tempdata.md.
package tempdata
