-- Several limits on the module (ratelimit-client's check_all), before all.lua: one RL.ALL,
-- and single calls where it is missing.

-- RL.ALL for the calls, or nil where the module has no RL.ALL.
local function all_at_once(calls, dry_run)
  local args = {#KEYS}
  for k = 1, #KEYS do args[#args + 1] = KEYS[k] end
  for k = 1, #KEYS do
    local c = calls[k]
    args[#args + 1] = string.sub(c.command, 4) -- RL.TOKEN: the spec TOKEN
    for _, word in ipairs(c.figures) do args[#args + 1] = word end
    args[#args + 1] = 'COST'
    args[#args + 1] = c.cost
    if c.block ~= '' then
      args[#args + 1] = 'BLOCK'
      args[#args + 1] = c.block
    end
  end
  if dry_run then args[#args + 1] = 'DRYRUN' end
  local reply = redis.pcall('RL.ALL', unpack(args))
  -- A module without RL.ALL: "Unknown Redis command called from script" (Redis 7.0),
  -- "Unknown command called from script" (Valkey 9.1) or "ERR unknown command" (later
  -- servers). Any other error is the call's own.
  local err = type(reply) == 'table' and reply.err ~= nil and string.lower(reply.err)
  local unknown = err
    and (string.find(err, 'unknown redis command', 1, true) or string.find(err, 'unknown command', 1, true))
  if not unknown then return reply end
  return nil
end

-- One limit's command on `key` with these words after its figures.
local function one(c, key, words)
  local args = {key}
  for _, word in ipairs(c.figures) do args[#args + 1] = word end
  for _, word in ipairs(words) do args[#args + 1] = word end
  return redis.call(c.command, unpack(args))
end
