-- Reconcile one admitted request: give back (or charge) the difference between the tokens
-- reserved and the tokens used, and release its concurrency lease.
-- KEYS: tokens bucket, leases.  ARGV: tpm (0 = none), reserved minus used, lease id ('' = none)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local tpm, delta = tonumber(ARGV[1]), tonumber(ARGV[2])
if tpm > 0 and delta ~= 0 then
  local state = redis.call('HMGET', KEYS[1], 'v', 'at')
  local value, at = tonumber(state[1]), tonumber(state[2])
  if value == nil then value, at = tpm, now end
  value = math.min(tpm, math.min(tpm, value + (now - at) * tpm / 60) + delta)
  redis.call('HSET', KEYS[1], 'v', tostring(value), 'at', tostring(now))
  redis.call('EXPIRE', KEYS[1], math.ceil(60 * (tpm - value) / tpm) + 60)
end
if ARGV[3] ~= '' then redis.call('ZREM', KEYS[2], ARGV[3]) end
return 1
