-- put.lua: store a value with its TTL in one step, and report Redis time.
--
-- KEYS[1]  the value's key (a string)
-- ARGV[1]  the value (sealed when encryption is on)
-- ARGV[2]  TTL in milliseconds (> 0)
-- ARGV[3]  "nx" to store only when the key is absent, "" to replace
--
-- Returns {stored, time_s, time_us}: stored is 1 when the value was written,
-- 0 when "nx" found a live key (nothing written); time is Redis TIME before
-- the write, from which the caller computes the expiry.
local t = redis.call('TIME')
local ok
if ARGV[3] == 'nx' then
  ok = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX')
else
  ok = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
local stored = 0
if ok then stored = 1 end
return {stored, tonumber(t[1]), tonumber(t[2])}
