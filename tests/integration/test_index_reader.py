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


async def test_a_read_unless_unchanged_answers_without_entries_at_the_same_seq(
        r: aioredis.Redis) -> None:
    await build_room(r, 100)
    reader = IndexReader(r)
    raw = await reader.read_raw(ROOM, start=10, stop=None)
    assert raw.created and not raw.unchanged and len(raw.indices) == 90
    same = (raw.seq, raw.created)
    for kwargs in ({"start": 10, "stop": None}, {"indices": [5, -1, 5]}):
        again = await reader.read_raw(ROOM, unless=same, **kwargs)  # type: ignore[arg-type]
        assert again.unchanged and (again.seq, again.n_frames, again.created) == (
            raw.seq, 100, raw.created)
        assert (again.indices, again.fids, again.packed) == ([], "", "")
    for other in ((raw.seq - 1, raw.created), (raw.seq, raw.created + "0")):
        full = await reader.read_raw(ROOM, start=10, stop=None, unless=other)
        assert not full.unchanged and full == raw
        with pytest.raises(IndexOutOfRange, match="index 100 out of range"):
            await reader.read_raw(ROOM, indices=[1, 100], unless=other)
    assert (await reader.read_raw("nobody", unless=(0, ""))).unchanged is False
    control = Control(r)
    hashes = await stage(r, ROOM, [7])
    assert (await control.commit(ReplaceFrames(room=ROOM, indices=[50],
                                               hashes=hashes))).status == "ok"
    moved = await reader.read_raw(ROOM, start=10, stop=None, unless=same)
    assert not moved.unchanged and moved.seq == raw.seq + 1
    assert (await reader.read(ROOM, indices=[50])).entries[0].hash == hashes[0]


async def test_the_read_path_keeps_long_reads_until_the_room_moves_on(
        r: aioredis.Redis) -> None:
    from trajhub.gateway.reader import VIEWS_MIN_FRAMES, IndexScript

    await build_room(r, 600)
    script = IndexScript(r)
    first = await script.read(ROOM, start=0, stop=400)
    assert await script.read(ROOM, start=0, stop=400) is first, "kept at the same seq"
    listed = await script.read(ROOM, indices=list(range(399, -1, -1)))
    assert await script.read(ROOM, indices=list(range(399, -1, -1))) is listed
    assert listed.entries == first.entries[::-1]
    short = await script.read(ROOM, start=0, stop=VIEWS_MIN_FRAMES - 1)
    assert await script.read(ROOM, start=0, stop=VIEWS_MIN_FRAMES - 1) is not short
    hashes = await stage(r, ROOM, [9])
    assert (await Control(r).commit(ReplaceFrames(room=ROOM, indices=[3],
                                                  hashes=hashes))).status == "ok"
    after = await script.read(ROOM, start=0, stop=400)
    assert after is not first and after.seq == first.seq + 1
    assert after.entries[3].hash == hashes[0] and after.entries[4:] == first.entries[4:]
    # The same name at the same seq, but another room (created anew): read anew.
    await r.flushdb()
    await build_room(r, 450)
    hashes = await stage(r, ROOM, [8])
    assert (await Control(r).commit(ReplaceFrames(room=ROOM, indices=[3],
                                                  hashes=hashes))).status == "ok"
    anew = await script.read(ROOM, start=0, stop=400)
    assert anew.seq == after.seq and anew is not after
    assert anew.n_frames == 450 and anew.entries[3].hash == hashes[0] != after.entries[3].hash
    assert anew.entries == (await IndexScript(r).read(ROOM, start=0, stop=400)).entries


def test_kept_reads_are_bounded_by_their_entries() -> None:
    from trajhub.gateway.reader import ReadView, ReadViews

    def view(n: int) -> ReadView:
        return ReadView(seq=1, n_frames=n, exists=True, indices=list(range(n)),
                        entries=[None] * n)  # type: ignore[list-item]

    views = ReadViews(max_entries=1000, min_frames=10)
    for i in range(3):
        views.put("r", ("s", i), "t", view(400))
    assert views.get("r", ("s", 0)) is None, "the least recently used went first"
    assert views.get("r", ("s", 1)) is not None
    views.put("r", ("s", 3), "t", view(400))
    assert views.get("r", ("s", 2)) is None and views.get("r", ("s", 1)) is not None
    views.put("r", ("s", 4), "t", view(1001))
    views.put("r", ("s", 5), "t", view(9))
    views.put("r", ("s", 6), "", view(100))
    views.put("r", ("s", 7), "t", ReadView(1, 0, False, [], []))
    assert all(views.get("r", ("s", i)) is None for i in (4, 5, 6, 7))
    assert views.get("r", ("s", 1)) is not None and views.get("r", ("s", 3)) is not None
