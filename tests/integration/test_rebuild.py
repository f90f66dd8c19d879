"""``trajhub rebuild``: a room's Zarr group rebuilt from its history, every hash checked."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from control_testutil import index
from test_storage_patches import ROOM, History, assert_store_matches_index, steps

from trajhub.cli import main as cli_main
from trajhub.control import Control
from trajhub.shared import keys
from trajhub.shared.history_store import ZarrHistoryStore
from trajhub.shared.zarr_store import PROJECTION_ARRAYS, ZarrFrameStore
from trajhub.snapshotter.history import take_snapshot
from trajhub.storage.blob_archive import BlobArchive
from trajhub.storage.rebuild import rebuild
from trajhub.storage.worker import StorageWorker


async def build_room(redis_url: str, r: aioredis.Redis, path: Path,
                     archive: bool = False) -> History:
    """Inserts, patches (of patches), deletes, undo and redo, applied by storage."""
    store = ZarrFrameStore(path)
    h = History(r, Control(r))
    worker = StorageWorker(redis_url, store, "w1",
                           archive=BlobArchive(store.store) if archive else None)
    try:
        for step in steps(h):
            await step()
            await worker.apply_room(ROOM)
    finally:
        await worker.aclose()  # releases the room's storage lease
    assert [k async for k in r.scan_iter(match=keys.blob_prefix(ROOM) + "*")] == []
    return h


def edit_attrs(group: Path, drop: list[str]) -> None:
    meta = json.loads((group / "zarr.json").read_text())
    for name in drop:
        meta["attributes"].pop(name, None)
    (group / "zarr.json").write_text(json.dumps(meta))


async def ack_group(r: aioredis.Redis, group: str) -> None:
    reply: Any = await r.xreadgroup(group, "test", {keys.events(ROOM): ">"}, count=100_000)
    ids = [i for _, entries in reply or () for i, _ in entries]
    if ids:
        await r.xack(keys.events(ROOM), group, *ids)


async def test_projection_lost_rebuilt_in_place_from_the_old_group(
        redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    path = tmp_path / "zarr"
    h = await build_room(redis_url, r, path)
    n_slots = ZarrFrameStore(path).n_slots(ROOM)
    for name in PROJECTION_ARRAYS:
        shutil.rmtree(path / ROOM / name)
    edit_attrs(path / ROOM, ["applied_seq", "n_frames", "projection_sha256"])

    report = await rebuild(r, path, ZarrHistoryStore(path), ROOM)

    assert report.ok and report.swapped, report.summary()
    assert report.n_slots == report.slots_written == report.frames_checked == n_slots
    assert report.sources == {"zarr": n_slots} and report.mismatches == []
    assert report.events == len(steps(h)) and report.seq == len(steps(h))
    assert await r.get(keys.storage_lease(ROOM)) is None  # released
    await assert_store_matches_index(r, ZarrFrameStore(path), h.content)
    assert (Path(report.old_group) / "positions").exists()  # kept for the operator


async def test_data_arrays_lost_without_archive_names_the_lost_frames(
        redis_url: str, r: aioredis.Redis, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "zarr"
    h = await build_room(redis_url, r, path)
    unapplied = await h.insert([42])  # staged, committed, not applied: blob in Redis
    for entry in (path / ROOM).iterdir():
        if entry.is_dir() and not entry.name.startswith("_"):
            shutil.rmtree(entry)  # every frame key's arrays; _hash and projection stay

    report = await rebuild(r, path, ZarrHistoryStore(path), ROOM, into=tmp_path / "out")

    assert not report.ok and not report.swapped
    assert report.slots_written == 0
    entries = await index(r, ROOM)
    new_slot = unapplied.new_slots[0].slot
    lost = {m.slot: m for m in report.missing}
    assert sorted(lost) == list(range(new_slot))  # all but the frame still staged
    assert report.sources == {"blob": 1}
    for i, e in enumerate(entries):
        if e.slot != new_slot:
            assert i in lost[e.slot].indices and lost[e.slot].hash == e.hash
    assert any(not m.indices for m in lost.values())  # content only in the past
    # The CLI says the same and fails.
    code = await asyncio.to_thread(cli_main, [
        "rebuild", ROOM, "--redis-url", redis_url, "--storage-url", str(path),
        "--into", str(tmp_path / "cli")])
    assert code == 1
    out, err = capsys.readouterr()
    assert len(json.loads(out)["missing"]) == new_slot
    assert f"no content for slot 0 (hash {lost[0].hash}" in err


async def test_group_lost_and_stream_trimmed_restored_from_archive(
        redis_url: str, r: aioredis.Redis, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "zarr"
    h = await build_room(redis_url, r, path, archive=True)
    history = ZarrHistoryStore(path)
    await ack_group(r, keys.SNAPSHOTTER_GROUP)  # storage acked what it applied
    snap = await take_snapshot(r, history, ROOM, keep_events=0)
    assert snap.trimmed_seq == len(steps(h))
    assert await r.xlen(keys.events(ROOM)) == 0  # the archive has every event
    n_slots = ZarrFrameStore(path).n_slots(ROOM)
    for entry in (path / ROOM).iterdir():
        if entry.name != "_history":  # the whole group, but the history beside it
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    code = await asyncio.to_thread(cli_main, [
        "rebuild", ROOM, "--redis-url", redis_url, "--storage-url", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert result["ok"] and result["swapped"]
    assert result["sources"] == {"archive": n_slots}
    assert result["frames_checked"] == n_slots and result["mismatches"] == []
    await assert_store_matches_index(r, ZarrFrameStore(path), h.content)
    assert history.snapshot_seqs(ROOM) == [snap.snapshot_seq]  # history kept
    # Storage carries on from the rebuilt group.
    await h.insert([50, 51], at=1)
    store = ZarrFrameStore(path)
    worker = StorageWorker(redis_url, store, "w2")
    try:
        assert await worker.apply_room(ROOM) == 1
    finally:
        await worker.aclose()
    await assert_store_matches_index(r, store, h.content)


async def test_into_refuses_a_place_that_holds_the_room(
        redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    path = tmp_path / "zarr"
    h = await build_room(redis_url, r, path)
    report = await rebuild(r, path, ZarrHistoryStore(path), ROOM, into=tmp_path / "out")
    assert report.ok and not report.swapped
    await assert_store_matches_index(r, ZarrFrameStore(tmp_path / "out"), h.content)
    with pytest.raises(Exception, match="already holds room"):
        await rebuild(r, path, ZarrHistoryStore(path), ROOM, into=tmp_path / "out")
