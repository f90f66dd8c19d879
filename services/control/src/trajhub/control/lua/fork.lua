-- Fork: the room's first event (room_forked) holds the base room's index at a seq,
-- keeping its frame ids, versions, hashes and slots; no frame data is copied. The
-- room's own frame ids and slots continue from the base's next_fid/next_slot, so they
-- never collide with the base's. Runs on the new room's keys only (one slot in Redis
-- Cluster): the gateway read the base's entries.
-- ARGV[A+1] base room, A+2 base seq, A+3 next_fid, A+4 next_slot, A+5 count k, then
-- k frame ids, then k packed entries "version:hash:slot".

local answer = new_room_answer('; fork into a new room')
if answer then
  return answer
end

local base_room, base_seq = ARGV[A + 1], tonumber(ARGV[A + 2])
local next_fid, next_slot, k = tonumber(ARGV[A + 3]), tonumber(ARGV[A + 4]), tonumber(ARGV[A + 5])
local F, P = A + 5, A + 5 + k
local sub, find = string.sub, string.find

local fids, pairs_, slot_pairs, entries, indices = {}, {}, {}, {}, {}
for i = 1, k do
  local fid, e = ARGV[F + i], ARGV[P + i]
  local p = find(e, ':', 1, true)
  local h, slot = sub(e, p + 1, p + 64), sub(e, p + 66)
  fids[i] = fid
  pairs_[2 * i - 1] = fid
  pairs_[2 * i] = e
  slot_pairs[2 * i - 1] = h
  slot_pairs[2 * i] = slot
  entries[i] = entry_json(fid, tonumber(sub(e, 1, p - 1)), h, tonumber(slot))
  indices[i] = i - 1
end
chunked('RPUSH', K_ORDER, fids)
chunked('HSET', K_FRAMES, pairs_)
chunked('HSET', K_SLOTS, slot_pairs)

local body = '"indices":' .. int_list_json(indices) .. ',"frames":[' .. table.concat(entries, ',')
  .. '],"base_versions":[],"new_slots":[],"n_frames":' .. int(k) .. ',"base_room":'
  .. cjson.encode(base_room) .. ',"base_seq":' .. int(base_seq) .. ',"parent_slots":'
  .. int(next_slot)
return commit(1, 'room_forked', body,
  {'next_fid', int(next_fid), 'next_slot', int(next_slot), 'parent', base_room,
   'parent_seq', int(base_seq), 'parent_slots', int(next_slot)})
