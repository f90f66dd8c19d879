-- Shared part of the commit scripts (insert, replace, delete).
--
-- KEYS: events, meta, order, frames, slots (keys.room_keys), idempotency key,
--       then the blob keys of the command's distinct hashes, in first-appearance order.
-- ARGV: 1 "1" if the idempotency key is in use, 2 edit id, 3 time (a JSON number),
--       4 author, 5 room, then the command's own arguments.
-- Returns {replayed (0/1), CommitResult JSON}. Everything is checked before the
-- first write, so a refused command writes nothing.

local K_EVENTS, K_META, K_ORDER, K_FRAMES, K_SLOTS, K_IDEM =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local USE_IDEM = ARGV[1] == '1'
local EDIT_ID, TIME, AUTHOR, ROOM = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local FIRST_BLOB_KEY = 7
local IDEM_TTL = 86400
local GROUPS = {'storage', 'snapshotter'}

local function stored_result()
  if USE_IDEM then
    return redis.call('GET', K_IDEM)
  end
  return false
end

local function fail(status, reason, conflicts_json)
  return {0, '{"status":"' .. status .. '","reason":' .. cjson.encode(reason)
    .. ',"event":null,"conflicts":' .. (conflicts_json or '[]') .. '}'}
end

local function read_meta()
  local m = redis.call('HMGET', K_META, 'seq', 'next_fid', 'next_slot')
  return tonumber(m[1]) or 0, tonumber(m[2]) or 0, tonumber(m[3]) or 0
end

-- Index arguments ARGV[first .. first+count-1] as numbers.
local function argv_numbers(first, count)
  local out = {}
  for i = 1, count do
    out[i] = tonumber(ARGV[first + i - 1])
  end
  return out
end

-- Duplicates are invalid, indices >= n are not found; returns status, reason or nil.
local function check_indices(indices, n)
  local seen = {}
  for i = 1, #indices do
    local x = indices[i]
    if seen[x] then
      return 'invalid', string.format('index %d appears more than once', x)
    end
    seen[x] = true
  end
  for i = 1, #indices do
    if indices[i] >= n then
      return 'not_found', string.format('index %d out of range for %d frames', indices[i], n)
    end
  end
  return nil
end

-- Current entries {version, hash, slot} of the frame ids `fids`.
local function current_entries(fids)
  local packed = hmget(K_FRAMES, fids)
  local out = {}
  local find, sub = string.find, string.sub
  for i = 1, #fids do
    -- version:hash:slot with a 64-character hash; plain find beats a pattern here.
    local p = packed[i] and find(packed[i], ':', 1, true)
    if not p then
      error('trajhub: index entry of frame ' .. tostring(fids[i]) .. ' is missing or corrupt')
    end
    local e = packed[i]
    out[i] = {tonumber(sub(e, 1, p - 1)), sub(e, p + 1, p + 64), tonumber(sub(e, p + 66))}
  end
  return out
end

-- JSON list of Conflicts where base_versions differ from the current versions.
local function find_conflicts(indices, fids, entries, base)
  local parts, m = {}, 0
  for i = 1, #base do
    local e = entries[i]
    if base[i] ~= e[1] then
      m = m + 1
      parts[m] = string.format('{"index":%d,"frame_id":%s,"expected":%d,"actual":%d,"hash":"%s"}',
        indices[i], fids[i], base[i], e[1], e[2])
    end
  end
  return m, '[' .. table.concat(parts, ',') .. ']'
end

