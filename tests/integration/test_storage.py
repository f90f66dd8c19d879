"""Storage worker against a real Redis and a real Zarr store in tmp_path."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
import zarr

from trajhub.shared import codec, keys
from trajhub.shared.embedded_redis import EmbeddedRedis
from trajhub.shared.events import InsertFrames
from trajhub.shared.hashing import frame_hash
from trajhub.shared.ports import ProjectionCommit
from trajhub.shared.zarr_store import ZarrFrameStore
from trajhub.storage.worker import StorageWorker

sys.path.insert(0, str(Path(__file__).parent))
from roomsim import RoomSim, make_frame

from tests.helpers import eventually

ROOM = "water"


@pytest.fixture
def store(tmp_path: Path) -> ZarrFrameStore:
    return ZarrFrameStore(tmp_path / "zarr")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


async def applied(r: aioredis.Redis, room: str = ROOM) -> dict[bytes, bytes]:
    return await r.hgetall(keys.applied(room))  # type: ignore[misc,no-any-return]


async def blob_keys(r: aioredis.Redis, room: str = ROOM) -> list[bytes]:
    return [k async for k in r.scan_iter(match=keys.blob_prefix(room) + "*")]


async def pending_count(r: aioredis.Redis, room: str = ROOM) -> int:
    info = await r.xpending(keys.events(room), keys.STORAGE_GROUP)
    return int(info["pending"])


async def applied_history(redis_url: str, r: aioredis.Redis, store: ZarrFrameStore,
                          rng: np.random.Generator) -> RoomSim:
    """``edit_history`` in ROOM, applied by a worker that is then closed."""
    sim = RoomSim(r, ROOM)
    await edit_history(sim, rng)
    worker = StorageWorker(redis_url, store, "w1")
    assert await worker.apply_room(ROOM) == sim.seq
    await worker.aclose()
    return sim


async def apply_all(worker: StorageWorker, sim: RoomSim, store: ZarrFrameStore) -> None:
    """Apply the whole room with ``worker`` (then closed); the store matches ``sim``."""
    try:
        assert await worker.apply_room(ROOM) == sim.seq
    finally:
        await worker.aclose()
    sim.assert_store_matches(store)


async def edit_history(sim: RoomSim, rng: np.random.Generator, **kw: bool) -> None:
    """Inserts (append, front, middle, duplicate content), replaces and deletes."""
    frames = [make_frame(rng) for _ in range(6)]
    await sim.insert(frames[:4], **kw)
    await sim.insert(frames[4:], at=0, **kw)
    await sim.insert([frames[1], make_frame(rng)], at=3, **kw)  # frames[1] is deduped
    await sim.replace([0, 5], [make_frame(rng), frames[2]], **kw)
    await sim.delete([1, 4, 6], **kw)
    await sim.insert([make_frame(rng, 30) for _ in range(3)], at=2, **kw)
    await sim.replace([len(sim.entries) - 1], [make_frame(rng)], **kw)
    await sim.delete([0], **kw)


async def test_apply_matches_list_model(redis_url: str, r: aioredis.Redis,
                                        store: ZarrFrameStore,
                                        rng: np.random.Generator) -> None:
    sim = RoomSim(r, ROOM)
    await edit_history(sim, rng)
    worker = StorageWorker(redis_url, store, "w1")
    await apply_all(worker, sim, store)
    assert await applied(r) == {b"seq": str(sim.seq).encode(),
                                b"slots": str(sim.next_slot).encode()}
    assert await blob_keys(r) == []
    assert await pending_count(r) == 0
    # Plain zarr sees the same positions.
    g = zarr.open_group(str(store.store.root / ROOM), mode="r")  # type: ignore[attr-defined]
    slot = int(g["_order"][0])
    n = int(g["positions.shape"][slot, 0])
    np.testing.assert_array_equal(g["positions"][slot, :n], sim.frames[0]["positions"])


async def test_batches_and_chunks(redis_url: str, r: aioredis.Redis, store: ZarrFrameStore,
                                  rng: np.random.Generator) -> None:
    """Many events in small batches and tiny blob chunks give the same result."""
    sim = RoomSim(r, ROOM)
    for _ in range(5):
        await edit_history(sim, rng)
    worker = StorageWorker(redis_url, store, "w1", batch_events=7, max_chunk_bytes=2000)
    await apply_all(worker, sim, store)


class _BatchRecorder(StorageWorker):
    """A storage worker that records the frame count of each event of each batch."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.batches: list[list[int]] = []

    async def handle_batch(self, room: str, events: Any) -> int:
        self.batches.append([len(e.frames) for e in events])
        return await super().handle_batch(room, events)


