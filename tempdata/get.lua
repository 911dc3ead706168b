-- get.lua: read a value and its expiry in one step.
--
-- KEYS[1]  the value's key (a string)
--
-- Returns nil when the key is absent, else {value, pttl_ms, time_s, time_us}
-- where the expiry is Redis TIME plus pttl (pttl is -1 for a key without a
-- TTL, which this package never writes).
local v = redis.call('GET', KEYS[1])
if not v then return false end
local t = redis.call('TIME')
return {v, redis.call('PTTL', KEYS[1]), tonumber(t[1]), tonumber(t[2])}
