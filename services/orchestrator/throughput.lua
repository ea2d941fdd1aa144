-- A token bucket per sender channel, shared by every process (services/orchestrator/throughput.py).
-- KEYS[1]  the bucket: a hash {tokens, ts}
-- ARGV[1]  rate (tokens per second, > 0)   ARGV[2] burst (capacity, > 0)   ARGV[3] cost (>= 0)
-- ARGV[4]  now in seconds, or "" for the Redis server's TIME (one clock for all processes; tests pass
--          their own to simulate time)
-- Returns "0" when `cost` tokens were taken, else the seconds until they will be there (as a string:
-- Redis turns Lua numbers into integers). Nothing is taken when it returns a wait.
-- A cost above the burst waits for a full bucket, then goes into debt (tokens < 0): over time the rate
-- holds exactly, as a provider's per-segment queue does.
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now
if ARGV[4] ~= nil and ARGV[4] ~= '' then
  now = tonumber(ARGV[4])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
else
  -- a clock that went back (another server after a failover): no refill, but no lost state either
  tokens = math.min(burst, tokens)
end

local need = math.min(cost, burst)
-- EPSILON: float dust (0.99999999 tokens after ten refills of 0.1) is not worth a wait of 1e-10 s.
if tokens + 1e-9 < need then
  return string.format('%.17g', (need - tokens) / rate)
end
tokens = tokens - cost
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.17g', math.max(now, ts)))
-- Idle buckets vanish once they would be full again: a missing key reads as a full bucket.
local idle_ms = math.ceil((burst - tokens) / rate * 1000) + 1000
redis.call('PEXPIRE', KEYS[1], idle_ms)
return '0'
