-- release.lua: give up a load lease (the load failed), so another caller
-- loads at once instead of after the lease's ttl.
--
-- KEYS[1] the value key  <prefix>cache:{<ns>/<key>}
-- KEYS[2] the lease key  <prefix>cache:{<ns>/<key>}:lease
-- ARGV[1] token
-- ARGV[2] Pub/Sub channel to publish KEYS[1] on, or ''
--
-- Returns 1 when released, 0 when the lease was not this token's.

if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[2])
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], KEYS[1])
end
return 1
