-- release.lua: delete a lock if, and only if, the caller still holds it
-- (compare-and-delete), and tell waiters.
--
-- KEYS[1] the lock key   <prefix>lock:{<id>}
-- ARGV[1] token
-- ARGV[2] 'PUBLISH' (standalone, Sentinel), 'SPUBLISH' (Cluster: sharded
--         Pub/Sub, delivered by the slot's node only) or '' (notifications off)
-- ARGV[3] the release channel <prefix>lock:{<id>}:released, in KEYS[1]'s
--         slot (same hash tag), so SPUBLISH stays on the script's node
--
-- Returns 1 when released, 0 when the lock expired or has another owner
-- (then nothing is deleted nor published). The fence key is left to expire:
-- the next acquire continues from it.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' then
  redis.call(ARGV[2], ARGV[3], '1')
end
return 1
