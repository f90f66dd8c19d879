"""IndexReader: atomic reads of a room's live index."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from control_testutil import index, stage

from trajhub.control import Control, IndexOutOfRange, IndexReader
from trajhub.shared.events import DeleteFrames, InsertFrames, ReplaceFrames

ROOM = "ethanol"


async def build_room(r: aioredis.Redis, n: int, room: str = ROOM) -> None:
    """n frames over a few contents, with a replace and a delete in the history."""
    control = Control(r)
    hashes = await stage(r, room, [0, 1, 2, 3])
    for command in (InsertFrames(room=room, hashes=[hashes[i % 3] for i in range(n + 1)]),
                    ReplaceFrames(room=room, indices=[1], hashes=[hashes[3]]),
                    DeleteFrames(room=room, indices=[0])):
        assert (await control.commit(command)).status == "ok"


async def test_missing_room_reads_as_empty(r: aioredis.Redis) -> None:
    view = await IndexReader(r).read("nobody")
    assert (view.exists, view.seq, view.n_frames, view.indices, view.entries) == (
        False, 0, 0, [], [])
    with pytest.raises(IndexOutOfRange) as info:
        await IndexReader(r).read("nobody", indices=[0])
    assert (info.value.index, info.value.n_frames, info.value.exists) == (0, 0, False)


async def test_full_read_matches_the_keys(r: aioredis.Redis) -> None:
    await build_room(r, 30)
    view = await IndexReader(r).read(ROOM)
    assert (view.exists, view.seq, view.n_frames) == (True, 3, 30)
    assert view.indices == list(range(30))
    assert view.entries == await index(r, ROOM)
    assert view.entries[0].version == 2


@pytest.mark.parametrize("n", [30, 3000])
async def test_slices_follow_python_semantics(r: aioredis.Redis, n: int) -> None:
    await build_room(r, n)
    reader = IndexReader(r)
    full = (await reader.read(ROOM)).entries
    positions = list(range(n))
    cases = [(0, None, 1), (5, 12, 1), (None, None, -1), (None, None, 7), (3, None, 250),
             (-5, None, 1), (-1, -10, -2), (n - 1, 0, -3), (10, 5, 1), (5, 10, -1),
             (0, n + 100, 1), (-n - 10, 4, 1), (n + 5, None, -1), (2, 3, 1000)]
    for start, stop, step in cases:
        view = await reader.read(ROOM, start=start, stop=stop, step=step)
        sl = slice(start, stop, step)
        assert view.indices == positions[sl], (start, stop, step)
        assert view.entries == full[sl], (start, stop, step)
        assert (view.n_frames, view.seq) == (n, 3)


async def test_index_lists_in_any_order_with_repeats_and_negatives(r: aioredis.Redis) -> None:
    await build_room(r, 3000)
    reader = IndexReader(r)
    full = (await reader.read(ROOM)).entries
    wanted = [2999, 0, 17, 17, -1, -3000, 1500, 4]
    view = await reader.read(ROOM, indices=wanted)
    assert view.indices == [2999, 0, 17, 17, 2999, 0, 1500, 4]
    assert view.entries == [full[i] for i in wanted]
    assert (await reader.read(ROOM, indices=[])).entries == []


async def test_out_of_range_index_names_index_and_size(r: aioredis.Redis) -> None:
    await build_room(r, 10)
    reader = IndexReader(r)
    for bad in (10, 12, -11):
        with pytest.raises(IndexOutOfRange, match=f"index {bad} out of range for 10 frames"):
            await reader.read(ROOM, indices=[1, bad, 2])
    with pytest.raises(IndexError):
        await reader.read(ROOM, indices=[99])
    with pytest.raises(ValueError, match="step"):
        await reader.read(ROOM, step=0)


async def test_list_rooms(r: aioredis.Redis) -> None:
    reader = IndexReader(r)
    assert await reader.list_rooms() == []
    await build_room(r, 5, room="b-room")
    await build_room(r, 2, room="a.room")
    assert await reader.list_rooms() == [("a.room", 2, 3), ("b-room", 5, 3)]
