// Package lock provides distributed locks with fencing tokens, on one process
// (memory backend) or across many instances sharing Redis, Redis Sentinel or
// Redis Cluster (Redis backend).
//
// A lock is held through a Lease: a random token (128 bits) that only its
// holder knows, an expiry, and a fence — a number that strictly increases
// with every successful acquire of the lock's name, across expiries too.
// Acquire is one atomic step (SET NX PX and the fence update in one Lua
// script, Redis TIME); Refresh is compare-and-PEXPIRE and never re-acquires a
// lost lock; Release is compare-and-delete and runs even on a cancelled ctx.
// Waiting acquirers (Wait) are woken when the holder releases, through Redis
// Pub/Sub (sharded on Cluster), with jittered polling as the fallback.
//
// Do wraps the usual pattern: acquire, keep the lease alive with a watchdog,
// cancel the work when the lock is lost, release at the end.
//
// What a lock can and cannot promise: in normal operation it stops duplicate
// work. It cannot guarantee mutual exclusion across a Redis failover (a
// replica may not have the lock yet) or through a process pause longer than
// the TTL. For correctness, the protected resource must check the fence and
// reject a write carrying a lower fence than one it has seen; see
// docs/locks.md for a worked PostgreSQL example for payments.
//
// When Redis is slow or down, every call fails closed with ErrBackend within
// Config.Timeout (default 500ms): nothing is granted on a guess.
package lock
