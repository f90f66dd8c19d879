-- Delete frames. ARGV[A+1]: count c, A+2: "1" if base versions follow, A+3: "i"
-- (indices) or "f" (frame ids), then c targets and c base versions (if any).

local stored = stored_result()
if stored then
  return {1, stored}
end

local c = tonumber(ARGV[A + 1])
local has_base = ARGV[A + 2] == '1'
local by = ARGV[A + 3]
local first = A + 4
local given_base = {}
if has_base then
  given_base = argv_numbers(first + c, c)
end

local seq = read_meta()
local n = redis.call('LLEN', K_ORDER)
local given, given_fids = resolve_targets(by, first, c, n, given_base)
if not given then
  return given_fids
end

-- The event lists the deleted indices ascending; base versions follow their index.
local perm = {}
for i = 1, c do
  perm[i] = i
end
table.sort(perm, function(a, b) return given[a] < given[b] end)
local indices, base, fids = {}, {}, {}
for i = 1, c do
  indices[i] = given[perm[i]]
  fids[i] = given_fids[perm[i]]
  if has_base then
    base[i] = given_base[perm[i]]
  end
end

local current, refusal = checked_entries(indices, fids, base)
if not current then
  return refusal
end

remove_positions(K_ORDER, indices, n)
chunked('HDEL', K_FRAMES, fids)

local body = '"indices":' .. int_list_json(indices) .. ',"frames":' .. entries_json(fids, current)
  .. ',"base_versions":' .. int_list_json(base) .. ',"new_slots":[],"n_frames":' .. int(n - c)
return commit(seq + 1, 'frames_deleted', body, {})
