-- begin.lua: start an idempotent operation, or report the existing record.
--
-- A record is a hash:
--   s  "s" (started, in progress) or "c" (completed)
--   f  fingerprint hash of the request that began it ("" = none)
--   r  the stored response (completed records only; sealed when encryption is on)
--
-- KEYS[1]  the record's key
-- ARGV[1]  fingerprint hash of this request ("" = none)
-- ARGV[2]  TTL of a new record in milliseconds (> 0): the in-progress lease
--
-- Returns {code, response, pttl_ms, time_s, time_us}:
--   code 1  started: no record existed; a new one was created with its TTL
--   code 2  in progress: a started record exists (nothing written)
--   code 3  completed: response is the stored response (nothing written)
--   code 4  fingerprint mismatch: both fingerprints are non-empty and differ
--           (checked before the state; nothing written)
-- response is "" unless code is 3; the record's expiry is TIME plus pttl.
local t = redis.call('TIME')
local now_s, now_us = tonumber(t[1]), tonumber(t[2])
local rec = redis.call('HMGET', KEYS[1], 's', 'f', 'r')
local state, fp, resp = rec[1], rec[2], rec[3]
if not state then
  -- Absent (or expired). The hash and its TTL are set in this same step;
  -- the DEL clears a stray hash without a state field, which is not ours.
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 's', 's', 'f', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, '', tonumber(ARGV[2]), now_s, now_us}
end
if fp and fp ~= '' and ARGV[1] ~= '' and fp ~= ARGV[1] then
  return {4, '', 0, now_s, now_us}
end
local pttl = redis.call('PTTL', KEYS[1])
if state == 's' then
  return {2, '', pttl, now_s, now_us}
end
if state == 'c' then
  return {3, resp or '', pttl, now_s, now_us}
end
return redis.error_reply('tempdata: malformed idempotency record')
