-- Undo or redo: revert the event on top of the author's undo (or redo) stack with a
-- compensating event of kind 'undo' (or 'redo') that names it (`reverts`). Refused
-- as a conflict when a frame it touched changed since. ARGV[A+1]: "undo" or "redo".

local stored = stored_result()
if stored then
  return {1, stored}
end

local mode = ARGV[A + 1]
local stack = mode == 'undo' and K_UNDO or K_REDO
local top = redis.call('LINDEX', stack, 0)
if not top then
  return fail('not_found', 'nothing to ' .. mode .. ' for author ' .. AUTHOR)
end
local found = redis.call('XRANGE', K_EVENTS, top .. '-0', top .. '-0')
if #found == 0 then
  return fail('not_found', 'event ' .. top .. ' is no longer retained; cannot ' .. mode .. ' it')
end
local fields, data = found[1][2], nil
for i = 1, #fields, 2 do
  if fields[i] == 'data' then data = fields[i + 1] end
end
local ev = cjson.decode(data)
local EFFECTS = {frames_inserted = 'insert', frames_replaced = 'replace',
                 frames_patched = 'replace', frames_deleted = 'delete',
                 room_forked = 'insert'}
local effect = ev.effect
if not effect or effect == cjson.null then
  effect = EFFECTS[ev.kind]
end

local seq = read_meta()
local n = redis.call('LLEN', K_ORDER)
local k = #ev.frames
local fids = {}
for i = 1, k do
  fids[i] = int(ev.frames[i].frame_id)
end

local function conflict(parts, m)
  return fail('conflict', string.format('%d of %d frames changed since seq %s; cannot %s it',
    m, k, top, mode), '[' .. table.concat(parts, ',') .. ']')
end

-- The frames an insert or replace wrote must still be as it left them.
local function check_unchanged(pos, current_packed)
  local parts, m = {}, 0
  for i = 1, k do
    local want = ev.frames[i].version
    local actual, h = 0, ''
    if current_packed[i] then
      local e = current_packed[i]
      local p = string.find(e, ':', 1, true)
      actual, h = tonumber(string.sub(e, 1, p - 1)), string.sub(e, p + 1, p + 64)
    end
    if actual ~= want then
      m = m + 1
      parts[m] = string.format('{"index":%d,"frame_id":%s,"expected":%d,"actual":%d,"hash":"%s"}',
        pos[i] or -1, fids[i], want, actual, h)
    end
  end
  return parts, m
end

local current_packed = hmget(K_FRAMES, fids)
local body

if effect == 'delete' then
  -- Bring the deleted frames back where they were, with their content and a new version.
  local parts, m = {}, 0
  for i = 1, k do
    if current_packed[i] then
      m = m + 1
      parts[m] = string.format('{"index":-1,"frame_id":%s,"expected":0,"actual":%d,"hash":""}',
        fids[i], tonumber(string.match(current_packed[i], '^(%d+):')))
    end
  end
  if m > 0 then
    return conflict(parts, m)
  end
  local refusal = lock_refusal({})
  if refusal then
    return refusal
  end
  local positions, pairs_, entries = {}, {}, {}
  for i = 1, k do
    local f = ev.frames[i]
    positions[i] = math.min(ev.indices[i], n + i - 1)
    local v = f.version + 1
    pairs_[2 * i - 1] = fids[i]
    pairs_[2 * i] = int(v) .. ':' .. f.hash .. ':' .. int(f.slot)
    entries[i] = entry_json(fids[i], v, f.hash, f.slot)
  end
  insert_positions(K_ORDER, positions, fids, n)
  chunked('HSET', K_FRAMES, pairs_)
  body = '"effect":"insert","indices":' .. int_list_json(positions) .. ',"frames":['
    .. table.concat(entries, ',') .. '],"n_frames":' .. int(n + k)
else
  local pos = locate(K_ORDER, fids)
  local parts, m = check_unchanged(pos, current_packed)
  if m > 0 then
    return conflict(parts, m)
  end
  local refusal = lock_refusal(fids)
  if refusal then
    return refusal
  end
  local current = current_entries(fids)
  if effect == 'insert' then
    -- Remove the inserted frames again (ascending positions for the event).
    local perm = {}
    for i = 1, k do perm[i] = i end
    table.sort(perm, function(a, b) return pos[a] < pos[b] end)
    local indices, sfids, scur = {}, {}, {}
    for i = 1, k do
      indices[i], sfids[i], scur[i] = pos[perm[i]], fids[perm[i]], current[perm[i]]
    end
    remove_positions(K_ORDER, indices, n)
    chunked('HDEL', K_FRAMES, sfids)
    body = '"effect":"delete","indices":' .. int_list_json(indices) .. ',"frames":'
      .. entries_json(sfids, scur) .. ',"n_frames":' .. int(n - k)
  else
    -- Put back the entries the replace (or patch) replaced.
    if type(ev.prev) ~= 'table' or #ev.prev ~= k then
      return fail('not_found', 'event ' .. top .. ' does not record the entries it replaced')
    end
    local pairs_, entries = {}, {}
    for i = 1, k do
      local before = ev.prev[i]
      local v = current[i][1] + 1
      pairs_[2 * i - 1] = fids[i]
      pairs_[2 * i] = int(v) .. ':' .. before.hash .. ':' .. int(before.slot)
      entries[i] = entry_json(fids[i], v, before.hash, before.slot)
    end
    chunked('HSET', K_FRAMES, pairs_)
    body = '"effect":"replace","indices":' .. int_list_json(pos) .. ',"frames":['
      .. table.concat(entries, ',') .. '],"prev":' .. entries_json(fids, current)
      .. ',"n_frames":' .. int(n)
  end
end

return commit(seq + 1, mode, body .. ',"reverts":' .. top, {})
