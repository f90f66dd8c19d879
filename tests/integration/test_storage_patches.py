"""Storage applies patches, undo and redo (committed by control) to a real Zarr store."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
import zarr
from control_testutil import index, make_frame, stage

from trajhub.control import Control
from trajhub.shared import codec, keys
from trajhub.shared.events import (
    CommitResult,
    DeleteFrames,
    Event,
    FrameEntry,
    InsertFrames,
    PatchFrames,
    Redo,
    Undo,
)
from trajhub.shared.frames import Frame, frames_equal
from trajhub.shared.hashing import frame_hash
from trajhub.shared.zarr_store import ZarrFrameStore
from trajhub.storage.worker import StorageWorker

ROOM = "patchy"
AUTHOR = "ann"


def ok(result: CommitResult) -> Event:
    assert result.status == "ok", result
    assert result.event is not None
    return result.event


class History:
    """Commits through control, remembering the whole frame of every hash."""

    def __init__(self, r: aioredis.Redis, control: Control) -> None:
        self.r, self.control = r, control
        self.content: dict[str, Frame] = {}

    async def insert(self, ids: list[int], at: int | None = None) -> Event:
        hashes = await stage(self.r, ROOM, ids)
        self.content.update(zip(hashes, (make_frame(i) for i in ids), strict=True))
        return ok(await self.control.commit(InsertFrames(room=ROOM, at=at, hashes=hashes,
                                                         author=AUTHOR)))

    async def patch(self, indices: list[int], changes: dict[str, float]) -> Event:
        """Add ``changes[key]`` to ``key`` of each frame; stage the merged frames."""
        entries = await index(self.r, ROOM)
        hashes = []
        for i in indices:
            current = self.content[entries[i].hash]
            merged = {**current, **{k: current[k] + d for k, d in changes.items()}}
            h = frame_hash(merged)
            self.content[h] = merged
            hashes.append(h)
            await self.r.set(keys.blob(ROOM, h), codec.frame_to_bytes(merged), ex=600)
        return ok(await self.control.commit(PatchFrames(
            room=ROOM, indices=indices, hashes=hashes, keys=sorted(changes),
            base_versions=[entries[i].version for i in indices], author=AUTHOR)))

    async def delete(self, indices: list[int]) -> Event:
        return ok(await self.control.commit(DeleteFrames(room=ROOM, indices=indices,
                                                         author=AUTHOR)))

    async def undo(self) -> Event:
        return ok(await self.control.commit(Undo(room=ROOM, author=AUTHOR)))

    async def redo(self) -> Event:
        return ok(await self.control.commit(Redo(room=ROOM, author=AUTHOR)))


async def assert_store_matches_index(r: aioredis.Redis, store: ZarrFrameStore,
                                     content: dict[str, Frame]) -> list[FrameEntry]:
    """The store's projection equals the live index, and its frames the content."""
    entries: list[FrameEntry] = await index(r, ROOM)
    seq, order, fids, versions = store.read_projection(ROOM)
    meta_seq = await r.hget(keys.meta(ROOM), "seq")
    assert seq == int(meta_seq or 0)
    assert list(order) == [e.slot for e in entries]
    assert list(fids) == [e.frame_id for e in entries]
    assert list(versions) == [e.version for e in entries]
    got = store.read_slots(ROOM, list(order))
    for i, (frame, e) in enumerate(zip(got, entries, strict=True)):
        assert frames_equal(frame, content[e.hash]), f"frame {i} differs"
        assert frame_hash(frame) == e.hash
    assert store.read_hashes(ROOM, list(order)) == [e.hash for e in entries]
    return entries


Step = Callable[[], Awaitable[Event]]


