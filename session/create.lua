-- create.lua: store a session (Create, or the copy of Rotate) with its expiry
-- in one step.
--
-- A session is a hash:
--   id              the session id as given (the key holds only its escaped or hashed form)
--   userId          the owner
--   roles           JSON array of strings
--   deviceInfo      opaque (sealed when encryption is on)
--   preferences     opaque (sealed when encryption is on)
--   createdAt       Unix ms (Redis TIME)
--   lastActivity    Unix ms (Redis TIME)
--   idleTimeout     ms
--   absoluteExpiry  Unix ms
--   version         incremented by every change of a field other than lastActivity
--   indexScore      the session's score in its user's index (index_add.lua), for a
--                   conditional removal from the index
--   rotatedFrom     Rotate only: the key-safe id of the session this is a copy of
-- and its key expires at min(lastActivity + idleTimeout, absoluteExpiry).
-- A hash without userId is not a session but a pending-roles marker left by
-- set_roles.lua (fields pendingUser, pendingRoles).
--
-- KEYS[1]   the session's key
-- ARGV[1]   id
-- ARGV[2]   userId
-- ARGV[3]   roles (JSON array)
-- ARGV[4]   deviceInfo
-- ARGV[5]   preferences
-- ARGV[6]   idle timeout, ms (> 0)
-- ARGV[7]   'create': absolute lifetime from now, ms (> 0);
--           'rotate': absolute expiry to keep, Unix ms
-- ARGV[8]   index score (as index_add.lua returned it)
-- ARGV[9]   mode: 'create' or 'rotate'
-- ARGV[10]  'rotate': rotatedFrom (the old session's key-safe id); 'create': ''
-- ARGV[11]  'rotate': createdAt to keep, Unix ms; 'create': ignored
--
-- Returns {code, now_ms, createdAt, absoluteExpiry, roles}:
--   code 1   stored (replacing whatever was there: Create has PUT semantics; a
--            Rotate that is retried replaces its own earlier copy)
--   code 0   'rotate' only: the key holds a live session that is not a copy of
--            ARGV[10]; nothing written
--   code -1  'rotate' only: the absolute expiry has passed; nothing written
-- roles is what was stored: ARGV[3], or the roles of a pending-roles marker
-- for this user (a set_roles.lua that ran while this session was being
-- created or rotated; it is newer than the caller's roles).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('HMGET', KEYS[1], 'userId', 'rotatedFrom', 'pendingUser', 'pendingRoles')
local rotate = ARGV[9] == 'rotate'
if rotate and cur[1] and cur[2] ~= ARGV[10] then
  return {0, now, 0, 0, ''}
end
local roles = ARGV[3]
if not cur[1] and cur[3] == ARGV[2] and cur[4] then
  roles = cur[4]
end
local created, absexp
if rotate then
  created = tonumber(ARGV[11])
  absexp = tonumber(ARGV[7])
else
  created = now
  absexp = now + tonumber(ARGV[7])
end
local idle = tonumber(ARGV[6])
local exp = math.min(now + idle, absexp)
if exp <= now then
  return {-1, now, 0, 0, ''}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1],
  'id', ARGV[1], 'userId', ARGV[2], 'roles', roles,
  'deviceInfo', ARGV[4], 'preferences', ARGV[5],
  'createdAt', created, 'lastActivity', now, 'idleTimeout', idle, 'absoluteExpiry', absexp,
  'version', 1, 'indexScore', ARGV[8], 'rotatedFrom', ARGV[10])
redis.call('PEXPIREAT', KEYS[1], exp)
return {1, now, created, absexp, roles}
