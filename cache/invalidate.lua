-- invalidate.lua (Pub/Sub mode): delete an entry and its lease and tell
-- every instance. In tracking mode a plain DEL of both keys does this, since
-- Redis itself pushes the invalidation.
--
-- KEYS[1] the value key  <prefix>cache:{<ns>/<key>}
-- KEYS[2] the lease key  <prefix>cache:{<ns>/<key>}:lease
-- ARGV[1] Pub/Sub channel
--
-- Returns the number of keys deleted.

local n = redis.call('DEL', KEYS[1], KEYS[2])
redis.call('PUBLISH', ARGV[1], KEYS[1])
return n
