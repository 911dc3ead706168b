-- touch.lua: record activity, at most once per interval: the throttle check
-- and the write are one step, so of any number of concurrent touches on any
-- number of instances at most one writes per interval.
--
-- KEYS[1]  the session's key (see create.lua for its fields)
-- ARGV[1]  the touch interval, ms; the session's own interval is at most half
--          its idle timeout, so throttling never lets an active session expire
--
-- Returns {code, now_ms}: code 0 no live session; 1 the last activity is
-- recent, nothing written; 2 lastActivity set to Redis TIME and the key's
-- expiry moved to min(lastActivity + idleTimeout, absoluteExpiry).
local f = redis.call('HMGET', KEYS[1], 'userId', 'lastActivity', 'idleTimeout', 'absoluteExpiry')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not f[1] then return {0, now} end
local idle = tonumber(f[3])
local every = math.min(tonumber(ARGV[1]), math.floor(idle / 2))
if now - tonumber(f[2]) < every then return {1, now} end
redis.call('HSET', KEYS[1], 'lastActivity', now)
redis.call('PEXPIREAT', KEYS[1], math.min(now + idle, tonumber(f[4])))
return {2, now}
