-- ratelimit.lua: every rate-limit decision of the Redis backend, for every
-- algorithm, single checks and AllowAll groups alike (docs/ratelimit-algorithms.md
-- gives the formulas; this file implements them verbatim).
--
-- KEYS[i]  the state key of check i. All keys of one call share a hash tag,
--          so they live in one Redis Cluster slot.
-- ARGV[1]  mode:
--            allow   phase 1 evaluates every check without writing; phase 2
--                    consumes every check's cost only if all of them fit.
--            peek    evaluates (the caller passes cost 1), never writes.
--            record  consumes every check's cost, fitting or not.
--            refund  gives back what an earlier allow consumed, using the
--                    refund tokens it returned (AllowAll compensation).
--          When several checks name the same key, allow and record decide
--          them in order, each seeing the earlier ones' consumption; a
--          denying allow then compensates the earlier checks' writes in the
--          same script, so nothing is consumed net.
-- Then 6 fields per check i, at ARGV[2 + 6*(i-1)] onwards:
--   alg      sl (sliding-log) | sw (sliding-window) | gc (gcra) | fw (fixed-window)
--   limit    L, integer >= 1
--   window   W in microseconds, integer >= 1000
--   burst    B for gcra (already defaulted to L by the caller), else ignored
--   cost     n, integer >= 1
--   token    refund mode only: the token allow returned for this check
--            ("" = nothing to give back); ignored otherwise
--
-- Returns 5 values per check: allowed (0/1), remaining, resetAt (µs since the
-- epoch), retryAfter (µs, 0 when allowed) and a refund token (a string, ""
-- when nothing was consumed). Refund mode returns an empty array.
--
-- Time is Redis TIME, read once. Every key written gets its expiry in the
-- same script. Numbers are Lua doubles: integers up to 2^53 are exact, and
-- µs timestamps (~2^51) stay well inside that.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local mode = ARGV[1]
local n_checks = #KEYS

local function fmt_int(x)
  return string.format('%.0f', x)
end

-- expiry at an absolute µs time, rounded up to the next ms.
local function expire_at(key, at_us)
  redis.call('PEXPIREAT', key, fmt_int(math.ceil(at_us / 1000)))
end

local function corrupt()
  return redis.error_reply('ERR ratelimit: corrupt state in a rate-limit key')
end

local function num(v)
  if v == false or v == nil then
    return nil, true
  end
  local x = tonumber(v)
  if x == nil then
    return nil, false
  end
  return x, true
end

-- Each evaluator returns a state table st with:
--   fits, remaining (if not consumed), reset, retry, plus what write() needs.

-------------------------------------------------------------------- sliding-log
local function sl_eval(key, L, W, n, cap)
  local count = redis.call('ZCOUNT', key, '(' .. fmt_int(now - W), '+inf')
  local st = {count = count}
  st.fits = n <= cap and count + n <= L
  local newest = nil
  if count > 0 then
    local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    newest = tonumber(top[2])
  end
  st.newest = newest
  st.remaining = math.max(0, L - count)
  if newest ~= nil then st.reset = newest + W else st.reset = now end
  st.retry = 0
  if not st.fits then
    if n > L then
      st.retry = W
    else
      local k = count + n - L
      local e = redis.call('ZRANGEBYSCORE', key, '(' .. fmt_int(now - W), '+inf', 'WITHSCORES', 'LIMIT', k - 1, 1)
      st.retry = tonumber(e[2]) + W - now
    end
  end
  return st
end

local function sl_write(key, L, W, n, st)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt_int(now - W))
  local s0 = now
  if st.newest ~= nil and st.newest + 1 > s0 then s0 = st.newest + 1 end
  -- Entries below the newest L would be trimmed right away: only add the
  -- last min(n, L) stamps (Record may exceed L).
  local first = s0
  if n > L then first = s0 + n - L end
  local last = s0 + n - 1
  local batch = {}
  for s = first, last do
    local m = fmt_int(s)
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
  expire_at(key, last + W)
  st.remaining = math.max(0, L - card)
  st.reset = last + W
  return fmt_int(s0)
end

local function sl_refund(key, L, W, n, token)
  local s0 = tonumber(token)
  -- Stamps are unique and increasing: s0 .. s0+n-1 are exactly ours.
  redis.call('ZREMRANGEBYSCORE', key, fmt_int(s0), fmt_int(s0 + n - 1))
  local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #top == 0 then
    redis.call('DEL', key)
  else
    expire_at(key, tonumber(top[2]) + W)
  end
end

----------------------------------------------------------------- sliding-window
local function sw_state(key, W)
  local h = redis.call('HMGET', key, 'w', 'c', 'p')
  local w, ok1 = num(h[1])
  local c, ok2 = num(h[2])
  local p, ok3 = num(h[3])
  if not (ok1 and ok2 and ok3) then return nil end
  local idx = math.floor(now / W)
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
  return {idx = idx, elapsed = now - idx * W, c = c, p = p}
