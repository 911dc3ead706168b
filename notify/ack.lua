-- ack.lua: record leased items as delivered (fenced), for one or more
-- batches: concurrent acks are sent together (see ackBatcher), of one shard
-- on Cluster, of any shards on a single Redis.
--
-- KEYS seven per batch j = 0, 1, ...:
--   KEYS[7j + 1] due   [7j + 2] u:<user>   [7j + 3] u:<user>:f   [7j + 4] u:<user>:l
--   [7j + 5] data      [7j + 6] stats      [7j + 7] done
-- ARGV[1] delivered cap (per shard); then per batch: user (key-safe), lease
--   token, the number c of its ids, then its c ids.
--
-- Returns {n_1, n_2, ...}, per batch -1 (lease lost, nothing changed for it)
-- or the number of its items acked. An item is acked when it is in the
-- batch's inflight set (the token check fences the set), so an ack reads no
-- meta.
local cap = tonumber(ARGV[1])
local now
local out, acked, dones = {}, {}, {}
local a = 2
for j = 0, #KEYS / 7 - 1 do
  local k = 7 * j
  local kdue, kuser, kinflight, klease = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local kdata, kstats, kdone = KEYS[k + 5], KEYS[k + 6], KEYS[k + 7]
  local uid, token, c = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local first = a + 3
  a = first + c
  if redis.call('GET', klease) ~= token then
    out[#out + 1] = -1
  else
    now = now or int(now_ms())
    local n = 0
    for i = first, first + c - 1 do
      local id = ARGV[i]
      if redis.call('ZREM', kinflight, id) == 1 then
        local ref = uid .. ':' .. id
        redis.call('HDEL', kdata, 'p:' .. ref, 'm:' .. ref)
        redis.call('ZADD', kdone, now, ref)
        n = n + 1
      end
    end
    if n > 0 then
      acked[kstats] = (acked[kstats] or 0) + n
      dones[kdone] = true
    end
    release_if_done(kdue, kuser, kinflight, klease, uid)
    out[#out + 1] = n
  end
end
-- Once per shard: the counters, and the cap of the delivered-id set.
for kstats, n in pairs(acked) do
  redis.call('HINCRBY', kstats, 'inflight', -n)
  redis.call('HINCRBY', kstats, 'delivered', n)
end
for kdone in pairs(dones) do cap_done(kdone, cap) end
return out
