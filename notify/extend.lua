-- extend.lua: renew a lease (fenced).
--
-- KEYS[1] due   KEYS[2] u:<user>:l
-- ARGV[1] user (key-safe)  ARGV[2] lease token  ARGV[3] lease ms
--
-- Returns -1 (lease lost) or the new expiry (ms).
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return -1 end
local exp = now_ms() + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], int(exp), ARGV[1])
return exp
