-- inspect.lua: a consistent view of a lock: its remaining time and the fence
-- of its holder, read in one step (an acquire between two separate reads
-- could pair one holder's expiry with another's fence).
--
-- KEYS[1] the lock key   <prefix>lock:{<id>}
-- KEYS[2] the fence key  <prefix>lock:{<id>}:fence
--
-- Returns {pttl, fence}: pttl is -2 when the lock is free; fence is a decimal
-- string, '0' when unknown.

return {redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[2]) or '0'}
