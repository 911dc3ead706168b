-- acquire.lua: return the stored value, or take the load lease, or report
-- the lease's holder — in one atomic step.
--
-- KEYS[1] the value key  <prefix>cache:{<ns>/<key>}        string: an entry
-- KEYS[2] the lease key  <prefix>cache:{<ns>/<key>}:lease  string: the holder's token
-- ARGV[1] token (128 random bits, base64url)
-- ARGV[2] the lease's ttl in ms (the load timeout)
-- ARGV[3] '' (a miss), or a refresh: the cachedAt (ms) of the copy the
--         caller saw stale — the lease is taken only if that copy is still
--         the stored one, so a value another instance already refreshed is
--         returned instead — or '*' to take it regardless (the stored value
--         cannot be decoded)
--
-- An entry is <kind><tags>|<cachedAt>|<softAt>|<hardAt>|<delta>\n<data>,
-- kind 'v' (value) or 'n' (not found), <tags> "tagkey version,..." (the
-- versions its load began under). Whether those versions are still current
-- is for the caller to check: tag keys live in other slots, which a script
-- on Cluster may not read.
--
-- Returns {1, entry} (stored value), {2} (lease taken), {3, pttl} (another
-- holder; pttl its remaining ms).

local v = redis.call('GET', KEYS[1])
if v and ARGV[3] ~= '*' then
  if ARGV[3] == '' or string.match(v, '^[^|]*|(%d+)|') ~= ARGV[3] then
    return {1, v}
  end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2}
end
return {3, redis.call('PTTL', KEYS[2])}
