-- allowall.lua: the main part of the AllowAll script, for every algorithm:
-- redis.go prepends common.lua and, for each algorithm, algfuncs.lua with
-- that algorithm's blocks (X_eval, X_write, X_refund; see common.lua).
--
-- KEYS[i]  the state key of check i. All keys of one call share a hash tag,
--          so they live in one Redis Cluster slot.
-- ARGV[1]  mode:
--            allow   phase 1 evaluates every check without writing; phase 2
--                    consumes every check's cost only if all of them fit.
--            refund  gives back what an earlier allow consumed, using the
--                    refund tokens it returned (AllowAll compensation).
--          When several checks name the same key, allow decides them in
--          order, each seeing the earlier ones' consumption; a denial then
--          compensates the earlier checks' writes in the same script, so
--          nothing is consumed net.
-- Then 6 fields per check i, at ARGV[2 + 6*(i-1)] onwards:
--   alg      sl (sliding-log) | sw (sliding-window) | gc (gcra) | fw (fixed-window)
--   limit    L, integer >= 1
--   window   W in microseconds, integer >= 1000
--   burst    B for gcra (already defaulted to L by the caller), else L
--   cost     n, integer >= 1
--   token    refund mode only: the token allow returned for this check
--            (an integer; "" = nothing to give back); ignored otherwise
--
-- Returns 5 values per check: allowed (0/1), remaining, resetAt (µs since the
-- epoch), retryAfter (µs, 0 when allowed) and a refund token (an integer as
-- a string, "" when nothing was consumed). Refund mode returns an empty array.

local evals = {sl = sl_eval, sw = sw_eval, gc = gc_eval, fw = fw_eval}
local writes = {sl = sl_write, sw = sw_write, gc = gc_write, fw = fw_write}
local refunds = {sl = sl_refund, sw = sw_refund, gc = gc_refund, fw = fw_refund}

local mode = ARGV[1]
local n_checks = #KEYS

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
    token = tonumber(ARGV[b + 5]),
  }
  if c.L == nil or c.W == nil or c.B == nil or c.n == nil or c.L < 1 or c.W < 1 or c.B < 1 or c.n < 1 then
    return redis.error_reply('ERR ratelimit: bad arguments')
  end
  if evals[c.alg] == nil then
    return redis.error_reply('ERR ratelimit: bad algorithm')
  end
  if seen[c.key] then dup = true end
  seen[c.key] = true
  checks[i] = c
end

if mode == 'refund' then
  for i = 1, n_checks do
    local c = checks[i]
    if c.token ~= nil then refunds[c.alg](c.key, c.L, c.W, c.B, c.n, c.token) end
  end
  return {}
end

if mode ~= 'allow' then
  return redis.error_reply('ERR ratelimit: bad mode')
end

-- st = {fits, remaining, reset, retry, s1, s2, s3, s4}: X_eval's results.
local function eval(c)
  return {evals[c.alg](c.key, c.L, c.W, c.B, c.n)}
end

-- write consumes c's cost, updating st's remaining and reset; returns the
-- refund token (a number).
local function write(c, st)
  local token
  st[2], st[3], token = writes[c.alg](c.key, c.L, c.W, c.B, c.n, st[5], st[6], st[7], st[8])
  return token
end

-- Phase 1: evaluate every check, writing nothing. A corrupt or wrong-type
-- key fails the whole call here, before anything is written.
local all_fit = true
local states = {}
for i = 1, n_checks do
  local st = eval(checks[i])
  if st[1] == nil then
    return redis.error_reply('ERR ratelimit: corrupt state in a rate-limit key')
  end
  states[i] = st
  if not st[1] then all_fit = false end
end

local tokens = {} -- nil: nothing consumed

if dup then
  -- Several checks share one state: decide them in order, each seeing the
  -- earlier ones' consumption (as the memory backend does). A denial then
  -- gives back what the earlier checks took, with the same compensation as
  -- AllowAll refunds, so nothing is consumed net.
  all_fit = true
  local pre = {}
  for i = 1, n_checks do
    local c = checks[i]
    local st = eval(c)
    states[i] = st
    pre[i] = {st[2], st[3]}
    if st[1] then tokens[i] = write(c, st) else all_fit = false end
  end
  if not all_fit then
    for i = n_checks, 1, -1 do
      if tokens[i] ~= nil then
        local c = checks[i]
        refunds[c.alg](c.key, c.L, c.W, c.B, c.n, tokens[i])
        tokens[i] = nil
        states[i][2], states[i][3] = pre[i][1], pre[i][2]
      end
    end
  end
elseif all_fit then
  -- Phase 2: every check fits; consume them all.
  for i = 1, n_checks do tokens[i] = write(checks[i], states[i]) end
end

local out = {}
for i = 1, n_checks do
  local st = states[i]
  local allowed, retry = 0, st[4]
  if st[1] then allowed, retry = 1, 0 end
  out[#out + 1] = allowed
  out[#out + 1] = st[2]
  out[#out + 1] = st[3]
  out[#out + 1] = retry
  if tokens[i] ~= nil then
    out[#out + 1] = fmt('%.0f', tokens[i])
  else
    out[#out + 1] = ''
  end
end
return out
