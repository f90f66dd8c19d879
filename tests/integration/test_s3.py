"""``TRAJHUB_STORAGE_URL=s3://bucket/prefix``: frames, history, blob archive, rebuild and
compaction on a real S3-compatible server (moto's server mode on 127.0.0.1, started once
per test process by ``tests/s3_fixture.py``), reached through s3fs the way a deployment
reaches it (endpoint and credentials from the AWS_* variables)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import redis.asyncio as aioredis
from gateway_server import (
    MSGPACK,
    GatewayServer,
    get_frames,
    make_frame,
    post_frames,
    start_gateway,  # noqa: F401  (fixture)
)
from test_storage_patches import ROOM, History, assert_store_matches_index, steps
from zarr.core.sync import sync
from zarr.storage import FsspecStore

from tests.s3_fixture import new_s3_url, object_keys
from tests.unit import test_zarr_patches as unit_patches
from tests.unit import test_zarr_store as unit
from trajhub.cli import snapshot as cli_snapshot
from trajhub.control import Control
from trajhub.shared import codec, keys, zarr_store
from trajhub.shared.frames import Frame, frames_equal, validate_frame
from trajhub.shared.hashing import frame_hash
from trajhub.shared.history import decode_snapshot, encode_snapshot
from trajhub.shared.history_store import ZarrHistoryStore, open_history_store
from trajhub.shared.zarr_store import ZarrFrameStore, fsspec_options, open_store
from trajhub.snapshotter.history import take_snapshot
from trajhub.snapshotter.worker import SnapshotterWorker
from trajhub.storage.blob_archive import BlobArchive
from trajhub.storage.rebuild import RebuildError, rebuild
from trajhub.storage.worker import StorageWorker

pytestmark = pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")


@pytest.fixture
def s3_url() -> str:
    """``s3://<fresh bucket>/trajhub``."""
    return new_s3_url()


@pytest.fixture
def store(s3_url: str) -> ZarrFrameStore:
    return open_store(s3_url)


@pytest.fixture
def other_process() -> Iterator[Callable[[str], FsspecStore]]:
    """Opens the store at a URL on its own s3fs instance (fsspec shares one per process
    otherwise), as another process would: nothing cached in common. Closes them after."""
    opened: list[FsspecStore] = []

    def open_(url: str) -> FsspecStore:
        store = FsspecStore.from_url(url, storage_options={**fsspec_options(url),
                                                           "skip_instance_cache": True})
        opened.append(store)
        return store

    yield open_
    for store in opened:  # an asynchronous s3fs instance does not close its session
        client = getattr(store.fs, "_s3creator", None)
        if client is not None:
            sync(client.__aexit__(None, None, None))


# -- the FrameStore contract on S3: unit tests that take only a `store` (a few: each new
# room costs ~100 requests to a server that answers ~50 per second on a loaded machine) --

test_round_trip_is_exact_for_every_dtype_and_shape = \
    unit.test_round_trip_is_exact_for_every_dtype_and_shape
test_patch_reads_keys_only_its_base_has = unit_patches.test_patch_reads_keys_only_its_base_has


def frames(n: int, seed: int = 0, n_atoms: int = 5) -> list[Frame]:
    return [unit.make_frame(n_atoms, seed + i) for i in range(n)]


def test_reader_in_another_process_sees_rooms_slots_and_projection(
        store: ZarrFrameStore, s3_url: str, other_process: Callable[[str], FsspecStore]) -> None:
    reader = ZarrFrameStore(other_process(s3_url))
    assert reader.rooms() == [] and reader.n_slots(unit.ROOM) == 0
    first = frames(4)
    unit.write(store, first)
    store.commit_projection(unit.ROOM, 1, [3, 1], [7, 8], [1, 1])
    assert reader.rooms() == [unit.ROOM]  # a listing made before the room existed
    unit.assert_frames(reader.read_slots(unit.ROOM, [3, 0]), [first[3], first[0]])
    more = frames(3, seed=10, n_atoms=9)  # more atoms: the padded axes grow
    unit.write(store, more)
    store.commit_projection(unit.ROOM, 2, [6, 5, 0], [9, 10, 11], [1, 1, 2])
    unit.assert_frames(reader.read_slots(unit.ROOM, [6, 2]), [more[2], first[2]])
    seq, order, _, versions = reader.read_projection(unit.ROOM)
    assert (seq, list(order), list(versions)) == (2, [6, 5, 0], [1, 1, 2])
    # Plain objects under the prefix, laid out as on disk.
    names = object_keys(s3_url)
    assert "zarr.json" in names and f"{unit.ROOM}/zarr.json" in names
    assert f"{unit.ROOM}/positions/zarr.json" in names


