-- Helpers of every trajhub script, the read script included (prepended first).
--
-- Lua numbers are doubles: every integer that goes back to Redis or into JSON is
-- formatted with int(), never tostring() (which would print 1e+14 style).
-- unpack() is limited by LUAI_MAXCSTACK (8000), so variadic calls go in chunks.

local CHUNK = 1000

-- HMGET for any number of fields; missing fields come back as false.
local function hmget(key, fields)
  local out, m = {}, 0
  local n = #fields
  for i = 1, n, CHUNK do
    local part = redis.call('HMGET', key, unpack(fields, i, math.min(i + CHUNK - 1, n)))
    for j = 1, #part do
      m = m + 1
      out[m] = part[j]
    end
  end
  return out
end

-- Frame ids at logical positions `indices` (all in [0, n)) of the list `order_key`.
-- One LRANGE over the covered span when it is dense enough, else one LINDEX per
-- index, counted from the nearer end of the list.
local function resolve(order_key, indices, n)
  local k = #indices
  local out = {}
  if k == 0 then
    return out
  end
  local lo, hi = indices[1], indices[1]
  for i = 2, k do
    local x = indices[i]
    if x < lo then lo = x end
    if x > hi then hi = x end
  end
  if hi - lo + 1 <= 8 * k + 256 then
    local span = redis.call('LRANGE', order_key, lo, hi)
    for i = 1, k do
      out[i] = span[indices[i] - lo + 1]
    end
  else
    for i = 1, k do
      local x = indices[i]
      if x > n / 2 then x = x - n end
      out[i] = redis.call('LINDEX', order_key, x)
    end
  end
  return out
end
