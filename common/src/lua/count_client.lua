-- Applies one batch of a client's records to its count, sn-guarded (invariant 4).
-- Runs on the client's slot.
--
-- KEYS[1]  tally:c:{id}:count     KEYS[2]  tally:c:{id}:last_sn
-- ARGV     the sns of the client's records in this batch, in offset order
--
-- Each record, in order: sn == last_sn + 1 is APPLIED (count + 1, last_sn = sn);
-- sn <= last_sn is a DUPLICATE; sn > last_sn + 1 is a GAP (not counted; the
-- producer's resend fills it).
--
-- Once a GAP was seen, the script stops before the first record that would be
-- APPLIED, and leaves it and everything after it unprocessed. The caller commits
-- offsets only below the first unprocessed record and processes the rest again in
-- the next batch. This keeps a replay after an aborted transaction canonical: Redis
-- is never ahead of the committed offset by a record that fills a gap behind an
-- uncommitted GAP record, so a replay classifies every record as the first pass
-- did (APPLIED only turns into DUPLICATE) and forwards the same sns in the same
-- order. Without it, a replay could apply a record the first pass saw as a GAP
-- before the sns in between were forwarded again, and the aggregator's high-water
-- mark would drop those.
--
-- Returns one character per processed record, in order: "A", "D" or "G"; a result
-- shorter than ARGV means the script stopped there. Safe to re-run: a re-sent call
-- sees its own APPLIED records as DUPLICATEs and stops at the same record.
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local applied = 0
local gap = false
local out = {}
for i = 1, #ARGV do
  local sn = tonumber(ARGV[i])
  if sn == nil or sn < 1 then
    return redis.error_reply('TALLY_BAD_ARGUMENT sn ' .. tostring(ARGV[i]))
  end
  if sn <= last then
    out[i] = 'D'
  elseif sn == last + 1 then
    if gap then
      break
    end
    last = sn
    applied = applied + 1
    out[i] = 'A'
  else
    gap = true
    out[i] = 'G'
  end
end
if applied > 0 then
  redis.call('INCRBY', KEYS[1], applied)
  redis.call('SET', KEYS[2], string.format('%d', last))
end
return table.concat(out)
