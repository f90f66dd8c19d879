"""Slot compaction: sequential reads before and after a relayout, and the drop pass.

    uv run python bench/compaction.py [--frames 4000] [--atoms 500] [--edited 0.5]

A room of N frames is committed in order, then a random ``--edited`` share of them is
replaced one commit at a time (each edit takes a new slot at the end), so the logical
order jumps between the old and the new slots, as in a room edited for weeks. Reading
the whole trajectory in logical order (pages of 100 frames, a fresh store each time)
is timed before and after ``relayout_room``, beside the physical baseline: the same
number of contiguous slots read in slot order. Then the stream is trimmed (a snapshot
pass, keep_events=0) and a drop pass frees the slots no retained state uses.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import redis.asyncio as aioredis

from trajhub.control import Control, IndexReader
from trajhub.shared import codec, keys
from trajhub.shared.embedded_redis import EmbeddedRedis
from trajhub.shared.events import InsertFrames, ReplaceFrames
from trajhub.shared.frames import Frame
from trajhub.shared.hashing import frame_hash
from trajhub.shared.history_store import ZarrHistoryStore
from trajhub.shared.zarr_store import ZarrFrameStore
from trajhub.snapshotter.compaction import compact, relayout_room
from trajhub.snapshotter.history import take_snapshot
from trajhub.storage.worker import StorageWorker

ROOM = "bench"
PAGE = 100


def frame(rng: np.random.Generator, atoms: int) -> Frame:
    return {"numbers": np.full(atoms, 6, dtype=np.int32),
            "positions": rng.random((atoms, 3)).astype(np.float32)}


async def stage(r: aioredis.Redis, frames: list[Frame]) -> list[str]:
    hashes = [frame_hash(f) for f in frames]
    async with r.pipeline(transaction=False) as pipe:
        for h, f in zip(hashes, frames, strict=True):
            pipe.set(keys.blob(ROOM, h), codec.frame_to_bytes(f), ex=3600)
        await pipe.execute()
    return hashes


async def build(r: aioredis.Redis, control: Control, n: int, atoms: int, edited: float
                ) -> None:
    rng = np.random.default_rng(0)
    for a in range(0, n, 500):
        hashes = await stage(r, [frame(rng, atoms) for _ in range(a, min(n, a + 500))])
        assert (await control.commit(InsertFrames(room=ROOM, hashes=hashes))).status == "ok"
    for i in rng.choice(n, int(n * edited), replace=False).tolist():
        hashes = await stage(r, [frame(rng, atoms)])
        result = await control.commit(ReplaceFrames(room=ROOM, indices=[i], hashes=hashes))
        assert result.status == "ok", result


async def apply(url: str, path: Path) -> None:
    worker = StorageWorker(url, ZarrFrameStore(path), "bench")
    try:
        await worker.apply_room(ROOM)
    finally:
        await worker.aclose()


def read_seconds(path: Path, slots: list[int]) -> float:
    """Median of three whole reads in ``slots`` order, pages of PAGE, a fresh store each."""
    times = []
    for _ in range(3):
        store = ZarrFrameStore(path)
        t = time.perf_counter()
        for a in range(0, len(slots), PAGE):
            store.read_slots(ROOM, slots[a:a + PAGE])
        times.append(time.perf_counter() - t)
    return statistics.median(times)


async def logical_slots(r: aioredis.Redis) -> list[int]:
    return [e.slot for e in (await IndexReader(r).read(ROOM)).entries]


async def main(n: int, atoms: int, edited: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis").start()
        r = aioredis.Redis.from_url(server.url)
        zarr_dir = Path(tmp) / "zarr"
        control = Control(r)
        try:
            await build(r, control, n, atoms, edited)
            await apply(server.url, zarr_dir)
            slots = await logical_slots(r)
            baseline = read_seconds(zarr_dir, list(range(n)))
            before = read_seconds(zarr_dir, slots)
            store = ZarrFrameStore(zarr_dir)
            t = time.perf_counter()
            relaid = await relayout_room(r, control, store, ROOM)
            await apply(server.url, zarr_dir)
            relayout_s = time.perf_counter() - t
            after_slots = await logical_slots(r)
            after = read_seconds(zarr_dir, after_slots)
            history = ZarrHistoryStore(zarr_dir)
            await take_snapshot(r, history, ROOM)
            await r.xtrim(keys.events(ROOM), minid=f"{await head(r) + 1}-0")
            t = time.perf_counter()
            result = await compact(r, control, store, history, ROOM, keep_events=0)
            drop_s = time.perf_counter() - t
        finally:
            await r.aclose()
            server.stop()
    mb = n * atoms * 16 / 1e6
    print(f"{n} frames x {atoms} atoms ({mb:.0f} MB), {edited:.0%} edited once")
    print("| read all in logical order | s | MB/s | x baseline |\n|---|---|---|---|")
    for name, s in (("contiguous slots (baseline)", baseline), ("before relayout", before),
                    ("after relayout", after)):
        print(f"| {name} | {s:.3f} | {mb / s:.0f} | {s / baseline:.2f} |")
    print(f"relayout: {relaid} frames in {relayout_s:.2f} s incl. storage apply "
          f"({relaid / relayout_s:.0f} frames/s)")
    print(f"drop pass: {result.dropped_slots} of {result.own_slots} slots, "
          f"{result.chunks_deleted} chunks, {result.bytes_freed / 1e6:.1f} MB freed "
          f"in {drop_s:.2f} s")


async def head(r: aioredis.Redis) -> int:
    return int(await r.hget(keys.meta(ROOM), "seq") or 0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=4000)
    parser.add_argument("--atoms", type=int, default=500)
    parser.add_argument("--edited", type=float, default=0.5)
    args = parser.parse_args()
    asyncio.run(main(args.frames, args.atoms, args.edited))
