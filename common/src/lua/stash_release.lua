-- Gives up ownership of a client whose stash is fully flushed, so that no survivor
-- has to adopt it. Runs on the client's slot.
--
-- KEYS[1]  tally:c:{id}:meta
-- ARGV[1]  instance   ARGV[2] epoch
--
-- Returns 1 when released (or already released by this call), 0 when this instance
-- is no longer the owner or the stash still holds unflushed messages.
local meta = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'sn', 'flushed')
if meta[1] ~= ARGV[1] or meta[2] ~= ARGV[2] then
  if (meta[1] == '' or not meta[1]) and meta[2] == ARGV[2] then
    return 1
  end
  return 0
end
if tonumber(meta[4] or '0') < tonumber(meta[3] or '0') then
  return 0
end
redis.call('HSET', KEYS[1], 'owner', '')
return 1
