-- ack.lua: record leased items as delivered (fenced), for one or more
-- users: concurrent Acks share a call (see combiner, combine.go). On Cluster a
-- call's users are of one shard (one slot); on a single Redis of any.
--
-- KEYS seven per user i = 0, 1, ...:
--   KEYS[7i + 1] due   [7i + 2] u:<user>   [7i + 3] u:<user>:f   [7i + 4] u:<user>:l
--   [7i + 5] data      [7i + 6] stats      [7i + 7] done
-- ARGV[1] delivered cap, then per user: the user (key-safe), its lease
-- token, the number k of its ids, then its k ids.
--
-- Returns {n_1, n_2, ...} in user order: -1 (lease lost, nothing of that
-- user changed) or the number of its items acked. An item is acked when it
-- is in the user's inflight set (the token check fences the set), so an
-- ack reads no meta; for several ids each kind of write is one command for
-- all of them; the counters and the cap of the delivered-id set are
-- updated once per shard per call.
local now = int(now_ms())
local cap = tonumber(ARGV[1])

-- ack_user acks ids of one user whose lease it has checked; returns how
-- many were in its inflight set.
local function ack_user(kinflight, kdata, kdone, uid, ids)
  if #ids == 1 then
    if redis.call('ZREM', kinflight, ids[1]) == 0 then return 0 end
    local ref = uid .. ':' .. ids[1]
    redis.call('HDEL', kdata, 'p:' .. ref, 'm:' .. ref)
    redis.call('ZADD', kdone, now, ref)
    return 1
  end
  local sc = redis.call('ZMSCORE', kinflight, unpack(ids))
  local held, fields, dones = {}, {}, {}
  for j, id in ipairs(ids) do
    if sc[j] then
      local ref = uid .. ':' .. id
      held[#held + 1] = id
      fields[#fields + 1] = 'p:' .. ref
      fields[#fields + 1] = 'm:' .. ref
      dones[#dones + 1] = now
      dones[#dones + 1] = ref
    end
  end
  if #held > 0 then
    redis.call('ZREM', kinflight, unpack(held))
    redis.call('HDEL', kdata, unpack(fields))
    redis.call('ZADD', kdone, unpack(dones))
  end
  return #held
end

local out, acked, capped = {}, {}, {}
local a, u = 2, 0
while a <= #ARGV do
  local k = 7 * u
  local kdue, kuser, kinflight, klease = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local kdata, kstats, kdone = KEYS[k + 5], KEYS[k + 6], KEYS[k + 7]
  local uid, token, c = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  -- Its ids, an id given twice once.
  local ids, seen = {}, {}
  for i = a + 3, a + 2 + c do
    if not seen[ARGV[i]] then
      seen[ARGV[i]] = true
      ids[#ids + 1] = ARGV[i]
    end
  end
  a, u = a + 3 + c, u + 1
  if redis.call('GET', klease) ~= token then
    out[u] = -1
  else
    local n = 0
    if #ids > 0 then n = ack_user(kinflight, kdata, kdone, uid, ids) end
    if n > 0 then
      acked[kstats] = (acked[kstats] or 0) + n
      capped[kdone] = true
    end
    release_if_done(kdue, kuser, kinflight, klease, uid)
    out[u] = n
  end
end
for kstats, n in pairs(acked) do
  redis.call('HINCRBY', kstats, 'inflight', -n)
  redis.call('HINCRBY', kstats, 'delivered', n)
end
for kdone in pairs(capped) do cap_done(kdone, cap) end
return out
