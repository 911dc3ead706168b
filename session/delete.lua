-- delete.lua: delete a session (or a pending-roles marker).
--
-- KEYS[1]  the session's key (see create.lua for its fields)
--
-- Returns false when there was no session, else {userId, indexScore} of the
-- deleted session, so that the caller can remove it from its user's index.
local f = redis.call('HMGET', KEYS[1], 'userId', 'indexScore')
redis.call('DEL', KEYS[1])
if not f[1] then return false end
return {f[1], f[2] or ''}
