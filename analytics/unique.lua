-- unique.lua: add a member to a day's HyperLogLog with the day's TTL in the
-- same step.
--
-- KEYS[1]  <prefix>an:{h:<metric>}:<day>
-- ARGV[1]  member
-- ARGV[2]  expiry, Unix milliseconds (end of the day plus the retention)
redis.call('PFADD', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
