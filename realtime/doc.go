// Package realtime delivers appointment status changes and experts'
// presence to subscribers and browsers at once, and never silently misses a
// message when a connection drops.
//
// Every channel is a sequence: Publish numbers each message (offsets 1, 2,
// 3, ... within an epoch), keeps the last Config.HistorySize messages for
// Config.HistoryTTL after the last publish, and delivers it over Pub/Sub
// (sharded SPUBLISH on Redis Cluster). A Subscription checks every message's
// offset against the last one it delivered: a duplicate is dropped, a gap is
// filled from history at once, and a gap older than history (or a channel
// whose state was lost, which starts a new epoch) is an explicit EventReset.
// Lost Pub/Sub subscriptions (CLIENT KILL, failover, restart) are restored
// and every channel repaired from history.
//
// SSEHandler serves the same to browsers as Server-Sent Events: each event's
// id: encodes every channel's position, so the browser's own Last-Event-ID
// resumes with no gap and no duplicate. Browsers authenticate with
// short-lived HS256 tokens (Tokens) that list the channels they may read.
//
// Messages carry ids and versions, not health data: a browser that hears
// "appointment 42 is now version 7" fetches the details through the
// authorised API.
//
// Backends: NewMemory (one process, same semantics) and NewRedis.
// docs/realtime.md describes keys, limits and failure behaviour.
package realtime
