-- nack.lua: record failed deliveries of leased items (fenced).
--
-- KEYS[1] due   KEYS[2] u:<user>   KEYS[3] u:<user>:f   KEYS[4] u:<user>:l
-- KEYS[5] data  KEYS[6] r          KEYS[7] dead         KEYS[8] stats
-- ARGV[1] user (key-safe)  ARGV[2] lease token  ARGV[3] dead cap
-- ARGV[4..] groups of four: id, retry delay ms, permanent (1/0), error
--
-- Returns {-1} (lease lost, nothing changed) or {moved, dead}.
if redis.call('GET', KEYS[4]) ~= ARGV[2] then return {-1} end
local now = now_ms()
local uid, cap = ARGV[1], tonumber(ARGV[3])
local n, dead = 0, 0
for i = 4, #ARGV, 4 do
  local id = ARGV[i]
  local ref = uid .. ':' .. id
  local m = redis.call('HGET', KEYS[5], 'm:' .. ref)
  if m then
    local r = parse(m)
    if r.st == 'f' and redis.call('ZREM', KEYS[3], id) == 1 then
      n = n + 1
      if ARGV[i + 2] == '1' or r.att >= r.max then
        to_dead(KEYS[5], KEYS[7], KEYS[8], ref, r, now, ARGV[i + 3], cap)
        dead = dead + 1
      else
        r.st = 'q'
        r.due = now + tonumber(ARGV[i + 1])
        r.err = ARGV[i + 3]
        redis.call('HSET', KEYS[5], 'm:' .. ref, fmt(r))
        redis.call('ZADD', KEYS[2], int(r.band * B + r.due), r.seq .. id)
        redis.call('ZADD', KEYS[6], int(r.due), ref)
      end
    end
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[8], 'inflight', -n) end
release_if_done(KEYS[1], KEYS[2], KEYS[3], KEYS[4], uid)
return {n, dead}
