-- fill.lua: write an entry if the caller's lease still holds (or
-- unconditionally, for Set), and end the lease — in one atomic step. A load
-- whose lease was taken away by an invalidation never writes back.
--
-- KEYS[1] the value key  <prefix>cache:{<ns>/<key>}
-- KEYS[2] the lease key  <prefix>cache:{<ns>/<key>}:lease
-- ARGV[1] token, or '' to write unconditionally (Set; ends any lease)
-- ARGV[2] kind: 'v' (value) or 'n' (not found)
-- ARGV[3] tags: "tagkey version,..." as the load began ('' untagged)
-- ARGV[4] soft ttl in ms (the value is fresh until then)
-- ARGV[5] hard ttl in ms (>= soft: the stale window ends; the key's PX)
-- ARGV[6] how long the load took, in ms (XFetch's delta)
-- ARGV[7] the encoded value
-- ARGV[8] Pub/Sub channel to publish KEYS[1] on, or '' (tracking mode)
--
-- Returns {1, now_ms} when written, {0} when the lease was lost.

if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return {0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local head = string.format('%s%s|%.0f|%.0f|%.0f|%s\n', ARGV[2], ARGV[3], now,
  now + tonumber(ARGV[4]), now + tonumber(ARGV[5]), ARGV[6])
redis.call('SET', KEYS[1], head .. ARGV[7], 'PX', ARGV[5])
redis.call('DEL', KEYS[2])
if ARGV[8] ~= '' then
  redis.call('PUBLISH', ARGV[8], KEYS[1])
end
return {1, now}
