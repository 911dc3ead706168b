-- pending.lua: the user's due, queued items in delivery order, without
-- claiming them; items past their expiry met on the way go to the dead set
-- (reason 'expired'), as a claim would send them.
--
-- KEYS[1] due   KEYS[2] u:<user>   KEYS[3] u:<user>:l   KEYS[4] data
-- KEYS[5] w     KEYS[6] r          KEYS[7] dead         KEYS[8] stats
-- ARGV[1] user (key-safe)  ARGV[2] limit  ARGV[3] dead cap
--
-- Returns {now, id, payload, meta, ...}.
local now = now_ms()
local uid, limit, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {int(now)}
local got, budget, expired = 0, limit + 1000, 0
for b = 0, 2 do
  local off = 0
  while got < limit and budget > 0 do
    local rs = redis.call('ZRANGEBYSCORE', KEYS[2], int(b * B), int(b * B + now), 'LIMIT', off, limit - got)
    if #rs == 0 then break end
    for _, member in ipairs(rs) do
      budget = budget - 1
      local id = string.sub(member, 17)
      local ref = uid .. ':' .. id
      local v = redis.call('HMGET', KEYS[4], 'p:' .. ref, 'm:' .. ref)
      if v[1] and v[2] then
        local r = parse(v[2])
        if r.exp == 0 or r.exp > now then
          out[#out + 1] = id
          out[#out + 1] = v[1]
          out[#out + 1] = v[2]
          got = got + 1
          off = off + 1
        else
          redis.call('ZREM', KEYS[2], member)
          redis.call('ZREM', r.att > 0 and KEYS[6] or KEYS[5], ref)
          to_dead(KEYS[4], KEYS[7], KEYS[8], ref, r, now, 'expired', cap)
          expired = expired + 1
        end
      else
        off = off + 1
      end
    end
  end
end
if expired > 0 and redis.call('EXISTS', KEYS[3]) == 0 then reindex(KEYS[1], KEYS[2], uid) end
return out
