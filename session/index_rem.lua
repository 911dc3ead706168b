-- index_rem.lua: remove sessions from a user's index, each only if its score
-- is still the one the caller read. A member re-added since (the same session
-- id created again, concurrently) has a new score and stays, so a live session
-- never loses its index entry to a removal meant for its predecessor.
--
-- KEYS[1]  the user's index (see index_add.lua)
-- ARGV     member, score, member, score, ...
--
-- Returns how many members were removed.
local n = 0
for i = 1, #ARGV, 2 do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) == tonumber(ARGV[i + 1]) then
    n = n + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return n
