-- ack.lua: settle entries as sent: acknowledge and delete them, and count
-- them in the sent counter.
--
-- KEYS[1]  the event stream <prefix>an:{events}:s
-- KEYS[2]  the sent counter <prefix>an:{events}:n
-- ARGV[1]  consumer group
-- ARGV[2]  TTL of the counter, milliseconds
-- ARGV[3..] entry ids
--
-- Returns how many were still pending (entries settled by another consumer
-- in the meantime are not counted twice).
local n = 0
for i = 3, #ARGV do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    n = n + 1
  end
  redis.call('XDEL', KEYS[1], ARGV[i])
end
if n > 0 then
  redis.call('INCRBY', KEYS[2], n)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return n
