"""Storage apply throughput, and what it leaves of the event loop it shares.

    uv run python bench/storage_apply.py [--frames 1000] [--atoms 1000] [--repeat 3]
                                         [--chunk-mib 8,32] [--codec lz4] [--worker PATH]
                                         [--json NAME]

N frames x M atoms are staged in Redis and committed as insert events the way control
writes them. For each layout of events (one insert of N frames; N/10 inserts of 10) it
runs ``StorageWorker.apply_room`` on a fresh Zarr directory and, in the same process, a
bare ``store.write_slots`` of the same (already decoded) frames into another one; plus
the costs apply adds to a bare write, alone: MGET of the blobs, the zero-copy decode
(``frame_view``), the codec's copying decode, and the re-hash that ``verify=True`` adds.

The all-in-one server runs storage as a task on the gateway's event loop, so it also
measures, during one apply of N frames, how late a 1 ms timer on that loop fires (p99 and
max: how long the gateway could not run) and how long a gateway-like staging of another
N frames (unpack, validate and hash in a thread, then a pipelined SET) takes next to the
apply, against the same staging alone.

``--chunk-mib`` also runs the apply of N frames (alone, and beside the staging) with
other ``max_chunk_bytes``; ``--codec`` sets ``zarr_store.CODEC``. ``--worker PATH``
benchmarks another copy of worker.py (e.g. ``git show
HEAD~1:services/storage/src/trajhub/storage/worker.py > /tmp/old_worker.py``).
Prints frames/s (best of ``--repeat``) and writes bench/results/<--json>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import redis.asyncio as aioredis

import trajhub.storage.worker
from trajhub.shared import codec, keys, zarr_store
from trajhub.shared.embedded_redis import EmbeddedRedis
from trajhub.shared.events import Event, FrameEntry, SlotWrite
from trajhub.shared.frames import Frame, validate_frame
from trajhub.shared.hashing import frame_hash
from trajhub.shared.zarr_store import ZarrFrameStore

HERE = Path(__file__).resolve().parent


def make_frames(n_frames: int, n_atoms: int, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    numbers = rng.integers(1, 80, n_atoms).astype(np.int64)
    return [{
        "numbers": numbers,
        "positions": rng.random((n_atoms, 3)) * 20,
        "cell": np.eye(3) * 20,
        "pbc": np.ones(3, dtype=bool),
        "calc.energy": np.array(float(rng.random())),
        "calc.forces": rng.random((n_atoms, 3)),
    } for _ in range(n_frames)]


def load_worker(path: str | None) -> Any:
    if path is None:
        return trajhub.storage.worker
    spec = importlib.util.spec_from_file_location("bench_storage_worker", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module.__name__] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


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


class LoopLag:
    """How late a 1 ms sleep on this loop wakes up, sampled until stopped."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            self.lags.append(time.perf_counter() - t - 0.001)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.lags, q)) if self.lags else 0.0


