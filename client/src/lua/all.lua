
-- Several limits, all or nothing (ratelimit-client's check_all), after all_module.lua (the
-- module's commands) or all_scripts.lua (the same in Lua), which give `all_at_once` (RL.ALL,
-- or nil where there is none) and `one` (a single limit's call).
-- KEYS: one key per limit. ARGV[1]: '1' for a dry run. Then, per limit: the command, the
-- count of its figures, the figures, the cost, and the block ('' for none).
-- Replies {allowed, retry_after_ms, reply_1, ..., reply_n}, as RL.ALL does: it is one RL.ALL
-- where there is one and the keys are distinct; else the same from single calls.
local dry_run = ARGV[1] == '1'
local calls = {}
local at = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[at + 1])
  local figures = {}
  for j = 1, n do figures[j] = ARGV[at + 1 + j] end
  calls[k] = {command = ARGV[at], figures = figures, cost = ARGV[at + 2 + n], block = ARGV[at + 3 + n]}
  at = at + 4 + n
end

local distinct, seen = #KEYS <= 32, {}
for k = 1, #KEYS do
  if seen[KEYS[k]] then distinct = false end
  seen[KEYS[k]] = true
end
if distinct then
  local reply = all_at_once(calls, dry_run)
  if reply then return reply end
end

local function call(k, ...)
  return one(calls[k], KEYS[k], {...})
end

-- The retry of a denial: the latest of the denying limits' (-1, never, wins).
local function later(retry, reply)
  if reply[4] == -1 or retry == -1 then return -1 end
  return math.max(retry, reply[4])
end

-- What each limit would decide now.
local replies, allowed, retry = {}, 1, 0
for k = 1, #KEYS do
  local reply = call(k, 'COST', calls[k].cost, 'DRYRUN')
  replies[k] = reply
  if reply[1] == 0 then
    allowed = 0
    retry = later(retry, reply)
  end
end
-- Denied: the limits that would have allowed report their state as it is (not as if they
-- had taken), as RL.ALL replies, in a dry run too.
local function as_they_stand()
  for k = 1, #KEYS do
    if replies[k][1] == 1 then replies[k] = call(k, 'COST', 0, 'DRYRUN') end
  end
end
if dry_run then
  if allowed == 0 then as_they_stand() end
  return {allowed, retry, unpack(replies)}
end

if allowed == 1 then
  local taken = {}
  for k = 1, #KEYS do
    local reply = call(k, 'COST', calls[k].cost)
    if reply[1] == 0 then
      -- Two limits on one key: the earlier took what this one needed. Give it all back.
      for j = 1, k - 1 do call(j, 'REFUND', calls[j].cost) end
      replies[k] = reply
      return {0, reply[4], unpack(replies)}
    end
    taken[k] = reply
  end
  return {1, 0, unpack(taken)}
end

-- Denied: nothing is taken, but a denying limit with a block starts it, and its retry is the
-- block's, as RL.ALL replies.
as_they_stand()
for k = 1, #KEYS do
  if replies[k][1] == 0 and calls[k].block ~= '' then
    local reply = call(k, 'COST', calls[k].cost, 'BLOCK', calls[k].block)
    -- Allowed after all (the clock moved on since the dry run): give its cost back.
    if reply[1] == 1 then
      call(k, 'REFUND', calls[k].cost)
    else
      replies[k] = reply
      retry = later(retry, reply)
    end
  end
end
return {0, retry, unpack(replies)}
