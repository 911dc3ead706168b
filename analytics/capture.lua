-- capture.lua: append events to the durable buffer, trimmed to about the
-- cap, and refresh the stream's TTL.
--
-- KEYS[1]  the event stream <prefix>an:{events}:s
-- ARGV[1]  cap (XADD MAXLEN ~)
-- ARGV[2]  TTL of the stream, milliseconds
-- ARGV[3..] the encoded events, one entry (field "e") each
--
-- Returns how many entries the trimming removed (events lost unsent, unless
-- they had been sent and not yet deleted, which Ack does in the same step).
local before = redis.call('XLEN', KEYS[1])
for i = 3, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return before + (#ARGV - 2) - redis.call('XLEN', KEYS[1])
