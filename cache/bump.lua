-- bump.lua: give a tag a new version, never used before for it.
--
-- KEYS[1] the tag key  <prefix>ctag:{<tag>}   string: the tag's version
-- ARGV[1] the tag key's ttl in ms (longer than any entry lives: MaxTTL + 1 day)
-- ARGV[2] Pub/Sub channel to publish KEYS[1] on, or '' (tracking mode)
--
-- version = INCR; when the key was absent (never bumped, or expired) it is
-- seeded with Redis TIME in µs instead of 1. A version is never reused: a
-- seed exceeds every version of the tag's previous life, which grew by one
-- per bump from an earlier seed, and no server bumps one tag more than once
-- per µs. An absent key reads as version 0, which only entries written
-- before the first bump carry; the ttl outlives them, so when the key
-- expires no entry written under version 0 remains. Returns the version.

local v = redis.call('INCR', KEYS[1])
if v == 1 then
  local t = redis.call('TIME')
  v = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
  redis.call('SET', KEYS[1], v)
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], KEYS[1])
end
return v
