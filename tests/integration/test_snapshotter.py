"""Snapshotter plumbing against a real Redis: seen seq, acks, order, claims, run()."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis

from trajhub.shared import keys
from trajhub.shared.events import EventHead
from trajhub.snapshotter.worker import SnapshotterWorker

sys.path.insert(0, str(Path(__file__).parent))
from roomsim import RoomSim, make_frame

from tests.helpers import eventually

ROOM = "lobby"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


class Recording(SnapshotterWorker):
    """Records what reaches the extension point; can fail a given seq once."""

    def __init__(self, *args: object, fail_at: int | None = None, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.seen: list[int] = []
        self.fail_at = fail_at

    async def handle_events(self, room: str, events: Sequence[EventHead]) -> None:
        seqs = [e.seq for e in events]
        if self.fail_at in seqs:
            self.fail_at = None
            raise RuntimeError("snapshot failed")
        self.seen.extend(seqs)


async def seen_seq(r: aioredis.Redis, room: str = ROOM) -> int:
    return int(await r.hget(keys.snapshotter_state(room), "seq") or 0)  # type: ignore[misc]


async def pending_count(r: aioredis.Redis, room: str = ROOM) -> int:
    info = await r.xpending(keys.events(room), keys.SNAPSHOTTER_GROUP)
    return int(info["pending"])


async def commit_n(sim: RoomSim, rng: np.random.Generator, n: int, **kw: bool) -> None:
    for _ in range(n):
        await sim.insert([make_frame(rng)], **kw)


async def test_tracks_seq_and_acks(redis_url: str, r: aioredis.Redis,
                                   rng: np.random.Generator) -> None:
    sim = RoomSim(r, ROOM)
    await commit_n(sim, rng, 10)
    worker = Recording(redis_url, "s1", batch_events=4)
    try:
        assert await worker.process_room(ROOM) == 10
        assert await worker.process_room(ROOM) == 0
        assert await seen_seq(r) == 10
        assert await pending_count(r) == 0
        await commit_n(sim, rng, 3)
        assert await worker.process_room(ROOM) == 3
    finally:
        await worker.aclose()
    assert worker.seen == list(range(1, 14))
    assert await seen_seq(r) == 13
    # Storage's group is independent: everything is still undelivered there.
    info = await r.xinfo_groups(keys.events(ROOM))
    assert {g["name"]: g["pending"] for g in info}[keys.STORAGE_GROUP.encode()] == 0


async def test_in_order_once_with_gaps_and_redelivery(redis_url: str, r: aioredis.Redis,
                                                      rng: np.random.Generator) -> None:
    sim = RoomSim(r, ROOM)
    await commit_n(sim, rng, 8)
    await r.xreadgroup(keys.SNAPSHOTTER_GROUP, "X", {keys.events(ROOM): ">"}, count=3)
    worker = Recording(redis_url, "s1", claim_idle_ms=3_600_000)
    try:
        assert await worker.process_room(ROOM) == 8
        await r.xgroup_setid(keys.events(ROOM), keys.SNAPSHOTTER_GROUP, "0")
        assert await worker.process_room(ROOM) == 0
    finally:
        await worker.aclose()
    assert worker.seen == list(range(1, 9))
    assert await pending_count(r) == 0


async def test_failed_hook_is_retried(redis_url: str, r: aioredis.Redis,
                                      rng: np.random.Generator) -> None:
    sim = RoomSim(r, ROOM)
    await commit_n(sim, rng, 5)
    worker = Recording(redis_url, "s1", fail_at=3, batch_events=2)
    try:
        with pytest.raises(RuntimeError, match="snapshot failed"):
            await worker.process_room(ROOM)
        assert await seen_seq(r) == 2
        assert await pending_count(r) == 2  # 3 and 4 were delivered: they stay pending
        assert await worker.process_room(ROOM) == 3
    finally:
        await worker.aclose()
    assert worker.seen == [1, 2, 3, 4, 5]
    assert await pending_count(r) == 0


async def test_claims_dead_consumer_and_trimmed_entries(redis_url: str, r: aioredis.Redis,
                                                        rng: np.random.Generator) -> None:
    """A dead consumer's entries, some trimmed from the stream meanwhile (Redis 6.2
    XAUTOCLAIM answers nil for those), are claimed and acknowledged."""
    sim = RoomSim(r, ROOM)
    await commit_n(sim, rng, 8)
    await r.hset(keys.snapshotter_state(ROOM), "seq", 6)  # handled up to 6, never acked
    await r.xreadgroup(keys.SNAPSHOTTER_GROUP, "dead", {keys.events(ROOM): ">"})
    await r.xtrim(keys.events(ROOM), minid="5-0")
    worker = Recording(redis_url, "s1", claim_idle_ms=0)
    try:
        assert await worker.process_room(ROOM) == 2
    finally:
        await worker.aclose()
    assert worker.seen == [7, 8]
    assert await pending_count(r) == 0
    assert await seen_seq(r) == 8


async def test_run_follows_notifications_and_reconciles(redis_url: str, r: aioredis.Redis,
                                                        rng: np.random.Generator) -> None:
    rooms = [RoomSim(r, f"snap-{i}") for i in range(4)]
    worker = SnapshotterWorker(redis_url, "s1", reconcile_s=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        for i, sim in enumerate(rooms):
            await commit_n(sim, rng, 3, notify=i % 2 == 0)
        for sim in rooms:
            await eventually(lambda sim=sim: _seen_is(r, sim.room, sim.seq))
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    for sim in rooms:
        assert await pending_count(r, sim.room) == 0


async def _seen_is(r: aioredis.Redis, room: str, seq: int) -> bool:
    return await seen_seq(r, room) == seq
