-- The presenter token and the room's current step.
-- KEYS: presenter, step, order, idempotency key. ARGV[1]: op, ARGV[2]: now in ms
-- ("" = Redis clock), then
--   request: token held ("" = none), new token, author, session, ttl_ms, "1" if the
--            idempotency key is in use (a retry gets the first answer)
--   renew:   token, ttl_ms
--   release: token
--   set:     token ("" = only if nobody presents), frame, author, ttl_ms
--   get:     (nothing)
-- Returns a JSON PresenterResult (or StepState fields for get).

local K_PRESENTER, K_STEP, K_ORDER, K_IDEM = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op = ARGV[1]
local now = now_ms(ARGV[2])

local answer = json_answer

local p = redis.call('HMGET', K_PRESENTER, 'token', 'author', 'expires_at')
local live = p[1] and tonumber(p[3]) > now
local holder = 'null'
if live then
  holder = '{"author":' .. cjson.encode(p[2]) .. ',"expires_at":' .. int(tonumber(p[3])) .. '}'
end

local function taken()
  return answer('locked', 'the presenter token is held by ' .. p[2] .. ' '
    .. remaining(tonumber(p[3]), now), ',"holder":' .. holder)
end

local function grant(token, author, session, ttl)
  local expires = now + ttl
  redis.call('HSET', K_PRESENTER, 'token', token, 'author', author, 'session', session,
    'expires_at', int(expires))
  return answer('ok', nil, ',"token":"' .. token .. '","expires_at":' .. int(expires))
end

if op == 'get' then
  local s = redis.call('HMGET', K_STEP, 'frame', 'by', 'step_seq')
  return '{"frame":' .. (s[1] or 'null') .. ',"by":' .. (s[2] and cjson.encode(s[2]) or 'null')
    .. ',"step_seq":' .. (s[3] or '0') .. ',"presenter":' .. holder .. '}'
end

if op == 'request' then
  local held, new, author, session, ttl = ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
  local use_idem = ARGV[8] == '1'
  if use_idem then
    local first = redis.call('GET', K_IDEM)
    if first then
      return first
    end
  end
  if live and p[1] ~= held then
    return taken()
  end
  local granted = grant(live and held or new, author, session, ttl)
  if use_idem then
    redis.call('SET', K_IDEM, granted, 'EX', 86400)
  end
  return granted
end

if op == 'renew' then
  if not live or p[1] ~= ARGV[3] then
    if live then return taken() end
    return answer('not_found', 'you do not hold the presenter token (it expired or was released)')
  end
  local expires = now + tonumber(ARGV[4])
  redis.call('HSET', K_PRESENTER, 'expires_at', int(expires))
  return answer('ok', nil, ',"token":"' .. p[1] .. '","expires_at":' .. int(expires))
end

if op == 'release' then
  if not live or p[1] ~= ARGV[3] then
    return answer('not_found', 'you do not hold the presenter token')
  end
  redis.call('DEL', K_PRESENTER)
  return answer('ok', nil, '')
end

if op == 'set' then
  local token, frame, author, ttl = ARGV[3], tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
  if token ~= '' then
    if not live or p[1] ~= token then
      if live then return taken() end
      return answer('not_found', 'you do not hold the presenter token (it expired or was released)')
    end
  elseif live then
    return taken()
  end
  local n = redis.call('LLEN', K_ORDER)
  if frame >= n then
    return answer('not_found', string.format('frame %d out of range for %d frames', frame, n))
  end
  local extra = ''
  if token ~= '' then
    -- Scrubbing renews the token.
    local expires = now + ttl
    redis.call('HSET', K_PRESENTER, 'expires_at', int(expires))
    extra = ',"token":"' .. token .. '","expires_at":' .. int(expires)
  end
  local step_seq = redis.call('HINCRBY', K_STEP, 'step_seq', 1)
  redis.call('HSET', K_STEP, 'frame', int(frame), 'by', author, 'time', int(now))
  return answer('ok', nil, extra .. ',"frame":' .. int(frame) .. ',"step_seq":' .. int(step_seq))
end

error('trajhub: unknown presenter op ' .. tostring(op))
