-- index_read.lua: read a user's index (see index_add.lua).
--
-- KEYS[1]  the user's index
--
-- Returns {member, score, member, score, ...} with the scores as Redis
-- formats them (strings), for index_rem.lua. Entries whose bound has passed
-- are left out.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGE', KEYS[1], now, '+inf', 'BYSCORE', 'WITHSCORES')
