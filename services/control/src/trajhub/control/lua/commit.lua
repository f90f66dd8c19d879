-- Shared part of the commit scripts (insert, replace, delete, revert).
--
-- KEYS: events, meta, order, frames, slots, locks, lock frames, lock expiry
--       (keys.room_keys), the author's undo and redo stacks, idempotency key, then the
--       blob keys of the command's distinct hashes, in first-appearance order.
-- ARGV: 1 "1" if the idempotency key is in use, 2 edit id, 3 time (a JSON number),
--       4 author, 5 room, 6 now in ms ("" = Redis clock), 7 presented lock token
--       ("" = none), 8 its fence, 9 undo retention (entries per author, 0 = no limit),
--       then the command's own arguments from ARGV[A + 1].
-- Returns {replayed (0/1), CommitResult JSON}. Everything is checked before the
-- first write, so a refused command writes nothing (purging expired locks aside).

local K_EVENTS, K_META, K_ORDER, K_FRAMES, K_SLOTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local K_LOCKS, K_LOCKFIDS, K_LOCKEXP = KEYS[6], KEYS[7], KEYS[8]
local K_UNDO, K_REDO, K_IDEM = KEYS[9], KEYS[10], KEYS[11]
local USE_IDEM = ARGV[1] == '1'
local EDIT_ID, TIME, AUTHOR, ROOM = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local NOW_ARG, TOKEN, FENCE = ARGV[6], ARGV[7], tonumber(ARGV[8])
local RETENTION = tonumber(ARGV[9]) or 0
local A = 9
local FIRST_BLOB_KEY = 12
-- Keys control made up itself only guard redis-py's resend after a dropped connection.
local IDEM_TTL = string.sub(ARGV[2], 1, 5) == 'auto-' and 600 or 86400
local GROUPS = {'storage', 'snapshotter'}

