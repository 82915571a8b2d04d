-- Applies one batch of a message's sightings to its count, deduplicated per
-- (message, client) by a high-water mark (invariant 4). Runs on the message's slot.
--
-- KEYS[1]  tally:m:{hash}:count   KEYS[2]  tally:m:{hash}:seen (hash client -> sn)
-- KEYS[3]  tally:m:{hash}:text
-- ARGV[1]  the message text
-- ARGV[2..] pairs client, sn, in arrival order
--
-- A sighting counts only if its sn is above the highest sn counted for this
-- (message, client); the mark then moves to it. Nothing expires: a replay of any
-- age is recognised (the original's expiring dedup counted late replays twice).
-- The counter forwards each client's sns in canonical order, so a first sighting
-- of an sn never arrives after a higher one of the same client.
--
-- Returns how many sightings were counted. Safe to re-run: a re-sent call finds
-- the marks already moved and counts nothing.
local counted = 0
local marks = {}
for i = 2, #ARGV - 1, 2 do
  local client = ARGV[i]
  local sn = tonumber(ARGV[i + 1])
  if sn == nil or sn < 1 then
    return redis.error_reply('TALLY_BAD_ARGUMENT sn ' .. tostring(ARGV[i + 1]))
  end
  local mark = marks[client]
  if mark == nil then
    mark = tonumber(redis.call('HGET', KEYS[2], client) or '0')
  end
  if sn > mark then
    mark = sn
    counted = counted + 1
    redis.call('HSET', KEYS[2], client, ARGV[i + 1])
  end
  marks[client] = mark
end
if counted > 0 then
  redis.call('INCRBY', KEYS[1], counted)
end
redis.call('SET', KEYS[3], ARGV[1], 'NX')
return counted
