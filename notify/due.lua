-- due.lua: the users that are due now, of one or more shards (read-only).
-- On Cluster a call reads one shard (a script's keys share a slot); on a
-- single Redis one call reads a whole round of shards, so a claim costs two
-- script calls, not one per shard plus one.
--
-- KEYS[1..n] due (one per shard, in the order to read them)
-- ARGV[1] how many users at most, over all the shards
--
-- Returns {now, user, user, ...}: each shard's due users earliest first,
-- shard after shard, until ARGV[1] are found.
local now = int(now_ms())
local left = tonumber(ARGV[1])
local out = {now}
for i = 1, #KEYS do
  local us = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now, 'LIMIT', 0, left)
  for _, u in ipairs(us) do out[#out + 1] = u end
  left = left - #us
  if left <= 0 then break end
end
return out
