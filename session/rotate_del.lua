-- rotate_del.lua: the last step of Rotate: delete the old session if it has
-- not changed since Rotate read it.
--
-- KEYS[1]  the old session's key (see create.lua for its fields)
-- ARGV[1]  its version when Rotate read it
-- ARGV[2]  its indexScore when Rotate read it (new for every Create, so a
--          session created again under the id since is not taken for it)
--
-- Returns 1 when it was deleted; 0 when it changed since (an update or a role
-- change: nothing written, Rotate copies it again); -1 when it is gone
-- (deleted, revoked, expired or replaced meanwhile: Rotate removes its copy
-- too).
local f = redis.call('HMGET', KEYS[1], 'userId', 'version', 'indexScore')
if not f[1] or f[3] ~= ARGV[2] then return -1 end
if f[2] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
