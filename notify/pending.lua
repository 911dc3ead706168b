-- pending.lua: the user's due, queued, unexpired items in delivery order (read-only).
--
-- KEYS[1] u:<user>   KEYS[2] data
-- ARGV[1] user (key-safe)  ARGV[2] limit
--
-- Returns {now, id, payload, meta, ...}.
local now = now_ms()
local uid, limit = ARGV[1], tonumber(ARGV[2])
local out = {int(now)}
local got, budget = 0, limit + 1000
for b = 0, 2 do
  local off = 0
  while got < limit and budget > 0 do
    local rs = redis.call('ZRANGEBYSCORE', KEYS[1], int(b * B), int(b * B + now), 'LIMIT', off, limit - got)
    if #rs == 0 then break end
    off = off + #rs
    for _, member in ipairs(rs) do
      budget = budget - 1
      local id = string.sub(member, 17)
      local ref = uid .. ':' .. id
      local v = redis.call('HMGET', KEYS[2], 'p:' .. ref, 'm:' .. ref)
      if v[1] and v[2] then
        local r = parse(v[2])
        if r.exp == 0 or r.exp > now then
          out[#out + 1] = id
          out[#out + 1] = v[1]
          out[#out + 1] = v[2]
          got = got + 1
        end
      end
    end
  end
end
return out
