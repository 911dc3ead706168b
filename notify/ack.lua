-- ack.lua: record leased items as delivered (fenced).
--
-- KEYS[1] due   KEYS[2] u:<user>   KEYS[3] u:<user>:f   KEYS[4] u:<user>:l
-- KEYS[5] data  KEYS[6] stats      KEYS[7] done
-- ARGV[1] user (key-safe)  ARGV[2] lease token  ARGV[3] delivered cap  ARGV[4..] ids
--
-- Returns -1 (lease lost, nothing changed) or the number of items acked.
if redis.call('GET', KEYS[4]) ~= ARGV[2] then return -1 end
local now = now_ms()
local uid, cap = ARGV[1], tonumber(ARGV[3])
local n = 0
for i = 4, #ARGV do
  local ref = uid .. ':' .. ARGV[i]
  local m = redis.call('HGET', KEYS[5], 'm:' .. ref)
  if m then
    local r = parse(m)
    if r.st == 'f' and redis.call('ZREM', KEYS[3], r.seq .. ARGV[i]) == 1 then
      redis.call('HDEL', KEYS[5], 'p:' .. ref, 'm:' .. ref)
      delivered(KEYS[7], ref, now, cap)
      n = n + 1
    end
  end
end
if n > 0 then
  redis.call('HINCRBY', KEYS[6], 'inflight', -n)
  redis.call('HINCRBY', KEYS[6], 'delivered', n)
end
release_if_done(KEYS[1], KEYS[2], KEYS[3], KEYS[4], uid)
return n
