"""Storage apply throughput: N frames x M atoms already staged in Redis.

    uv run python bench/storage_apply.py [--frames 1000] [--atoms 1000] [--repeat 3]

For each layout of events (one insert of N frames; N/10 inserts of 10 frames) it runs
``StorageWorker.apply_room`` on a fresh Zarr directory (blobs staged, events committed
as control would) and, in the same process, a bare ``store.write_slots`` of the same
(already decoded) frames into another fresh directory, plus the two costs apply adds
(MGET of the blobs, decode + hash check). Prints frames/s (best of ``--repeat``) and
writes bench/results/storage_apply.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from trajhub.shared import codec, keys
from trajhub.shared.embedded_redis import EmbeddedRedis
from trajhub.shared.events import Event, FrameEntry, SlotWrite
from trajhub.shared.frames import Frame
from trajhub.shared.hashing import frame_hash
from trajhub.shared.zarr_store import ZarrFrameStore
from trajhub.storage.worker import StorageWorker

HERE = Path(__file__).resolve().parent


def make_frames(n_frames: int, n_atoms: int) -> list[Frame]:
    rng = np.random.default_rng(0)
    numbers = rng.integers(1, 80, n_atoms).astype(np.int64)
    return [{
        "numbers": numbers,
        "positions": rng.random((n_atoms, 3)) * 20,
        "cell": np.eye(3) * 20,
        "pbc": np.ones(3, dtype=bool),
        "calc.energy": np.array(float(rng.random())),
        "calc.forces": rng.random((n_atoms, 3)),
    } for _ in range(n_frames)]


async def stage_room(r: aioredis.Redis, room: str, blobs: list[bytes], hashes: list[str],
                     per_event: int) -> None:
    """Stage blobs and commit insert events of ``per_event`` frames, like control."""
    async with r.pipeline(transaction=False) as pipe:
        for h, b in zip(hashes, blobs, strict=True):
            pipe.set(keys.blob(room, h), b)
        await pipe.execute()
    seq = 0
    for start in range(0, len(hashes), per_event):
        seq += 1
        chunk = range(start, min(start + per_event, len(hashes)))
        event = Event(room=room, seq=seq, kind="frames_inserted", author="bench",
                      edit_id=f"e{seq}", time=time.time(), indices=list(chunk),
                      frames=[FrameEntry(frame_id=i, version=1, hash=hashes[i], slot=i)
                              for i in chunk],
                      new_slots=[SlotWrite(slot=i, hash=hashes[i]) for i in chunk],
                      n_frames=chunk.stop)
        await r.xadd(keys.events(room), {"seq": seq, "kind": event.kind,
                                          "data": event.model_dump_json()}, id=f"{seq}-0")
        if seq == 1:
            await r.xgroup_create(keys.events(room), keys.STORAGE_GROUP, id="0")
    await r.hset(keys.meta(room), mapping={"seq": seq})


async def bench_apply(url: str, root: Path, blobs: list[bytes], hashes: list[str],
                      per_event: int, tag: str) -> float:
    r = aioredis.Redis.from_url(url)
    room = f"apply-{tag}"
    await stage_room(r, room, blobs, hashes, per_event)
    store = ZarrFrameStore(root / tag)
    worker = StorageWorker(url, store, "bench")
    t0 = time.perf_counter()
    n = await worker.apply_room(room)
    elapsed = time.perf_counter() - t0
    await worker.aclose()
    assert n == -(-len(hashes) // per_event), n
    assert store.n_slots(room) == len(hashes)
    assert await r.exists(keys.blob(room, hashes[0])) == 0
    await r.delete(keys.events(room), keys.meta(room), keys.applied(room))
    await r.aclose()
    return elapsed


def bench_bare(root: Path, frames: list[Frame], hashes: list[str], tag: str) -> float:
    store = ZarrFrameStore(root / tag)
    t0 = time.perf_counter()
    store.write_slots("bare", 0, frames, hashes)
    return time.perf_counter() - t0


async def bench_fetch(url: str, blobs: list[bytes], hashes: list[str]) -> tuple[float, float]:
    """The two costs apply adds to a bare write: MGET of the blobs; decode + verify."""
    r = aioredis.Redis.from_url(url)
    blob_keys = [keys.blob("fetch", h) for h in hashes]
    await r.mset(dict(zip(blob_keys, blobs, strict=True)))
    t0 = time.perf_counter()
    got: list[Any] = await r.mget(blob_keys)
    t1 = time.perf_counter()
    frames = [codec.frame_from_bytes(b) for b in got]
    assert [frame_hash(f) for f in frames] == hashes
    t2 = time.perf_counter()
    await r.delete(*blob_keys)
    await r.aclose()
    return t1 - t0, t2 - t1


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--atoms", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    frames = make_frames(args.frames, args.atoms)
    hashes = [frame_hash(f) for f in frames]
    blobs = [codec.frame_to_bytes(f) for f in frames]
    mb = sum(map(len, blobs)) / 2**20
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        url = os.environ.get("TRAJHUB_BENCH_REDIS_URL")
        server = None if url else EmbeddedRedis(root / "redis").start()
        url = url or server.url  # type: ignore[union-attr]
        try:
            for rep in range(args.repeat):
                for name, seconds in (
                    ("bare write_slots", bench_bare(root, frames, hashes, f"bare{rep}")),
                    ("apply, 1 event", await bench_apply(url, root, blobs, hashes,
                                                         args.frames, f"one{rep}")),
                    ("apply, events of 10", await bench_apply(url, root, blobs, hashes, 10,
                                                              f"ten{rep}")),
                ):
                    results[name] = min(results.get(name, float("inf")), seconds)
                mget, decode = await bench_fetch(url, blobs, hashes)
                results["(MGET alone)"] = min(results.get("(MGET alone)", float("inf")), mget)
                results["(decode+verify alone)"] = min(
                    results.get("(decode+verify alone)", float("inf")), decode)
        finally:
            if server is not None:
                server.stop()
    print(f"{args.frames} frames x {args.atoms} atoms, {mb:.1f} MB of blobs, "
          f"best of {args.repeat}")
    for name, seconds in results.items():
        print(f"  {name:22s} {seconds * 1000:8.1f} ms  {args.frames / seconds:9.0f} frames/s")
    out = HERE / "results" / "storage_apply.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"frames": args.frames, "atoms": args.atoms, "blob_mb": mb,
                               "seconds": results}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
