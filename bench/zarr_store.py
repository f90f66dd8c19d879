"""ZarrFrameStore benchmark: write_slots / read_slots of N frames x M atoms on local disk.

    uv run python bench/zarr_store.py [--frames 1000] [--atoms 1000] [--reps 5]
                                      [--codecs none,lz4,zstd] [--targets 1,2,4]

Frames: numbers int64, positions float64 (a lattice with thermal noise), calc.forces
float64, cell, pbc, calc.energy; --mixed makes every other frame 10x smaller (padding).
Reports the best of --reps runs (the machine is shared), the number of array-level Zarr
calls, single-frame random reads, one-frame appends and the size on disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from zarr.core.array import AsyncArray

import trajhub.shared.zarr_store as zs
from trajhub.shared.frames import Frame
from trajhub.shared.hashing import frame_hash

CALLS = {"get": 0, "set": 0}
_real_get, _real_set = AsyncArray.getitem, AsyncArray.setitem


async def _counting_get(self: AsyncArray[Any], *args: Any, **kwargs: Any) -> Any:
    CALLS["get"] += 1
    return await _real_get(self, *args, **kwargs)


async def _counting_set(self: AsyncArray[Any], *args: Any, **kwargs: Any) -> None:
    CALLS["set"] += 1
    await _real_set(self, *args, **kwargs)


AsyncArray.getitem = _counting_get  # type: ignore[method-assign]
AsyncArray.setitem = _counting_set  # type: ignore[method-assign]


def make_frames(n: int, atoms: int, seed: int = 0, mixed: bool = False) -> list[Frame]:
    rng = np.random.default_rng(seed)
    side = int(np.ceil(atoms ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3), -1).reshape(-1, 3)[:atoms] * 2.0
    numbers = rng.choice([1, 6, 8], atoms)
    frames = []
    for i in range(n):
        m = atoms // 10 if mixed and i % 2 else atoms
        frames.append({
            "numbers": numbers[:m],
            "positions": grid[:m] + rng.normal(scale=0.05, size=(m, 3)),
            "calc.forces": rng.normal(size=(m, 3)),
            "cell": np.eye(3) * 2.0 * side,
            "pbc": np.array([True, True, True]),
            "calc.energy": np.asarray(rng.normal()),
        })
    return frames


def disk_usage(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def run(codec: str, target_mib: int, args: argparse.Namespace) -> dict[str, float]:
    zs.CODEC, zs.CHUNK_TARGET_BYTES = codec, target_mib << 20
    frames = make_frames(args.frames, args.atoms, mixed=args.mixed)
    hashes = [frame_hash(f) for f in frames]
    extra = make_frames(20, args.atoms, seed=1)
    best: dict[str, float] = {}

    def keep(name: str, value: float) -> None:
        best[name] = min(best.get(name, float("inf")), value)

    for rep in range(args.reps):
        path = tempfile.mkdtemp(dir=os.environ.get("BENCH_DIR"))
        try:
            writer = zs.open_store(path)
            CALLS.update(get=0, set=0)
            t = time.perf_counter()
            writer.write_slots("bench", 0, frames, hashes)
            keep("write_ms", (time.perf_counter() - t) * 1e3)
            keep("write_calls", CALLS["set"])
            reader = zs.open_store(path)  # a fresh process would start with no cache
            CALLS.update(get=0, set=0)
            t = time.perf_counter()
            out = reader.read_slots("bench", range(args.frames))
            keep("read_cold_ms", (time.perf_counter() - t) * 1e3)
            keep("read_calls", CALLS["get"])
            t = time.perf_counter()
            reader.read_slots("bench", range(args.frames))
            keep("read_warm_ms", (time.perf_counter() - t) * 1e3)
            assert np.array_equal(out[-1]["positions"], frames[-1]["positions"])
            singles = []
            for slot in np.random.default_rng(rep).integers(0, args.frames, 30):
                t = time.perf_counter()
                reader.read_slots("bench", [int(slot)])
                singles.append(time.perf_counter() - t)
            keep("read_one_ms", float(np.median(singles)) * 1e3)
            appends = []
            for k, frame in enumerate(extra):
                t = time.perf_counter()
                writer.write_slots("bench", args.frames + k, [frame], [frame_hash(frame)])
                appends.append(time.perf_counter() - t)
            keep("append_one_ms", float(np.median(appends)) * 1e3)
            keep("disk_mib", disk_usage(path) / 2**20)
        finally:
            shutil.rmtree(path)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--atoms", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--codecs", default="none,lz4,zstd")
    parser.add_argument("--targets", default="1,2,4")
    parser.add_argument("--mixed", action="store_true")
    args = parser.parse_args()
    print(f"{args.frames} frames x {args.atoms} atoms{' (mixed sizes)' if args.mixed else ''}, "
          f"best of {args.reps}")
    for codec in args.codecs.split(","):
        for target in args.targets.split(","):
            r = run(codec, int(target), args)
            print(f"{codec:5s} {target} MiB  write {r['write_ms']:6.0f} ms "
                  f"({r['write_calls']:.0f} calls)  read cold {r['read_cold_ms']:5.0f} ms "
                  f"({r['read_calls']:.0f} calls)  warm {r['read_warm_ms']:5.0f} ms  "
                  f"one {r['read_one_ms']:5.1f} ms  append {r['append_one_ms']:5.1f} ms  "
                  f"disk {r['disk_mib']:5.1f} MiB", flush=True)


if __name__ == "__main__":
    main()
