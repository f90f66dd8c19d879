-- Replace, patch or relay out frames. ARGV[A+1]: "replace", "patch" or "relayout",
-- A+2: count c, A+3: "1" if base versions follow, A+4: "i" (indices) or "f" (frame ids),
-- then c targets, c hashes, c base versions (if any) and, for a patch, the changed keys
-- (for a relayout, keep_from: see assign_slots).
-- A relayout gives the frames fresh slots with the same content (hashes must be the
-- current ones), keeps their versions and ignores locks: nothing anyone sees changes.

local stored = stored_result()
if stored then
  return {1, stored}
end

local patch = ARGV[A + 1] == 'patch'
local relayout = ARGV[A + 1] == 'relayout'
local c = tonumber(ARGV[A + 2])
local has_base = ARGV[A + 3] == '1'
local by = ARGV[A + 4]
local first = A + 5
local hashes = {}
for i = 1, c do
  hashes[i] = ARGV[first + c + i - 1]
end
local base = {}
if has_base then
  base = argv_numbers(first + 2 * c, c)
end
local keys_json = '[]'
if patch then
  local ks = {}
  for i = first + (has_base and 3 or 2) * c, #ARGV do
    ks[#ks + 1] = ARGV[i]
  end
  keys_json = cjson.encode(ks)
end

local seq, next_fid, next_slot = read_meta()
local n = redis.call('LLEN', K_ORDER)
local indices, fids = resolve_targets(by, first, c, n, base)
if not indices then
  return fids
end
local current, refusal = checked_entries(indices, fids, base, relayout)
if not current then
  return refusal
end
if relayout then
  for i = 1, c do
    if current[i][2] ~= hashes[i] then
      return fail('conflict', 'frame ' .. fids[i] .. ' has other content than the relayout '
        .. 'names; read the index again')
    end
  end
end

local keep_from = relayout and tonumber(ARGV[#ARGV]) or nil
local slot_of, fresh, blobs = assign_slots(hashes, next_slot, keep_from)
if not slot_of then
  return fail('invalid', fresh)
end

-- A patch's new slot keeps only the changed keys and reads the rest from the slot
-- the frame had.
local layer = nil
if patch then
  layer = {}
  for i = 1, c do
    local h = hashes[i]
    if not layer[h] then
      layer[h] = ',"base":' .. int(current[i][3]) .. ',"keys":' .. keys_json
    end
  end
end

local pairs_, entries = {}, {}
for i = 1, c do
  local h = hashes[i]
  local slot = slot_of[h]
  local version = current[i][1] + (relayout and 0 or 1)
  pairs_[2 * i - 1] = fids[i]
  pairs_[2 * i] = int(version) .. ':' .. h .. ':' .. int(slot)
  entries[i] = entry_json(fids[i], version, h, slot)
end
chunked('HSET', K_FRAMES, pairs_)
local new_slots = write_new_slots(fresh, blobs, slot_of, layer)

local body = '"indices":' .. int_list_json(indices) .. ',"frames":[' .. table.concat(entries, ',')
  .. '],"base_versions":' .. int_list_json(base) .. ',"new_slots":' .. new_slots
  .. ',"prev":' .. entries_json(fids, current) .. ',"keys":' .. keys_json
  .. ',"n_frames":' .. int(n)
local kind = patch and 'frames_patched' or (relayout and 'frames_relaid' or 'frames_replaced')
return commit(seq + 1, kind, body,
  {'next_slot', int(next_slot + #fresh)})
