-- incr.lua: add to a day counter, and to a user's count for the day, with
-- the day's TTL in the same step (no key is ever left without one).
--
-- KEYS[1]  day total     <prefix>an:{<metric>:<day>}:n   (string)
-- KEYS[2]  (optional) per-user counts <prefix>an:{<metric>:<day>}:u (hash)
-- ARGV[1]  increment (integer)
-- ARGV[2]  expiry, Unix milliseconds (end of the day plus the retention)
-- ARGV[3]  (with KEYS[2]) the key-safe user id (hash field)
--
-- Returns the day total after the increment.
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
if #KEYS > 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[3], ARGV[1])
  redis.call('PEXPIREAT', KEYS[2], ARGV[2])
end
return v
