-- handoff.lua: release a lock straight to a waiter of the same Locker, in one
-- atomic step (compare the releasing token, then take the lock for the
-- waiter exactly as acquire.lua would). No PUBLISH: the lock never becomes
-- free, so there is nothing for other instances' waiters to race for. The
-- Locker caps consecutive hand-offs per name (docs/locks.md, "Local direct
-- hand-off"), after which it releases with release.lua and publishes.
--
-- KEYS[1] the lock key   <prefix>lock:{<id>}          value: the holder's token
-- KEYS[2] the fence key  <prefix>lock:{<id>}:fence    value: the last fence issued
-- ARGV[1] the releasing holder's token
-- ARGV[2] the waiter's new token (128 random bits, base64url)
-- ARGV[3] ttl of the waiter's lock, in ms
-- ARGV[4] ttl of the fence key, in ms (the waiter's ttl + 24h)
--
-- Returns the waiter's fence (an integer >= 1) when handed off, 0 when the
-- releasing token no longer holds the lock (expired or another owner:
-- nothing is changed). The fence rule, and how it is computed, are
-- acquire.lua's: max(previous fence + 1, Redis TIME in µs).

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
local t = redis.call('TIME')
local now = t[1] .. string.rep('0', 6 - #t[2]) .. t[2]
local prev = redis.call('SET', KEYS[2], now, 'PX', ARGV[4], 'GET')
if prev and (#prev > #now or (#prev == #now and prev >= now)) then
  redis.call('SET', KEYS[2], prev, 'PX', ARGV[4])
  return redis.call('INCR', KEYS[2])
end
return tonumber(now)
