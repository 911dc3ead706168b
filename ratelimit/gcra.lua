-- gcra.lua: GCRA (code gc); blocks as described in common.lua, formulas in
-- docs/ratelimit-algorithms.md. State: a string, the theoretical arrival
-- time tat in µs (a float, 17 significant digits). s1 = the tat to store.

--:eval
local v = redis.call('GET', key)
local tat = now
if v then
  local stored = tonumber(v)
  if stored == nil then
    bad = true
  elseif stored > now then
    tat = stored
  end
end
local T = W / L
local tau = B * T
local new = tat + n * T
fits = n <= B and new - now <= tau + 0.5
remaining = max(0, floor((tau - (tat - now)) / T + 1e-6))
reset = tat -- tat >= now
retry = 0
if not fits then
  retry = W
  if n <= B then retry = ceil(new - tau - now) end
end
s1 = new

--:write
local new = s1
redis.call('SET', key, fmt('%.17g', new), 'PX', fmt('%.0f', max(1, ceil((new - now) / 1000))))
local T = W / L
remaining = max(0, floor((B * T - (new - now)) / T + 1e-6))
reset = new -- new >= now
token = 1

--:refund
local tat = tonumber(redis.call('GET', key))
if tat ~= nil then
  tat = tat - n * (W / L)
  if tat <= now then
    redis.call('DEL', key)
  else
    redis.call('SET', key, fmt('%.17g', tat), 'PX', fmt('%.0f', max(1, ceil((tat - now) / 1000))))
  end
end
