-- set_roles.lua: replace the roles of a session of the user (SetUserRoles),
-- keeping its expiry (a role change is not activity).
--
-- KEYS[1]  the session's key (see create.lua for its fields)
-- ARGV[1]  userId
-- ARGV[2]  roles (JSON array)
-- ARGV[3]  lifetime of a pending-roles marker, ms
--
-- Returns 1 when the roles were set; 0 when the key holds another user's
-- session (left alone); 2 when there is no session: the index lists it, so
-- a Create or Rotate may be between its two steps (index, then session). A
-- marker {pendingUser, pendingRoles} is left for ARGV[3] ms; create.lua
-- applies it when it stores a session of this user there, so the role change
-- is not lost to that race. A marker is not a session: every other script
-- and read sees no userId and treats the key as absent.
local u = redis.call('HGET', KEYS[1], 'userId')
if u == ARGV[1] then
  redis.call('HSET', KEYS[1], 'roles', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'version', 1)
  return 1
end
if u then return 0 end
redis.call('HSET', KEYS[1], 'pendingUser', ARGV[1], 'pendingRoles', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 2
