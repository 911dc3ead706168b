-- cancel.lua: delete one item in any state.
--
-- KEYS[1] due   KEYS[2] u:<user>   KEYS[3] u:<user>:f   KEYS[4] u:<user>:l
-- KEYS[5] data  KEYS[6] w          KEYS[7] r            KEYS[8] dead   KEYS[9] stats
-- ARGV[1] user (key-safe)  ARGV[2] id
--
-- Returns 1, or 0 when there is no such item.
local uid, id = ARGV[1], ARGV[2]
local ref = uid .. ':' .. id
local m = redis.call('HGET', KEYS[5], 'm:' .. ref)
if not m then return 0 end
local r = parse(m)
if r.st == 'q' then
  redis.call('ZREM', KEYS[2], r.seq .. id)
  redis.call('ZREM', r.att > 0 and KEYS[7] or KEYS[6], ref)
elseif r.st == 'f' then
  if redis.call('ZREM', KEYS[3], id) == 1 then
    redis.call('HINCRBY', KEYS[9], 'inflight', -1)
  end
else
  redis.call('ZREM', KEYS[8], ref)
end
redis.call('HDEL', KEYS[5], 'p:' .. ref, 'm:' .. ref)
if r.st == 'q' and redis.call('EXISTS', KEYS[4]) == 0 then reindex(KEYS[1], KEYS[2], uid) end
return 1
