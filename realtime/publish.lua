-- Publish one message on a channel: number it, append it to the channel's
-- history and publish it, atomically.
--
-- KEYS[1]  meta hash {e = epoch, o = last offset}
-- KEYS[2]  history stream; entry id "<offset>-0", fields d (data), t (ms)
-- KEYS[3]  optional: the idempotency key (mode "idem") or the presence key
--          (mode "presence"); shares the channel's hash tag
-- ARGV[1]  data; in mode "presence" the JSON prefix the script completes
--          with updatedAt and expiresAt
-- ARGV[2]  MAXLEN of the history
-- ARGV[3]  TTL of meta and history, ms
-- ARGV[4]  Pub/Sub channel (same hash tag)
-- ARGV[5]  "PUBLISH" or "SPUBLISH" (Cluster)
-- ARGV[6]  a fresh random epoch, used when the channel has none
-- ARGV[7]  mode: "", "idem" or "presence"
-- ARGV[8]  TTL of KEYS[3], ms
-- ARGV[9]  presence status (mode "presence")
--
-- Returns {epoch, offset, publishedAt ms, duplicate 0|1}. The Pub/Sub
-- payload is "<offset>:<epoch>:<ms>:<data>".
local meta, hist = KEYS[1], KEYS[2]
local mode = ARGV[7]
if mode == 'idem' then
  local prev = redis.call('GET', KEYS[3])
  if prev then
    local e, o, t = string.match(prev, '^([^:]*):(%d+):(%d+)$')
    if e then
      return {e, tonumber(o), tonumber(t), 1}
    end
  end
end
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  -- A new sequence: whatever history survived belongs to a lost epoch.
  epoch = ARGV[6]
  redis.call('DEL', hist)
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
end
local off = redis.call('HINCRBY', meta, 'o', 1)
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local msS = string.format('%d', ms)
local data = ARGV[1]
if mode == 'presence' then
  local exp = string.format('%d', ms + tonumber(ARGV[8]))
  data = data .. msS .. ',"expiresAt":' .. exp .. '}'
  redis.call('SET', KEYS[3], ARGV[9] .. ':' .. msS .. ':' .. exp, 'PX', ARGV[8])
end
local offS = string.format('%d', off)
redis.call('XADD', hist, 'MAXLEN', ARGV[2], offS .. '-0', 'd', data, 't', msS)
local ttl = ARGV[3]
redis.call('PEXPIRE', meta, ttl)
redis.call('PEXPIRE', hist, ttl)
if mode == 'idem' then
  redis.call('SET', KEYS[3], epoch .. ':' .. offS .. ':' .. msS, 'PX', ARGV[8])
end
redis.call(ARGV[5], ARGV[4], offS .. ':' .. epoch .. ':' .. msS .. ':' .. data)
return {epoch, off, ms, 0}
