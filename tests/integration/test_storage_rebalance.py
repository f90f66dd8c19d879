"""Storage replicas share rooms: rendezvous assignment over a heartbeat registry, leases
released between batches, every event applied exactly once and in order throughout."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis

from trajhub.shared import keys
from trajhub.shared.consumer import preferred_owner
from trajhub.shared.events import Event
from trajhub.shared.zarr_store import ZarrFrameStore
from trajhub.storage.worker import StorageWorker

sys.path.insert(0, str(Path(__file__).parent))
from roomsim import RoomSim, make_frame

from tests.helpers import eventually

ROOMS = [f"r{i}" for i in range(12)]
Handled = list[tuple[str, str, int]]  # (replica, room, seq) in the order applied


class RecordingWorker(StorageWorker):
    """A storage replica that records every event it applied."""

    def __init__(self, redis_url: str, root: Path, name: str, log: Handled) -> None:
        # Fast timings: leases and heartbeats of 1 s, reconciliation every 0.2 s.
        super().__init__(redis_url, ZarrFrameStore(root), name, lease_ms=1000,
                         claim_idle_ms=500, reconcile_s=0.2, batch_events=4)
        self.record = log

    async def handle_batch(self, room: str, events: Sequence[Event]) -> int:
        count = await super().handle_batch(room, events)
        self.record.extend((self.consumer, room, e.seq) for e in events[:count])
        return count


class Replica:
    def __init__(self, worker: RecordingWorker) -> None:
        self.worker = worker
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(worker.run(self.stop))

    async def halt(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 15)


async def owners(r: aioredis.Redis) -> dict[str, str | None]:
    values: list[Any] = [await r.get(keys.storage_lease(room)) for room in ROOMS]
    return {room: v.decode() if v else None for room, v in zip(ROOMS, values, strict=True)}


async def all_applied(r: aioredis.Redis, sims: list[RoomSim]) -> bool:
    for sim in sims:
        if int(await r.hget(keys.applied(sim.room), "seq") or 0) < sim.seq:
            return False
    return True


async def write_round(sims: list[RoomSim], rng: np.random.Generator) -> None:
    for sim in sims:
        await sim.insert([make_frame(rng, 8) for _ in range(2)])
        if len(sim.entries) > 3:
            await sim.delete([0])


def assert_exactly_once_in_order(log: Handled, sims: list[RoomSim]) -> None:
    for sim in sims:
        seqs = [seq for _, room, seq in log if room == sim.room]
        assert seqs == list(range(1, sim.seq + 1)), f"room {sim.room}: applied {seqs}"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


async def test_rooms_split_on_join_and_merge_on_leave(
        redis_url: str, r: aioredis.Redis, tmp_path: Path, rng: np.random.Generator) -> None:
    root = tmp_path / "zarr"
    log: Handled = []
    sims = [RoomSim(r, room) for room in ROOMS]
    one = Replica(RecordingWorker(redis_url, root, "one", log))
    two: Replica | None = None
    try:
        # Alone, "one" applies and holds every room.
        await write_round(sims, rng)
        await eventually(lambda: all_applied(r, sims))
        await write_round(sims, rng)
        await eventually(lambda: all_applied(r, sims))
        assert set((await owners(r)).values()) <= {"one", None}
        assert {rep for rep, _, _ in log} == {"one"}

        # "two" joins under load: the rooms rendezvous hashing gives it move over.
        two = Replica(RecordingWorker(redis_url, root, "two", log))
        mine = {room for room in ROOMS if preferred_owner(room, ["one", "two"]) == "two"}
        assert 0 < len(mine) < len(ROOMS)

        async def split() -> bool:
            await write_round(sims, rng)
            await eventually(lambda: all_applied(r, sims))
            held = await owners(r)
            return ({room for rep, room, _ in log if rep == "two"} == mine
                    and not {room for room, o in held.items() if o == "one"} & mine)

        await eventually(split, 30)
        held = await owners(r)
        assert {room for room, o in held.items() if o == "two"} <= mine
        assert sorted(await r.zrange(keys.STORAGE_REPLICAS, 0, -1)) == [b"one", b"two"]

        # "one" stops: "two" owns every room from then on.
        await one.halt()
        assert await r.zrange(keys.STORAGE_REPLICAS, 0, -1) == [b"two"]

        mark = len(log)

        async def merged() -> bool:
            await write_round(sims, rng)
            await eventually(lambda: all_applied(r, sims))
            return {room for _, room, _ in log[mark:]} == set(ROOMS)

        await eventually(merged, 30)
        assert {rep for rep, _, _ in log[mark:]} == {"two"}
        assert set((await owners(r)).values()) <= {"two", None}
    finally:
        await one.halt()
        if two is not None:
            await two.halt()
    assert_exactly_once_in_order(log, sims)
    store = ZarrFrameStore(root)
    for sim in sims:
        sim.assert_store_matches(store)
    assert await r.zrange(keys.STORAGE_REPLICAS, 0, -1) == []


async def test_dead_replica_rooms_move_after_its_heartbeat_lapses(
        redis_url: str, r: aioredis.Redis, tmp_path: Path, rng: np.random.Generator) -> None:
    """A replica that vanishes without leaving (kill -9) stays in the registry and holds
    its leases until both expire; then the survivor takes its rooms and its pending
    entries."""
    root = tmp_path / "zarr"
    log: Handled = []
    sims = [RoomSim(r, room) for room in ROOMS]
    # A registered "ghost" that owns its share of the rooms, holding their leases and
    # pending entries, but never applies anything: a crashed replica.
    now_ms = int((await r.time())[0]) * 1000
    await r.zadd(keys.STORAGE_REPLICAS, {"ghost": now_ms + 1500})
    ghost = [room for room in ROOMS if preferred_owner(room, ["ghost", "live"]) == "ghost"]
    assert ghost
    for room in ghost:
        await r.set(keys.storage_lease(room), "ghost", px=1500)
    await write_round(sims, rng)
    for room in ghost:  # the ghost read them: they are pending for it
        await r.xreadgroup(keys.STORAGE_GROUP, "ghost", {keys.events(room): ">"})
    live = Replica(RecordingWorker(redis_url, root, "live", log))
    try:
        await eventually(lambda: all_applied(r, sims), 30)
        assert set((await owners(r)).values()) <= {"live", None}
        assert await r.zrange(keys.STORAGE_REPLICAS, 0, -1) == [b"live"]
        for room in ghost:
            info = await r.xpending(keys.events(room), keys.STORAGE_GROUP)
            assert int(info["pending"]) == 0
    finally:
        await live.halt()
    assert_exactly_once_in_order(log, sims)
