-- ack.lua: record leased items as delivered (fenced).
--
-- KEYS[1] due   KEYS[2] u:<user>   KEYS[3] u:<user>:f   KEYS[4] u:<user>:l
-- KEYS[5] data  KEYS[6] stats      KEYS[7] done
-- ARGV[1] user (key-safe)  ARGV[2] lease token  ARGV[3] delivered cap  ARGV[4..] ids
--
-- Returns -1 (lease lost, nothing changed) or the number of items acked. An
-- item is acked when it is in the user's inflight set (the token check fences
-- the set), so an ack reads no meta; each kind of write is one command for
-- all the ids, and the counters and the cap of the delivered-id set are
-- updated once per call.
if redis.call('GET', KEYS[4]) ~= ARGV[2] then return -1 end
local now = int(now_ms())
local uid, cap = ARGV[1], tonumber(ARGV[3])
local n = 0
if #ARGV == 4 then
  if redis.call('ZREM', KEYS[3], ARGV[4]) == 1 then
    local ref = uid .. ':' .. ARGV[4]
    redis.call('HDEL', KEYS[5], 'p:' .. ref, 'm:' .. ref)
    redis.call('ZADD', KEYS[7], now, ref)
    n = 1
  end
elseif #ARGV > 4 then
  -- Several ids: one command per kind of write for all of them. An id
  -- given twice counts once.
  local ids, seen = {}, {}
  for i = 4, #ARGV do
    if not seen[ARGV[i]] then
      seen[ARGV[i]] = true
      ids[#ids + 1] = ARGV[i]
    end
  end
  local sc = redis.call('ZMSCORE', KEYS[3], unpack(ids))
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
  n = #held
  if n > 0 then
    redis.call('ZREM', KEYS[3], unpack(held))
    redis.call('HDEL', KEYS[5], unpack(fields))
    redis.call('ZADD', KEYS[7], unpack(dones))
  end
end
if n > 0 then
  redis.call('HINCRBY', KEYS[6], 'inflight', -n)
  redis.call('HINCRBY', KEYS[6], 'delivered', n)
  cap_done(KEYS[7], cap)
end
release_if_done(KEYS[1], KEYS[2], KEYS[3], KEYS[4], uid)
return n
