
-- RL.RESET, after limiter.lua: deletes the limiters at KEYS and replies how many there were;
-- all or nothing: a key holding anything else deletes none.
local found = {}
for k = 1, #KEYS do
  local raw = redis.pcall('GET', KEYS[k])
  if type(raw) == 'table' then
    if MODULE_TYPES[redis.call('TYPE', KEYS[k])['ok']] then error({err = OTHER_BACKEND}) end
    raw = ''
  end
  if raw then
    if string.sub(raw, 1, 4) ~= 'RL1 ' then
      error({err = 'WRONGTYPE RL.RESET deletes rate limiters only: a key holds another type, nothing was deleted'})
    end
    found[#found + 1] = KEYS[k]
  end
end
local deleted = 0
for _, key in ipairs(found) do deleted = deleted + redis.call('DEL', key) end
return deleted
