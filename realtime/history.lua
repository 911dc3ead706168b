-- Read a channel's position and the messages after an offset.
--
-- KEYS[1]  meta hash {e = epoch, o = last offset}
-- KEYS[2]  history stream (entry id "<offset>-0", fields d, t)
-- ARGV[1]  since: return messages with offsets greater than it
-- ARGV[2]  limit: at most this many; 0 reads only the position
--
-- Returns {epoch, top, entries}; epoch "" and top 0 when the channel has
-- no state. entries are XRANGE's, oldest first.
local mt = redis.call('HMGET', KEYS[1], 'e', 'o')
if not mt[1] then
  return {'', 0, {}}
end
local top = tonumber(mt[2])
local since = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local entries = {}
if limit > 0 and since < top then
  entries = redis.call('XRANGE', KEYS[2], string.format('%d', since + 1) .. '-0', '+', 'COUNT', limit)
end
return {mt[1], top, entries}
