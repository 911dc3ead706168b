-- update.lua: replace some fields of a live session and record activity, in
-- one step (see create.lua for the fields). Fields not given are untouched,
-- so concurrent updates of different fields never overwrite each other.
--
-- KEYS[1]  the session's key
-- ARGV[1]  '1' to set roles to ARGV[2], '0' to leave them
-- ARGV[2]  roles (JSON array)
-- ARGV[3]  '1' to set deviceInfo to ARGV[4], '0' to leave it
-- ARGV[4]  deviceInfo
-- ARGV[5]  '1' to set preferences to ARGV[6], '0' to leave them
-- ARGV[6]  preferences
--
-- Returns false when there is no live session (nothing written), else
-- {id, userId, roles, deviceInfo, preferences, createdAt, lastActivity,
--  idleTimeout, absoluteExpiry} after the change. lastActivity is Redis TIME
-- and the key's expiry moves to min(lastActivity + idleTimeout,
-- absoluteExpiry) in this same step.
local f = redis.call('HMGET', KEYS[1], 'userId', 'idleTimeout', 'absoluteExpiry')
if not f[1] then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == '1' then redis.call('HSET', KEYS[1], 'roles', ARGV[2]) end
if ARGV[3] == '1' then redis.call('HSET', KEYS[1], 'deviceInfo', ARGV[4]) end
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'preferences', ARGV[6]) end
redis.call('HSET', KEYS[1], 'lastActivity', now)
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('PEXPIREAT', KEYS[1], math.min(now + tonumber(f[2]), tonumber(f[3])))
return redis.call('HMGET', KEYS[1], 'id', 'userId', 'roles', 'deviceInfo', 'preferences',
  'createdAt', 'lastActivity', 'idleTimeout', 'absoluteExpiry')
