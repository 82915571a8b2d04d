-- Assigns the next sequence numbers to a batch of messages and appends them to the
-- client's stash, atomically (invariant 1). Runs on the client's slot.
--
-- KEYS[1]  tally:c:{id}:meta
-- KEYS[2]  tally:c:{id}:stash   (stream; one entry per batch, entry id <last sn>-0,
--                                fields m = the batch's messages joined by "\n",
--                                t = ts; see common::stash::StashStore::read)
-- ARGV[1]  instance   ARGV[2] epoch (both must match meta: fencing, invariant 6)
-- ARGV[3]  the last sn the caller knows (meta.sn before this batch)
-- ARGV[4]  timestamp, ms since the epoch
-- ARGV[5]  how many messages the batch holds
-- ARGV[6]  the messages, in order, joined by "\n" (a message never holds one)
--
-- Returns the first sn of the batch. Safe to re-run: if the batch was appended
-- already (the cluster client re-sent the call), meta.sn is ARGV[3] + ARGV[5]
-- and the same first sn is returned without appending again.
--
-- One entry per batch, not one per message: one XADD here and one on the replica
-- instead of one per message. The entry's id is its last sn, so trimming to MINID
-- <flushed + 1> removes exactly the entries whose every message is in Kafka.
local meta = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'sn')
if meta[1] ~= ARGV[1] or meta[2] ~= ARGV[2] then
  return redis.error_reply('TALLY_FENCED owner is ' .. tostring(meta[1]) .. ' at epoch ' .. tostring(meta[2]))
end
local sn = tonumber(meta[3] or '0')
local expected = tonumber(ARGV[3])
local count = tonumber(ARGV[5])
if count == nil or count < 0 then
  return redis.error_reply('TALLY_BAD_ARGUMENT message count ' .. tostring(ARGV[5]))
end
if count > 0 and sn == expected + count then
  return expected + 1
end
if sn ~= expected then
  return redis.error_reply('TALLY_SN_MISMATCH stored sn ' .. sn .. ', caller expected ' .. expected)
end
if count > 0 then
  sn = sn + count
  redis.call('XADD', KEYS[2], sn .. '-0', 'm', ARGV[6], 't', ARGV[4])
  redis.call('HSET', KEYS[1], 'sn', sn)
end
return expected + 1
