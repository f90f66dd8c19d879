-- Read a room's index atomically (read-only).
-- KEYS: meta, order, frames.
-- ARGV[1] = "slice": ARGV[2..4] start, stop, step ("" = None; Python slice semantics,
--           negative bounds count from the end);
-- ARGV[1] = "list":  ARGV[2..] indices (negative ones count from the end).
-- Returns {seq, n_frames, exists, bad index ("" if none), start, step, count,
--          frame ids joined by ",", packed entries joined by ","}.

local K_META, K_ORDER, K_FRAMES = KEYS[1], KEYS[2], KEYS[3]

local seq = tonumber(redis.call('HGET', K_META, 'seq') or '0')
local exists = redis.call('EXISTS', K_META)
local n = redis.call('LLEN', K_ORDER)

local function opt(s)
  if s == '' then return nil end
  return tonumber(s)
end

-- CPython's PySlice_AdjustIndices.
local function adjust(start, stop, step)
  local lower, upper = 0, n
  if step < 0 then lower, upper = -1, n - 1 end
  local function bound(x, default)
    if x == nil then return default end
    if x < 0 then
      x = x + n
      if x < lower then x = lower end
    elseif x > upper then
      x = upper
    end
    return x
  end
  start = bound(start, step > 0 and lower or upper)
  stop = bound(stop, step > 0 and upper or lower)
  local count = 0
  if step > 0 and stop > start then
    count = math.floor((stop - start - 1) / step) + 1
  elseif step < 0 and start > stop then
    count = math.floor((start - stop - 1) / -step) + 1
  end
  return start, count
end

local indices = {}
local start, step, count = 0, 1, 0
if ARGV[1] == 'slice' then
  step = tonumber(ARGV[4])
  start, count = adjust(opt(ARGV[2]), opt(ARGV[3]), step)
  for i = 1, count do
    indices[i] = start + (i - 1) * step
  end
else
  count = #ARGV - 1
  for i = 1, count do
    local x = tonumber(ARGV[i + 1])
    if x < 0 then x = x + n end
    if x < 0 or x >= n then
      return {seq, n, exists, ARGV[i + 1], 0, 1, 0, '', ''}
    end
    indices[i] = x
  end
end

local fids = resolve(K_ORDER, indices, n)
local packed = {}
if count > 0 then
  packed = hmget(K_FRAMES, fids)
end
for i = 1, count do
  if not packed[i] then
    return redis.error_reply('trajhub: no index entry for frame ' .. fids[i])
  end
end
-- Two flat strings parse far faster in the client than 2 * count bulk replies.
return {seq, n, exists, '', start, step, count, table.concat(fids, ','),
  table.concat(packed, ',')}
