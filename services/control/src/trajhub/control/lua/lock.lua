-- Locks. KEYS: order, frames, locks, lock frames, lock expiry, fence, idempotency key
-- (acquire: the first answer for a retried request; "" flag in ARGV[3] = none).
-- ARGV[1]: op, ARGV[2]: now in ms ("" = Redis clock), then per op:
--   acquire: "1" if the idempotency key is in use, token, author, session, ttl_ms, message,
--            kind ("room" | "i" | "f"), targets..
--   renew:   token, ttl_ms
--   release: token
--   list:    (nothing)
-- Returns a JSON LockResult (acquire/renew/release) or a JSON list of holders (list).

local K_ORDER, K_FRAMES, K_LOCKS, K_LOCKFIDS, K_LOCKEXP, K_FENCE, K_IDEM =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local IDEM_TTL = 86400
local op = ARGV[1]
local now = now_ms(ARGV[2])

local answer = json_answer

local function refused(t, rec, exp)
  local r = cjson.decode(rec)
  local what = r.room and 'the room is' or 'frames are'
  local msg = ''
  if r.message and r.message ~= cjson.null then msg = ' (' .. r.message .. ')' end
  return answer('locked', what .. ' locked by ' .. r.author .. msg .. ' '
    .. remaining(exp, now), ',"holder":' .. holder_json(rec, exp))
end

purge_expired(K_LOCKS, K_LOCKFIDS, K_LOCKEXP, now)

if op == 'list' then
  local all = redis.call('HGETALL', K_LOCKS)
  local parts = {}
  for i = 1, #all, 2 do
    local exp = redis.call('ZSCORE', K_LOCKEXP, all[i])
    parts[#parts + 1] = holder_json(all[i + 1], tonumber(exp))
  end
  return '[' .. table.concat(parts, ',') .. ']'
end

if op == 'acquire' then
  local use_idem = ARGV[3] == '1'
  if use_idem then
    local first = redis.call('GET', K_IDEM)
    if first then
      return first
    end
  end
  local token, author, session = ARGV[4], ARGV[5], ARGV[6]
  local ttl, message, kind = tonumber(ARGV[7]), ARGV[8], ARGV[9]
  local n = redis.call('LLEN', K_ORDER)
  local fids, indices = {}, {}
  if kind == 'i' then
    local seen = {}
    for i = 10, #ARGV do
      local x = tonumber(ARGV[i])
      if x >= n then
        return answer('not_found', string.format('frame %d out of range for %d frames', x, n))
      end
      if not seen[x] then
        seen[x] = true
        indices[#indices + 1] = x
      end
    end
    fids = resolve(K_ORDER, indices, n)
  elseif kind == 'f' then
    for i = 10, #ARGV do
      fids[#fids + 1] = ARGV[i]
    end
    local pos = locate(K_ORDER, fids)
    for i = 1, #fids do
      if not pos[i] then
        return answer('not_found', 'frame id ' .. fids[i] .. ' does not exist')
      end
      indices[i] = pos[i]
    end
  end
  -- Any live lock blocks a room lock; a frame lock is blocked by the room lock and by
  -- locks on any of its frames.
  if kind == 'room' then
    local all = redis.call('HGETALL', K_LOCKS)
    if #all > 0 then
      return refused(all[1], all[2], tonumber(redis.call('ZSCORE', K_LOCKEXP, all[1])))
    end
  else
    local fields = {'room'}
    for i = 1, #fids do fields[i + 1] = fids[i] end
    local t, rec, exp = other_holder(K_LOCKS, K_LOCKFIDS, K_LOCKEXP, fields, '', now)
    if t then
      return refused(t, rec, exp)
    end
  end
  local fence = redis.call('INCR', K_FENCE)
  local expires = now + ttl
  local ids = {}
  for i = 1, #fids do ids[i] = tonumber(fids[i]) end
  local rec = {token = token, author = author, session = session, fence = fence,
               expires_at = expires, message = message ~= '' and message or cjson.null,
               room = kind == 'room'}
  local target
  if kind == 'room' then
    target = '{"room":true}'
    redis.call('HSET', K_LOCKFIDS, 'room', token)
  else
    rec.frame_ids, rec.indices = ids, indices
    target = '{"frame_ids":' .. int_list_json(ids) .. ',"indices":' .. int_list_json(indices) .. '}'
    local pairs_ = {}
    for i = 1, #fids do
      pairs_[2 * i - 1] = fids[i]
      pairs_[2 * i] = token
    end
    chunked('HSET', K_LOCKFIDS, pairs_)
  end
  redis.call('HSET', K_LOCKS, token, cjson.encode(rec))
  redis.call('ZADD', K_LOCKEXP, expires, token)
  local granted = answer('ok', nil, ',"token":"' .. token .. '","fence":' .. int(fence)
    .. ',"expires_at":' .. int(expires) .. ',"target":' .. target)
  if use_idem then
    redis.call('SET', K_IDEM, granted, 'EX', IDEM_TTL)
  end
  return granted
end

local token = ARGV[3]
local rec = redis.call('HGET', K_LOCKS, token)
if not rec then
  return answer('not_found', 'no live lock with this token: it expired, was released, '
    .. 'or is not yours')
end

if op == 'renew' then
  local expires = now + tonumber(ARGV[4])
  local r = cjson.decode(rec)
  r.expires_at = expires
  redis.call('HSET', K_LOCKS, token, cjson.encode(r))
  redis.call('ZADD', K_LOCKEXP, expires, token)
  return answer('ok', nil, ',"token":"' .. token .. '","fence":' .. int(r.fence)
    .. ',"expires_at":' .. int(expires))
end

if op == 'release' then
  local r = cjson.decode(rec)
  drop_lock(K_LOCKS, K_LOCKFIDS, K_LOCKEXP, token)
  return answer('ok', nil, ',"fence":' .. int(r.fence))
end

error('trajhub: unknown lock op ' .. tostring(op))
