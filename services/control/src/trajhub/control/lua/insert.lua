-- Insert frames. ARGV[A+1]: position ("" appends), ARGV[A+2..]: content hashes.

local stored = stored_result()
if stored then
  return {1, stored}
end

local hashes = {}
for i = A + 2, #ARGV do
  hashes[i - A - 1] = ARGV[i]
end
local k = #hashes
local seq, next_fid, next_slot = read_meta()
local n = redis.call('LLEN', K_ORDER)
local refusal = lock_refusal({})
if refusal then
  return refusal
end
local at = n
if ARGV[A + 1] ~= '' then
  at = tonumber(ARGV[A + 1])
  if at > n then
    return fail('not_found', string.format('insert position %d out of range for %d frames', at, n))
  end
end

local slot_of, fresh, blobs = assign_slots(hashes, next_slot)
if not slot_of then
  return fail('invalid', fresh)
end

local fids = {}
for i = 1, k do
  fids[i] = int(next_fid + i - 1)
end

-- LPUSH prepends its arguments one by one, so a block goes in reversed.
local function prepend(items)
  local rev, m = {}, #items
  for i = 1, m do
    rev[i] = items[m - i + 1]
  end
  chunked('LPUSH', K_ORDER, rev)
end

-- Costs per list element: LINSERT scans from the head in C (~20x cheaper than
-- moving an element through Lua), moving a side goes through Lua.
local side = math.min(at, n - at)
if at == n then
  chunked('RPUSH', K_ORDER, fids)
elseif at == 0 then
  prepend(fids)
elseif k * at <= 16 * side then
  local pivot = redis.call('LINDEX', K_ORDER, at)
  for i = 1, k do
    redis.call('LINSERT', K_ORDER, 'BEFORE', pivot, fids[i])
  end
elseif at <= n - at then
  -- Nearer the head: move the head out, push the new ids and the head back in front.
  local head = redis.call('LRANGE', K_ORDER, 0, at - 1)
  redis.call('LTRIM', K_ORDER, at, -1)
  prepend(fids)
  prepend(head)
else
  local tail = redis.call('LRANGE', K_ORDER, at, -1)
  redis.call('LTRIM', K_ORDER, 0, at - 1)
  chunked('RPUSH', K_ORDER, fids)
  chunked('RPUSH', K_ORDER, tail)
end

local pairs_, entries, indices = {}, {}, {}
for i = 1, k do
  local h = hashes[i]
  local slot = slot_of[h]
  pairs_[2 * i - 1] = fids[i]
  pairs_[2 * i] = '1:' .. h .. ':' .. int(slot)
  entries[i] = entry_json(fids[i], 1, h, slot)
  indices[i] = at + i - 1
end
chunked('HSET', K_FRAMES, pairs_)
local new_slots = write_new_slots(fresh, blobs, slot_of)

local body = '"indices":' .. int_list_json(indices) .. ',"frames":[' .. table.concat(entries, ',')
  .. '],"base_versions":[],"new_slots":' .. new_slots .. ',"n_frames":' .. int(n + k)
return commit(seq + 1, 'frames_inserted', body,
  {'next_fid', int(next_fid + k), 'next_slot', int(next_slot + #fresh)})
