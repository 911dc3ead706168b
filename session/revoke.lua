-- revoke.lua: delete a session if it belongs to the user (RevokeUser). A
-- session id may have been reused by another user since it was indexed; that
-- session is left alone.
--
-- KEYS[1]  the session's key (see create.lua for its fields)
-- ARGV[1]  userId
--
-- Returns 1 when the session was deleted, 0 when there was none of this user.
if redis.call('HGET', KEYS[1], 'userId') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
