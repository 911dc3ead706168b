-- dead.lua: settle entries as refused: move each still-pending one to the
-- dead-letter stream (trimmed to about its cap) with the reason.
--
-- KEYS[1]  the event stream <prefix>an:{events}:s
-- KEYS[2]  the dead-letter stream <prefix>an:{events}:d
-- ARGV[1]  consumer group
-- ARGV[2]  dead-letter cap (MAXLEN ~)
-- ARGV[3]  TTL of the dead-letter stream, milliseconds
-- ARGV[4]  reason
-- ARGV[5..] pairs: entry id, encoded event
--
-- Returns how many were moved.
local n = 0
for i = 5, #ARGV, 2 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[i + 1], 'reason', ARGV[4], 'id', ARGV[i])
    n = n + 1
  end
  redis.call('XDEL', KEYS[1], ARGV[i])
end
if n > 0 then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return n
