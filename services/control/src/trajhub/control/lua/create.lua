-- Create: an empty room's first event (room_created), so that the room exists (and is
-- listed) before any frame is written. Nobody's to undo.

local stored = stored_result()
if stored then
  return {1, stored}
end

local seq = read_meta()
if seq > 0 or redis.call('EXISTS', K_EVENTS) == 1 or redis.call('LLEN', K_ORDER) > 0 then
  return fail('conflict', 'room ' .. ROOM .. ' already exists')
end
local refusal = lock_refusal({})
if refusal then
  return refusal
end
return commit(1, 'room_created',
  '"indices":[],"frames":[],"base_versions":[],"new_slots":[],"n_frames":0', {})
