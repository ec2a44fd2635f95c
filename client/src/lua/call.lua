
-- One call of one limit (RL.FIXED, RL.SLIDING, RL.TOKEN, with DRYRUN, and RL.PEEK), after
-- limiter.lua. KEYS[1]: the key. ARGV: the algorithm's name, the count of its figures, the
-- figures (durations in ms), 'take' or 'refund', the units, the block in ms (0: none), '1'
-- for a dry run. Replies the module's five integers.
local n = tonumber(ARGV[2])
local figures = {}
for j = 1, n do figures[j] = tonumber(ARGV[2 + j]) end
local at = 3 + n
local amount, block, dry = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), ARGV[at + 3] == '1'
local take, units = amount, nil
if ARGV[at] == 'refund' then take, units = nil, amount end
local alg = limiter(string.sub(ARGV[1], 1, 1), figures)
local key = KEYS[1]
local rec = load(key, alg)
local now = clock()
local d, write, new = decide(alg, rec, now, take, units, block)
if not dry then save(key, alg, write, new, now) end
return reply(d)
