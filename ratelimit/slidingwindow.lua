-- slidingwindow.lua: sliding-window counter (code sw); blocks as described
-- in common.lua, formulas in docs/ratelimit-algorithms.md. State: a hash
-- {w, c, p}: window index, count in window w, count in window w-1.
-- s1..s4 = idx, c and p as seen from window idx, and whether the stored
-- window is idx.

--:eval
local h = redis.call('HMGET', key, 'w', 'c', 'p')
local w, c, p = tonumber(h[1]), tonumber(h[2]), tonumber(h[3])
bad = (h[1] and w == nil) or (h[2] and c == nil) or (h[3] and p == nil)
local idx = floor(now / W)
if w == idx then
  c = c or 0
  p = p or 0
elseif w ~= nil and w == idx - 1 then
  p = c or 0
  c = 0
else
  p = 0
  c = 0
end
local elapsed = now - idx * W
local est = p * (W - elapsed) / W + c
fits = n <= L and est + n <= L
remaining = max(0, floor(L - est))
if c > 0 then
  reset = (idx + 2) * W
elseif p > 0 then
  reset = (idx + 1) * W
else
  reset = now
end
retry = 0
if not fits then
  if n > L then
    retry = W
  elseif c + n <= L then
    retry = ceil(W - (L - c - n) * W / p) - elapsed
  else
    retry = (idx + 1) * W - now + ceil(W - (L - n) * W / c)
  end
end
s1, s2, s3, s4 = idx, c, p, w == idx

--:write
local est = s3 * (W - (now - s1 * W)) / W + s2
if s4 then
  -- w and p are unchanged, and the write that set w = idx also set the
  -- expiry (idx+2)*W: only the count changes.
  redis.call('HSET', key, 'c', fmt('%.0f', s2 + n))
else
  redis.call('HSET', key, 'w', fmt('%.0f', s1), 'c', fmt('%.0f', s2 + n), 'p', fmt('%.0f', s3))
  redis.call('PEXPIREAT', key, fmt('%.0f', ceil((s1 + 2) * W / 1000)))
end
remaining = max(0, floor(L - (est + n)))
reset = (s1 + 2) * W -- the count is now above 0
token = s1

--:refund
-- The units went into window token: its count is c while that window is
-- current, and p once the next one has started.
local h = redis.call('HMGET', key, 'w', 'c', 'p')
local w = tonumber(h[1])
local field, v = nil, nil
if w ~= nil and w == token then
  field, v = 'c', h[2]
elseif w ~= nil and w == token + 1 then
  field, v = 'p', h[3]
end
if field ~= nil then
  v = (tonumber(v) or 0) - n
  if v < 0 then v = 0 end
  redis.call('HSET', key, field, fmt('%.0f', v))
end
