-- group.lua: create the forwarders' consumer group (reading from the
-- start), creating the stream if needed with its TTL.
--
-- KEYS[1]  the event stream <prefix>an:{events}:s
-- ARGV[1]  consumer group
-- ARGV[2]  TTL of the stream, milliseconds
local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if not ok then
  local msg = type(err) == 'table' and err.err or tostring(err)
  if not string.find(msg, 'BUSYGROUP', 1, true) then
    return redis.error_reply(msg)
  end
end
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