end

local function sw_estimate(st, W)
  return st.p * (W - st.elapsed) / W + st.c
end

local function sw_reset(st, W)
  if st.c > 0 then return (st.idx + 2) * W end
  if st.p > 0 then return (st.idx + 1) * W end
  return now
end

local function sw_eval(key, L, W, n, cap)
  local st = sw_state(key, W)
  if st == nil then return nil end
  local est = sw_estimate(st, W)
  st.fits = n <= cap and est + n <= L
  st.remaining = math.max(0, math.floor(L - est))
  st.reset = sw_reset(st, W)
  st.retry = 0
  if not st.fits then
    if n > L then
      st.retry = W
    elseif st.c + n <= L then
      st.retry = math.ceil(W - (L - st.c - n) * W / st.p) - st.elapsed
    else
      st.retry = (st.idx + 1) * W - now + math.ceil(W - (L - n) * W / st.c)
    end
  end
  return st
end

local function sw_write(key, L, W, n, st)
  local est = sw_estimate(st, W)
  st.c = st.c + n
  redis.call('HSET', key, 'w', fmt_int(st.idx), 'c', fmt_int(st.c), 'p', fmt_int(st.p))
  expire_at(key, (st.idx + 2) * W)
  st.remaining = math.max(0, math.floor(L - (est + n)))
  st.reset = sw_reset(st, W)
  return fmt_int(st.idx)
end

local function sw_refund(key, L, W, n, token)
  local idx = tonumber(token)
  local h = redis.call('HMGET', key, 'w', 'c', 'p')
  local w = tonumber(h[1])
  if w == nil then return end
  -- The units went into window idx: its count is c while idx is current,
  -- and p once the next window has started.
  local field = nil
  if w == idx then field = 'c' elseif w == idx + 1 then field = 'p' end
  if field == nil then return end
  local v = tonumber(redis.call('HGET', key, field)) or 0
  v = v - n
  if v < 0 then v = 0 end
  redis.call('HSET', key, field, fmt_int(v))
end

-------------------------------------------------------------------------- gcra
local function gc_eval(key, L, W, B, n, cap)
  local stored, ok = num(redis.call('GET', key))
  if not ok then return nil end
  local T = W / L
  local tau = B * T
  local tat = stored or now
  if tat < now then tat = now end
  local new = tat + n * T
  local st = {T = T, tau = tau, tat = tat, new = new}
  st.fits = n <= cap and new - now <= tau + 0.5
  st.remaining = math.max(0, math.floor((tau - (tat - now)) / T + 1e-6))
  if tat > now then st.reset = tat else st.reset = now end
  st.retry = 0
  if not st.fits then
    if n > cap then
      st.retry = W
    else
      st.retry = math.ceil(new - tau - now)
    end
  end
  return st
end

local function gc_write(key, L, W, n, st)
  local new = st.new
  redis.call('SET', key, string.format('%.17g', new), 'PX', fmt_int(math.max(1, math.ceil((new - now) / 1000))))
  st.remaining = math.max(0, math.floor((st.tau - (new - now)) / st.T + 1e-6))
  if new > now then st.reset = new else st.reset = now end
  return '1'
end

local function gc_refund(key, L, W, n, token)
  local tat = tonumber(redis.call('GET', key))
  if tat == nil then return end
  tat = tat - n * (W / L)
  if tat <= now then
    redis.call('DEL', key)
  else
    redis.call('SET', key, string.format('%.17g', tat), 'PX', fmt_int(math.max(1, math.ceil((tat - now) / 1000))))
  end
end

------------------------------------------------------------------ fixed-window
local function fw_eval(key, L, W, n, cap)
  local h = redis.call('HMGET', key, 'w', 'c')
  local w, ok1 = num(h[1])
  local c, ok2 = num(h[2])
  if not (ok1 and ok2) then return nil end
  local idx = math.floor(now / W)
  local ceff = 0
  if w == idx then ceff = c or 0 end
  local st = {idx = idx, ceff = ceff}
  st.fits = n <= cap and ceff + n <= L
  st.remaining = math.max(0, L - ceff)
  st.reset = (idx + 1) * W
  st.retry = 0
  if not st.fits then
    if n > L then st.retry = W else st.retry = st.reset - now end
  end
  return st
end

local function fw_write(key, L, W, n, st)
  local c = st.ceff + n
  redis.call('HSET', key, 'w', fmt_int(st.idx), 'c', fmt_int(c))
  expire_at(key, (st.idx + 1) * W)
  st.remaining = math.max(0, L - c)
  return fmt_int(st.idx)
end

