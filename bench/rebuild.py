"""``trajhub rebuild`` throughput: N frames x M atoms, from the old group and from the
blob archive.

    uv run python bench/rebuild.py [--frames 2000] [--atoms 1000]

Commits N frames (inserts of 100) through control, applies them with a storage worker
that archives blobs (``TRAJHUB_ARCHIVE_BLOBS``; its apply time is printed beside one
without the archive), then rebuilds the room into fresh directories: once with the old
group as the content source, once with only the archive (the data arrays "lost").
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np
import redis.asyncio as aioredis

from trajhub.control import Control
from trajhub.shared import codec, keys
from trajhub.shared.embedded_redis import EmbeddedRedis
from trajhub.shared.events import InsertFrames
from trajhub.shared.hashing import frame_hash
from trajhub.shared.history_store import ZarrHistoryStore
from trajhub.shared.zarr_store import ZarrFrameStore
from trajhub.storage.blob_archive import BlobArchive
from trajhub.storage.rebuild import rebuild
from trajhub.storage.worker import StorageWorker


async def fill(r: aioredis.Redis, room: str, n: int, atoms: int) -> None:
    rng = np.random.default_rng(0)
    control = Control(r)
    for a in range(0, n, 100):
        hashes = []
        async with r.pipeline(transaction=False) as pipe:
            for _ in range(a, min(n, a + 100)):
                frame = {"numbers": np.full(atoms, 6, dtype=np.int64),
                         "positions": rng.random((atoms, 3))}
                h = frame_hash(frame)
                hashes.append(h)
                pipe.set(keys.blob(room, h), codec.frame_to_bytes(frame), ex=3600)
            await pipe.execute()
        result = await control.commit(InsertFrames(room=room, hashes=hashes, author="b"))
        assert result.status == "ok", result


async def apply(url: str, path: Path, room: str, archive: bool) -> float:
    store = ZarrFrameStore(path)
    worker = StorageWorker(url, store, "bench",
                           archive=BlobArchive(store.store) if archive else None)
    t = time.perf_counter()
    try:
        await worker.apply_room(room)
    finally:
        await worker.aclose()
    return time.perf_counter() - t


async def main(n: int, atoms: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis").start()
        r = aioredis.Redis.from_url(server.url)
        try:
            for archive in (False, True):
                room = f"bench{int(archive)}"
                await fill(r, room, n, atoms)
                s = await apply(server.url, Path(tmp) / "zarr", room, archive)
                print(f"apply {n} frames archive={archive}: {s:.2f} s ({n / s:.0f} frames/s)")
            history = ZarrHistoryStore(Path(tmp) / "zarr")
            for source, live in (("zarr", Path(tmp) / "zarr"), ("archive", Path(tmp) / "none")):
                report = await rebuild(r, live, history, "bench1",
                                       into=Path(tmp) / f"out-{source}")
                assert report.ok and report.sources == {source: n}, report.summary()
                print(f"rebuild from {source}: {report.seconds:.2f} s, "
                      f"{report.slots_per_s:.0f} frames/s, {report.mb_per_s:.0f} MB/s "
                      f"(incl. read-back check)")
        finally:
            await r.aclose()
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--atoms", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.frames, args.atoms))
