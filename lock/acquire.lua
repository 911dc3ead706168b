-- acquire.lua: take a free lock and issue its fence, in one atomic step.
--
-- KEYS[1] the lock key   <prefix>lock:{<id>}          value: the holder's token
-- KEYS[2] the fence key  <prefix>lock:{<id>}:fence    value: the last fence issued
-- ARGV[1] token (128 random bits, base64url)
-- ARGV[2] ttl of the lock, in ms
-- ARGV[3] ttl of the fence key, in ms (the lock's ttl + 24h)
--
-- Returns {1, fence, 0} when acquired, {0, '0', pttl} when held by another
-- owner (pttl: the holder's remaining ms). The fence is a decimal string.
--
-- fence = max(previous fence + 1, Redis TIME in µs). The fence key has a TTL
-- (every key does), so it may be forgotten; but it outlives the lock by 24h,
-- and a fence issued after that is at least the clock then, which exceeds
-- every fence issued a day before. So fences strictly increase across expiry,
-- as long as the server's clock does not jump back (docs/locks.md). µs times
-- (~2^51) are exact in Lua doubles, as are +1 steps below 2^53.

if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, '0', redis.call('PTTL', KEYS[1])}
end
local t = redis.call('TIME')
local fence = tonumber(t[1]) * 1000000 + tonumber(t[2])
local prev = tonumber(redis.call('GET', KEYS[2]) or '')
if prev and prev + 1 > fence then
  fence = prev + 1
end
local s = string.format('%.0f', fence)
redis.call('SET', KEYS[2], s, 'PX', ARGV[3])
return {1, s, 0}