-- Slot of every hash: the room's existing slot, else a new one (first appearance
-- order, from next_slot) whose blob must be staged. Returns slot_of, the fresh
-- hashes and their blob keys; or nil, reason when a blob is missing.
local function assign_slots(hashes, next_slot)
  local uniq, seen, u = {}, {}, 0
  for i = 1, #hashes do
    local h = hashes[i]
    if not seen[h] then
      seen[h] = true
      u = u + 1
      uniq[u] = h
    end
  end
  if #KEYS - FIRST_BLOB_KEY + 1 ~= u then
    error('trajhub: ' .. (#KEYS - FIRST_BLOB_KEY + 1) .. ' blob keys for ' .. u .. ' hashes')
  end
  local existing = hmget(K_SLOTS, uniq)
  local slot_of, fresh, blobs, f = {}, {}, {}, 0
  for i = 1, u do
    local h = uniq[i]
    if existing[i] then
      slot_of[h] = tonumber(existing[i])
    else
      f = f + 1
      fresh[f] = h
      blobs[f] = KEYS[FIRST_BLOB_KEY + i - 1]
      slot_of[h] = next_slot + f - 1
    end
  end
  -- One EXISTS per chunk (the keys are distinct, so it counts them); look for the
  -- culprit only when one is missing.
  for i = 1, f, CHUNK do
    local j = math.min(i + CHUNK - 1, f)
    if redis.call('EXISTS', unpack(blobs, i, j)) ~= j - i + 1 then
      for m = i, j do
        if redis.call('EXISTS', blobs[m]) == 0 then
          return nil, 'frame ' .. fresh[m] .. ' was not staged or has expired; upload it again'
        end
      end
    end
  end
  return slot_of, fresh, blobs
end

-- Record the new slots, keep their blobs until storage applies them, and return
-- the event's new_slots JSON.
local function write_new_slots(fresh, blobs, slot_of)
  if #fresh == 0 then
    return '[]'
  end
  local pairs_, parts = {}, {}
  for i = 1, #fresh do
    local h = fresh[i]
    local s = int(slot_of[h])
    pairs_[2 * i - 1] = h
    pairs_[2 * i] = s
    parts[i] = '{"slot":' .. s .. ',"hash":"' .. h .. '"}'
    redis.call('PERSIST', blobs[i])
  end
  chunked('HSET', K_SLOTS, pairs_)
  return '[' .. table.concat(parts, ',') .. ']'
end

local function entry_json(fid, version, h, slot)
  return '{"frame_id":' .. fid .. ',"version":' .. int(version) .. ',"hash":"' .. h
    .. '","slot":' .. int(slot) .. '}'
end

local function int_list_json(items)
  local parts = {}
  for i = 1, #items do
    parts[i] = int(items[i])
  end
  return '[' .. table.concat(parts, ',') .. ']'
end

-- Append the event (stream id <seq>-0), bump meta, store the idempotency record.
-- `body` is the kind-specific JSON fields; `meta` extra meta field/value pairs.
local function commit(seq, kind, body, meta)
  if seq == 1 or redis.call('EXISTS', K_EVENTS) == 0 then
    -- Groups start at 0 so that their consumers see this very first event.
    for _, group in ipairs(GROUPS) do
      redis.pcall('XGROUP', 'CREATE', K_EVENTS, group, '0', 'MKSTREAM')
    end
  end
  local s = int(seq)
  meta[#meta + 1] = 'seq'
  meta[#meta + 1] = s
  redis.call('HSET', K_META, unpack(meta))
  redis.call('HSETNX', K_META, 'created', TIME)
  local event = '{"room":' .. cjson.encode(ROOM) .. ',"seq":' .. s .. ',"kind":"' .. kind
    .. '","author":' .. cjson.encode(AUTHOR) .. ',"edit_id":' .. cjson.encode(EDIT_ID)
    .. ',"time":' .. TIME .. ',' .. body .. '}'
  redis.call('XADD', K_EVENTS, s .. '-0', 'seq', s, 'kind', kind, 'data', event)
  local result = '{"status":"ok","reason":null,"event":' .. event .. ',"conflicts":[]}'
  -- Only accepted commands are remembered: a refused one wrote nothing, so a retry
  -- with the same key (say after uploading the missing frame) must be checked afresh.
  if USE_IDEM then
    redis.call('SET', K_IDEM, result, 'EX', IDEM_TTL)
  end
  return {0, result}
end
