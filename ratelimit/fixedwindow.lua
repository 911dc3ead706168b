-- fixedwindow.lua: fixed-window (code fw); blocks as described in
-- common.lua, formulas in docs/ratelimit-algorithms.md. State: a hash
-- {w, c}: window index and its count. s1..s3 = idx, c_eff, and whether the
-- stored window is idx.

--:eval
local h = redis.call('HMGET', key, 'w', 'c')
local w, c = tonumber(h[1]), tonumber(h[2])
bad = (h[1] and w == nil) or (h[2] and c == nil)
local idx = floor(now / W)
local ceff = 0
if w == idx then ceff = c or 0 end
fits = n <= L and ceff + n <= L
remaining = max(0, L - ceff)
reset = (idx + 1) * W
retry = 0
if not fits then
  retry = reset - now
  if n > L then retry = W end
end
s1, s2, s3 = idx, ceff, w == idx

--:write
local c = s2 + n
if s3 then
  -- The write that set w = idx also set the expiry (idx+1)*W: only the
  -- count changes.
  redis.call('HSET', key, 'c', fmt('%.0f', c))
else
  redis.call('HSET', key, 'w', fmt('%.0f', s1), 'c', fmt('%.0f', c))
  redis.call('PEXPIREAT', key, fmt('%.0f', ceil((s1 + 1) * W / 1000)))
end
remaining = max(0, L - c)
reset = (s1 + 1) * W
token = s1

--:refund
local h = redis.call('HMGET', key, 'w', 'c')
if tonumber(h[1]) == token then
  local c = (tonumber(h[2]) or 0) - n
  if c < 0 then c = 0 end
  redis.call('HSET', key, 'c', fmt('%.0f', c))
end
