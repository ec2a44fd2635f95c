
-- Several limits without the module (ratelimit-client's check_all), after limiter.lua and
-- before all.lua: RL.ALL's engine (src/engine.rs, `settle` and `look`), and single calls.
-- A call's command is the algorithm's name, its figures numbers (durations in ms), its
-- block a number of ms or ''.

local function alg_of(c)
  local figures = {}
  for j, word in ipairs(c.figures) do figures[j] = tonumber(word) end
  return limiter(string.sub(c.command, 1, 1), figures)
end

local function block_of(c)
  if c.block == '' then return 0 end
  return tonumber(c.block)
end

-- RL.ALL: every key read and decided at one clock reading; allowed, every limit takes; denied,
-- a denying limit writes what its denial decided (its block) and the others report their
-- state as it stands. A dry run decides the same, but starts no block and writes nothing.
local function all_at_once(calls, dry_run)
  local now = clock()
  local held = {}
  for k = 1, #KEYS do
    local alg = alg_of(calls[k])
    local rec = load(KEYS[k], alg)
    local block = block_of(calls[k])
    if dry_run then block = 0 end
    local d, write, new = decide(alg, rec, now, tonumber(calls[k].cost), nil, block)
    held[k] = {alg = alg, rec = rec, d = d, write = write, new = new}
  end
  local allowed = true
  for k = 1, #held do
    if not held[k].d.allowed then allowed = false end
  end
  local decisions = {}
  for k, h in ipairs(held) do
    local d = h.d
    if allowed or not d.allowed then
      if not dry_run then save(KEYS[k], h.alg, h.write, h.new, now) end
    else
      d = decide(h.alg, h.rec, now, 0, nil, 0)
    end
    decisions[k] = d
  end
  local out = {0, latest(decisions)}
  if allowed then out[1] = 1 end
  for _, d in ipairs(decisions) do out[#out + 1] = reply(d) end
  return out
end

-- One limit's call on `key`, with the module's option words (COST n, REFUND n, BLOCK ms,
-- DRYRUN).
local function one(c, key, words)
  local alg = alg_of(c)
  local take, units, block, dry = 1, nil, 0, false
  local j = 1
  while j <= #words do
    local word = words[j]
    if word == 'COST' then
      take, j = tonumber(words[j + 1]), j + 2
    elseif word == 'REFUND' then
      take, units, j = nil, tonumber(words[j + 1]), j + 2
    elseif word == 'BLOCK' then
      block, j = tonumber(words[j + 1]), j + 2
    else
      dry, j = true, j + 1
    end
  end
  local rec = load(key, alg)
  local now = clock()
  local d, write, new = decide(alg, rec, now, take, units, block)
  if not dry then save(key, alg, write, new, now) end
  return reply(d)
end
