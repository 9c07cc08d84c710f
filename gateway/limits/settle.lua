-- Reconcile admitted requests of one API key: give back (or charge) the difference between the
-- tokens reserved and the tokens used, to the tokens bucket and to the day/month budgets; free
-- their concurrency leases; add their usage to the key's day and month counters.
-- admit.lua carries this same function (RedisBuckets prepends it), so a settle waiting to go
-- rides in the next admit of its key: one script, one round trip.
-- KEYS: tokens bucket, leases, day counters, month counters (one hash tag: same cluster slot)
-- ARGV: tpm (0 = none), reserved minus used (tpm), reserved minus used (budgets, 0 = none),
--       lease ids (space-separated), day ttl, month ttl, then per model: name, requests,
--       prompt tokens, completion tokens.
-- Counter hashes: `budget` (charged: reserved in flight + used), and per model
-- `<model>|requests`, `<model>|prompt`, `<model>|completion` (the key's totals are their sums).
local function settle(now, k_tpm, k_leases, k_day, k_month, a, i)
  local tpm, delta, charge = tonumber(a[i]), tonumber(a[i + 1]), tonumber(a[i + 2])
  local leases, day_ttl, month_ttl = a[i + 3], tonumber(a[i + 4]), tonumber(a[i + 5])
  if tpm > 0 and delta ~= 0 then
    local state = redis.call('HMGET', k_tpm, 'v', 'at')
    local value, at = tonumber(state[1]), tonumber(state[2])
    if value == nil then value, at = tpm, now end
    value = math.min(tpm, math.min(tpm, value + (now - at) * tpm / 60) + delta)
    redis.call('HSET', k_tpm, 'v', tostring(value), 'at', tostring(now))
    redis.call('EXPIRE', k_tpm, math.ceil(60 * (tpm - value) / tpm) + 60)
  end
  if leases ~= '' then
    for id in string.gmatch(leases, '%S+') do redis.call('ZREM', k_leases, id) end
  end
  local touched = charge ~= 0
  if charge ~= 0 then
    redis.call('HINCRBY', k_day, 'budget', -charge)
    redis.call('HINCRBY', k_month, 'budget', -charge)
  end
  local j = i + 6
  while a[j] do
    local model, n, p, c = a[j], tonumber(a[j + 1]), tonumber(a[j + 2]), tonumber(a[j + 3])
    for _, key in ipairs({k_day, k_month}) do
      redis.call('HINCRBY', key, model .. '|requests', n)
      if p > 0 then redis.call('HINCRBY', key, model .. '|prompt', p) end
      if c > 0 then redis.call('HINCRBY', key, model .. '|completion', c) end
    end
    touched = true
    j = j + 4
  end
  if touched then
    redis.call('EXPIRE', k_day, day_ttl)
    redis.call('EXPIRE', k_month, month_ttl)
  end
end

-- run alone
local clock = redis.call('TIME')
settle(tonumber(clock[1]) + tonumber(clock[2]) / 1000000, KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV, 1)
return 1
