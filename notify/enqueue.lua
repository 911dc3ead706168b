-- enqueue.lua: store notifications, each unless (user, id) is known. One
-- call carries up to maxEnqueueBatch items of an Enqueue or EnqueueMany, so
-- the script's fixed cost (EVALSHA, TIME) is paid once per call, not once per
-- item. On Cluster the items of a call are of one shard (one slot); on a
-- single Redis they may be of several.
--
-- KEYS seven per item i = 0, 1, ... (its shard's and its user's keys):
--   KEYS[7i + 1] due  [7i + 2] data  [7i + 3] w  [7i + 4] stats  [7i + 5] done
--   [7i + 6] u:<user>  [7i + 7] u:<user>:l (lease)
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
-- this call), and how many new ones each shard gets.
local known, first, fresh = {}, {}, {}
for i = 0, n - 1 do
  local kdata, kdone, kstats = KEYS[7 * i + 2], KEYS[7 * i + 5], KEYS[7 * i + 4]
  local ref = ARGV[7 * i + 1] .. ':' .. ARGV[7 * i + 2]
  local m = redis.call('HGET', kdata, 'm:' .. ref)
  if not m and redis.call('ZSCORE', kdone, ref) then m = 'delivered' end
  if m then
    known[i] = m
  elseif first[ref] then
    known[i] = first[ref] -- the index of its first occurrence
  else
    first[ref] = i
    fresh[kstats] = (fresh[kstats] or 0) + 1
  end
end
-- One increment per shard reserves the seqs of its new items (seq orders a
-- user's items; all of a user's are in one shard).
local seq = {}
for kstats, c in pairs(fresh) do
  seq[kstats] = redis.call('HINCRBY', kstats, 'seq', c) - c
end
local out, metas = {int(now)}, {}
for i = 0, n - 1 do
  local a = 7 * i
  local k = known[i]
  if k then
    out[#out + 1] = 0
    -- A repeat within this call reads as the meta just stored.
    out[#out + 1] = type(k) == 'number' and metas[k] or k
  else
    local kdue, kdata, kw, kstats = KEYS[a + 1], KEYS[a + 2], KEYS[a + 3], KEYS[a + 4]
    local kuser, klease = KEYS[a + 6], KEYS[a + 7]
    local uid, id = ARGV[a + 1], ARGV[a + 2]
    local ref = uid .. ':' .. id
    local due = tonumber(ARGV[a + 4])
    if due == 0 then due = now end
    seq[kstats] = seq[kstats] + 1
    local r = {st = 'q', seq = string.format('%016x', seq[kstats]), band = tonumber(ARGV[a + 3]), due = due,
      sched = due, exp = tonumber(ARGV[a + 5]), att = 0, max = tonumber(ARGV[a + 6]), err = ''}
    local meta = fmt(r)
    metas[i] = meta
    redis.call('HSET', kdata, 'p:' .. ref, ARGV[a + 7], 'm:' .. ref, meta)
    redis.call('ZADD', kuser, int(r.band * B + due), r.seq .. id)
    redis.call('ZADD', kw, int(due), ref)
    if redis.call('EXISTS', klease) == 0 then
      redis.call('ZADD', kdue, 'LT', int(due), uid)
    end
    out[#out + 1] = 1
    out[#out + 1] = meta
  end
end
return out
