-- Eject a worker for a backoff that doubles with each ejection in a row, shared by every replica.
-- KEYS[1]: the worker's ejection (its TTL is the time left), KEYS[2]: its strike count.
-- ARGV: base ms, max ms, ms without ejections after which strikes are forgotten.
-- Returns the ms left of the ejection. A worker already ejected (another replica saw it fail
-- too) keeps its current window: one outage is one strike, however many replicas report it.
local left = redis.call('PTTL', KEYS[1])
if left > 0 then
  return left
end
local strikes = redis.call('INCR', KEYS[2])
local ms = math.min(tonumber(ARGV[1]) * 2 ^ (strikes - 1), tonumber(ARGV[2]))
ms = math.floor(ms)
redis.call('PEXPIRE', KEYS[2], ms + tonumber(ARGV[3]))
redis.call('SET', KEYS[1], strikes, 'PX', ms)
return ms