async def test_a_batch_takes_no_more_events_once_it_holds_batch_frames(
        redis_url: str, r: aioredis.Redis, store: ZarrFrameStore,
        rng: np.random.Generator) -> None:
    """A backlog of bulk commits is handled a few frames' worth at a time (what the
    worker keeps per batch stays bounded), with the same result."""
    sim = RoomSim(r, ROOM)
    for size in (3, 4, 2, 5, 1, 4, 3):
        await sim.insert([make_frame(rng) for _ in range(size)])
    worker = _BatchRecorder(redis_url, store, "w1", batch_frames=6)
    await apply_all(worker, sim, store)
    assert worker.batches == [[3, 4], [2, 5], [1, 4, 3]]


class _DuringRecorder(_BatchRecorder):
    """Records batches; while applying the batch holding seq ``during``, runs ``action``
    (a commit arriving meanwhile, say) and gives its notification time to arrive."""

    def __init__(self, during: int, action: Callable[[], Awaitable[Any]], *args: Any,
                 **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.during, self.action = during, action

    async def handle_batch(self, room: str, events: Any) -> int:
        if any(e.seq == self.during for e in events):
            await self.action()
            await asyncio.sleep(0.1)
        return await super().handle_batch(room, events)


async def test_a_stream_of_small_commits_is_applied_a_window_at_a_time(
        redis_url: str, r: aioredis.Redis, store: ZarrFrameStore,
        rng: np.random.Generator) -> None:
    """A commit that arrives while storage applies the last one starts a stream: storage
    waits ``coalesce_s`` and applies what came meanwhile in one batch."""
    sim = RoomSim(r, ROOM)
    worker = _DuringRecorder(2, lambda: sim.insert([make_frame(rng)]), redis_url, store,
                             "w1", coalesce_s=1.0, reconcile_s=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await sim.insert([make_frame(rng)])
        await eventually(lambda: _applied_seq_is(r, ROOM, 1))
        await sim.insert([make_frame(rng)])  # seq 2; seq 3 arrives while it is applied
        await eventually(lambda: _applied_seq_is(r, ROOM, 2))
        for _ in range(2):  # within the window
            await sim.insert([make_frame(rng)])
        await eventually(lambda: _applied_seq_is(r, ROOM, 5))
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert worker.batches == [[1], [1], [1, 1, 1]]
    sim.assert_store_matches(store)


async def test_a_commit_made_after_the_last_was_applied_is_not_delayed(
        redis_url: str, r: aioredis.Redis, store: ZarrFrameStore,
        rng: np.random.Generator) -> None:
    """Commits one at a time, each once the one before is applied (a client waiting for
    its edit), are each applied at once, however long the coalescing window; also when
    a batch's own notification reaches the worker only while it applies that batch."""
    sim = RoomSim(r, ROOM)

    async def late_notification() -> None:
        await r.xadd(keys.NOTIFY, {"room": ROOM})

    worker = _DuringRecorder(2, late_notification, redis_url, store, "w1",
                             coalesce_s=60.0, reconcile_s=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        for seq in range(1, 5):
            await sim.insert([make_frame(rng)])
            await eventually(lambda seq=seq: _applied_seq_is(r, ROOM, seq), limit_s=10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert worker.batches == [[1]] * 4


async def test_reapply_is_idempotent(redis_url: str, r: aioredis.Redis,
                                     store: ZarrFrameStore, rng: np.random.Generator) -> None:
    sim = RoomSim(r, ROOM)
    await edit_history(sim, rng)
    first = StorageWorker(redis_url, store, "w1")
    assert await first.apply_room(ROOM) == sim.seq
    assert await first.apply_room(ROOM) == 0
    await first.aclose()
    sim.assert_store_matches(store)
    zarr_files = sorted(p.name for p in (store.store.root / ROOM).iterdir())  # type: ignore[attr-defined]

    # Every entry is delivered again, to a fresh worker (no cached projection); and
    # {r}:applied is stale, as after a crash between the store commit and the HSET.
    await r.xgroup_setid(keys.events(ROOM), keys.STORAGE_GROUP, "0")
    await r.hset(keys.applied(ROOM), mapping={"seq": 3, "slots": 2})  # type: ignore[misc]
    second = StorageWorker(redis_url, store, "w2")
    try:
        assert await second.apply_room(ROOM) == 0
    finally:
        await second.aclose()
    sim.assert_store_matches(store)
    assert sorted(p.name for p in (store.store.root / ROOM).iterdir()) == zarr_files  # type: ignore[attr-defined]
    assert await pending_count(r) == 0
    assert await applied(r) == {b"seq": str(sim.seq).encode(),
                                b"slots": str(sim.next_slot).encode()}


class CrashingStore(ZarrFrameStore):
    """Fails the first projection commit, like a crash after the slots were written
    (whether the commit rides with the last slot write or comes on its own)."""

    crashed = False

    def _crash(self) -> None:
        if not self.crashed:
            self.crashed = True
            raise RuntimeError("simulated crash before the commit point")

    def write_slots(self, *args: Any, commit: ProjectionCommit | None = None,
                    **kw: Any) -> None:
        super().write_slots(*args, **kw)
        if commit is not None:
            self._crash()
            super().commit_projection(args[0], *commit)

    def commit_projection(self, *args: object, **kw: object) -> None:
        self._crash()
        super().commit_projection(*args, **kw)  # type: ignore[arg-type]


async def test_crash_between_write_and_commit(redis_url: str, r: aioredis.Redis,
                                              tmp_path: Path,
                                              rng: np.random.Generator) -> None:
    store = CrashingStore(tmp_path / "zarr")
    sim = RoomSim(r, ROOM)
    await edit_history(sim, rng)
    worker = StorageWorker(redis_url, store, "w1")
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            await worker.apply_room(ROOM)
        assert store.n_slots(ROOM) == sim.next_slot  # written, not committed
        assert await applied(r) == {}
        assert await worker.apply_room(ROOM) == sim.seq
    finally:
        await worker.aclose()
    sim.assert_store_matches(store)
    assert await blob_keys(r) == []


async def test_dead_consumer_entries_are_claimed(redis_url: str, r: aioredis.Redis,
                                                 store: ZarrFrameStore,
                                                 rng: np.random.Generator) -> None:
    sim = RoomSim(r, ROOM)
    await edit_history(sim, rng)
    # Consumer A took the room and read every entry, then died: no ack, lease lapses.
    await r.set(keys.storage_lease(ROOM), "A", px=300)
    got = await r.xreadgroup(keys.STORAGE_GROUP, "A", {keys.events(ROOM): ">"})
    assert len(got[0][1]) == sim.seq
    assert await pending_count(r) == sim.seq

    b = StorageWorker(redis_url, store, "B", claim_idle_ms=50)
    try:
        assert await b.apply_room(ROOM) == 0  # A's lease still holds
        total = 0

        async def b_applied_all() -> bool:
            nonlocal total
            total += await b.apply_room(ROOM)
            return total == sim.seq
        await eventually(b_applied_all)
    finally:
        await b.aclose()
    sim.assert_store_matches(store)
    consumers = {c["name"]: c["pending"] for c in
                 await r.xinfo_consumers(keys.events(ROOM), keys.STORAGE_GROUP)}
    assert consumers.get(b"A", 0) == 0
    assert await pending_count(r) == 0


async def test_gap_is_filled_by_xrange(redis_url: str, r: aioredis.Redis,
                                       store: ZarrFrameStore, rng: np.random.Generator) -> None:
    sim = RoomSim(r, ROOM)
    await edit_history(sim, rng)
    # A live consumer X holds the first three entries; the worker is delivered the rest
    # first, sees seq 4 after applied seq 0 and reads 1..3 by seq.
    await r.xreadgroup(keys.STORAGE_GROUP, "X", {keys.events(ROOM): ">"}, count=3)
    worker = StorageWorker(redis_url, store, "w1", claim_idle_ms=3_600_000)
    await apply_all(worker, sim, store)
    assert await pending_count(r) == 0  # XACK is per group: X's entries are done too


async def test_lease_gives_one_writer_per_room(redis_url: str, r: aioredis.Redis,
                                               store: ZarrFrameStore,
                                               rng: np.random.Generator) -> None:
    sim = RoomSim(r, ROOM)
    await sim.insert([make_frame(rng)])
    one = StorageWorker(redis_url, store, "one")
    two = StorageWorker(redis_url, store, "two")
    try:
        assert await one.apply_room(ROOM) == 1
        await sim.insert([make_frame(rng)])
        assert await two.apply_room(ROOM) == 0  # "one" holds the room
        assert await r.get(keys.storage_lease(ROOM)) == b"one"
        await one.aclose()  # releases the lease
        assert await r.get(keys.storage_lease(ROOM)) is None
        assert await two.apply_room(ROOM) == 1
        assert await r.get(keys.storage_lease(ROOM)) == b"two"
        # A stale lease holder does not delete another's lease on shutdown.
        await r.set(keys.storage_lease(ROOM), "three")
        await two.aclose()
        assert await r.get(keys.storage_lease(ROOM)) == b"three"
    finally:
        await one.aclose()
        await two.aclose()
    sim.assert_store_matches(store)


async def test_missing_blob_is_retried(redis_url: str, r: aioredis.Redis,
                                       store: ZarrFrameStore, rng: np.random.Generator) -> None:
    sim = RoomSim(r, ROOM)
    await sim.insert([make_frame(rng) for _ in range(3)])
    late = [make_frame(rng), make_frame(rng)]
    await sim.insert(late, stage=False)
    await sim.insert([make_frame(rng)])
    worker = StorageWorker(redis_url, store, "w1")
    try:
        assert await worker.apply_room(ROOM) == 1  # stops before the event it cannot apply
        assert int((await applied(r))[b"seq"]) == 1
        assert await worker.apply_room(ROOM) == 0
        await sim.stage(late)
        assert await worker.apply_room(ROOM) == 2
    finally:
        await worker.aclose()
    sim.assert_store_matches(store)
    assert await pending_count(r) == 0


async def test_hash_mismatch_halts_the_room_only(redis_url: str, r: aioredis.Redis,
                                                 store: ZarrFrameStore,
                                                 rng: np.random.Generator) -> None:
    bad, good = RoomSim(r, "bad"), RoomSim(r, "good")
    event = await bad.insert([make_frame(rng)])
    await r.set(keys.blob("bad", event.new_slots[0].hash),
                codec.frame_to_bytes(make_frame(rng)))
    await good.insert([make_frame(rng)])
    worker = StorageWorker(redis_url, store, "w1", reconcile_s=0.05, verify=True)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await eventually(lambda: _applied_seq_is(r, "good", 1))
        await eventually(lambda: _is_halted(worker, "bad"))
        await good.insert([make_frame(rng)])
        await eventually(lambda: _applied_seq_is(r, "good", 2))
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert await applied(r, "bad") == {}
    assert store.n_slots("bad") == 0
    assert await pending_count(r, "bad") == 1


async def test_staged_hash_is_trusted_by_default(redis_url: str, r: aioredis.Redis,
                                                 store: ZarrFrameStore,
                                                 rng: np.random.Generator) -> None:
    """The gateway hashed the frame it staged; apply does not hash it again."""
    sim = RoomSim(r, ROOM)
    event = await sim.insert([make_frame(rng)])
    other = make_frame(rng)
    await r.set(keys.blob(ROOM, event.new_slots[0].hash), codec.frame_to_bytes(other))
    worker = StorageWorker(redis_url, store, "w1")
    try:
        assert await worker.apply_room(ROOM) == 1
    finally:
        await worker.aclose()
    [got] = store.read_slots(ROOM, [0])
    np.testing.assert_array_equal(got["positions"], other["positions"])


async def _is_halted(worker: StorageWorker, room: str) -> bool:
    return room in worker.halted


async def _applied_seq_is(r: aioredis.Redis, room: str, seq: int) -> bool:
    return int((await applied(r, room)).get(b"seq", 0)) >= seq


async def test_missed_notification_is_reconciled(redis_url: str, r: aioredis.Redis,
                                                 store: ZarrFrameStore,
                                                 rng: np.random.Generator) -> None:
    sim = RoomSim(r, ROOM)
    worker = StorageWorker(redis_url, store, "w1", reconcile_s=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await edit_history(sim, rng, notify=False)
        await eventually(lambda: _applied_seq_is(r, ROOM, sim.seq))
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    sim.assert_store_matches(store)


async def test_run_end_to_end_and_stop(redis_url: str, r: aioredis.Redis,
                                       store: ZarrFrameStore, rng: np.random.Generator) -> None:
    rooms = [RoomSim(r, f"room-{i}") for i in range(6)]
    await rooms[0].insert([make_frame(rng)])  # committed before the worker starts
    # A long reconcile period: only start-up reconciliation and notifications drive it.
    worker = StorageWorker(redis_url, store, "w1", reconcile_s=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await eventually(lambda: _applied_seq_is(r, "room-0", 1))
        for sim in rooms:
            await edit_history(sim, rng)
        for sim in rooms:
            await eventually(lambda sim=sim: _applied_seq_is(r, sim.room, sim.seq))
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    for sim in rooms:
        sim.assert_store_matches(store)
        assert await r.get(keys.storage_lease(sim.room)) is None  # released on stop
    assert await blob_keys(r) == []


async def test_torn_projection_is_rebuilt(redis_url: str, r: aioredis.Redis,
                                          store: ZarrFrameStore,
                                          rng: np.random.Generator) -> None:
    sim = await applied_history(redis_url, r, store, rng)
    # A crash in the middle of commit_projection: _order written, attributes not.
    g = zarr.open_group(str(store.store.root / ROOM), mode="r+")  # type: ignore[attr-defined]
    g["_order"][0] = int(g["_order"][0]) + 1
    await sim.insert([make_frame(rng)])
    fresh = StorageWorker(redis_url, ZarrFrameStore(store.store.root), "w2")  # type: ignore[attr-defined]
    try:
        assert await fresh.apply_room(ROOM) == 1
    finally:
        await fresh.aclose()
    sim.assert_store_matches(ZarrFrameStore(store.store.root))  # type: ignore[attr-defined]


async def test_with_control(redis_url: str, r: aioredis.Redis, store: ZarrFrameStore,
                            rng: np.random.Generator) -> None:
    control_mod = pytest.importorskip("trajhub.control.control")
    control = control_mod.Control(r)
    frames = [make_frame(rng) for _ in range(5)]
    async with r.pipeline(transaction=False) as pipe:
        for f in frames:
            pipe.set(keys.blob(ROOM, frame_hash(f)), codec.frame_to_bytes(f), ex=600)
        await pipe.execute()
    worker = StorageWorker(redis_url, store, "w1", reconcile_s=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        result = await control.commit(InsertFrames(
            room=ROOM, hashes=[frame_hash(f) for f in frames]))
        assert result.status == "ok", result
        await eventually(lambda: _applied_seq_is(r, ROOM, 1))
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    seq, order, _, _ = store.read_projection(ROOM)
    assert seq == 1
    got = store.read_slots(ROOM, list(order))
    assert [frame_hash(f) for f in got] == [frame_hash(f) for f in frames]
    assert await blob_keys(r) == []


async def test_survives_redis_restart(tmp_path: Path, rng: np.random.Generator) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()
    store = ZarrFrameStore(tmp_path / "zarr")
    r = aioredis.Redis.from_url(server.url)
    worker = StorageWorker(server.url, store, "w1", reconcile_s=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        sim = RoomSim(r, ROOM)
        await sim.insert([make_frame(rng) for _ in range(3)])
        await eventually(lambda: _applied_seq_is(r, ROOM, 1))
        await r.aclose()
        server.stop()
        await asyncio.sleep(0.3)  # let the worker hit the outage (not an assertion)
        server.start()
        r = aioredis.Redis.from_url(server.url)
        sim.redis = r
        await edit_history(sim, rng)
        await eventually(lambda: _applied_seq_is(r, ROOM, sim.seq))
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await r.aclose()
        server.stop()
    sim.assert_store_matches(store)


async def test_storage_yields_to_foreground_writes_but_never_starves(
        r: aioredis.Redis, store: ZarrFrameStore, rng: np.random.Generator, redis_url: str) -> None:
    sim = RoomSim(r, ROOM)
    await sim.insert([make_frame(rng) for _ in range(3)])
    busy = True
    worker = StorageWorker(redis_url, store, "polite", yield_to=lambda: busy)
    worker.max_yield_s = 60.0
    try:
        task = asyncio.create_task(worker.apply_room(ROOM))
        await asyncio.sleep(0.3)  # ample time to apply 3 small frames, were it not busy
        assert not task.done() and store.applied_seq(ROOM) == 0
        busy = False
        assert await asyncio.wait_for(task, 20) == 1
        sim.assert_store_matches(store)

        await sim.insert([make_frame(rng)])
        busy = True
        worker.max_yield_s = 0.05  # bounded: a busy foreground delays, never blocks, storage
        assert await asyncio.wait_for(worker.apply_room(ROOM), 20) == 1
        sim.assert_store_matches(store)
    finally:
        await worker.aclose()


async def test_torn_projection_is_rebuilt_from_the_archive_after_a_trim(
        redis_url: str, r: aioredis.Redis, store: ZarrFrameStore,
        rng: np.random.Generator) -> None:
    from trajhub.shared.history_store import ZarrHistoryStore
    from trajhub.snapshotter.history import take_snapshot

    sim = await applied_history(redis_url, r, store, rng)
    # the snapshotter's group has handled everything too, so the stream may be trimmed
    got = await r.xreadgroup(keys.SNAPSHOTTER_GROUP, "s1", {keys.events(ROOM): ">"})
    await r.xack(keys.events(ROOM), keys.SNAPSHOTTER_GROUP, *(i for i, _ in got[0][1]))
    result = await take_snapshot(r, ZarrHistoryStore(store.store), ROOM)
    first = await r.xrange(keys.events(ROOM), count=1)
    assert result.trimmed_seq > 0 and (not first or int(first[0][1][b"seq"]) > 1)
    # A crash in the middle of commit_projection; the early events are only archived now.
    g = zarr.open_group(str(store.store.root / ROOM), mode="r+")  # type: ignore[attr-defined]
    g["_order"][0] = int(g["_order"][0]) + 1
    await sim.insert([make_frame(rng)])
    fresh = StorageWorker(redis_url, ZarrFrameStore(store.store.root), "w2")  # type: ignore[attr-defined]
    try:
        assert await fresh.apply_room(ROOM) == 1
    finally:
        await fresh.aclose()
    sim.assert_store_matches(ZarrFrameStore(store.store.root))  # type: ignore[attr-defined]
