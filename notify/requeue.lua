-- requeue.lua: put a dead item back in the queue, due now, attempts reset.
--
-- KEYS[1] due   KEYS[2] u:<user>   KEYS[3] u:<user>:l   KEYS[4] data
-- KEYS[5] w     KEYS[6] dead
-- ARGV[1] user (key-safe)  ARGV[2] id
--
-- Returns 1, or 0 when the item is not dead.
local uid, id = ARGV[1], ARGV[2]
local ref = uid .. ':' .. id
local m = redis.call('HGET', KEYS[4], 'm:' .. ref)
if not m then return 0 end
local r = parse(m)
if r.st ~= 'd' then return 0 end
local now = now_ms()
redis.call('ZREM', KEYS[6], ref)
r.st = 'q'
r.att = 0
r.due = now
redis.call('HSET', KEYS[4], 'm:' .. ref, fmt(r))
redis.call('ZADD', KEYS[2], int(r.band * B + now), r.seq .. id)
redis.call('ZADD', KEYS[5], int(now), ref)
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('ZADD', KEYS[1], 'LT', int(now), uid)
end
return 1
