-- common.lua: helpers prepended to every notify script (not a script itself).
--
-- Keys of shard s (one hash tag per shard, so one Cluster slot):
--   <prefix>nq:{s}:due     ZSET  user -> earliest due time (ms), or, while the
--                                user is leased, the lease expiry (ms)
--   <prefix>nq:{s}:data    HASH  p:<user>:<id> -> payload (Go JSON, immutable)
--                                m:<user>:<id> -> meta (see parse)
--   <prefix>nq:{s}:w       ZSET  <user>:<id> -> due ms, queued, never attempted
--   <prefix>nq:{s}:r       ZSET  <user>:<id> -> due ms, queued, attempted before
--   <prefix>nq:{s}:dead    ZSET  <user>:<id> -> time of death ms (capped)
--   <prefix>nq:{s}:done    ZSET  <user>:<id> -> time of delivery ms (capped, ids only)
--   <prefix>nq:{s}:stats   HASH  seq, inflight, delivered, dead_dropped
--   <prefix>nq:{s}:u:<user>    ZSET member <seq16hex><id> -> band*1e13 + due ms
--   <prefix>nq:{s}:u:<user>:f  ZSET the leased (inflight) items: member <id> (no seq:
--                                an ack removes an item by id, without reading
--                                its meta), the score it had in the queue
--   <prefix>nq:{s}:u:<user>:l  STRING the lease token
-- <user> is the user id escaped or HMACed by internal/keys (never a ':').
-- No key has a TTL.

local B = 10000000000000 -- 1e13: the width of one priority band in a score

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(x) return string.format('%d', x) end

-- meta: state|seq|band|due|sched|expires|attempts|maxAttempts|lastError
-- state q (queued), f (leased), d (dead); seq 16 hex digits; expires 0 = none.
local function parse(m)
  local st, seq, band, due, sched, exp, att, mx, err =
    string.match(m, '^(%a)|(%x+)|(%d)|(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|(.*)$')
  return {st = st, seq = seq, band = tonumber(band), due = tonumber(due), sched = tonumber(sched),
    exp = tonumber(exp), att = tonumber(att), max = tonumber(mx), err = err}
end

local function fmt(r)
  return r.st .. '|' .. r.seq .. '|' .. int(r.band) .. '|' .. int(r.due) .. '|' .. int(r.sched) .. '|' ..
    int(r.exp) .. '|' .. int(r.att) .. '|' .. int(r.max) .. '|' .. r.err
end

-- earliest returns the earliest due time of the user's queued items, or nil.
local function earliest(kuser)
  local best
  for b = 0, 2 do
    local r = redis.call('ZRANGEBYSCORE', kuser, int(b * B), '(' .. int((b + 1) * B), 'WITHSCORES', 'LIMIT', 0, 1)
    if r[2] then
      local d = tonumber(r[2]) - b * B
      if not best or d < best then best = d end
    end
  end
  return best
end

-- reindex sets the user's due score from its queued items (no lease).
local function reindex(kdue, kuser, uid)
  if redis.call('EXISTS', kuser) == 0 then
    redis.call('ZREM', kdue, uid)
    return
  end
  local e = earliest(kuser)
  if e then
    redis.call('ZADD', kdue, int(e), uid)
  else
    redis.call('ZREM', kdue, uid)
  end
end

-- to_dead moves an item (already out of its queue or lease) to the dead set,
-- dropping the oldest dead items, records and all, beyond cap.
local function to_dead(kdata, kdead, kstats, ref, r, now, err, cap)
  r.st = 'd'
  r.err = err
  r.due = now
  redis.call('HSET', kdata, 'm:' .. ref, fmt(r))
  redis.call('ZADD', kdead, int(now), ref)
  local n = redis.call('ZCARD', kdead)
  if n > cap then
    local old = redis.call('ZRANGE', kdead, 0, n - cap - 1)
    for _, o in ipairs(old) do
      redis.call('HDEL', kdata, 'p:' .. o, 'm:' .. o)
    end
    redis.call('ZREMRANGEBYRANK', kdead, 0, n - cap - 1)
    redis.call('HINCRBY', kstats, 'dead_dropped', #old)
  end
end

-- cap_done drops the oldest delivered ids beyond cap; called once per call
-- after its ZADDs to kdone, not once per item.
local function cap_done(kdone, cap)
  local n = redis.call('ZCARD', kdone)
  if n > cap then
    redis.call('ZREMRANGEBYRANK', kdone, 0, n - cap - 1)
  end
end

-- release ends the lease when no leased item is left.
local function release_if_done(kdue, kuser, kinflight, klease, uid)
  if redis.call('ZCARD', kinflight) == 0 then
    redis.call('DEL', klease)
    reindex(kdue, kuser, uid)
  end
end

