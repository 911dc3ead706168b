-- single.lua: the main part of the single-check scripts (Allow, AllowN,
-- Peek, Record), one per algorithm and mode: redis.go prepends common.lua,
-- and replaces the placeholder lines below with the script's mode and the
-- algorithm's eval and write blocks (see common.lua). The hot path thus
-- defines no function, and its call carries only the numbers.
--
-- mode (fixed per script):
--   allow   consumes n only if it fits; a denial writes nothing.
--   peek    evaluates, never writes (the caller passes n = 1).
--   record  consumes n, fitting or not.
--
-- KEYS[1]  the state key.
-- ARGV[1]  limit L, integer >= 1
-- ARGV[2]  window W in microseconds, integer >= 1000
-- ARGV[3]  cost n, integer >= 1
-- ARGV[4]  optional: burst B for gcra when it differs from L (default L)
--
-- Returns {remaining, resetAt (µs since the epoch)} when the units fit
-- (allowed), {remaining, resetAt, retryAfter (µs)} when they do not.

--{mode}
local key = KEYS[1]
local L, W, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local B = L
if ARGV[4] then B = tonumber(ARGV[4]) end
if L == nil or W == nil or B == nil or n == nil or L < 1 or W < 1 or B < 1 or n < 1 then
  return redis.error_reply('ERR ratelimit: bad arguments')
end

local bad, fits, remaining, reset, retry, s1, s2, s3, s4
--{eval}
if bad then
  return redis.error_reply('ERR ratelimit: corrupt state in a rate-limit key')
end
if (fits and mode ~= 'peek') or mode == 'record' then
  local token
  --{write}
end
if fits then
  return {remaining, reset}
end
return {remaining, reset, retry}
