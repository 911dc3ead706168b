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

  local old = redis.call('ZRANGE', kinflight, 0, -1, 'WITHSCORES')
  if #old > 0 then
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
    redis.call('HINCRBY', kstats, 'inflight', -(#old / 2))
    redis.call('DEL', kinflight)
  end

  local out = {0, 0}
  local got, dead, budget = 0, 0, per + 100
  local b = 0
  while b <= 2 and got < per and budget > 0 do
    local want = math.min(per - got, budget)
    local rs = redis.call('ZRANGEBYSCORE', kuser, int(b * B), int(b * B + now), 'WITHSCORES', 'LIMIT', 0, want)
    -- A short read has emptied the band's due items: go on with the next
    -- band without asking this one again.
    if #rs < 2 * want then b = b + 1 end
    for i = 1, #rs, 2 do
      budget = budget - 1
      local member, score = rs[i], rs[i + 1]
      local id = string.sub(member, 17)
      local ref = uid .. ':' .. id
      redis.call('ZREM', kuser, member)
      local v = redis.call('HMGET', kdata, 'm:' .. ref, 'p:' .. ref)
      if v[1] then
        local r = parse(v[1])
        redis.call('ZREM', r.att > 0 and kr or kw, ref)
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
          redis.call('HSET', kdata, 'm:' .. ref, meta)
          redis.call('ZADD', kinflight, score, id)
          out[#out + 1] = id
          out[#out + 1] = v[2]
          out[#out + 1] = meta
          got = got + 1
        end
      end
    end
  end
  out[2] = dead
  if got > 0 then
    local exp = now + lease
    redis.call('SET', klease, token)
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
