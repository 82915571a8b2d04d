-- Claims a client's stash for a producer instance and fences the previous owner
-- by raising the epoch. Runs on the client's slot.
--
-- KEYS[1]  tally:c:{id}:meta
-- ARGV[1]  claiming instance
-- ARGV[2]  mode: "take"  - the client connected to this instance: always wins
--                "adopt" - take over from another owner, only if meta still shows
--                          owner ARGV[3] with epoch ARGV[4] (compare-and-set)
-- ARGV[3]  expected owner (adopt)
-- ARGV[4]  expected epoch (adopt)
--
-- Returns {1, epoch, sn, flushed} when claimed, {0, epoch, sn, flushed, owner} when
-- an adopt lost the race. Safe to re-run: a re-sent adopt that already succeeded
-- finds itself the owner at epoch+1 and reports success; a re-sent take only
-- raises the epoch once more.
local meta = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'sn', 'flushed')
local owner = meta[1] or ''
local epoch = tonumber(meta[2] or '0')
local sn = tonumber(meta[3] or '0')
local flushed = tonumber(meta[4] or '0')

if ARGV[2] == 'adopt' then
  local expected_epoch = tonumber(ARGV[4])
  if owner == ARGV[1] and epoch == expected_epoch + 1 then
    return {1, epoch, sn, flushed}
  end
  if owner ~= ARGV[3] or epoch ~= expected_epoch then
    return {0, epoch, sn, flushed, owner}
  end
elseif ARGV[2] ~= 'take' then
  return redis.error_reply('TALLY_BAD_ARGUMENT unknown claim mode ' .. ARGV[2])
end

epoch = epoch + 1
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'epoch', epoch, 'sn', sn, 'flushed', flushed)
return {1, epoch, sn, flushed}
