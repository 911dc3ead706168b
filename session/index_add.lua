-- index_add.lua: add a session to its user's index, before the session is
-- stored (so that a crash in between leaves an index entry without a session,
-- which readers ignore, never a session RevokeUser cannot find).
--
-- The index is a sorted set: member = the session's key-safe id, score = a
-- bound of the session's absolute expiry, Unix ms with a microsecond fraction
-- (so that two adds of one member almost never get the same score; see
-- index_rem.lua). The index expires with its longest-lived session.
--
-- KEYS[1]  the user's index
-- ARGV[1]  member
-- ARGV[2]  'rel': ARGV[3] is the session's lifetime from now, ms;
--          'abs': ARGV[3] is its absolute expiry, Unix ms
-- ARGV[4]  slack, ms, added to the score: the session's own script may run
--          on another node (Redis Cluster) whose clock is a little ahead
--
-- Entries whose bound has passed are removed (their sessions are gone for
-- sure). Returns the member's score as Redis stores it (a string).
local t = redis.call('TIME')
local frac = tonumber(t[2]) % 1000 / 1000
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score
if ARGV[2] == 'rel' then
  score = now + tonumber(ARGV[3]) + tonumber(ARGV[4]) + frac
else
  score = tonumber(ARGV[3]) + tonumber(ARGV[4]) + frac
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
redis.call('ZADD', KEYS[1], score, ARGV[1])
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(top[2])))
return redis.call('ZSCORE', KEYS[1], ARGV[1])
