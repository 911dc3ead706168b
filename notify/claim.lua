-- claim.lua: lease one due user's batch.
--
-- KEYS[1] due   KEYS[2] u:<user>   KEYS[3] u:<user>:f (inflight)   KEYS[4] u:<user>:l (lease)
-- KEYS[5] data  KEYS[6] w          KEYS[7] r      KEYS[8] dead     KEYS[9] stats
-- ARGV[1] user (key-safe)  ARGV[2] new lease token  ARGV[3] lease ms
-- ARGV[4] perUser  ARGV[5] dead cap
--
-- Returns {now, lease expiry (0: nothing claimed), dead count, id, payload, meta, ...}.
-- A user whose due score is later than now (not due, or leased) is not claimed.
-- An expired lease is taken over: its items are queued again first (and its
-- token replaced, so its holder's Ack and Nack find the lease lost).
local now = now_ms()
local uid = ARGV[1]
local s = redis.call('ZSCORE', KEYS[1], uid)
if not s or tonumber(s) > now then return {int(now), 0, 0} end
local per, cap = tonumber(ARGV[4]), tonumber(ARGV[5])

local old = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
if #old > 0 then
  for i = 1, #old, 2 do
    local member = old[i]
    local ref = uid .. ':' .. string.sub(member, 17)
    local m = redis.call('HGET', KEYS[5], 'm:' .. ref)
    if m then
      local r = parse(m)
      r.st = 'q'
      redis.call('HSET', KEYS[5], 'm:' .. ref, fmt(r))
      redis.call('ZADD', KEYS[2], old[i + 1], member)
      redis.call('ZADD', r.att > 0 and KEYS[7] or KEYS[6], int(r.due), ref)
    end
  end
  redis.call('HINCRBY', KEYS[9], 'inflight', -(#old / 2))
  redis.call('DEL', KEYS[3])
end

local out = {int(now), 0, 0}
local got, dead, budget = 0, 0, per + 100
local b = 0
while b <= 2 and got < per and budget > 0 do
  local rs = redis.call('ZRANGEBYSCORE', KEYS[2], int(b * B), int(b * B + now), 'WITHSCORES', 'LIMIT', 0, math.min(per - got, budget))
  if #rs == 0 then
    b = b + 1
  else
    for i = 1, #rs, 2 do
      budget = budget - 1
      local member, score = rs[i], rs[i + 1]
      local id = string.sub(member, 17)
      local ref = uid .. ':' .. id
      redis.call('ZREM', KEYS[2], member)
      local m = redis.call('HGET', KEYS[5], 'm:' .. ref)
      if m then
        local r = parse(m)
        redis.call('ZREM', r.att > 0 and KEYS[7] or KEYS[6], ref)
        if r.exp > 0 and r.exp <= now then
          to_dead(KEYS[5], KEYS[8], KEYS[9], ref, r, now, 'expired', cap)
          dead = dead + 1
        elseif r.att >= r.max then
          to_dead(KEYS[5], KEYS[8], KEYS[9], ref, r, now, 'lease expired on the last attempt', cap)
          dead = dead + 1
        else
          r.att = r.att + 1
          r.st = 'f'
          local meta = fmt(r)
          redis.call('HSET', KEYS[5], 'm:' .. ref, meta)
          redis.call('ZADD', KEYS[3], score, member)
          out[#out + 1] = id
          out[#out + 1] = redis.call('HGET', KEYS[5], 'p:' .. ref)
          out[#out + 1] = meta
          got = got + 1
        end
      end
    end
  end
end
out[3] = dead
if got > 0 then
  local exp = now + tonumber(ARGV[3])
  redis.call('SET', KEYS[4], ARGV[2])
  redis.call('ZADD', KEYS[1], int(exp), uid)
  redis.call('HINCRBY', KEYS[9], 'inflight', got)
  out[2] = int(exp)
else
  redis.call('DEL', KEYS[4])
  reindex(KEYS[1], KEYS[2], uid)
end
return out
