-- enqueue.lua: store one notification unless (user, id) is known.
--
-- KEYS[1] due   KEYS[2] u:<user>   KEYS[3] u:<user>:l (lease)   KEYS[4] data
-- KEYS[5] w     KEYS[6] stats      KEYS[7] done
-- ARGV[1] user (key-safe)  ARGV[2] id  ARGV[3] band (0 high, 1 normal, 2 low)
-- ARGV[4] scheduled ms (0: now)  ARGV[5] expires ms (0: none)
-- ARGV[6] maxAttempts  ARGV[7] payload
--
-- Returns {now, created (1/0), meta or 'delivered'}.
local now = now_ms()
local uid, id = ARGV[1], ARGV[2]
local ref = uid .. ':' .. id
local m = redis.call('HGET', KEYS[4], 'm:' .. ref)
if m then return {int(now), 0, m} end
if redis.call('ZSCORE', KEYS[7], ref) then return {int(now), 0, 'delivered'} end
local seq = redis.call('HINCRBY', KEYS[6], 'seq', 1)
local due = tonumber(ARGV[4])
if due == 0 then due = now end
local r = {st = 'q', seq = string.format('%016x', seq), band = tonumber(ARGV[3]), due = due, sched = due,
  exp = tonumber(ARGV[5]), att = 0, max = tonumber(ARGV[6]), err = ''}
local meta = fmt(r)
redis.call('HSET', KEYS[4], 'p:' .. ref, ARGV[7], 'm:' .. ref, meta)
redis.call('ZADD', KEYS[2], int(r.band * B + due), r.seq .. id)
redis.call('ZADD', KEYS[5], int(due), ref)
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('ZADD', KEYS[1], 'LT', int(due), uid)
end
return {int(now), 1, meta}
