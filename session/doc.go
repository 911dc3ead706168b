// Package session keeps login sessions, on one process (memory backend) or
// shared by many instances through Redis, Redis Sentinel or Redis Cluster
// (Redis backend).
//
// A session is a set of independent fields — userId, roles, deviceInfo,
// preferences, lastActivity — stored as a Redis hash, so concurrent updates
// of different fields never lose each other (the old layer rewrote one JSON
// blob on every activity update and lost updates). It has an idle timeout
// and an absolute lifetime; its Redis key expires at the earlier of the two,
// set in the same script that creates or touches it, on Redis TIME.
//
//   - Create, Get, Update (per-field), Delete.
//   - Touch records activity at most once per Config.TouchInterval (default
//     1m) per session across instances: every write invalidates every
//     instance's cached copy, so activity writes are throttled, atomically
//     in the script, and without a round trip when this instance's cached
//     copy already shows a recent activity.
//   - HasRole answers from this instance's local cache (rueidis
//     server-assisted client-side caching), which Redis keeps coherent
//     across instances.
//   - List, RevokeUser ("log out everywhere") and SetUserRoles work on a
//     per-user index; Rotate gives a session a new id (login, privilege
//     change).
//
// With Config.Keyring set, deviceInfo and preferences are sealed with
// AES-256-GCM at rest, bound to the session id and the field.
//
// The Store fails closed: when Redis is unreachable or slower than
// Config.Timeout (default 500ms), calls return an error wrapping ErrBackend,
// never a guess; the same Store works again once Redis is back. See
// docs/sessions.md for the data model, the coherence guarantees and the
// races that remain on Redis Cluster.
package session
