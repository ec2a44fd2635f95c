-- Fixed window with INCR + PEXPIRE, the usual script.
-- KEYS[1]: counter; ARGV[1]: limit; ARGV[2]: window in ms.
-- Returns {allowed, remaining, ttl_ms}.
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local limit = tonumber(ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if count > limit then
  return {0, 0, ttl}
end
return {1, limit - count, ttl}
