-- Create: an empty room's first event (room_created), so that the room exists (and is
-- listed) before any frame is written. Nobody's to undo.

local answer = new_room_answer('')
if answer then
  return answer
end
return commit(1, 'room_created',
  '"indices":[],"frames":[],"base_versions":[],"new_slots":[],"n_frames":0', {})
