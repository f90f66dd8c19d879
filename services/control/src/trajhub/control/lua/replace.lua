-- Replace frames. ARGV[6]: count c, ARGV[7]: "1" if base versions follow,
-- then c indices, c hashes, and c base versions (if any).

local stored = stored_result()
if stored then
  return {1, stored}
end

local c = tonumber(ARGV[6])
local has_base = ARGV[7] == '1'
local indices = argv_numbers(8, c)
local hashes = {}
for i = 1, c do
  hashes[i] = ARGV[7 + c + i]
end
local base = {}
if has_base then
  base = argv_numbers(8 + 2 * c, c)
end

local seq, next_fid, next_slot = read_meta()
local n = redis.call('LLEN', K_ORDER)
local status, reason = check_indices(indices, n)
if status then
  return fail(status, reason)
end
local fids = resolve(K_ORDER, indices, n)
local current = current_entries(fids)
local n_conflicts, conflicts = find_conflicts(indices, fids, current, base)
if n_conflicts > 0 then
  return fail('conflict', string.format('%d of %d frames changed since the given base versions',
    n_conflicts, c), conflicts)
end

local slot_of, fresh, blobs = assign_slots(hashes, next_slot)
if not slot_of then
  return fail('invalid', fresh)
end

local pairs_, entries = {}, {}
for i = 1, c do
  local h = hashes[i]
  local slot = slot_of[h]
  local version = current[i][1] + 1
  pairs_[2 * i - 1] = fids[i]
  pairs_[2 * i] = int(version) .. ':' .. h .. ':' .. int(slot)
  entries[i] = entry_json(fids[i], version, h, slot)
end
chunked('HSET', K_FRAMES, pairs_)
local new_slots = write_new_slots(fresh, blobs, slot_of)

local body = '"indices":' .. int_list_json(indices) .. ',"frames":[' .. table.concat(entries, ',')
  .. '],"base_versions":' .. int_list_json(base) .. ',"new_slots":' .. new_slots
  .. ',"n_frames":' .. int(n)
return commit(seq + 1, 'frames_replaced', body, {'next_slot', int(next_slot + #fresh)})
