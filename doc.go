// Package elevaredis is the entry point of Eleva Redis, the shared state layer
// of the Eleva Care platform: Open builds every capability on one backend
// chosen by Config.RedisURL.
//
// With no URL the backend is in-process memory: zero setup, real expiry, the
// same semantics as Redis, but neither shared between instances nor durable.
// With a URL it is Redis through one rueidis client, on a single server
// (redis://, rediss:// for TLS, unix://), Redis Cluster (several addresses,
// detected) or Redis Sentinel (?master_set=NAME, the hosts being the
// sentinels). Open checks the connection with PING before returning, so a
// wrong address or password fails at start-up, within the context's deadline.
//
// Passwords never reach logs or errors: RedactURL replaces them, and
// Eleva.Describe names the topology, addresses and user only.
//
// Capabilities are fields of Eleva, all on the one backend: RateLimit
// (package ratelimit), Locks (package lock: distributed locks with fencing
// tokens) and Temp (package tempdata: temporary values, one-time tokens and
// idempotency records, and the store of tempdata.IdempotencyMiddleware).
// Config.RateLimit, Config.Lock and Config.Temp tune each; their prefix, key
// hash secret, metrics registry and logger default to the top-level fields.
// Config.EncryptionKey (the ELEVA_ENCRYPTION_KEY format) turns on AES-256-GCM
// encryption at rest of what Temp stores, with key ids for rotation. Each
// capability package also has its own constructors (NewRedis, NewMemory) for
// programs that want only one of them.
//
// Locks and Temp fail closed: when Redis is unreachable or slower than their
// timeout (500ms by default) calls return an error (ErrBackend), never a
// guess. The rate limiter instead decides by its failure policy.
package elevaredis
