-- stats.lua: one shard's counts (read-only).
--
-- KEYS[1] w   KEYS[2] r   KEYS[3] dead   KEYS[4] stats
--
-- Returns {scheduled, pending, inflight, retrying, dead, delivered, dead_dropped}.
local now = int(now_ms())
local st = redis.call('HMGET', KEYS[4], 'inflight', 'delivered', 'dead_dropped')
return {
  redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf'),
  redis.call('ZCOUNT', KEYS[1], '-inf', now) + redis.call('ZCOUNT', KEYS[2], '-inf', now),
  tonumber(st[1] or 0),
  redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf'),
  redis.call('ZCARD', KEYS[3]),
  tonumber(st[2] or 0),
  tonumber(st[3] or 0),
}
