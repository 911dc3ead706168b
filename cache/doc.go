// Package cache is a typed two-level cache for database queries and
// analytics results: decoded values in this process (otter) in front of a
// shared level — Redis, Redis Sentinel or Redis Cluster for many instances,
// or memory for one process.
//
//	store := cache.NewMemoryStore(cache.StoreConfig{}) // or NewRedisStore
//	profiles := cache.New[Profile](store, cache.Config[Profile]{Namespace: "profile"})
//	p, meta, err := profiles.GetOrLoad(ctx, "expert:7", loadProfile, cache.Tags("expert:7"))
//
// What it guarantees, on every backend (one conformance suite runs on
// memory, Redis and Cluster, in both invalidation modes):
//
//   - One load per key for the whole fleet. The first caller anywhere takes a
//     lease in the shared level and loads; the others wait for its value and
//     are woken when it lands (not polling). The load is detached from the
//     caller's cancellation and bounded by LoadTimeout; a dead holder's
//     lease expires after it.
//   - No stale write-back. A load writes its value only if its lease still
//     holds (one Lua compare-and-set); Invalidate, Set and a tag's new
//     version take the lease away, so a load that read the database before
//     an update never caches what it read, and callers that arrived after
//     the invalidation get a fresh load.
//   - Coherent local copies. On Redis, CLIENT TRACKING (through a Tracker
//     hooked into the rueidis client) pushes every change of a key to every
//     instance that holds it; where the provider refuses tracking, Pub/Sub
//     messages do, with local copies capped at a short TTL. A lost
//     connection drops every local copy. The instance that invalidates
//     serves no old value once Invalidate returns; the others stop within
//     their push latency (docs/cache.md has the figures).
//   - Tags by version: InvalidateTags is O(1) per tag and Cluster-safe (no
//     SMEMBERS scan): a value records its tags' versions and is a miss once
//     any has moved.
//   - Not-found is cached (a loader error wrapping ErrNotFound, NegativeTTL);
//     errors never are. StaleFor serves a stale value while one background
//     refresh runs; EarlyRefresh refreshes before expiry (XFetch).
//   - When the shared level fails, GetOrLoad calls the loader and says so
//     (Meta.Degraded), after at most one timeout per back-off period.
//
// See docs/cache.md.
package cache
