-- The module's algorithms in Lua, for servers that cannot load it (ratelimit-client's script
-- backend): the fixed window, the strict sliding window and the token bucket of
-- core/src/{fixed,sliding,token}.rs, the record around them (a block; core/src/record.rs),
-- how a record lives in a key (a string, expiring when the record is fresh again) and the
-- server clock. Included at the top of each script; defines locals only.
--
-- Numbers are Lua's doubles. Every quantity below stays an integer under 2^53: the client
-- refuses figures above 2^53 - 1 (and a token bucket whose capacity x period in ms is above
-- it) before sending them, the clock in ms is far below it, and the products that could pass
-- it are computed without forming them (see `muldivmod` and the token bucket).

local SUB_WINDOWS, MAX_BUCKETS = 64, 65
local HUGE = 9007199254740992 -- 2^53: a quotient at least this large

local KEEP, STORE, DELETE = 'keep', 'store', 'delete'

-- floor(a / b) for integers |a| < 2^53, 0 < b < 2^53: the rounded quotient is within 1/b of
-- a / b, so its floor is exact.
local function idiv(a, b)
  return math.floor(a / b)
end

local function ceil_div(a, b)
  local q = idiv(a, b)
  if q * b < a then return q + 1 end
  return q
end

-- a * b = q * m + r, 0 <= r < m, for 0 <= a, b, m < 2^53, by doubling (every sum below is
-- under 2^53, or even); q is capped at HUGE.
local function muldivmod(a, b, m)
  local bq = idiv(b, m)
  local br = b - bq * m
  local bits = {}
  while a > 0 do
    local h = math.floor(a / 2)
    bits[#bits + 1] = a - 2 * h
    a = h
  end
  local q, r = 0, 0
  for i = #bits, 1, -1 do
    q = 2 * q
    if r >= m - r then r, q = r - (m - r), q + 1 else r = r + r end
    if bits[i] == 1 then
      q = q + bq
      if r >= m - br then r, q = r - (m - br), q + 1 else r = r + br end
    end
    if q > HUGE then q = HUGE end
  end
  return q, r
end

local function fmt(n)
  return string.format('%.0f', n)
end

-- A decision: {allowed (bool), limit, remaining, retry (0 now, -1 never, else ms), reset}.
local function decision(allowed, limit, remaining, retry, reset)
  return {allowed = allowed, limit = limit, remaining = remaining, retry = retry, reset = reset}
end

local function denied_retry(cost, limit, wait)
  if cost > limit then return -1 end
  return wait()
end

---------------------------------------------------------------------------------------------
-- Fixed window (core/src/fixed.rs). State: {e = window end, c = count}.

local Fixed = {tag = 'F'}
Fixed.__index = Fixed

function Fixed.new(limit, window)
  return setmetatable({limit = limit, window = window}, Fixed)
end

function Fixed:decide(st, now, cost)
  local window_end = (idiv(now, self.window) + 1) * self.window
  local used = 0
  if st and st.e > now then used = st.c end
  local allowed = cost <= self.limit and cost <= self.limit - used
  local count = used
  if allowed then count = used + cost end
  local until_end = window_end - now
  local retry = 0
  if not allowed then retry = denied_retry(cost, self.limit, function() return until_end end) end
  local reset = 0
  if count > 0 then reset = until_end end
  local d = decision(allowed, self.limit, math.max(self.limit - count, 0), retry, reset)
  if count == 0 then
    if st then return d, DELETE end
    return d, KEEP
  end
  if st and st.e == window_end and st.c == count then return d, KEEP end
  return d, STORE, {e = window_end, c = count}
end

function Fixed:give_back(st, now, units)
  local count = math.max(st.c - units, 0)
  if st.e > now and count > 0 then return {e = st.e, c = count} end
  return nil
end

function Fixed.reset_at(st) return st.e end

function Fixed.encode(st) return fmt(st.e) .. ' ' .. fmt(st.c) end

function Fixed.decode(w)
  if #w ~= 2 or w[2] < 1 or w[1] < 1 then return nil end
  return {e = w[1], c = w[2]}
end

---------------------------------------------------------------------------------------------
-- Strict sliding window (core/src/sliding.rs). State: {w = window, f = first bucket,
-- c = counts, oldest first, the first and the last not 0}.

local Sliding = {tag = 'S'}
Sliding.__index = Sliding

function Sliding.new(limit, window)
  return setmetatable({limit = limit, window = window}, Sliding)
end

local function granularity(window) return ceil_div(window, SUB_WINDOWS) end

local function drop_time(window, bucket)
  return (bucket + 1) * granularity(window) + window - 1
end

local function oldest_live(window, now)
  return idiv(math.max(now + 1 - window, 0), granularity(window))
end

local function time_to_forget(window, first, counts, excess)
  local left = excess
  for i = 1, #counts do
    left = left - counts[i]
    if left <= 0 then return drop_time(window, first + i - 1) end
  end
  return HUGE
end

-- A state's buckets moved to `window`'s grid, each to the new bucket of its last ms, those
-- that still count at `now` (Buckets::regrid and Buckets::add).
local function regrid(st, window, now)
  local out = {w = window, f = 0, c = {}}
  local oldest = oldest_live(window, now)
  local old_g, new_g = granularity(st.w), granularity(window)
  for i = 1, #st.c do
    local bucket = idiv((st.f + i) * old_g - 1, new_g)
    local units = st.c[i]
    if bucket >= oldest and units > 0 then
      local c = out.c
      if #c == 0 then
        out.f, out.c = bucket, {units}
      else
        local last = out.f + #c - 1
        local index = math.max(bucket, last) - out.f
        if index >= MAX_BUCKETS then
          local shift = index + 1 - MAX_BUCKETS
          local merged = 0
          for j = 1, math.min(shift, #c) do merged = merged + c[j] end
          local kept = {}
          if shift < #c then
            for j = shift + 1, #c do kept[#kept + 1] = c[j] end
            kept[1] = kept[1] + merged
          else
            kept[1] = merged
          end
          c = kept
          out.c = c
          out.f = out.f + shift
          index = index - shift
        end
        for j = #c + 1, index + 1 do c[j] = 0 end
        c[index + 1] = c[index + 1] + units
      end
    end
  end
  return out
end

-- Decides on buckets of this window's grid (`stored`: {f, c} or nil).
function Sliding:decide_in_grid(stored, now, cost)
  local window, limit = self.window, self.limit
  local g = granularity(window)
  local current, oldest = idiv(now, g), oldest_live(window, now)
  local first, live = 0, {}
  if stored then
    local n = #stored.c
    local skip = math.min(math.max(oldest - stored.f, 0), n)
    while skip < n and stored.c[skip + 1] == 0 do skip = skip + 1 end
    first = stored.f + skip
    for j = skip + 1, n do live[#live + 1] = stored.c[j] end
  end
  local used = 0
  for j = 1, #live do used = used + live[j] end
  local allowed = cost <= limit and cost <= limit - used
  local newest = nil
  if #live > 0 then newest = first + #live - 1 end
  local write, new, counted, last = KEEP, nil, used, newest
  if allowed and cost > 0 then
    local bucket = math.max(current, newest or 0)
    local new_first = first
    if #live == 0 then new_first = bucket end
    local index = bucket - new_first
    local counts = {}
    for j = 1, #live do counts[j] = live[j] end
    for j = #live + 1, index + 1 do counts[j] = 0 end
    counts[index + 1] = counts[index + 1] + cost
    write, new = STORE, {w = window, f = new_first, c = counts}
    counted, last = used + cost, new_first + index
  elseif used == 0 and stored then
    write = DELETE
  end
  local retry = 0
  if not allowed then
    retry = denied_retry(cost, limit, function()
      return time_to_forget(window, first, live, used - (limit - cost)) - now
    end)
  end
  local reset = 0
  if last then reset = drop_time(window, last) - now end
  return decision(allowed, limit, math.max(limit - counted, 0), retry, reset), write, new
end

function Sliding:decide(st, now, cost)
  if not st then return self:decide_in_grid(nil, now, cost) end
  if st.w == self.window then return self:decide_in_grid(st, now, cost) end
  -- Another window: regridded, and stored whatever the call does.
  local moved = regrid(st, self.window, now)
  local d, write, new = self:decide_in_grid(moved, now, cost)
  if write == KEEP then return d, STORE, moved end
  return d, write, new
end

function Sliding:give_back(st, now, units)
  local counts = {}
  for j = 1, #st.c do counts[j] = st.c[j] end
  local left = units
  while #counts > 0 do
    local n = #counts
    local back = math.min(left, counts[n])
    counts[n], left = counts[n] - back, left - back
    if counts[n] > 0 then break end
    counts[n] = nil
  end
  if #counts == 0 then return nil end
  return {w = st.w, f = st.f, c = counts}
end

function Sliding.reset_at(st) return drop_time(st.w, st.f + #st.c - 1) end

function Sliding.encode(st)
  local words = {fmt(st.w), fmt(st.f)}
  for j = 1, #st.c do words[#words + 1] = fmt(st.c[j]) end
  return table.concat(words, ' ')
end

function Sliding.decode(w)
  local n = #w - 2
  if n < 1 or n > MAX_BUCKETS or w[1] < 1 or w[3] < 1 or w[#w] < 1 then return nil end
  local counts = {}
  for j = 3, #w do counts[#counts + 1] = w[j] end
  return {w = w[1], f = w[2], c = counts}
end

---------------------------------------------------------------------------------------------
-- Token bucket (core/src/token.rs), in parts: a token is `period` parts, the bucket gains
-- `rate` parts a ms. State: {t = full_at, s = slack}. A deficit is `ahead * rate - slack`
-- (`ahead` the ms until full_at), computed only when it is at most a full bucket
-- (capacity * period < 2^53); a larger one reads as an empty bucket, and what depends on
-- its size is computed in ms.

local Token = {tag = 'T'}
Token.__index = Token

function Token.new(capacity, rate, period)
  return setmetatable({capacity = capacity, rate = rate, period = period, full = capacity * period}, Token)
end

-- The state of a bucket lacking `deficit` (0 < deficit < 2^53) parts at `now`.
function Token:state_of(deficit, now)
  local q = idiv(deficit, self.rate)
  local r = deficit - q * self.rate
  if r == 0 then return {t = now + q, s = 0} end
  return {t = now + q + 1, s = self.rate - r}
end

-- The ms until full and the slack that counts (at most rate - 1) of a stored state.
function Token:ahead(st, now)
  return math.max(st.t - now, 0), math.min(st.s, self.rate - 1)
end

function Token:decide(st, now, cost)
  local rate, full, period, capacity = self.rate, self.full, self.period, self.capacity
  local ahead, slack, deficit, over = 0, 0, 0, false
  if st then
    ahead, slack = self:ahead(st, now)
    if ahead > 0 then
      -- deficit <= full  <=>  (ahead - 1) * rate <= full - (rate - slack)
      local room = full - (rate - slack)
      if room >= 0 and ahead - 1 <= idiv(room, rate) then
        deficit = (ahead - 1) * rate + (rate - slack)
      else
        over = true
      end
    end
  end
  local level = 0
  if not over then level = full - deficit end
  local need = 0
  if cost <= capacity then need = cost * period end
  local allowed = cost <= capacity and level >= need
  local write, new = KEEP, nil
  if allowed and cost > 0 then
    write, new = STORE, self:state_of(deficit + need, now)
  elseif st and ahead == 0 then
    write = DELETE
  end
  local after = new
  if write == KEEP then after = st end
  local retry = 0
  if not allowed then
    retry = denied_retry(cost, capacity, function()
      -- ceil((deficit - (full - need)) / rate) = ahead - floor((slack + full - need) / rate)
      local f = full - need
      local qf = idiv(f, rate)
      local rf = f - qf * rate
      local carry = 0
      if slack >= rate - rf then carry = 1 end
      return ahead - qf - carry
    end)
  end
  local remaining = level
  if allowed then remaining = level - need end
  local reset = 0
  if after then reset = after.t - now end
  return decision(allowed, capacity, idiv(remaining, period), retry, reset), write, new
end

-- Gives back units * period parts, in ms and parts: the deficit minus them is
-- (ahead - q) * rate - r, where slack + units * period = q * rate + r.
function Token:give_back(st, now, units)
  local ahead, slack = self:ahead(st, now)
  if ahead == 0 then return nil end
  local q, r = muldivmod(units, self.period, self.rate)
  if r >= self.rate - slack then
    r, q = r - (self.rate - slack), q + 1
  else
    r = r + slack
  end
  if q >= ahead then return nil end
  return {t = now + ahead - q, s = r}
end

function Token.reset_at(st) return st.t end

function Token.encode(st) return fmt(st.t) .. ' ' .. fmt(st.s) end

function Token.decode(w)
  if #w ~= 2 or w[1] < 1 then return nil end
  return {t = w[1], s = w[2]}
end

---------------------------------------------------------------------------------------------
-- The limiter of a call: 'F', 'S' or 'T' and its figures (numbers, durations in ms).

local function limiter(tag, figures)
  if tag == 'F' then return Fixed.new(figures[1], figures[2]) end
  if tag == 'S' then return Sliding.new(figures[1], figures[2]) end
  return Token.new(figures[1], figures[2], figures[3])
end

-- Limiter::refund: gives back up to `units` and replies as a report; never creates a state.
local function refund(alg, st, now, units)
  if not st then return alg:decide(nil, now, 0) end
  local new = st
  if units > 0 then new = alg:give_back(st, now, units) end
  local d, write, stored = alg:decide(new, now, 0)
  if write == STORE then return d, STORE, stored end
  if new == nil or write == DELETE then return d, DELETE end
  if alg.encode(new) == alg.encode(st) then return d, KEEP end
  return d, STORE, new
end

-- A decision made while the key is blocked for `left` more.
local function blocked_decision(d, left)
  local retry = d.retry
  if retry == 0 then retry = left elseif retry ~= -1 then retry = math.max(retry, left) end
  return decision(false, d.limit, 0, retry, math.max(d.reset, left))
end

-- record::decide_view: a call on a record ({st = state or nil, b = blocked until} or nil).
-- `take` is the cost, or nil for a refund of `units`. Returns the decision and the write
-- (KEEP, DELETE, or STORE and the new record).
local function decide(alg, rec, now, take, units, block)
  local st = rec and rec.st
  local blocked = rec and rec.b > now
  local d, write, new
  if take and not blocked then
    d, write, new = alg:decide(st, now, take)
  elseif take then
    local report = alg:decide(st, now, 0)
    local taking = alg:decide(st, now, take)
    local retry = 0
    if not taking.allowed then retry = taking.retry end
    d = decision(report.allowed, report.limit, report.remaining, retry, report.reset)
    write = KEEP
  else
    d, write, new = refund(alg, st, now, units)
  end
  local denied = take and not d.allowed
  local new_block = nil
  if not blocked and denied and block > 0 then new_block = now + block end
  local until_ = new_block
  if blocked then until_ = rec.b end
  if not until_ then
    if write == STORE then return d, STORE, {st = new, b = 0} end
    return d, write
  end
  if write == KEEP and not new_block then
    return blocked_decision(d, until_ - now), KEEP
  end
  local state = nil
  if write == KEEP then state = st elseif write == STORE then state = new end
  return blocked_decision(d, until_ - now), STORE, {st = state, b = until_}
end

---------------------------------------------------------------------------------------------
-- Keys: a string "RL1 <tag> <blocked until> [<state>]", expiring at the record's reset.

local WRONGTYPE = 'WRONGTYPE Operation against a key holding the wrong kind of value'
local MODULE_TYPES = {ratelimFW = true, ratelimSW = true, ratelimTB = true}
local OTHER_BACKEND = 'WRONGTYPE the key holds a limiter of the redis-ratelimit module, and this '
  .. 'client runs its scripts (the module is not loaded here, or the client was set to scripts)'

local function wrongtype(key)
  local kind = redis.call('TYPE', key)['ok']
  if MODULE_TYPES[kind] then error({err = OTHER_BACKEND}) end
  error({err = WRONGTYPE})
end

-- The record at `key` for `alg`, nil when there is none; WRONGTYPE for anything else.
local function load(key, alg)
  local raw = redis.pcall('GET', key)
  if type(raw) == 'table' then wrongtype(key) end
  if not raw then return nil end
  local words = {}
  for w in string.gmatch(raw, '%S+') do words[#words + 1] = w end
  if words[1] ~= 'RL1' or words[2] ~= alg.tag then wrongtype(key) end
  local numbers = {}
  for j = 3, #words do
    local n = tonumber(words[j])
    if not n or n < 0 or n ~= math.floor(n) or n >= HUGE then wrongtype(key) end
    numbers[#numbers + 1] = n
  end
  local b = numbers[1]
  if not b then wrongtype(key) end
  table.remove(numbers, 1)
  if #numbers == 0 then
    if b == 0 then wrongtype(key) end
    return {st = nil, b = b}
  end
  local st = alg.decode(numbers)
  if not st then wrongtype(key) end
  return {st = st, b = b}
end

local function reset_at(alg, rec)
  local at = rec.b
  if rec.st then at = math.max(at, alg.reset_at(rec.st)) end
  return at
end

local function save(key, alg, write, rec, now)
  if write == DELETE then
    redis.call('DEL', key)
  elseif write == STORE then
    local at = reset_at(alg, rec)
    if at <= now then
      redis.call('DEL', key)
      return
    end
    local text = 'RL1 ' .. alg.tag .. ' ' .. fmt(rec.b)
    if rec.st then text = text .. ' ' .. alg.encode(rec.st) end
    redis.call('SET', key, text, 'PXAT', fmt(at))
  end
end

-- The server clock in ms, read once per script.
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + idiv(tonumber(t[2]), 1000)
end

local function reply(d)
  local allowed = 0
  if d.allowed then allowed = 1 end
  return {allowed, d.limit, d.remaining, d.retry, d.reset}
end

-- The latest retry of the denying decisions (-1, never, wins).
local function latest(decisions)
  local retry = 0
  for _, d in ipairs(decisions) do
    if not d.allowed then
      if d.retry == -1 or retry == -1 then retry = -1 else retry = math.max(retry, d.retry) end
    end
  end
  return retry
end

-- Runs the script's body: an error with a code it raises (WRONGTYPE …, or a command's own,
-- OOM …) is replied as it is, without the script's name and line that Redis adds to errors
-- raised out of a script. (Redis 7.0 hands pcall the error's text, Valkey its table.)
local function run(main)
  local ok, out = pcall(main)
  if ok or (type(out) == 'table' and out.err) then return out end
  if type(out) == 'string' and string.find(out, '^%u+ ') then return redis.error_reply(out) end
  error(out, 0)
end

