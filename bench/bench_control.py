"""Latency of control's commit scripts against a bare PING, in the same run.

    uv run python bench/bench_control.py                    # embedded Redis 6.2 (unix socket)
    uv run python bench/bench_control.py redis://host:6379/15   # another Redis (FLUSHDB!)

Every measured command runs on a fresh room of 10,000 frames. Blobs are staged as
small fake strings: the scripts only check that they exist, so frame content does
not change the timing. Redis's own time per EVALSHA comes from INFO commandstats.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis

from trajhub.control import Control, IndexReader
from trajhub.control.control import _keys_and_args
from trajhub.shared import keys
from trajhub.shared.embedded_redis import EmbeddedRedis
from trajhub.shared.events import Command, DeleteFrames, InsertFrames, ReplaceFrames

ROOM = "bench"
ROOM_SIZE = 10_000
REPEATS = 20
_counter = 0


def fresh_hashes(n: int) -> list[str]:
    global _counter
    out = [hashlib.sha256(f"{_counter + i}".encode()).hexdigest() for i in range(n)]
    _counter += n
    return out


async def stage(r: aioredis.Redis, room: str, hashes: list[str]) -> None:
    async with r.pipeline(transaction=False) as pipe:
        for h in hashes:
            pipe.set(keys.blob(room, h), b"x", ex=600)
        await pipe.execute()


async def timed(fn: Callable[[], Awaitable[object]], repeats: int = REPEATS) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def line(name: str, ms: list[float]) -> None:
    print(f"{name:<46} median {statistics.median(ms):8.3f}   "
          f"min {min(ms):8.3f}   p90 {sorted(ms)[int(len(ms) * 0.9)]:8.3f}   (n={len(ms)})")


async def server_usec(r: aioredis.Redis) -> float:
    stats = await r.info("commandstats")
    return float(stats.get("cmdstat_evalsha", {}).get("usec_per_call", 0.0))


async def new_room(r: aioredis.Redis, control: Control, name: str, n: int) -> None:
    """A room of n frames (one shared content, so only one blob to stage)."""
    [h] = fresh_hashes(1)
    await stage(r, name, [h])
    result = await control.commit(InsertFrames(room=name, hashes=[h] * n))
    assert result.status == "ok", result.reason


async def bench_commit(r: aioredis.Redis, control: Control, name: str,
                       make: Callable[[str], Awaitable[Command]]) -> None:
    """Round trip of the bare script (EVALSHA) and of Control.commit, each on a fresh
    room of ROOM_SIZE frames."""
    raw_ms, full_ms, server_us = [], [], []
    for i in range(REPEATS * 2):
        room = f"bench-{i}"
        await new_room(r, control, room, ROOM_SIZE)
        command = await make(room)
        # Collect the Lua garbage of the setup so it is not billed to the measured call.
        await r.eval("collectgarbage('collect') return 0", 0)  # type: ignore[misc]
        await r.config_resetstat()
        t0 = time.perf_counter()
        if i % 2:
            result = await control.commit(command)
            assert result.status == "ok", result.reason
            full_ms.append((time.perf_counter() - t0) * 1e3)
        else:
            script_keys, args = _keys_and_args(command)
            await control._scripts[command.op](keys=script_keys, args=args)
            raw_ms.append((time.perf_counter() - t0) * 1e3)
        server_us.append(await server_usec(r))
        await r.delete(*keys.room_keys(room))
        await r.delete(*[k async for k in r.scan_iter(match=keys.blob_prefix(room) + "*")])
    line(f"{name}: EVALSHA round trip", raw_ms)
    line(f"{name}: Control.commit", full_ms)
    line(f"{name}: EVALSHA time inside Redis", [us / 1e3 for us in server_us])


async def run(url: str) -> None:
    r = aioredis.Redis.from_url(url)
    await r.flushdb()
    control = Control(r)
    print(f"redis {(await r.info('server'))['redis_version']} at {url}; "
          f"rooms of {ROOM_SIZE:,} frames; times in ms")
    line("PING", await timed(r.ping, REPEATS * 3))

    async def insert(room: str, n: int, middle: bool = False) -> Command:
        hashes = fresh_hashes(n)
        await stage(r, room, hashes)
        return InsertFrames(room=room, hashes=hashes, at=ROOM_SIZE // 2 if middle else None)

    async def replace_1000(room: str) -> Command:
        hashes = fresh_hashes(1000)
        await stage(r, room, hashes)
        start = ROOM_SIZE // 3
        return ReplaceFrames(room=room, indices=list(range(start, start + 1000)),
                             hashes=hashes, base_versions=[1] * 1000)

    async def delete_1000(room: str) -> Command:
        start = ROOM_SIZE // 3
        return DeleteFrames(room=room, indices=list(range(start, start + 1000)))

    async def delete_1(room: str) -> Command:
        return DeleteFrames(room=room, indices=[ROOM_SIZE // 3])

    await bench_commit(r, control, "insert 1 (append)", lambda room: insert(room, 1))
    await bench_commit(r, control, "insert 1 (middle)", lambda room: insert(room, 1, True))
    await bench_commit(r, control, "insert 1000 (append)", lambda room: insert(room, 1000))
    await bench_commit(r, control, "insert 1000 (middle)",
                       lambda room: insert(room, 1000, True))
    await bench_commit(r, control, "replace 1000", replace_1000)
    await bench_commit(r, control, "delete 1", delete_1)
    await bench_commit(r, control, "delete 1000", delete_1000)

    await new_room(r, control, ROOM, ROOM_SIZE)
    reader = IndexReader(r)
    line("IndexReader.read 1000 (slice)", await timed(lambda: reader.read(ROOM, stop=1000)))
    line(f"IndexReader.read all {ROOM_SIZE:,}", await timed(lambda: reader.read(ROOM), 10))
    await r.flushdb()
    await r.aclose()


def main() -> None:
    if len(sys.argv) > 1:
        asyncio.run(run(sys.argv[1]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp)).start()
        try:
            asyncio.run(run(server.url))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
