-- algfuncs.lua: wraps one algorithm's blocks (see common.lua) into the
-- functions allowall.lua calls; redis.go replaces the X of each function
-- name with the algorithm's code and the placeholder lines with the blocks.

-- X_eval returns fits, remaining, reset, retry, s1..s4, or nil when the key
-- holds corrupt state.
local function X_eval(key, L, W, B, n)
  local bad, fits, remaining, reset, retry, s1, s2, s3, s4
  --{eval}
  if bad then return nil end
  return fits, remaining, reset, retry, s1, s2, s3, s4
end

-- X_write returns remaining, reset, token.
local function X_write(key, L, W, B, n, s1, s2, s3, s4)
  local remaining, reset, token
  --{write}
  return remaining, reset, token
end

local function X_refund(key, L, W, B, n, token)
  --{refund}
end
