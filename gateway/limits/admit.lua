-- Admission for one API key, atomic across gateway replicas. Token buckets refilled
-- continuously (capacity = the per-minute limit, refill = limit/60 per second) for requests
-- and tokens, a sorted set of leases (score = expiry) for concurrency, and the `budget` field
-- of the key's day and month counters (settle.lua) for token budgets. Time is Redis's own.
-- Runs after settle.lua's function (RedisBuckets joins them): a settle of the same key waiting
-- to go is applied first, in this same script.
-- KEYS: requests bucket, tokens bucket, leases, day counters, month counters (one hash tag)
-- ARGV: rpm, tpm, max_concurrent, tokens per day, tokens per month (0 = no such limit),
--       cost (tokens reserved), lease id, lease ttl, day ttl, month ttl,
--       then '1' and settle.lua's ARGV (without its ttls) for a settle riding along, or '0'.
-- Returns {admitted, refused_limit, retry_after_s, requests_left, tokens_left, leases,
-- day_charged, month_charged} (strings: Redis would truncate Lua numbers to integers).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local per_day, per_month = tonumber(ARGV[4]), tonumber(ARGV[5])
local cost, lease, ttl = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local day_ttl, month_ttl = tonumber(ARGV[9]), tonumber(ARGV[10])

if ARGV[11] == '1' then
  -- settle.lua's ARGV from ARGV[12]: tpm, delta, charge, leases, then usage; ttls spliced in
  local a = {ARGV[12], ARGV[13], ARGV[14], ARGV[15], day_ttl, month_ttl}
  local j = 16
  while ARGV[j] do a[#a + 1] = ARGV[j]; j = j + 1 end
  settle(now, KEYS[2], KEYS[3], KEYS[4], KEYS[5], a, 1)
end

local function level(key, limit)
  if limit <= 0 then return 0 end
  local state = redis.call('HMGET', key, 'v', 'at')
  local value, at = tonumber(state[1]), tonumber(state[2])
  if value == nil then return limit end
  return math.min(limit, value + (now - at) * limit / 60)
end

local function store(key, limit, value)
  redis.call('HSET', key, 'v', tostring(value), 'at', tostring(now))
  -- kept until refilled (a debt from under-reserved tokens takes longer), then full = absent
  redis.call('EXPIRE', key, math.ceil(60 * (limit - value) / limit) + 60)
end

-- a key with either budget is charged in both periods (settle gives back to both alike)
local budgeted = per_day > 0 or per_month > 0
local function charged(key)
  if not budgeted then return 0 end
  return tonumber(redis.call('HGET', key, 'budget') or '0')
end

local requests, tokens, held = level(KEYS[1], rpm), level(KEYS[2], tpm), 0
local day, month = charged(KEYS[4]), charged(KEYS[5])
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  held = redis.call('ZCARD', KEYS[3])
end

local function refuse(which, wait)
  return {'0', which, tostring(wait), tostring(requests), tostring(tokens), tostring(held),
    tostring(day), tostring(month)}
end
if per_day > 0 and day + cost > per_day then return refuse('day', -1) end
if per_month > 0 and month + cost > per_month then return refuse('month', -1) end
if rpm > 0 and requests < 1 then return refuse('requests', (1 - requests) * 60 / rpm) end
if tpm > 0 and cost > tpm then return refuse('tokens', -1) end
if tpm > 0 and tokens < cost then return refuse('tokens', (cost - tokens) * 60 / tpm) end
if conc > 0 and held >= conc then return refuse('concurrency', 1) end

if rpm > 0 then requests = requests - 1; store(KEYS[1], rpm, requests) end
if tpm > 0 then tokens = tokens - cost; store(KEYS[2], tpm, tokens) end
if conc > 0 then
  redis.call('ZADD', KEYS[3], now + ttl, lease)
  redis.call('EXPIRE', KEYS[3], math.ceil(ttl) + 60)
  held = held + 1
end
if budgeted then
  day = redis.call('HINCRBY', KEYS[4], 'budget', cost)
  month = redis.call('HINCRBY', KEYS[5], 'budget', cost)
  redis.call('EXPIRE', KEYS[4], day_ttl)
  redis.call('EXPIRE', KEYS[5], month_ttl)
end
return {'1', '', '0', tostring(requests), tostring(tokens), tostring(held), tostring(day),
  tostring(month)}
