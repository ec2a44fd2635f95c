-- Sliding log in a sorted set: one member per admitted call, scored by its time.
-- KEYS[1]: log; ARGV[1]: limit; ARGV[2]: window in ms.
-- Returns {allowed, remaining}.
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = time[1] * 1000 + math.floor(time[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now, time[1] .. time[2] .. '-' .. count)
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, limit - count - 1}
end
return {0, 0}
