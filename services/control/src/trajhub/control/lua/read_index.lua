-- Read a room's index atomically (read-only).
-- KEYS: meta, order, frames.
-- ARGV[1] = "slice": ARGV[2..4] start, stop, step ("" = None; Python slice semantics,
--           negative bounds count from the end);
-- ARGV[1] = "list":  ARGV[2..] indices (negative ones count from the end).
-- ARGV[1] = "if", ARGV[2] = seq, ARGV[3] = created, ARGV[4..] one of the above: a read
--           by a caller holding the answer of that read at that seq (of the room created
--           then); if the room is still there, count is -1 and no entries come back.
-- Returns {seq, n_frames, exists, bad index ("" if none), start, step, count,
--          frame ids joined by ",", packed entries joined by ",", created}.
-- Every change of the index is a commit, which moves seq: at one seq of one room (its
-- `created`), a read's answer never changes.

local K_META, K_ORDER, K_FRAMES = KEYS[1], KEYS[2], KEYS[3]

local head = redis.call('HMGET', K_META, 'seq', 'created')
local seq = tonumber(head[1] or '0')
local created = head[2] or ''
local exists = redis.call('EXISTS', K_META)
local n = redis.call('LLEN', K_ORDER)

local a = 0  -- where the read's own arguments start, less one
if ARGV[1] == 'if' then
  if exists == 1 and tonumber(ARGV[2]) == seq and ARGV[3] == created then
    return {seq, n, exists, '', 0, 1, -1, '', '', created}
  end
  a = 3
end

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
if ARGV[a + 1] == 'slice' then
  step = tonumber(ARGV[a + 4])
  start, count = adjust(opt(ARGV[a + 2]), opt(ARGV[a + 3]), step)
  for i = 1, count do
    indices[i] = start + (i - 1) * step
  end
else
  count = #ARGV - a - 1
  for i = 1, count do
    local x = tonumber(ARGV[a + i + 1])
    if x < 0 then x = x + n end
    if x < 0 or x >= n then
      return {seq, n, exists, ARGV[a + i + 1], 0, 1, 0, '', '', created}
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
  table.concat(packed, ','), created}
