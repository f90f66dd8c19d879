-- Helpers shared by every trajhub script that writes (prepended after lib_read.lua).

-- Run `cmd key items[1..n]` in chunks of CHUNK arguments (CHUNK is even, so
-- field/value pairs are never split).
local function chunked(cmd, key, items)
  local n = #items
  for i = 1, n, CHUNK do
    redis.call(cmd, key, unpack(items, i, math.min(i + CHUNK - 1, n)))
  end
end

local function int(x)
  return string.format('%d', x)
end

local function int_list_json(items)
  local parts = {}
  for i = 1, #items do
    parts[i] = int(items[i])
  end
  return '[' .. table.concat(parts, ',') .. ']'
end

-- "for another 2.5 s": how long a lock or token expiring at `exp` still holds.
local function remaining(exp, now)
  return string.format('for another %.1f s', math.max(exp - now, 0) / 1000)
end

-- A JSON answer {status, reason, ...}; `extra` is more JSON fields, each led by a comma.
local function json_answer(status, reason, extra)
  return '{"status":"' .. status .. '","reason":' .. cjson.encode(reason or cjson.null)
    .. (extra or '') .. '}'
end

-- Milliseconds since the epoch: `given` when the caller passes a clock (tests), else
-- the Redis server's clock, which every control replica then shares.
local function now_ms(given)
  if given and given ~= '' then
    return tonumber(given)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Positions (0-based) of the frame ids `fids` in `order_key`, false where absent.
-- LPOS each for a few ids, else one pass over the whole list.
local function locate(order_key, fids)
  local out = {}
  if #fids <= 16 then
    for i = 1, #fids do
      out[i] = redis.call('LPOS', order_key, fids[i])
    end
    return out
  end
  local all = redis.call('LRANGE', order_key, 0, -1)
  local pos = {}
  for j = 1, #all do
    pos[all[j]] = j - 1
  end
  for i = 1, #fids do
    out[i] = pos[fids[i]] or false
  end
  return out
end

-- Remove the elements at ascending positions `indices` from the list (length n).
local function remove_positions(order_key, indices, n)
  local c = #indices
  if c == 0 then
    return
  end
  local lo, hi = indices[1], indices[c]
  -- Moving the shorter side through Lua costs ~1 us per element; an LSET a few.
  if 8 * c <= math.min(hi + 1, n - lo) then
    -- Overwrite each deleted id with a marker (frame ids are digits, so '-' is
    -- free) and remove the markers, scanning from the nearer end.
    for i = 1, c do
      local x = indices[i]
      if x > n / 2 then x = x - n end
      redis.call('LSET', order_key, x, '-')
    end
    if hi < n - lo then
      redis.call('LREM', order_key, c, '-')
    else
      redis.call('LREM', order_key, -c, '-')
    end
    return
  end
  -- Rebuild the shorter side of the list around the deleted span.
  local gone = {}
  for i = 1, c do
    gone[indices[i]] = true
  end
  local kept, m = {}, 0
  if hi + 1 <= n - lo then
    local head = redis.call('LRANGE', order_key, 0, hi)
    for i = 1, #head do
      if not gone[i - 1] then
        m = m + 1
        kept[m] = head[i]
      end
    end
    redis.call('LTRIM', order_key, hi + 1, -1)
    local rev = {}
    for i = 1, m do
      rev[i] = kept[m - i + 1]
    end
    chunked('LPUSH', order_key, rev)
  else
    local tail = redis.call('LRANGE', order_key, lo, -1)
    for i = 1, #tail do
      if not gone[lo + i - 1] then
        m = m + 1
        kept[m] = tail[i]
      end
    end
    redis.call('LTRIM', order_key, 0, lo - 1)
    chunked('RPUSH', order_key, kept)
  end
end

-- Insert `fids` so that fids[i] ends up at position positions[i] (ascending, final
-- positions, each at most the length at that point). Rare (undo of a delete): one
-- LINSERT per id for a few, else the list is rebuilt.
local function insert_positions(order_key, positions, fids, n)
  local c = #fids
  if c <= 16 then
    for i = 1, c do
      local p = positions[i]
      if p >= n + i - 1 then
        redis.call('RPUSH', order_key, fids[i])
      else
        local pivot = redis.call('LINDEX', order_key, p)
        redis.call('LINSERT', order_key, 'BEFORE', pivot, fids[i])
      end
    end
    return
  end
  local old = redis.call('LRANGE', order_key, 0, -1)
  local out, m, j = {}, 0, 1
  for i = 1, c do
    while m < positions[i] and j <= #old do
      m = m + 1
      out[m] = old[j]
      j = j + 1
    end
    m = m + 1
    out[m] = fids[i]
  end
  while j <= #old do
    m = m + 1
    out[m] = old[j]
    j = j + 1
  end
  redis.call('DEL', order_key)
  chunked('RPUSH', order_key, out)
end

-- Locks ------------------------------------------------------------------------------
-- A lock is a JSON record in `locks` (token -> record), an expiry in `exp` (token ->
-- ms) and one field per covered frame id (or 'room') in `fids` (-> token). Expired
-- locks are purged lazily by whoever meets them.

local function drop_lock(k_locks, k_fids, k_exp, token)
  local rec = redis.call('HGET', k_locks, token)
  if rec then
    local r = cjson.decode(rec)
    local fields = {}
    if r.room then
      fields[1] = 'room'
    else
      for i = 1, #r.frame_ids do
        fields[i] = int(r.frame_ids[i])
      end
    end
    local cur = hmget(k_fids, fields)
    local del, m = {}, 0
    for i = 1, #fields do
      if cur[i] == token then
        m = m + 1
        del[m] = fields[i]
      end
    end
    chunked('HDEL', k_fids, del)
    redis.call('HDEL', k_locks, token)
  end
  redis.call('ZREM', k_exp, token)
end

local function purge_expired(k_locks, k_fids, k_exp, now)
  local gone = redis.call('ZRANGEBYSCORE', k_exp, '-inf', now)
  for i = 1, #gone do
    drop_lock(k_locks, k_fids, k_exp, gone[i])
  end
end

-- The public description of a lock record (never its token).
local function holder_json(rec, expires_at)
  local r = cjson.decode(rec)
  local target
  if r.room then
    target = '{"room":true}'
  else
    target = '{"frame_ids":' .. cjson.encode(r.frame_ids) .. ',"indices":'
      .. cjson.encode(r.indices) .. '}'
  end
  return '{"author":' .. cjson.encode(r.author) .. ',"fence":' .. int(r.fence)
    .. ',"expires_at":' .. int(expires_at or r.expires_at) .. ',"message":'
    .. cjson.encode(r.message or cjson.null) .. ',"target":' .. target .. '}'
end

-- The live lock (other than `mine`) on any of `fields` (frame ids and/or 'room'):
-- returns its token, record and expiry, or nil. Expired ones met on the way are purged.
local function other_holder(k_locks, k_fids, k_exp, fields, mine, now)
  local tokens = hmget(k_fids, fields)
  local seen = {}
  for i = 1, #fields do
    local t = tokens[i]
    if t and t ~= mine and not seen[t] then
      seen[t] = true
      local exp = redis.call('ZSCORE', k_exp, t)
      if exp and tonumber(exp) > now then
        return t, redis.call('HGET', k_locks, t), tonumber(exp)
      end
      drop_lock(k_locks, k_fids, k_exp, t)
    end
  end
  return nil
end
