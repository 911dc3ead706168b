-- due.lua: the users of one shard that are due now (read-only).
--
-- KEYS[1] due
-- ARGV[1] how many at most
--
-- Returns {now, user, user, ...}, earliest first.
local now = now_ms()
local us = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', int(now), 'LIMIT', 0, tonumber(ARGV[1]))
table.insert(us, 1, int(now))
return us
