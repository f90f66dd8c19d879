"""Control's commit scripts against a real Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from control_testutil import index, make_frame, order, snapshot, stage
from pydantic import ValidationError

from trajhub.control import Control, IndexReader
from trajhub.control.control import STAGE_SCRIPT_MIN
from trajhub.shared import codec, hashing, keys
from trajhub.shared.events import (
    CommitResult,
    DeleteFrames,
    Event,
    InsertFrames,
    ReplaceFrames,
)

ROOM = "water.box-1"


def ok(result: CommitResult) -> Event:
    assert result.status == "ok", result.reason
    assert result.event is not None
    return result.event


async def test_append_writes_index_event_and_announces(r: aioredis.Redis) -> None:
    control = Control(r)
    hashes = await stage(r, ROOM, [0, 1, 2])

    author = 'Zoë "q" \\ / \n\t'
    event = ok(await control.commit(InsertFrames(room=ROOM, hashes=hashes, author=author)))

    assert (event.seq, event.kind, event.author, event.n_frames) == (
        1, "frames_inserted", author, 3)
    assert event.indices == [0, 1, 2]
    assert [(f.frame_id, f.version, f.hash, f.slot) for f in event.frames] == [
        (0, 1, hashes[0], 0), (1, 1, hashes[1], 1), (2, 1, hashes[2], 2)]
    assert [(s.slot, s.hash) for s in event.new_slots] == [(0, hashes[0]), (1, hashes[1]),
                                                           (2, hashes[2])]
    assert event.base_versions == []
    assert await index(r, ROOM) == event.frames
    meta = await r.hgetall(keys.meta(ROOM))
    assert (meta[b"seq"], meta[b"next_fid"], meta[b"next_slot"]) == (b"1", b"3", b"3")
    assert float(meta[b"created"]) == event.time
    [(stream_id, fields)] = await r.xrange(keys.events(ROOM))
    assert stream_id == b"1-0"
    assert fields[b"seq"] == b"1" and fields[b"kind"] == b"frames_inserted"
    assert Event.from_stream(fields) == event
    assert await r.smembers(keys.ROOMS) == {ROOM.encode()}
    [(_, note)] = await r.xrange(keys.NOTIFY)
    assert note == {b"room": ROOM.encode()}


async def test_inserts_anywhere_match_a_list_model(r: aioredis.Redis) -> None:
    control = Control(r)
    model: list[int] = []
    # (position, block size): ends, near the head, near the tail, blocks > one chunk.
    plan = [(None, 5), (0, 3), (None, 1), (2, 4), (11, 2), (12, 1), (0, 1),
            (5, 2500), (2000, 1200), (3700, 1500), (None, 1001), (0, 1100)]
    next_id = 0
    for at, size in plan:
        hashes = await stage(r, ROOM, list(range(next_id, next_id + size)))
        next_id += size
        position = len(model) if at is None else at
        event = ok(await control.commit(InsertFrames(room=ROOM, at=at, hashes=hashes)))
        assert event.indices == list(range(position, position + size))
        assert event.hashes == hashes
        model[position:position] = [f.frame_id for f in event.frames]
        assert event.n_frames == len(model)
        assert await order(r, ROOM) == model
    assert len(set(model)) == len(model) == next_id


async def test_insert_at_end_of_room_and_empty_room(r: aioredis.Redis) -> None:
    control = Control(r)
    [h0, h1] = await stage(r, ROOM, [0, 1])
    ok(await control.commit(InsertFrames(room=ROOM, at=0, hashes=[h0])))
    event = ok(await control.commit(InsertFrames(room=ROOM, at=1, hashes=[h1])))
    assert event.indices == [1]
    assert await order(r, ROOM) == [0, 1]


async def test_replace_bumps_versions_and_keeps_frame_ids(r: aioredis.Redis) -> None:
    control = Control(r)
    hashes = await stage(r, ROOM, [0, 1, 2])
    first = ok(await control.commit(InsertFrames(room=ROOM, hashes=hashes)))
    new = await stage(r, ROOM, [10, 12])

    event = ok(await control.commit(ReplaceFrames(room=ROOM, indices=[2, 0], hashes=new,
                                                  base_versions=[1, 1])))

    assert (event.kind, event.seq, event.indices, event.n_frames) == (
        "frames_replaced", 2, [2, 0], 3)
    assert event.base_versions == [1, 1]
    assert [(f.frame_id, f.version, f.hash, f.slot) for f in event.frames] == [
        (2, 2, new[0], 3), (0, 2, new[1], 4)]
    assert [(s.slot, s.hash) for s in event.new_slots] == [(3, new[0]), (4, new[1])]
    after = await index(r, ROOM)
    assert [e.frame_id for e in after] == [0, 1, 2]
    assert after[1] == first.frames[1]
    assert (after[0].version, after[0].hash) == (2, new[1])

    again = ok(await control.commit(ReplaceFrames(room=ROOM, indices=[0], hashes=[new[1]])))
    assert (again.frames[0].version, again.frames[0].slot) == (3, 4)
    assert again.new_slots == [] and again.base_versions == []


async def test_replace_many_frames_at_once(r: aioredis.Redis) -> None:
    control = Control(r)
    [a, b] = await stage(r, ROOM, [0, 1])
    ok(await control.commit(InsertFrames(room=ROOM, hashes=[a] * 2600)))
    indices = list(range(2599, 1000, -1))  # 1599 frames, > one chunk, descending
    event = ok(await control.commit(ReplaceFrames(room=ROOM, indices=indices,
                                                  hashes=[b] * len(indices),
                                                  base_versions=[1] * len(indices))))
    assert event.indices == indices
    assert [f.frame_id for f in event.frames] == indices  # ids were assigned in order
    assert {(f.version, f.hash, f.slot) for f in event.frames} == {(2, b, 1)}
    after = await index(r, ROOM)
    assert [e.version for e in after] == [1] * 1001 + [2] * 1599


async def test_deletes_match_a_list_model(r: aioredis.Redis) -> None:
    control = Control(r)
    [h] = await stage(r, ROOM, [0])
    model = [f.frame_id for f in ok(await control.commit(
        InsertFrames(room=ROOM, hashes=[h] * 3000))).frames]
    # Paths: mark + LREM from either end, or rebuild the head or the tail side.
    deletions: list[Callable[[int], list[int]]] = [
        lambda n: [0], lambda n: [n - 2], lambda n: [5, 1, 3],
        lambda n: [100, 5, 300],                                   # marks, LREM from head
        lambda n: [*range(10, 30, 2), n - 3, 7],                   # marks, LREM from tail
        lambda n: list(range(0, 60, 3)),                           # rebuild head
        lambda n: list(range(n - 30, n - 5)),                      # rebuild tail
        lambda n: [*range(n - 100, n - 50), n // 2],               # marks, many
        lambda n: list(range(100, 2100)),                          # more than a chunk
        lambda n: list(range(17, 0, -1)),                          # descending input
    ]
    for make in deletions:
        indices = make(len(model))
        before = await index(r, ROOM)
        event = ok(await control.commit(DeleteFrames(room=ROOM, indices=indices)))
        assert event.indices == sorted(indices)
        assert event.frames == [before[i] for i in sorted(indices)]
        assert event.new_slots == []
        gone = set(indices)
        model = [fid for i, fid in enumerate(model) if i not in gone]
        assert event.n_frames == len(model)
        assert await order(r, ROOM) == model
        assert await r.hlen(keys.frames(ROOM)) == len(model)
    event = ok(await control.commit(DeleteFrames(room=ROOM, indices=list(range(len(model))))))
    assert event.n_frames == 0
    assert await order(r, ROOM) == []
    assert await r.exists(keys.frames(ROOM)) == 0
    assert await r.hlen(keys.slots(ROOM)) == 1


async def test_delete_orders_base_versions_with_sorted_indices(r: aioredis.Redis) -> None:
    control = Control(r)
    ok(await control.commit(InsertFrames(room=ROOM, hashes=await stage(r, ROOM, [0, 1, 2]))))
    ok(await control.commit(ReplaceFrames(room=ROOM, indices=[2],
                                          hashes=await stage(r, ROOM, [9]))))
    event = ok(await control.commit(DeleteFrames(room=ROOM, indices=[2, 0],
                                                 base_versions=[2, 1])))
    assert (event.indices, event.base_versions) == ([0, 2], [1, 2])
    assert [f.version for f in event.frames] == [1, 2]


async def test_same_content_shares_one_slot(r: aioredis.Redis) -> None:
    control = Control(r)
    [a, b] = await stage(r, ROOM, [0, 1])

    first = ok(await control.commit(InsertFrames(room=ROOM, hashes=[a, b, a, a])))
    assert [f.slot for f in first.frames] == [0, 1, 0, 0]
    assert len({f.frame_id for f in first.frames}) == 4
    assert [(s.slot, s.hash) for s in first.new_slots] == [(0, a), (1, b)]

    second = ok(await control.commit(InsertFrames(room=ROOM, hashes=[b], at=0)))
    assert (second.frames[0].slot, second.new_slots) == (1, [])
    third = ok(await control.commit(ReplaceFrames(room=ROOM, indices=[1], hashes=[b])))
    assert (third.frames[0].slot, third.new_slots) == (1, [])
    assert await r.hgetall(keys.slots(ROOM)) == {
        a.encode(): b"0", b.encode(): b"1"}
    assert await r.hget(keys.meta(ROOM), "next_slot") == b"2"


async def test_stale_base_versions_conflict_and_write_nothing(r: aioredis.Redis) -> None:
    control = Control(r)
    ok(await control.commit(InsertFrames(room=ROOM, hashes=await stage(r, ROOM, [0, 1, 2]))))
    edit = ok(await control.commit(ReplaceFrames(room=ROOM, indices=[1],
                                                 hashes=await stage(r, ROOM, [5]))))
    new = await stage(r, ROOM, [6, 7])
    before = await snapshot(r, ROOM)

    replace = await control.commit(ReplaceFrames(room=ROOM, indices=[0, 1], hashes=new,
                                                 base_versions=[1, 1],
                                                 idempotency_key="edit-0001"))
    delete = await control.commit(DeleteFrames(room=ROOM, indices=[2, 1], base_versions=[0, 1]))

    assert replace.status == "conflict" and replace.http_status == 409
    assert replace.event is None
    assert [c.model_dump() for c in replace.conflicts] == [
        {"index": 1, "frame_id": 1, "expected": 1, "actual": 2, "hash": edit.frames[0].hash}]
    assert delete.status == "conflict"
    assert [(c.index, c.expected, c.actual) for c in delete.conflicts] == [(1, 1, 2), (2, 0, 1)]
    assert await snapshot(r, ROOM) == before


async def test_idempotent_commit_is_answered_once(r: aioredis.Redis) -> None:
    control = Control(r)
    hashes = await stage(r, ROOM, [0, 1])
    command = InsertFrames(room=ROOM, hashes=hashes, idempotency_key="upload:42-abc")

    first = await control.commit(command)
    second = await control.commit(command)

    assert not first.replayed and second.replayed
    assert second.model_copy(update={"replayed": False}) == first
    assert ok(second).edit_id == "upload:42-abc"
    assert await r.xlen(keys.events(ROOM)) == 1
    assert await order(r, ROOM) == [0, 1]
    ttl = await r.ttl(keys.idempotency(ROOM, "upload:42-abc"))
    assert 86000 < ttl <= 86400
    # Storage applied the frames and dropped the blobs: a late retry is still answered.
    await r.delete(*(keys.blob(ROOM, h) for h in hashes))
    late = await control.commit(command)
    assert late.replayed and late.event == first.event
    await stage(r, ROOM, [0, 1])
    third = ok(await control.commit(command.model_copy(update={"idempotency_key": "other-key"})))
    assert third.seq == 2


async def test_refused_commit_is_not_remembered_by_its_key(r: aioredis.Redis) -> None:
    control = Control(r)
    [h] = await stage(r, ROOM, [0])
    await r.delete(keys.blob(ROOM, h))
    command = InsertFrames(room=ROOM, hashes=[h], idempotency_key="retry-me")

    assert (await control.commit(command)).status == "invalid"
    await stage(r, ROOM, [0])
    retried = await control.commit(command)
    assert retried.status == "ok" and not retried.replayed


async def test_unstaged_hash_is_invalid_and_writes_nothing(r: aioredis.Redis) -> None:
    control = Control(r)
    ok(await control.commit(InsertFrames(room=ROOM, hashes=await stage(r, ROOM, [0]))))
    [staged, missing] = await stage(r, ROOM, [1, 2])
    await r.delete(keys.blob(ROOM, missing))
    before = await snapshot(r, ROOM)

    for command in (InsertFrames(room=ROOM, hashes=[staged, missing]),
                    ReplaceFrames(room=ROOM, indices=[0], hashes=[missing])):
        result = await control.commit(command)
        assert result.status == "invalid" and result.http_status == 422
        assert result.reason == (f"frame {missing} was not staged or has expired; "
                                 "upload it again")
    assert await snapshot(r, ROOM) == before


async def test_out_of_range_is_not_found_and_writes_nothing(r: aioredis.Redis) -> None:
    control = Control(r)
    [h] = await stage(r, ROOM, [0])
    ok(await control.commit(InsertFrames(room=ROOM, hashes=[h] * 10)))
    before = await snapshot(r, ROOM)

    replace = await control.commit(ReplaceFrames(room=ROOM, indices=[3, 12], hashes=[h, h]))
    delete = await control.commit(DeleteFrames(room=ROOM, indices=[10]))
    insert = await control.commit(InsertFrames(room=ROOM, at=11, hashes=[h]))
    other_room = await control.commit(DeleteFrames(room="nobody", indices=[0]))

    assert (replace.status, replace.http_status) == ("not_found", 404)
    assert replace.reason == "index 12 out of range for 10 frames"
    assert delete.reason == "index 10 out of range for 10 frames"
    assert (insert.status, insert.reason) == ("not_found",
                                              "insert position 11 out of range for 10 frames")
    assert (other_room.status, other_room.reason) == ("not_found",
                                                      "index 0 out of range for 0 frames")
    assert await snapshot(r, ROOM) == before
    assert await r.exists(keys.meta("nobody"), keys.events("nobody")) == 0


def test_malformed_commands_are_refused_by_the_command_models() -> None:
    h = "a" * 64
    cases = [
        (lambda: DeleteFrames(room=ROOM, indices=[1, 2, 1]), "indices must not repeat"),
        (lambda: ReplaceFrames(room=ROOM, indices=[3, 3], hashes=[h, h]),
         "indices must not repeat"),
        (lambda: ReplaceFrames(room=ROOM, indices=[0, 1], hashes=[h]), "1 hashes for 2 frames"),
        (lambda: DeleteFrames(room=ROOM, indices=[0], base_versions=[1, 1]),
         "2 base versions for 1 frames"),
        (lambda: DeleteFrames(room=ROOM, indices=[0], frame_ids=[0]),
         "exactly one of indices or frame_ids"),
    ]
    for build, message in cases:
        with pytest.raises(ValidationError, match=message):
            build()


async def test_blobs_are_persisted_only_when_they_get_a_slot(r: aioredis.Redis) -> None:
    control = Control(r)
    [a, b] = await stage(r, ROOM, [0, 1])
    assert await r.ttl(keys.blob(ROOM, a)) > 0

    ok(await control.commit(InsertFrames(room=ROOM, hashes=[a, b])))
    assert await r.ttl(keys.blob(ROOM, a)) == -1
    assert await r.ttl(keys.blob(ROOM, b)) == -1

    # Storage applied slot 0 and dropped its blob; a re-upload of the same content
    # is not needed by the next commit and keeps its TTL.
    await r.delete(keys.blob(ROOM, a))
    await stage(r, ROOM, [0])
    ok(await control.commit(InsertFrames(room=ROOM, hashes=[a])))
    assert await r.ttl(keys.blob(ROOM, a)) > 0


@pytest.mark.parametrize("n", [1, STAGE_SCRIPT_MIN])  # a SET each; one script
async def test_staging_with_the_commit_never_resets_a_persisted_blob(
        r: aioredis.Redis, n: int) -> None:
    control = Control(r)
    frames = [make_frame(i) for i in range(3 * n)]
    blobs = {hashing.frame_hash(f): codec.frame_to_bytes(f) for f in frames}
    hashes = list(blobs)
    first, again, new = hashes[:n], hashes[n:2 * n], hashes[2 * n:]
    ok(await control.commit(InsertFrames(room=ROOM, hashes=first + again),
                            stage={h: blobs[h] for h in first + again}, stage_ttl_s=60))
    assert [await r.ttl(keys.blob(ROOM, h)) for h in first + again] == [-1] * 2 * n

    # Staged again with the next commit (an upload that repeats frames): those keep no
    # TTL (NX), the new ones are staged and persisted, and every value is the frame's.
    ok(await control.commit(InsertFrames(room=ROOM, hashes=again + new),
                            stage={h: blobs[h] for h in again + new}, stage_ttl_s=60))
    assert [await r.ttl(keys.blob(ROOM, h)) for h in hashes] == [-1] * 3 * n
    assert [await r.get(keys.blob(ROOM, h)) for h in hashes] == list(blobs.values())
    # A refused commit still stages (the script reports the refusal): the blobs wait
    # with their TTL for a retry.
    more = [make_frame(100 + i) for i in range(n)]
    staged = {hashing.frame_hash(f): codec.frame_to_bytes(f) for f in more}
    refused = await control.commit(InsertFrames(room=ROOM, hashes=list(staged), at=10**6),
                                   stage=staged, stage_ttl_s=60)
    assert refused.status == "not_found"
    ttls = [await r.ttl(keys.blob(ROOM, h)) for h in staged]
    assert all(0 < t <= 60 for t in ttls), ttls


async def test_consumer_groups_exist_from_the_first_event(r: aioredis.Redis) -> None:
    control = Control(r)
    event = ok(await control.commit(InsertFrames(room=ROOM, hashes=await stage(r, ROOM, [0]))))

    groups = await r.xinfo_groups(keys.events(ROOM))
    assert sorted(g["name"] for g in groups) == [b"snapshotter", b"storage"]
    for group in keys.CONSUMER_GROUPS:
        [(_, entries)] = await r.xreadgroup(group, "c1", {keys.events(ROOM): ">"}, count=10)
        assert [Event.from_stream(fields) for _, fields in entries] == [event]


async def test_existing_groups_are_kept(r: aioredis.Redis) -> None:
    await r.xgroup_create(keys.events(ROOM), keys.STORAGE_GROUP, id="0", mkstream=True)
    control = Control(r)
    ok(await control.commit(InsertFrames(room=ROOM, hashes=await stage(r, ROOM, [0]))))
    groups = await r.xinfo_groups(keys.events(ROOM))
    assert sorted(g["name"] for g in groups) == [b"snapshotter", b"storage"]


async def test_stream_ids_are_seqs_and_events_round_trip(r: aioredis.Redis) -> None:
    control = Control(r)
    hashes = await stage(r, ROOM, list(range(6)))
    results = [
        await control.commit(InsertFrames(room=ROOM, hashes=hashes[:3])),
        await control.commit(InsertFrames(room=ROOM, at=1, hashes=hashes[3:5])),
        await control.commit(ReplaceFrames(room=ROOM, indices=[4], hashes=[hashes[5]])),
        await control.commit(DeleteFrames(room=ROOM, indices=[0, 2])),
    ]
    events = [ok(res) for res in results]

    stream = await r.xrange(keys.events(ROOM))
    assert [sid for sid, _ in stream] == [f"{e.seq}-0".encode() for e in events]
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert [Event.from_stream(fields) for _, fields in stream] == events
    assert [int(fields[b"seq"]) for _, fields in stream] == [1, 2, 3, 4]


async def test_large_ids_stay_integers(r: aioredis.Redis) -> None:
    control = Control(r)
    big = 10**15  # tostring() in Lua would print 1e+15
    await r.hset(keys.meta(ROOM), mapping={"next_fid": big, "next_slot": big, "seq": big})
    hashes = await stage(r, ROOM, [0, 1])

    event = ok(await control.commit(InsertFrames(room=ROOM, hashes=hashes + hashes[:1])))
    replaced = ok(await control.commit(ReplaceFrames(room=ROOM, indices=[2], hashes=[hashes[1]],
                                                     base_versions=[1])))
    deleted = ok(await control.commit(DeleteFrames(room=ROOM, indices=[0])))

    assert [f.frame_id for f in event.frames] == [big, big + 1, big + 2]
    assert [f.slot for f in event.frames] == [big, big + 1, big]
    assert [s.slot for s in event.new_slots] == [big, big + 1]
    assert (event.seq, replaced.seq, deleted.seq) == (big + 1, big + 2, big + 3)
    assert replaced.frames[0].slot == big + 1
    [_, _, (sid, fields)] = await r.xrange(keys.events(ROOM))
    assert sid == f"{big + 3}-0".encode()
    assert b"e+" not in fields[b"data"]
    raw = json.loads(fields[b"data"])
    assert raw["frames"][0]["frame_id"] == big and isinstance(raw["frames"][0]["frame_id"], int)
    assert await order(r, ROOM) == [big + 1, big + 2]
    assert [e.slot for e in await index(r, ROOM)] == [big + 1, big + 1]
    meta = await r.hgetall(keys.meta(ROOM))
    assert (meta[b"next_fid"], meta[b"next_slot"], meta[b"seq"]) == (
        str(big + 3).encode(), str(big + 2).encode(), str(big + 3).encode())


async def test_concurrent_appends_lose_nothing(r: aioredis.Redis) -> None:
    control = Control(r)
    tasks, commits = 8, 25

    async def writer(w: int) -> list[Event]:
        hashes = await stage(r, ROOM, [w * 1000 + i for i in range(commits)])
        return [ok(await control.commit(InsertFrames(room=ROOM, hashes=[h], author=f"w{w}")))
                for h in hashes]

    per_task = await asyncio.gather(*(writer(w) for w in range(tasks)))

    events = sorted((e for evs in per_task for e in evs), key=lambda e: e.seq)
    assert [e.seq for e in events] == list(range(1, tasks * commits + 1))
    final = await order(r, ROOM)
    assert len(final) == len(set(final)) == tasks * commits
    assert final == [e.frames[0].frame_id for e in events]
    assert [e.indices for e in events] == [[i] for i in range(tasks * commits)]
    for evs in per_task:  # each writer's frames appear in the order it wrote them
        positions = [final.index(e.frames[0].frame_id) for e in evs]
        assert positions == sorted(positions)
    assert await r.hlen(keys.slots(ROOM)) == tasks * commits
    assert await r.xlen(keys.events(ROOM)) == tasks * commits


async def test_room_info(r: aioredis.Redis) -> None:
    control = Control(r)
    assert await control.room_info(ROOM) is None
    event = ok(await control.commit(InsertFrames(room=ROOM, hashes=await stage(r, ROOM, [0, 1]))))
    assert await control.room_info(ROOM) == {
        "room": ROOM, "n_frames": 2, "seq": 1, "next_fid": 2, "next_slot": 2,
        "created": event.time}


async def test_commit_survives_a_script_flush(r: aioredis.Redis) -> None:
    control = Control(r)
    ok(await control.commit(InsertFrames(room=ROOM, hashes=await stage(r, ROOM, [0]))))
    await r.script_flush()  # as after a Redis restart without the script cache
    event = ok(await control.commit(InsertFrames(room=ROOM, hashes=await stage(r, ROOM, [1]))))
    assert event.seq == 2


async def test_a_refused_first_commit_does_not_list_the_room(r: aioredis.Redis) -> None:

    control = Control(r)
    refused = await control.commit(InsertFrames(room="never", hashes=["0" * 64]))
    assert refused.status == "invalid"
    assert await IndexReader(r).list_rooms() == []


async def test_idempotency_records_hold_the_seq_and_replay_from_the_stream(
        r: aioredis.Redis) -> None:
    control = Control(r)
    hashes = await stage(r, ROOM, list(range(200)))
    first = ok(await control.commit(InsertFrames(room=ROOM, hashes=hashes,
                                                 idempotency_key="bulk-once-1")))
    assert await r.get(keys.idempotency(ROOM, "bulk-once-1")) == b"1"
    again = await control.commit(InsertFrames(room=ROOM, hashes=hashes,
                                              idempotency_key="bulk-once-1"))
    assert again.replayed and again.event == first
    await r.xtrim(keys.events(ROOM), minid="2-0")  # as the snapshotter trims
    archived = await control.commit(InsertFrames(room=ROOM, hashes=hashes,
                                                 idempotency_key="bulk-once-1"))
    assert archived.status == "ok" and archived.event is None
    assert "already applied as seq 1" in (archived.reason or "")
    assert await r.xlen(keys.events(ROOM)) == 0 and len(await order(r, ROOM)) == 200
