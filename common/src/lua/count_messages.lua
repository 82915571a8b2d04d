-- Counts one batch's sightings of the messages of one bucket, deduplicated per
-- (message, client) by a high-water mark (invariant 4). Every key shares the hash
-- tag {<bucket>}, so the call runs on one slot, atomically.
--
-- KEYS[k]  tally:m:{bucket}<hash>, the hash of message k: field 'count' (times
--          counted), 'text' (the message text, written with the first count) and
--          'sn:<client>' (the highest sn of that client counted for this message)
-- ARGV     for each message, in KEYS order: its text, the number n of its
--          sightings, then n pairs client, sn in arrival order
--
-- A sighting counts only if its sn is above the highest sn counted for this
-- (message, client); the mark then moves to it. Nothing expires: a replay of any
-- age is recognised (the original's expiring dedup counted late replays twice).
-- The counter forwards each client's sns in canonical order, so a first sighting
-- of an sn never arrives after a higher one of the same client.
--
-- Per message one HMGET reads the count and the marks and one HSET writes what
-- moved (both in chunks, under Lua's unpack limit). Every argument is checked
-- before the first write, so a refused call writes nothing.
--
-- Returns how many sightings were counted over all messages. Safe to re-run: a
-- re-sent call finds the marks already moved and counts nothing.
local CHUNK = 400

local function hmget(key, fields)
  local values = {}
  for i = 1, #fields, CHUNK do
    local part = redis.call('HMGET', key, unpack(fields, i, math.min(i + CHUNK - 1, #fields)))
    for j = 1, #part do
      values[#values + 1] = part[j]
    end
  end
  return values
end

local function hset(key, pairs_)
  for i = 1, #pairs_, 2 * CHUNK do
    redis.call('HSET', key, unpack(pairs_, i, math.min(i + 2 * CHUNK - 1, #pairs_)))
  end
end

-- Check every argument first: where each message's sightings start, and how many.
local spans = {}
local a = 1
for k = 1, #KEYS do
  local n = tonumber(ARGV[a + 1])
  if ARGV[a] == nil or n == nil or n < 1 then
    return redis.error_reply('TALLY_BAD_ARGUMENT sightings of message ' .. k)
  end
  local first = a + 2
  local last = first + 2 * n - 1
  for i = first, last, 2 do
    local sn = tonumber(ARGV[i + 1])
    if ARGV[i] == nil or sn == nil or sn < 1 then
      return redis.error_reply('TALLY_BAD_ARGUMENT sn ' .. tostring(ARGV[i + 1]))
    end
  end
  spans[k] = {a, first, last}
  a = last + 1
end
if a ~= #ARGV + 1 then
  return redis.error_reply(string.format('TALLY_BAD_ARGUMENT %d arguments for %d messages', #ARGV, #KEYS))
end

local total = 0
for k = 1, #KEYS do
  local text, first, last = ARGV[spans[k][1]], spans[k][2], spans[k][3]
  -- The count, then each client's mark once.
  local fields = {'count'}
  local index = {}
  for i = first, last, 2 do
    local client = ARGV[i]
    if index[client] == nil then
      fields[#fields + 1] = 'sn:' .. client
      index[client] = #fields
    end
  end
  local values = hmget(KEYS[k], fields)
  local marks = {}
  for client, j in pairs(index) do
    marks[client] = tonumber(values[j] or '0')
  end
  local counted = 0
  local moved = {}
  for i = first, last, 2 do
    local client, sn = ARGV[i], tonumber(ARGV[i + 1])
    if sn > marks[client] then
      marks[client] = sn
      moved[client] = ARGV[i + 1]
      counted = counted + 1
    end
  end
  if counted > 0 then
    local writes = {'count', string.format('%d', tonumber(values[1] or '0') + counted)}
    if not values[1] then
      writes[#writes + 1] = 'text'
      writes[#writes + 1] = text
    end
    for client, sn in pairs(moved) do
      writes[#writes + 1] = 'sn:' .. client
      writes[#writes + 1] = sn
    end
    hset(KEYS[k], writes)
  end
  total = total + counted
end
return total
