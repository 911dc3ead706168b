-- refresh.lua: extend a lock if, and only if, the caller still holds it
-- (compare-and-PEXPIRE). It never re-creates an expired lock.
--
-- KEYS[1] the lock key   <prefix>lock:{<id>}
-- KEYS[2] the fence key  <prefix>lock:{<id>}:fence
-- ARGV[1] token
-- ARGV[2] new ttl of the lock, in ms
-- ARGV[3] new ttl of the fence key, in ms (the lock's ttl + 24h)
--
-- Returns 1 when extended, 0 when the lock expired or has another owner.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
