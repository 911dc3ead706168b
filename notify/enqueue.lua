-- enqueue.lua: store notifications of one shard, each unless (user, id) is
-- known. One call carries every item of an Enqueue or EnqueueMany that falls
-- in the shard (at most maxEnqueueBatch), so the script's fixed cost (EVALSHA,
-- TIME, the seq counter) is paid once per shard, not once per item.
--
-- KEYS[1] due   KEYS[2] data   KEYS[3] w   KEYS[4] stats   KEYS[5] done
-- then two per item i = 0, 1, ...: KEYS[6 + 2i] u:<user>, KEYS[7 + 2i] u:<user>:l (lease)
-- ARGV seven per item i: ARGV[7i + 1] user (key-safe)  [7i + 2] id
--   [7i + 3] band (0 high, 1 normal, 2 low)  [7i + 4] scheduled ms (0: now)
--   [7i + 5] expires ms (0: none)  [7i + 6] maxAttempts  [7i + 7] payload
--
-- Returns {now, created_1, meta_1, created_2, meta_2, ...}, in item order:
-- created 1 or 0 (known), meta the item's (for a known id, the stored one, or
-- 'delivered'). An id given twice is stored once, the first time; the second
-- reads as known. When every id is known, nothing is written.
local now = now_ms()
local n = #ARGV / 7
-- First the reads: which items are known (stored, delivered, or earlier in
-- this call), so that a call of known ids only writes nothing.
local known, first, fresh = {}, {}, 0
for i = 0, n - 1 do
  local ref = ARGV[7 * i + 1] .. ':' .. ARGV[7 * i + 2]
  local m = redis.call('HGET', KEYS[2], 'm:' .. ref)
  if not m and redis.call('ZSCORE', KEYS[5], ref) then m = 'delivered' end
  if m then
    known[i] = m
  elseif first[ref] then
    known[i] = first[ref] -- the index of its first occurrence
  else
    first[ref] = i
    fresh = fresh + 1
  end
end
-- One increment reserves the seqs of every new item.
local seq = 0
if fresh > 0 then seq = redis.call('HINCRBY', KEYS[4], 'seq', fresh) - fresh end
local out, metas = {int(now)}, {}
for i = 0, n - 1 do
  local a = 7 * i
  local k = known[i]
  if k then
    out[#out + 1] = 0
    -- A repeat within this call reads as the meta just stored.
    out[#out + 1] = type(k) == 'number' and metas[k] or k
  else
    local uid, id = ARGV[a + 1], ARGV[a + 2]
    local kuser, klease = KEYS[6 + 2 * i], KEYS[7 + 2 * i]
    local ref = uid .. ':' .. id
    local due = tonumber(ARGV[a + 4])
    if due == 0 then due = now end
    seq = seq + 1
    local r = {st = 'q', seq = string.format('%016x', seq), band = tonumber(ARGV[a + 3]), due = due,
      sched = due, exp = tonumber(ARGV[a + 5]), att = 0, max = tonumber(ARGV[a + 6]), err = ''}
    local meta = fmt(r)
    metas[i] = meta
    redis.call('HSET', KEYS[2], 'p:' .. ref, ARGV[a + 7], 'm:' .. ref, meta)
    redis.call('ZADD', kuser, int(r.band * B + due), r.seq .. id)
    redis.call('ZADD', KEYS[3], int(due), ref)
    if redis.call('EXISTS', klease) == 0 then
      redis.call('ZADD', KEYS[1], 'LT', int(due), uid)
    end
    out[#out + 1] = 1
    out[#out + 1] = meta
  end
end
return out
