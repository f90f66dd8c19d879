"""The gateway's broadcaster on a real Redis: every event of every watched room is
emitted once, in seq order, whether its stream is read directly with notify (up to
DIRECT_ROOMS watched rooms) or found through notify + XRANGE (more rooms), and across
a switch between the two."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from roomsim import RoomSim, make_frame

from trajhub.gateway import broadcaster as broadcaster_module
from trajhub.gateway.broadcaster import Broadcaster

WAIT_S = 10.0


class Recorder:
    def __init__(self) -> None:
        self.got: dict[str, list[int]] = {}
        self.changed = asyncio.Event()

    async def emit(self, room: str, message: dict[str, Any]) -> None:
        assert message["room"] == room
        self.got.setdefault(room, []).append(message["seq"])
        self.changed.set()

    async def until(self, expected: dict[str, list[int]]) -> None:
        async def wait() -> None:
            while {r: self.got.get(r, []) for r in expected} != expected:
                self.changed.clear()
                await self.changed.wait()
        try:
            await asyncio.wait_for(wait(), WAIT_S)
        except TimeoutError:
            pytest.fail(f"expected {expected}, got {self.got}")


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def running(redis_url: str) -> AsyncIterator[tuple[Broadcaster, Recorder]]:
    recorder = Recorder()
    broadcaster = Broadcaster(redis_url, recorder.emit)
    broadcaster.start()
    yield broadcaster, recorder
    await broadcaster.stop()


async def commit(sims: list[RoomSim], rng: np.random.Generator) -> None:
    for sim in sims:
        await sim.insert([make_frame(rng)])


async def test_a_few_watched_rooms_get_every_event_in_order(
        redis_client: aioredis.Redis, running: tuple[Broadcaster, Recorder]) -> None:
    broadcaster, recorder = running
    rng = np.random.default_rng(1)
    sims = [RoomSim(redis_client, f"room-{i}") for i in range(3)]
    await commit(sims[:1], rng)  # before the join: not broadcast
    for sim in sims:
        broadcaster.watch(sim.room, sim.seq)
    for _ in range(5):
        await commit(sims, rng)
    await recorder.until({"room-0": [2, 3, 4, 5, 6], "room-1": [1, 2, 3, 4, 5],
                          "room-2": [1, 2, 3, 4, 5]})


async def test_more_rooms_than_read_directly_and_back(
        redis_client: aioredis.Redis, running: tuple[Broadcaster, Recorder],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broadcaster_module, "DIRECT_ROOMS", 2)
    broadcaster, recorder = running
    rng = np.random.default_rng(2)
    sims = [RoomSim(redis_client, f"room-{i}") for i in range(4)]
    broadcaster.watch(sims[0].room, 0)
    await commit(sims[:1], rng)
    await recorder.until({"room-0": [1]})
    for sim in sims[1:]:  # now beyond the direct rooms: notify + XRANGE
        broadcaster.watch(sim.room, 0)
    for _ in range(3):
        await commit(sims, rng)
    await recorder.until({"room-0": [1, 2, 3, 4], "room-1": [1, 2, 3],
                          "room-2": [1, 2, 3], "room-3": [1, 2, 3]})
    for sim in sims[1:3]:  # back to two rooms, both read directly
        broadcaster.unwatch(sim.room)
    await commit(sims, rng)
    await recorder.until({"room-0": [1, 2, 3, 4, 5], "room-3": [1, 2, 3, 4]})
    broadcaster.watch(sims[1].room, sims[1].seq)  # a third one again
    await commit(sims, rng)
    await recorder.until({"room-0": [1, 2, 3, 4, 5, 6], "room-1": [1, 2, 3, 5],
                          "room-3": [1, 2, 3, 4, 5]})
    assert recorder.got["room-2"] == [1, 2, 3]


async def test_a_rejoined_room_is_not_broadcast_twice(
        redis_client: aioredis.Redis, running: tuple[Broadcaster, Recorder]) -> None:
    broadcaster, recorder = running
    rng = np.random.default_rng(3)
    sim = RoomSim(redis_client, "room-0")
    broadcaster.watch(sim.room, 0)
    await commit([sim], rng)
    await recorder.until({"room-0": [1]})
    broadcaster.unwatch(sim.room)
    await commit([sim], rng)
    await commit([sim], rng)
    broadcaster.watch(sim.room, sim.seq)
    await commit([sim], rng)
    await recorder.until({"room-0": [1, 4]})