async def bench_apply(wmod: ModuleType, url: str, root: Path, blobs: list[bytes],
                      hashes: list[str], per_event: int, tag: str,
                      beside: Callable[[], Awaitable[float]] | None = None,
                      **options: Any) -> dict[str, float]:
    """One apply_room of a freshly staged room: its seconds, the loop lag meanwhile,
    and the seconds of ``beside()`` run concurrently with it."""
    r = aioredis.Redis.from_url(url)
    room = f"apply-{tag}"
    await stage_room(r, room, blobs, hashes, per_event)
    store = ZarrFrameStore(root / tag)
    worker = wmod.StorageWorker(url, store, "bench", **options)
    out: dict[str, float] = {}
    with LoopLag() as lag:
        t0 = time.perf_counter()
        if beside is None:
            n = await worker.apply_room(room)
        else:
            n, out["beside"] = await asyncio.gather(worker.apply_room(room), beside())
        out["apply"] = time.perf_counter() - t0
    out["lag_p99"], out["lag_max"] = lag.quantile(0.99), max(lag.lags, default=0.0)
    await worker.aclose()
    assert n == -(-len(hashes) // per_event), n
    assert store.n_slots(room) == len(hashes)
    assert await r.exists(keys.blob(room, hashes[0])) == 0
    await r.delete(keys.events(room), keys.meta(room), keys.applied(room))
    await r.aclose()
    return out


def bench_bare(root: Path, frames: list[Frame], hashes: list[str], tag: str) -> float:
    store = ZarrFrameStore(root / tag)
    t0 = time.perf_counter()
    store.write_slots("bare", 0, frames, hashes)
    return time.perf_counter() - t0


async def bench_parts(wmod: ModuleType, url: str, blobs: list[bytes],
                      hashes: list[str]) -> dict[str, float]:
    """The costs apply adds to a bare write, each alone."""
    r = aioredis.Redis.from_url(url)
    blob_keys = [keys.blob("fetch", h) for h in hashes]
    await r.mset(dict(zip(blob_keys, blobs, strict=True)))
    t0 = time.perf_counter()
    got: list[Any] = await r.mget(blob_keys)
    out = {"MGET": time.perf_counter() - t0}
    await r.delete(*blob_keys)
    await r.aclose()
    view = getattr(wmod, "frame_view", None)
    if view is not None:
        t0 = time.perf_counter()
        frames = [view(b) for b in got]
        out["decode, zero-copy"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    frames = [codec.frame_from_bytes(b) for b in got]
    out["decode, codec (copies)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert [frame_hash(f) for f in frames] == hashes
    out["re-hash (verify=True)"] = time.perf_counter() - t0
    return out


def gateway_like_stage(url: str, body: bytes, room: str) -> Callable[[], Awaitable[float]]:
    """What the gateway does with a bulk upload before control commits it: decode,
    validate and hash (a thread), then SET every blob (one pipeline)."""
    def prepare() -> list[tuple[str, bytes]]:
        frames = [validate_frame(codec.decode_frame(f)) for f in codec.unpackb(body)["frames"]]
        return [(keys.blob(room, frame_hash(f)), codec.frame_to_bytes(f)) for f in frames]

    async def stage() -> float:
        t0 = time.perf_counter()
        staged = await asyncio.to_thread(prepare)
        r = aioredis.Redis.from_url(url)
        async with r.pipeline(transaction=False) as pipe:
            for key, blob in staged:
                pipe.set(key, blob, ex=600, nx=True)
            await pipe.execute()
        elapsed = time.perf_counter() - t0
        await r.delete(*(k for k, _ in staged))
        await r.aclose()
        return elapsed

    return stage


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--atoms", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk-mib", default="", help="other max_chunk_bytes to compare")
    ap.add_argument("--codec", help="zarr_store.CODEC for every store (default: its own)")
    ap.add_argument("--worker", help="another worker.py to benchmark")
    ap.add_argument("--json", default="storage_apply")
    args = ap.parse_args()
    wmod = load_worker(args.worker)
    if args.codec:
        zarr_store.CODEC = args.codec
    frames = make_frames(args.frames, args.atoms)
    hashes = [frame_hash(f) for f in frames]
    blobs = [codec.frame_to_bytes(f) for f in frames]
    body = codec.frames_to_bytes(make_frames(args.frames, args.atoms, seed=1))
    mb = sum(map(len, blobs)) / 2**20
    seconds: dict[str, float] = {}
    loop: dict[str, float] = {}

    def keep(table: dict[str, float], name: str, value: float) -> None:
        table[name] = min(table.get(name, float("inf")), value)

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        url = os.environ.get("TRAJHUB_BENCH_REDIS_URL")
        server = None if url else EmbeddedRedis(root / "redis").start()
        url = url or server.url  # type: ignore[union-attr]
        try:
            for rep in range(args.repeat):
                keep(seconds, "bare write_slots", bench_bare(root, frames, hashes, f"b{rep}"))
                for per_event, label in ((args.frames, "1 event"), (10, "events of 10")):
                    got = await bench_apply(wmod, url, root, blobs, hashes, per_event,
                                            f"{per_event}-{rep}")
                    keep(seconds, f"apply, {label}", got["apply"])
                    if per_event == args.frames:
                        keep(loop, "loop lag p99 during apply", got["lag_p99"])
                        keep(loop, "loop lag max during apply", got["lag_max"])
                if hasattr(wmod, "decode_blobs"):
                    got = await bench_apply(wmod, url, root, blobs, hashes, args.frames,
                                            f"v{rep}", verify=True)
                    keep(seconds, "apply, 1 event, verify=True", got["apply"])
                for name, value in (await bench_parts(wmod, url, blobs, hashes)).items():
                    keep(seconds, f"({name} alone)", value)
                stage = gateway_like_stage(url, body, f"stage{rep}")
                keep(loop, "gateway-like staging alone", await stage())
                got = await bench_apply(wmod, url, root, blobs, hashes, args.frames,
                                        f"s{rep}", beside=stage)
                keep(loop, "gateway-like staging beside apply", got["beside"])
                keep(loop, "apply beside the staging", got["apply"])
                for mib in filter(None, args.chunk_mib.split(",")):
                    size = int(mib) << 20
                    got = await bench_apply(wmod, url, root, blobs, hashes, args.frames,
                                            f"c{mib}-{rep}", max_chunk_bytes=size)
                    keep(seconds, f"apply, 1 event, {mib} MiB chunks", got["apply"])
                    got = await bench_apply(wmod, url, root, blobs, hashes, args.frames,
                                            f"cs{mib}-{rep}", beside=stage,
                                            max_chunk_bytes=size)
                    keep(loop, f"staging beside apply, {mib} MiB chunks", got["beside"])
        finally:
            if server is not None:
                server.stop()
    print(f"{args.frames} frames x {args.atoms} atoms, {mb:.1f} MB of blobs, "
          f"{args.worker or 'trajhub.storage.worker'}, codec {zarr_store.CODEC}, "
          f"best of {args.repeat}")
    for name, value in seconds.items():
        print(f"  {name:38s} {value * 1000:8.1f} ms  {args.frames / value:9.0f} frames/s")
    for name, value in loop.items():
        print(f"  {name:38s} {value * 1000:8.1f} ms")
    out = HERE / "results" / f"{args.json}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"frames": args.frames, "atoms": args.atoms, "blob_mb": mb,
                               "worker": args.worker, "codec": zarr_store.CODEC,
                               "seconds": seconds, "loop": loop},
                              indent=2))


if __name__ == "__main__":
    asyncio.run(main())
