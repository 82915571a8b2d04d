-- Assigns the next sequence numbers to a batch of messages and appends them to the
-- client's stash, atomically (invariant 1). Runs on the client's slot.
--
-- KEYS[1]  tally:c:{id}:meta
-- KEYS[2]  tally:c:{id}:stash   (stream; entry id <sn>-0, fields m = message, t = ts)
-- ARGV[1]  instance   ARGV[2] epoch (both must match meta: fencing, invariant 6)
-- ARGV[3]  the last sn the caller knows (meta.sn before this batch)
-- ARGV[4]  timestamp, ms since the epoch
-- ARGV[5..] the messages, in order
--
-- Returns the first sn of the batch. Safe to re-run: if the batch was appended
-- already (the cluster client re-sent the call), meta.sn is ARGV[3] + #messages
-- and the same first sn is returned without appending again.
local meta = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'sn')
if meta[1] ~= ARGV[1] or meta[2] ~= ARGV[2] then
  return redis.error_reply('TALLY_FENCED owner is ' .. tostring(meta[1]) .. ' at epoch ' .. tostring(meta[2]))
end
local sn = tonumber(meta[3] or '0')
local expected = tonumber(ARGV[3])
local count = #ARGV - 4
if count > 0 and sn == expected + count then
  return expected + 1
end
if sn ~= expected then
  return redis.error_reply('TALLY_SN_MISMATCH stored sn ' .. sn .. ', caller expected ' .. expected)
end
for i = 5, #ARGV do
  sn = sn + 1
  redis.call('XADD', KEYS[2], sn .. '-0', 'm', ARGV[i], 't', ARGV[4])
end
redis.call('HSET', KEYS[1], 'sn', sn)
return expected + 1