def test_fork_reads_its_parents_slots(store: ZarrFrameStore, s3_url: str,
                                      other_process: Callable[[str], FsspecStore]) -> None:
    base = frames(3)
    unit.write(store, base)
    store.init_fork("child", unit.ROOM, 3)
    own = frames(2, seed=50)
    store.write_slots("child", 3, own, [frame_hash(f) for f in own])
    reader = ZarrFrameStore(other_process(s3_url))
    unit.assert_frames(reader.read_slots("child", [4, 1, 3]), [own[1], base[1], own[0]])
    assert reader.read_hashes("child", [0, 4]) == [frame_hash(base[0]), frame_hash(own[1])]


def test_drop_slots_deletes_whole_dead_chunks(
        store: ZarrFrameStore, s3_url: str, monkeypatch: pytest.MonkeyPatch,
        other_process: Callable[[str], FsspecStore]) -> None:
    monkeypatch.setattr(zarr_store, "CHUNK_TARGET_BYTES", 4096)  # a few slots per chunk
    written = frames(40, n_atoms=20)
    unit.write(store, written)

    def chunks() -> set[str]:
        return {k for k in object_keys(s3_url)
                if k.startswith(f"{unit.ROOM}/positions/c/")}

    before = chunks()
    stats = store.drop_slots(unit.ROOM, range(0, 30))
    after = chunks()
    assert stats.slots == 30 and stats.chunks > 0 and stats.bytes > 0
    assert after < before and len(before - after) <= stats.chunks
    # Live slots still read; dropped ones are simply not read by callers.
    unit.assert_frames(ZarrFrameStore(other_process(s3_url)).read_slots(
        unit.ROOM, [39, 30]), [written[39], written[30]])
    assert store.drop_slots(unit.ROOM, range(0, 30)).chunks == 0  # nothing left to drop


# -- history on S3 ---------------------------------------------------------------------------

def test_history_listing_sees_objects_another_process_wrote(
        s3_url: str, other_process: Callable[[str], FsspecStore]) -> None:
    reader = open_history_store(s3_url)
    writer = ZarrHistoryStore(other_process(s3_url))
    assert reader.snapshot_seqs("r") == [] and reader.segment_ranges("r") == []
    snap = encode_snapshot("r", 5, [])
    writer.put_snapshot("r", 5, snap)
    writer.put_segment("r", 1, 5, b"seg")
    assert reader.snapshot_seqs("r") == [5]  # no listing cached from before
    assert reader.segment_ranges("r") == [(1, 5)]
    writer.put_snapshot("r", 12, encode_snapshot("r", 12, []))
    assert reader.snapshot_seqs("r") == [5, 12]
    assert decode_snapshot(reader.get_snapshot("r", 5)) == ("r", 5, [])


# -- storage worker, snapshotter, blob archive and rebuild on S3 ------------------------------

async def test_storage_applies_into_s3_and_a_rebuild_restores_from_the_archive(
        redis_url: str, r: aioredis.Redis,
        other_process: Callable[[str], FsspecStore]) -> None:
    live_url = new_s3_url()
    store = open_store(live_url)
    history = open_history_store(live_url)
    h = History(r, Control(r))
    worker = StorageWorker(redis_url, store, "w1", archive=BlobArchive(store.store))
    try:
        for step in steps(h):  # inserts, patches of patches, deletes, undo, redo
            await step()
            await worker.apply_room(ROOM)
    finally:
        await worker.aclose()
    await assert_store_matches_index(r, ZarrFrameStore(other_process(live_url)), h.content)
    n_slots = store.n_slots(ROOM)
    blobs = [k for k in object_keys(live_url) if k.startswith(f"{ROOM}/_history/blob/")]
    assert len(blobs) == len(h.content)

    reply: Any = await r.xreadgroup(keys.SNAPSHOTTER_GROUP, "t",
                                    {keys.events(ROOM): ">"}, count=1000)
    await r.xack(keys.events(ROOM), keys.SNAPSHOTTER_GROUP,
                 *[i for _, entries in reply for i, _ in entries])
    snap = await take_snapshot(r, history, ROOM, keep_events=0)
    assert await r.xlen(keys.events(ROOM)) == 0  # everything archived in S3, then trimmed
    assert history.snapshot_seqs(ROOM) == [snap.snapshot_seq] == [len(steps(h))]

    with pytest.raises(RebuildError, match="local directory"):  # no rename on S3
        await rebuild(r, live_url, history, ROOM)
    # The group's arrays lost: only the history beside it (segments, blobs) is left.
    lost = [k for k in object_keys(live_url)
            if k.startswith(f"{ROOM}/") and not k.startswith(f"{ROOM}/_history/")]
    await asyncio.to_thread(_delete, live_url, lost)
    into = new_s3_url("rebuilt")
    report = await rebuild(r, open_store(live_url), open_history_store(live_url), ROOM, into)
    assert report.ok and not report.swapped, report.summary()
    assert report.sources == {"archive": n_slots} and report.frames_checked == n_slots
    await assert_store_matches_index(r, open_store(into), h.content)


