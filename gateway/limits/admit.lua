-- Admission for one API key, atomic across gateway replicas. Token buckets refilled
-- continuously (capacity = the per-minute limit, refill = limit/60 per second) for requests
-- and tokens, and a sorted set of leases (score = expiry) for concurrency. Time is Redis's own.
-- KEYS: requests bucket, tokens bucket, leases (one hash tag: same cluster slot)
-- ARGV: rpm, tpm, max_concurrent (0 = no such limit), cost (tokens reserved), lease id, lease ttl
-- Returns {admitted, refused_limit, retry_after_s, requests_left, tokens_left, leases} (strings:
-- Redis would truncate Lua numbers to integers).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cost, lease, ttl = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])

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

local requests, tokens, held = level(KEYS[1], rpm), level(KEYS[2], tpm), 0
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  held = redis.call('ZCARD', KEYS[3])
end

local function refuse(which, wait)
  return {'0', which, tostring(wait), tostring(requests), tostring(tokens), tostring(held)}
end
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
return {'1', '', '0', tostring(requests), tostring(tokens), tostring(held)}