-- The answer to a retried command: its record holds the seq it produced, and the
-- answer is rebuilt from that event (records stay ~100 bytes, whatever the command).
local function stored_result()
  if not USE_IDEM then
    return false
  end
  local seq = redis.call('GET', K_IDEM)
  if not seq then
    return false
  end
  local found = redis.call('XRANGE', K_EVENTS, seq .. '-0', seq .. '-0')
  if #found == 0 then
    return '{"status":"ok","reason":"already applied as seq ' .. seq .. ', whose event is '
      .. 'archived","event":null,"conflicts":[]}'
  end
  local fields = found[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'data' then
      return '{"status":"ok","reason":null,"event":' .. fields[i + 1] .. ',"conflicts":[]}'
    end
  end
  error('trajhub: event ' .. seq .. ' has no data field')
end

local function fail(status, reason, conflicts_json, holder_json_)
  return {0, '{"status":"' .. status .. '","reason":' .. cjson.encode(reason)
    .. ',"event":null,"conflicts":' .. (conflicts_json or '[]') .. ',"holder":'
    .. (holder_json_ or 'null') .. '}'}
end

local function describe_holder(rec)
  local r = cjson.decode(rec)
  local what = r.room and 'the room' or (#r.frame_ids .. ' frame(s)')
  local msg = ''
  if r.message and r.message ~= cjson.null then
    msg = ' (' .. r.message .. ')'
  end
  return what .. ' locked by ' .. r.author .. msg
end

-- nil when no other live lock covers `fids` (frame ids; the room lock always counts)
-- and the presented lock, if any, is live with its current fence; else the refusal.
local function lock_refusal(fids)
  if TOKEN == '' and redis.call('EXISTS', K_LOCKFIDS) == 0 then
    return nil
  end
  local now = now_ms(NOW_ARG)
  local fields = {'room'}
  for i = 1, #fids do
    fields[i + 1] = fids[i]
  end
  local t, rec, exp = other_holder(K_LOCKS, K_LOCKFIDS, K_LOCKEXP, fields, TOKEN, now)
  local holder = t and holder_json(rec, exp) or nil
  if TOKEN ~= '' then
    local mine = redis.call('HGET', K_LOCKS, TOKEN)
    local mexp = redis.call('ZSCORE', K_LOCKEXP, TOKEN)
    if not mine or not mexp or tonumber(mexp) <= now then
      local reason = 'the presented lock (fence ' .. int(FENCE) .. ') has expired or was released'
      if t then reason = reason .. '; ' .. describe_holder(rec) end
      return fail('locked', reason, nil, holder)
    end
    local fence = cjson.decode(mine).fence
    if fence ~= FENCE then
      return fail('locked', 'stale fence ' .. int(FENCE) .. ': the lock\'s fence is ' .. int(fence),
        nil, holder)
    end
  end
  if t then
    return fail('locked', describe_holder(rec) .. ' ' .. remaining(exp, now), nil, holder)
  end
  return nil
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

-- The current entries of `fids` if no other lock covers them and `base` (when given)
-- matches their versions; else nil and the refusal.
local function checked_entries(indices, fids, base, ignore_locks)
  local refusal = not ignore_locks and lock_refusal(fids)
  if refusal then
    return nil, refusal
  end
  local current = current_entries(fids)
  local n_conflicts, conflicts = find_conflicts(indices, fids, current, base)
  if n_conflicts > 0 then
    return nil, fail('conflict', string.format(
      '%d of %d frames changed since the given base versions', n_conflicts, #fids), conflicts)
  end
  return current
end

-- Resolve the targets ARGV[first ..] ("i": indices, "f": frame ids) of count c.
-- Returns indices, fids (strings); or nil, refusal when one is out of range/deleted.
local function resolve_targets(by, first, c, n, base)
  local targets = argv_numbers(first, c)
  if by == 'i' then
    local status, reason = check_indices(targets, n)
    if status then
      return nil, fail(status, reason)
    end
    return targets, resolve(K_ORDER, targets, n)
  end
  local fids = {}
  for i = 1, c do
    fids[i] = int(targets[i])
  end
  local pos = locate(K_ORDER, fids)
  local parts, m = {}, 0
  for i = 1, c do
    if not pos[i] then
      m = m + 1
      parts[m] = string.format('{"index":-1,"frame_id":%s,"expected":%d,"actual":0,"hash":""}',
        fids[i], base[i] or 0)
    end
  end
  if m > 0 then
    return nil, fail('conflict', string.format('%d of %d frames were deleted', m, c),
      '[' .. table.concat(parts, ',') .. ']')
  end
  return pos, fids
end

local function read_meta()
  local m = redis.call('HMGET', K_META, 'seq', 'next_fid', 'next_slot')
  return tonumber(m[1]) or 0, tonumber(m[2]) or 0, tonumber(m[3]) or 0
end

-- Slot of every hash: the room's existing slot, else a new one (first appearance
-- order, from next_slot) whose blob must be staged; with keep_from (a relayout), an
-- existing slot only if it is at least keep_from. Returns slot_of, the fresh
-- hashes and their blob keys; or nil, reason when a blob is missing.
local function assign_slots(hashes, next_slot, keep_from)
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
    local have = existing[i] and tonumber(existing[i])
    if have and (not keep_from or have >= keep_from) then
      slot_of[h] = have
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
-- the event's new_slots JSON. `layer` (patches): the JSON tail of each fresh hash's
-- slot write, naming its base slot and kept keys.
local function write_new_slots(fresh, blobs, slot_of, layer)
  if #fresh == 0 then
    return '[]'
  end
  local pairs_, parts = {}, {}
  for i = 1, #fresh do
    local h = fresh[i]
    local s = int(slot_of[h])
    pairs_[2 * i - 1] = h
    pairs_[2 * i] = s
    parts[i] = '{"slot":' .. s .. ',"hash":"' .. h .. '"' .. (layer and layer[h] or '') .. '}'
    redis.call('PERSIST', blobs[i])
  end
  chunked('HSET', K_SLOTS, pairs_)
  return '[' .. table.concat(parts, ',') .. ']'
end

local function entry_json(fid, version, h, slot)
  return '{"frame_id":' .. fid .. ',"version":' .. int(version) .. ',"hash":"' .. h
    .. '","slot":' .. int(slot) .. '}'
end

local function entries_json(fids, entries)
  local parts = {}
  for i = 1, #fids do
    local e = entries[i]
    parts[i] = entry_json(fids[i], e[1], e[2], e[3])
  end
  return '[' .. table.concat(parts, ',') .. ']'
end

-- The author's undo/redo stacks: an edit goes on the undo stack and clears the redo
-- stack; an undo moves to the redo stack, a redo back to the undo stack.
local function push_history(kind, s)
  if kind == 'undo' then
    redis.call('LPOP', K_UNDO)
    redis.call('LPUSH', K_REDO, s)
    return
  end
  if kind == 'redo' then
    redis.call('LPOP', K_REDO)
  else
    redis.call('DEL', K_REDO)
  end
  redis.call('LPUSH', K_UNDO, s)
  if RETENTION > 0 then
    redis.call('LTRIM', K_UNDO, 0, RETENTION - 1)
  end
end

-- Append the event (stream id <seq>-0), bump meta, store the idempotency record.
-- `body` is the kind-specific JSON fields; `meta` extra meta field/value pairs.
-- The answer for a command that creates the room (create, fork) instead of running:
-- {1, stored} for a retry, a refusal if the room exists or is locked, else nil.
local function new_room_answer(exists_hint)
  local stored = stored_result()
  if stored then
    return {1, stored}
  end
  if read_meta() > 0 or redis.call('EXISTS', K_EVENTS) == 1
      or redis.call('LLEN', K_ORDER) > 0 then
    return fail('conflict', 'room ' .. ROOM .. ' already exists' .. exists_hint)
  end
  return lock_refusal({})
end

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
    .. ',"time":' .. TIME .. (TOKEN ~= '' and (',"fence":' .. int(FENCE)) or '') .. ','
    .. body .. '}'
  redis.call('XADD', K_EVENTS, s .. '-0', 'seq', s, 'kind', kind, 'data', event)
  if kind ~= 'frames_relaid' and kind ~= 'room_created' then  -- nothing for anyone to undo
    push_history(kind, s)
  end
  local result = '{"status":"ok","reason":null,"event":' .. event .. ',"conflicts":[]}'
  -- Only accepted commands are remembered: a refused one wrote nothing, so a retry
  -- with the same key (say after uploading the missing frame) must be checked afresh.
  if USE_IDEM then
    redis.call('SET', K_IDEM, s, 'EX', IDEM_TTL)
  end
  return {0, result}
end
