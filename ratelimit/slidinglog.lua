-- slidinglog.lua: sliding-log (code sl); blocks as described in common.lua,
-- formulas in docs/ratelimit-algorithms.md. State: a sorted set of the
-- stamps of admitted units (score = member = integer µs). s1 = the newest
-- stamp in the window (nil when none).

--:eval
local from = '(' .. fmt('%.0f', now - W)
local count = redis.call('ZCOUNT', key, from, '+inf')
local newest = nil
reset = now
if count > 0 then
  local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  newest = tonumber(top[2])
  reset = newest + W
end
fits = n <= L and count + n <= L
remaining = max(0, L - count)
retry = 0
if not fits then
  retry = W
  if n <= L then
    -- The (count + n - L)-th oldest entry in the window must leave.
    local e = redis.call('ZRANGEBYSCORE', key, from, '+inf', 'WITHSCORES', 'LIMIT', count + n - L - 1, 1)
    retry = tonumber(e[2]) + W - now
  end
end
s1 = newest

--:write
redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt('%.0f', now - W))
local s0 = now
if s1 ~= nil and s1 + 1 > s0 then s0 = s1 + 1 end
-- Entries below the newest L would be trimmed right away: only add the
-- last min(n, L) stamps (Record may exceed L).
local first = s0
if n > L then first = s0 + n - L end
local last = s0 + n - 1
local batch = {}
for s = first, last do
  local m = fmt('%.0f', s)
  batch[#batch + 1] = m
  batch[#batch + 1] = m
  if #batch >= 2000 then
    redis.call('ZADD', key, unpack(batch))
    batch = {}
  end
end
if #batch > 0 then redis.call('ZADD', key, unpack(batch)) end
local card = redis.call('ZCARD', key)
if card > L then
  redis.call('ZREMRANGEBYRANK', key, 0, card - L - 1)
  card = L
end
redis.call('PEXPIREAT', key, fmt('%.0f', ceil((last + W) / 1000)))
remaining = max(0, L - card)
reset = last + W
token = s0

--:refund
-- Stamps are unique and increasing: token .. token+n-1 are exactly ours.
redis.call('ZREMRANGEBYSCORE', key, fmt('%.0f', token), fmt('%.0f', token + n - 1))
local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
if #top == 0 then
  redis.call('DEL', key)
else
  redis.call('PEXPIREAT', key, fmt('%.0f', ceil((tonumber(top[2]) + W) / 1000)))
end