def steps(h: History) -> list[Step]:
    """Patches (also of a patch, and of two frames at once), their undo and redo, and
    undo/redo of a delete and of an insert."""
    return [
        lambda: h.insert([0, 1, 2, 3, 4]),
        lambda: h.patch([1], {"positions": 0.5}),
        lambda: h.patch([1], {"info.step": 100}),  # a patch of a patch
        lambda: h.patch([2, 3], {"positions": -1.0}),
        h.undo,  # replace: frames 2 and 3 back to their whole slots
        h.undo,  # replace: frame 1 back to the first patch
        h.redo,  # replace: frame 1 to the patch of the patch again
        lambda: h.delete([0, 3]),
        h.undo,  # insert: 0 and 3 come back at their places
        lambda: h.insert([7, 8], at=2),
        h.undo,  # delete
        h.redo,  # insert
        lambda: h.patch([0, 4], {"positions": 2.0, "info.step": 1}),
    ]


async def test_patch_undo_redo_applied_step_by_step(
        redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    store = ZarrFrameStore(tmp_path / "zarr")
    h = History(r, Control(r))
    worker = StorageWorker(redis_url, store, "w1")
    kinds = []
    try:
        for step in steps(h):
            event = await step()
            kinds.append((event.kind, event.change))
            assert await worker.apply_room(ROOM) == 1
            await assert_store_matches_index(r, store, h.content)
    finally:
        await worker.aclose()
    assert ("frames_patched", "replace") in kinds
    assert {("undo", "replace"), ("undo", "insert"), ("undo", "delete"),
            ("redo", "replace"), ("redo", "insert")} <= set(kinds)
    assert [k async for k in r.scan_iter(match=keys.blob_prefix(ROOM) + "*")] == []


async def test_patch_slots_hold_only_the_changed_keys(
        redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    store = ZarrFrameStore(tmp_path / "zarr")
    h = History(r, Control(r))
    worker = StorageWorker(redis_url, store, "w1")
    try:
        await h.insert([0, 1])
        first = (await h.patch([1], {"positions": 0.5})).new_slots[0]
        second = (await h.patch([1], {"info.step": 3})).new_slots[0]
        assert second.base == first.slot  # control names the slot the frame had
        assert await worker.apply_room(ROOM) == 3
        undone = await h.undo()
        assert undone.new_slots == []  # undo reuses slots
        assert await worker.apply_room(ROOM) == 1
        await assert_store_matches_index(r, store, h.content)
    finally:
        await worker.aclose()
    g: Any = zarr.open_group(str(tmp_path / "zarr"), mode="r")[ROOM]
    assert list(g["_base"][:4]) == [-1, -1, 1, 1]  # the second patch is flattened
    assert [g[f"{k}.shape"][first.slot, 0] for k in ["positions", "numbers", "info.step"]] \
        == [3, -1, -1]
    assert [g[f"{k}.shape"][second.slot, 0] for k in ["positions", "numbers", "info.step"]] \
        == [3, -1, 0]
    assert [int(x) for x in g["_order"][:g.attrs["n_frames"]]] == [0, first.slot]


@pytest.mark.parametrize("batch_events,max_chunk_bytes", [(256, 16 << 20), (3, 1)])
async def test_patch_undo_redo_applied_at_once(
        redis_url: str, r: aioredis.Redis, tmp_path: Path, batch_events: int,
        max_chunk_bytes: int) -> None:
    """Patches whose base slots are written by the same store call (or the chunk
    before), and events spread over batches."""
    store = ZarrFrameStore(tmp_path / "zarr")
    h = History(r, Control(r))
    for step in steps(h):
        await step()
    worker = StorageWorker(redis_url, store, "w1", batch_events=batch_events,
                           max_chunk_bytes=max_chunk_bytes)
    try:
        assert await worker.apply_room(ROOM) == len(steps(h))
    finally:
        await worker.aclose()
    entries = await assert_store_matches_index(r, store, h.content)
    fresh = ZarrFrameStore(tmp_path / "zarr")  # as the gateway, in another process
    got = fresh.read_slots(ROOM, [e.slot for e in entries][::-1])
    assert [frame_hash(f) for f in got] == [e.hash for e in entries][::-1]
    assert np.all(np.asarray(fresh.read_hashes(ROOM, [e.slot for e in entries]))
                  == np.asarray([e.hash for e in entries]))
