// Package ratelimit decides rate limits atomically, on one process (memory
// backend) or across many instances sharing Redis, Redis Sentinel or Redis
// Cluster (Redis backend).
//
// Every decision is one atomic step — one Lua script, one round trip, Redis
// TIME on the Redis backend — so concurrent requests on any number of
// instances never over-admit, and a denied request writes nothing. There is no
// public check-then-record path: Peek reports without consuming and is not a
// reservation.
//
// Algorithms (see docs/ratelimit-algorithms.md for the exact formulas):
// SlidingLog (exact, the default; Limit at most 10 000), SlidingWindow
// (approximate counter), GCRA (smooth token bucket with Burst) and FixedWindow.
//
// AllowAll decides several rules all-or-nothing: when any rule denies, nothing
// is consumed by any of them — also on Redis Cluster, where rules on different
// subjects live in different hash slots.
//
// When Redis is slow or down, each call is decided by its failure policy
// within Config.Timeout (default 50ms): FailClosed denies, FailOpen allows,
// FailLocal (the default) uses an in-process limiter. Such decisions carry
// Degraded and are counted in metrics; normal decisions resume by themselves
// when Redis is back.
//
// Middleware applies a named Policy to net/http handlers and sets the IETF
// RateLimit-Policy, RateLimit and Retry-After headers.
package ratelimit