def _delete(url: str, names: list[str]) -> None:
    from tests.s3_fixture import s3_client

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    for name in names:
        s3_client().delete_object(Bucket=bucket, Key=f"{prefix}/{name}")


# -- end to end: gateway + storage + snapshotter + compaction, data in S3 ---------------------

@pytest.fixture
def s3_gateway(start_gateway: Callable[..., GatewayServer],  # noqa: F811
               monkeypatch: pytest.MonkeyPatch, s3_url: str) -> GatewayServer:
    monkeypatch.setattr(zarr_store, "CHUNK_TARGET_BYTES", 4096)  # dead chunks in small rooms
    return start_gateway(storage_url=s3_url, cache_mb=0)


@pytest.fixture
def http(s3_gateway: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=s3_gateway.url, timeout=60) as client:
        yield client


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def run_storage(redis_url: str, url: str, room: str) -> int:
    async def go() -> int:
        worker = StorageWorker(redis_url, open_store(url), "s3-storage")
        try:
            return await worker.apply_room(room)
        finally:
            await worker.aclose()
    return asyncio.run(go())


def run_snapshotter(redis_url: str, url: str, room: str) -> None:
    """Snapshot, archive and trim everything (keep_events=0) into the store at ``url``."""
    async def go() -> None:
        worker = SnapshotterWorker(redis_url, "s3-snap", history=open_history_store(url),
                                   every_events=1, keep_events=0)
        try:
            await worker.process_room(room)
        finally:
            await worker.aclose()
    asyncio.run(go())


def assert_reads(http: httpx.Client, room: str, want: list[Frame], **params: Any) -> None:
    got = get_frames(http, room, **params)
    assert got["hashes"] == [frame_hash(f) for f in want]
    assert all(frames_equal(a, b) for a, b in zip(got["frames"], want, strict=True))


def test_gateway_reads_back_what_storage_applied_to_s3_across_history_and_compaction(
        http: httpx.Client, s3_gateway: GatewayServer, redis_url: str) -> None:
    url = s3_gateway.settings.storage_url
    old = [validate_frame(make_frame(20, seed)) for seed in range(12)]
    new = [validate_frame(make_frame(20, 100 + seed)) for seed in range(12)]
    ok(post_frames(http, "r", old), 201)  # seq 1: slots 0..11
    body = codec.frames_to_bytes(new, indices=list(range(12)))
    ok(http.put("/api/v1/rooms/r/frames", content=body, headers=MSGPACK))  # seq 2: 12..23
    assert run_storage(redis_url, url, "r") == 2
    assert ok(http.get("/api/v1/rooms/r"))["applied_seq"] == 2
    assert_reads(http, "r", new)  # from Zarr in S3 (blobs deleted, no cache)
    assert_reads(http, "r", old[3:5], at_seq=1, start=3, stop=5)

    run_snapshotter(redis_url, url, "r")  # snapshot + segments into S3, stream trimmed
    assert any(k.startswith("r/_history/snapshot/") for k in object_keys(url))
    index = ok(http.get("/api/v1/rooms/r/index", params={"at_seq": 1}))
    assert index["hashes"] == [frame_hash(f) for f in old]  # replayed from S3 segments
    chunks_before = len([k for k in object_keys(url) if k.startswith("r/positions/c/")])

    result = ok(http.post("/api/v1/rooms/r/compact", params={"keep_events": 0}))
    assert result["chunks_deleted"] > 0, result
    chunks_after = len([k for k in object_keys(url) if k.startswith("r/positions/c/")])
    assert chunks_after < chunks_before
    assert_reads(http, "r", new)  # the live state is untouched
    assert http.get("/api/v1/rooms/r/frames", params={"at_seq": 1}).status_code == 410

    frame = validate_frame(make_frame(7, 999))
    ok(post_frames(http, "r", [frame]), 201)
    assert run_storage(redis_url, url, "r") >= 1
    assert_reads(http, "r", [*new, frame])
    assert np.array_equal(get_frames(http, "r", start=12)["frames"][0]["positions"],
                          frame["positions"])
    # The CLI's on-demand snapshot goes to the same S3 store.
    result = cli_snapshot("r", redis_url, url)
    assert result["snapshot_seq"] == ok(http.get("/api/v1/rooms/r"))["seq"]
