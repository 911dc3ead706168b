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
// Capabilities are fields of Eleva: RateLimit (package ratelimit) so far. Each
// capability package also has its own constructors (NewRedis, NewMemory) for
// programs that want only one of them.
package elevaredis
