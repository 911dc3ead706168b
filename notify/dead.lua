-- dead.lua: one shard's most recent dead items (read-only).
--
-- KEYS[1] dead   KEYS[2] data
-- ARGV[1] limit
--
-- Returns {now, ref, payload, meta, ...}, most recent first.
local out = {int(now_ms())}
local refs = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
for _, ref in ipairs(refs) do
  local v = redis.call('HMGET', KEYS[2], 'p:' .. ref, 'm:' .. ref)
  if v[1] and v[2] then
    out[#out + 1] = ref
    out[#out + 1] = v[1]
    out[#out + 1] = v[2]
  end
end
return out
