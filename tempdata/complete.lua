-- complete.lua: store the response of an in-progress idempotency record.
--
-- KEYS[1]  the record's key (see begin.lua for its fields)
-- ARGV[1]  the response (sealed when encryption is on)
-- ARGV[2]  new TTL in milliseconds, or "0" to keep the TTL begin.lua set
--
-- Returns 1 when the record was completed, 0 when there is no record (it
-- expired or was failed; nothing written), 2 when it is already completed
-- (left unchanged). A completed record always keeps a TTL: HSET does not
-- clear the one begin.lua set, and a new one is set in this same step.
local state = redis.call('HGET', KEYS[1], 's')
if not state then return 0 end
if state ~= 's' then return 2 end
redis.call('HSET', KEYS[1], 's', 'c', 'r', ARGV[1])
if ARGV[2] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
