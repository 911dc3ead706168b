-- remove.lua: delete queued items the app delivered itself; they count as delivered.
--
-- KEYS[1] due   KEYS[2] u:<user>   KEYS[3] u:<user>:l   KEYS[4] data
-- KEYS[5] w     KEYS[6] r          KEYS[7] stats        KEYS[8] done
-- ARGV[1] user (key-safe)  ARGV[2] delivered cap  ARGV[3..] ids
--
-- Returns the number removed. Leased and dead items are left alone.
local now = now_ms()
local uid, cap = ARGV[1], tonumber(ARGV[2])
local n = 0
for i = 3, #ARGV do
  local ref = uid .. ':' .. ARGV[i]
  local m = redis.call('HGET', KEYS[4], 'm:' .. ref)
  if m then
    local r = parse(m)
    if r.st == 'q' then
      redis.call('ZREM', KEYS[2], r.seq .. ARGV[i])
      redis.call('ZREM', r.att > 0 and KEYS[6] or KEYS[5], ref)
      redis.call('HDEL', KEYS[4], 'p:' .. ref, 'm:' .. ref)
      redis.call('ZADD', KEYS[8], int(now), ref)
      n = n + 1
    end
  end
end
if n > 0 then
  cap_done(KEYS[8], cap)
  redis.call('HINCRBY', KEYS[7], 'delivered', n)
  if redis.call('EXISTS', KEYS[3]) == 0 then reindex(KEYS[1], KEYS[2], uid) end
end
return n
