-- fail.lua: delete an in-progress idempotency record so the key may begin again.
--
-- KEYS[1]  the record's key (see begin.lua for its fields)
--
-- Returns 1 when the in-progress record was deleted, 0 when there is no
-- record, 2 when the record is completed (left unchanged: its response must
-- keep being replayed).
local state = redis.call('HGET', KEYS[1], 's')
if not state then return 0 end
if state ~= 's' then return 2 end
redis.call('DEL', KEYS[1])
return 1
