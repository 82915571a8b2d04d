-- Records that every sn up to ARGV[3] is in Kafka (invariant 3: the caller passes
-- only the end of a contiguous confirmed run) and trims the stash up to it.
-- Runs on the client's slot.
--
-- KEYS[1]  tally:c:{id}:meta     KEYS[2]  tally:c:{id}:stash
-- ARGV[1]  instance   ARGV[2] epoch (fencing)   ARGV[3] new flushed sn
--
-- Returns meta.flushed afterwards. Never moves flushed backwards, so it is safe to
-- re-run and safe to call with stale values.
local meta = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'sn', 'flushed')
if meta[1] ~= ARGV[1] or meta[2] ~= ARGV[2] then
  return redis.error_reply('TALLY_FENCED owner is ' .. tostring(meta[1]) .. ' at epoch ' .. tostring(meta[2]))
end
local sn = tonumber(meta[3] or '0')
local flushed = tonumber(meta[4] or '0')
local new = tonumber(ARGV[3])
if new > sn then
  return redis.error_reply('TALLY_BAD_ARGUMENT flushed ' .. new .. ' beyond sn ' .. sn)
end
if new > flushed then
  redis.call('HSET', KEYS[1], 'flushed', new)
  redis.call('XTRIM', KEYS[2], 'MINID', (new + 1) .. '-0')
  flushed = new
end
return flushed
