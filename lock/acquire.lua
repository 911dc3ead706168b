-- acquire.lua: take a free lock and issue its fence, in one atomic step.
--
-- KEYS[1] the lock key   <prefix>lock:{<id>}          value: the holder's token
-- KEYS[2] the fence key  <prefix>lock:{<id>}:fence    value: the last fence issued
-- ARGV[1] token (128 random bits, base64url)
-- ARGV[2] ttl of the lock, in ms
-- ARGV[3] ttl of the fence key, in ms (the lock's ttl + 24h)
--
-- Returns the fence (an integer >= 1) when acquired; when the lock is held by
-- another owner, -1 - pttl (pttl: the holder's remaining ms, 0 if it has no
-- expiry), so always <= -1.
--
-- fence = max(previous fence + 1, Redis TIME in µs). The fence key has a TTL
-- (every key does), so it may be forgotten; but it outlives the lock by 24h,
-- and a fence issued after that is at least the clock then, which exceeds
-- every fence issued a day before. So fences strictly increase across expiry,
-- as long as the server's clock does not jump back (docs/locks.md).
--
-- The common case costs one write and no number formatting: TIME's two
-- decimal strings are joined into the µs string (seconds, then the µs
-- zero-padded to 6 digits), which replaces the fence key with SET ... GET.
-- Decimal strings without leading zeros compare as numbers when the longer
-- is the larger and equal lengths compare bytewise. Only when the previous
-- fence is not below the clock (a second acquire in the same µs, or a clock
-- step back) is the previous value put back and INCR'd.

if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl < 0 then
    pttl = 0
  end
  return -1 - pttl
end
local t = redis.call('TIME')
local now = t[1] .. string.rep('0', 6 - #t[2]) .. t[2]
local prev = redis.call('SET', KEYS[2], now, 'PX', ARGV[3], 'GET')
if prev and (#prev > #now or (#prev == #now and prev >= now)) then
  redis.call('SET', KEYS[2], prev, 'PX', ARGV[3])
  return redis.call('INCR', KEYS[2])
end
-- µs since 1970 (~2^51) are exact in a Lua double and in the integer reply.
return tonumber(now)
