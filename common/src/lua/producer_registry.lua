-- The producer registry on one clock, this Redis server's: records an instance's
-- heartbeat at the server's time and returns that time with every heartbeat, so
-- whoever judges liveness compares the server's clock with itself, never one
-- host's clock with another's (a producer whose clock is behind would look dead,
-- one whose clock is ahead would judge everyone else dead). Runs on the
-- registry's slot.
--
-- KEYS[1]  tally:producers (sorted set: instance -> its last heartbeat, ms since
--          the epoch by this server's clock; 0: it left clients to adopt)
-- ARGV[1]  the instance beating now, or '' to only read
--
-- Returns {now_ms, instance1, beat1, instance2, beat2, ...}, instances by beat.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if ARGV[1] ~= '' then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
end
local reply = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
table.insert(reply, 1, now)
return reply
