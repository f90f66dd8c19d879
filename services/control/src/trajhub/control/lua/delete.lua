-- Delete frames. ARGV[6]: count c, ARGV[7]: "1" if base versions follow,
-- then c indices and c base versions (if any).

local stored = stored_result()
if stored then
  return {1, stored}
end

local c = tonumber(ARGV[6])
local has_base = ARGV[7] == '1'
local given = argv_numbers(8, c)
local given_base = {}
if has_base then
  given_base = argv_numbers(8 + c, c)
end

local seq = read_meta()
local n = redis.call('LLEN', K_ORDER)
local status, reason = check_indices(given, n)
if status then
  return fail(status, reason)
end

-- The event lists the deleted indices ascending; base versions follow their index.
local perm = {}
for i = 1, c do
  perm[i] = i
end
table.sort(perm, function(a, b) return given[a] < given[b] end)
local indices, base = {}, {}
for i = 1, c do
  indices[i] = given[perm[i]]
  if has_base then
    base[i] = given_base[perm[i]]
  end
end

local fids = resolve(K_ORDER, indices, n)
local current = current_entries(fids)
local n_conflicts, conflicts = find_conflicts(indices, fids, current, base)
if n_conflicts > 0 then
  return fail('conflict', string.format('%d of %d frames changed since the given base versions',
    n_conflicts, c), conflicts)
end

local lo, hi = indices[1], indices[c]
-- Moving the shorter side through Lua costs ~1 us per element; an LSET a few.
if 8 * c <= math.min(hi + 1, n - lo) then
  -- Overwrite each deleted id with a marker (frame ids are digits, so '-' is
  -- free) and remove the markers, scanning from the nearer end.
  for i = 1, c do
    local x = indices[i]
    if x > n / 2 then x = x - n end
    redis.call('LSET', K_ORDER, x, '-')
  end
  if hi < n - lo then
    redis.call('LREM', K_ORDER, c, '-')
  else
    redis.call('LREM', K_ORDER, -c, '-')
  end
else
  -- Rebuild the shorter side of the list around the deleted span.
  local gone = {}
  for i = 1, c do
    gone[indices[i]] = true
  end
  local kept, m = {}, 0
  if hi + 1 <= n - lo then
    local head = redis.call('LRANGE', K_ORDER, 0, hi)
    for i = 1, #head do
      if not gone[i - 1] then
        m = m + 1
        kept[m] = head[i]
      end
    end
    redis.call('LTRIM', K_ORDER, hi + 1, -1)
    local rev = {}
    for i = 1, m do
      rev[i] = kept[m - i + 1]
    end
    chunked('LPUSH', K_ORDER, rev)
  else
    local tail = redis.call('LRANGE', K_ORDER, lo, -1)
    for i = 1, #tail do
      if not gone[lo + i - 1] then
        m = m + 1
        kept[m] = tail[i]
      end
    end
    redis.call('LTRIM', K_ORDER, 0, lo - 1)
    chunked('RPUSH', K_ORDER, kept)
  end
end
chunked('HDEL', K_FRAMES, fids)

local entries = {}
for i = 1, c do
  local e = current[i]
  entries[i] = entry_json(fids[i], e[1], e[2], e[3])
end
local body = '"indices":' .. int_list_json(indices) .. ',"frames":[' .. table.concat(entries, ',')
  .. '],"base_versions":' .. int_list_json(base) .. ',"new_slots":[],"n_frames":' .. int(n - c)
return commit(seq + 1, 'frames_deleted', body, {})