local function fw_refund(key, L, W, n, token)
  local h = redis.call('HMGET', key, 'w', 'c')
  if tonumber(h[1]) ~= tonumber(token) then return end
  local c = (tonumber(h[2]) or 0) - n
  if c < 0 then c = 0 end
  redis.call('HSET', key, 'c', fmt_int(c))
end

------------------------------------------------------------------------- main
local function eval(c)
  if c.alg == 'sl' then return sl_eval(c.key, c.L, c.W, c.n, c.cap)
  elseif c.alg == 'sw' then return sw_eval(c.key, c.L, c.W, c.n, c.cap)
  elseif c.alg == 'gc' then return gc_eval(c.key, c.L, c.W, c.B, c.n, c.cap)
  else return fw_eval(c.key, c.L, c.W, c.n, c.cap) end
end

local function write(c, st)
  if c.alg == 'sl' then return sl_write(c.key, c.L, c.W, c.n, st)
  elseif c.alg == 'sw' then return sw_write(c.key, c.L, c.W, c.n, st)
  elseif c.alg == 'gc' then return gc_write(c.key, c.L, c.W, c.n, st)
  else return fw_write(c.key, c.L, c.W, c.n, st) end
end

local function refund(c, token)
  if c.alg == 'sl' then sl_refund(c.key, c.L, c.W, c.n, token)
  elseif c.alg == 'sw' then sw_refund(c.key, c.L, c.W, c.n, token)
  elseif c.alg == 'gc' then gc_refund(c.key, c.L, c.W, c.n, token)
  else fw_refund(c.key, c.L, c.W, c.n, token) end
end

local checks = {}
local seen = {}
local dup = false
for i = 1, n_checks do
  local b = 2 + 6 * (i - 1)
  local c = {
    key = KEYS[i],
    alg = ARGV[b],
    L = tonumber(ARGV[b + 1]),
    W = tonumber(ARGV[b + 2]),
    B = tonumber(ARGV[b + 3]),
    n = tonumber(ARGV[b + 4]),
    token = ARGV[b + 5],
  }
  if c.L == nil or c.W == nil or c.B == nil or c.n == nil or c.L < 1 or c.W < 1 or c.B < 1 or c.n < 1 then
    return redis.error_reply('ERR ratelimit: bad arguments')
  end
  if c.alg ~= 'sl' and c.alg ~= 'sw' and c.alg ~= 'gc' and c.alg ~= 'fw' then
    return redis.error_reply('ERR ratelimit: bad algorithm')
  end
  c.cap = c.L
  if c.alg == 'gc' then c.cap = c.B end
  if seen[c.key] then dup = true end
  seen[c.key] = true
  checks[i] = c
end

if mode == 'refund' then
  for i = 1, n_checks do
    local c = checks[i]
    if c.token ~= nil and c.token ~= '' then refund(c, c.token) end
  end
  return {}
end

if mode ~= 'allow' and mode ~= 'peek' and mode ~= 'record' then
  return redis.error_reply('ERR ratelimit: bad mode')
end

-- Phase 1: evaluate every check, writing nothing. A corrupt or wrong-type
-- key fails the whole call here, before anything is written.
local all_fit = true
local states = {}
for i = 1, n_checks do
  local st = eval(checks[i])
  if st == nil then return corrupt() end
  states[i] = st
  if not st.fits then all_fit = false end
end

local tokens = {}
for i = 1, n_checks do tokens[i] = '' end

if dup and mode ~= 'peek' then
  -- Several checks share one state: decide them in order, each seeing the
  -- earlier ones' consumption (as the memory backend does). In allow mode a
  -- denial then gives back what the earlier checks took, with the same
  -- compensation as AllowAll refunds, so nothing is consumed net.
  all_fit = true
  local pre = {}
  for i = 1, n_checks do
    local c = checks[i]
    local st = eval(c)
    states[i] = st
    pre[i] = {st.remaining, st.reset}
    if not st.fits then all_fit = false end
    if mode == 'record' or st.fits then tokens[i] = write(c, st) end
  end
  if mode == 'allow' and not all_fit then
    for i = n_checks, 1, -1 do
      if tokens[i] ~= '' then
        refund(checks[i], tokens[i])
        tokens[i] = ''
        states[i].remaining, states[i].reset = pre[i][1], pre[i][2]
      end
    end
  end
elseif (mode == 'allow' and all_fit) or mode == 'record' then
  -- Phase 2: write only if every check fits (allow), or always (record).
  for i = 1, n_checks do tokens[i] = write(checks[i], states[i]) end
end

local out = {}
for i = 1, n_checks do
  local st = states[i]
  local allowed, retry = 0, st.retry
  if st.fits then allowed, retry = 1, 0 end
  out[#out + 1] = allowed
  out[#out + 1] = st.remaining
  out[#out + 1] = st.reset
  out[#out + 1] = retry
  out[#out + 1] = tokens[i]
end
return out
