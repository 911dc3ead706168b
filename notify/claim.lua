-- claim.lua: lease due users' batches. One call carries up to
-- maxClaimBatch users (of one shard on Cluster, where a script's keys share
-- a slot; of any shards on a single Redis), so the script's fixed cost is
-- paid once per call, not once per user.
--
-- KEYS nine per user i = 0, 1, ...:
--   KEYS[9i + 1] due   [9i + 2] u:<user>   [9i + 3] u:<user>:f (inflight)   [9i + 4] u:<user>:l (lease)
--   [9i + 5] data      [9i + 6] w          [9i + 7] r      [9i + 8] dead     [9i + 9] stats
-- ARGV[1] lease ms  ARGV[2] perUser  ARGV[3] dead cap
-- ARGV[2i + 4] user i (key-safe)  ARGV[2i + 5] its new lease token
--
-- Returns {now, user_1, user_2, ...}, in user order, each user's entry
-- {lease expiry (0: nothing claimed), dead count, id, payload, meta, ...}.
-- A user whose due score is later than now (not due, or leased) is not
-- claimed. An expired lease is taken over: its items are queued again first
-- (and its token replaced, so its holder's Ack and Nack find the lease lost).
local now = now_ms()
local lease, per, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

local function claim(kdue, kuser, kinflight, klease, kdata, kw, kr, kdead, kstats, uid, token)
  local s = redis.call('ZSCORE', kdue, uid)
  if not s or tonumber(s) > now then return {0, 0} end

  -- The lease is taken here, whatever follows (it is dropped again when
  -- nothing is claimed). A previous token means an expired lease: its
  -- items are queued again first (and its holder's Ack and Nack now find
  -- the lease lost). Without one the inflight set is empty (a lease is
  -- only dropped with its last item), so it is not read.
  if redis.call('SET', klease, token, 'GET') then
    local old = redis.call('ZRANGE', kinflight, 0, -1, 'WITHSCORES')
    for i = 1, #old, 2 do
      local id = old[i]
      local ref = uid .. ':' .. id
      local m = redis.call('HGET', kdata, 'm:' .. ref)
      if not m and #id > 16 then
        -- A member written by a version that kept the seq in it.
        id = string.sub(id, 17)
        ref = uid .. ':' .. id
        m = redis.call('HGET', kdata, 'm:' .. ref)
      end
      if m then
        local r = parse(m)
        r.st = 'q'
        redis.call('HSET', kdata, 'm:' .. ref, fmt(r))
        redis.call('ZADD', kuser, old[i + 1], r.seq .. id)
        redis.call('ZADD', r.att > 0 and kr or kw, int(r.due), ref)
      end
    end
    if #old > 0 then
      redis.call('HINCRBY', kstats, 'inflight', -(#old / 2))
      redis.call('DEL', kinflight)
    end
  end

  local out = {0, 0}
  local got, dead, budget = 0, 0, per + 100

  -- take leases the queue entries rs (ZRANGE ... WITHSCORES) in order, with
  -- one command per kind of write for all of them, not one per item: an
  -- item past ExpiresAt or out of attempts goes to the dead set instead,
  -- an entry without a record (removed meanwhile) is dropped.
  local function take(rs)
    if #rs == 0 then return end
    local members, fields = {}, {}
    for i = 1, #rs, 2 do
      local ref = uid .. ':' .. string.sub(rs[i], 17)
      members[#members + 1] = rs[i]
      fields[#fields + 1] = 'm:' .. ref
      fields[#fields + 1] = 'p:' .. ref
    end
    redis.call('ZREM', kuser, unpack(members))
    local v = redis.call('HMGET', kdata, unpack(fields))
    local ws, rs2, metas, infl = {}, {}, {}, {}
    for j = 1, #members do
      budget = budget - 1
      local m = v[2 * j - 1]
      if m then
        local id = string.sub(members[j], 17)
        local ref = uid .. ':' .. id
        local r = parse(m)
        if r.att > 0 then rs2[#rs2 + 1] = ref else ws[#ws + 1] = ref end
        if r.exp > 0 and r.exp <= now then
          to_dead(kdata, kdead, kstats, ref, r, now, 'expired', cap)
          dead = dead + 1
        elseif r.att >= r.max then
          to_dead(kdata, kdead, kstats, ref, r, now, 'lease expired on the last attempt', cap)
          dead = dead + 1
        else
          r.att = r.att + 1
          r.st = 'f'
          local meta = fmt(r)
          metas[#metas + 1] = 'm:' .. ref
          metas[#metas + 1] = meta
          infl[#infl + 1] = rs[2 * j]
          infl[#infl + 1] = id
          out[#out + 1] = id
          out[#out + 1] = v[2 * j]
          out[#out + 1] = meta
          got = got + 1
        end
      end
    end
    if #ws > 0 then redis.call('ZREM', kw, unpack(ws)) end
    if #rs2 > 0 then redis.call('ZREM', kr, unpack(rs2)) end
    if #metas > 0 then
      redis.call('HSET', kdata, unpack(metas))
      redis.call('ZADD', kinflight, unpack(infl))
    end
  end

  -- The first per entries by score, when all are due, are exactly what
  -- the band-by-band reads below would take (a band's due entries sort
  -- before its scheduled ones): one read instead of three. A queue with
  -- fewer entries is then empty.
  local rs = redis.call('ZRANGE', kuser, 0, per - 1, 'WITHSCORES')
  local fast = true
  for i = 2, #rs, 2 do
    local sc = tonumber(rs[i])
    if sc - math.floor(sc / B) * B > now then
      fast = false
      break
    end
  end
  local b = 0
  if fast then
    take(rs)
    if #rs < 2 * per then b = 3 end
  end
  while b <= 2 and got < per and budget > 0 do
    local want = math.min(per - got, budget)
    rs = redis.call('ZRANGEBYSCORE', kuser, int(b * B), int(b * B + now), 'WITHSCORES', 'LIMIT', 0, want)
    -- A short read has emptied the band's due items: go on with the next
    -- band without asking this one again.
    if #rs < 2 * want then b = b + 1 end
    take(rs)
  end
  out[2] = dead
  if got > 0 then
    local exp = now + lease
    redis.call('ZADD', kdue, int(exp), uid)
    redis.call('HINCRBY', kstats, 'inflight', got)
    out[1] = exp
  else
    redis.call('DEL', klease)
    reindex(kdue, kuser, uid)
  end
  return out
end

local res = {now}
for i = 0, (#ARGV - 3) / 2 - 1 do
  local k = 9 * i
  res[#res + 1] = claim(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5], KEYS[k + 6], KEYS[k + 7],
    KEYS[k + 8], KEYS[k + 9], ARGV[2 * i + 4], ARGV[2 * i + 5])
end
return res
