"""Gateway HTTP benchmark: POST 1,000 frames x 1,000 atoms in chunks, GET them all back.

    uv run python bench/gateway_http.py [--frames 1000] [--atoms 1000] [--chunk 100]

Starts an embedded redis-server and the gateway as a separate process
(``python -m trajhub.gateway``, in-process control, Zarr in a temp dir), then times over
loopback: the chunked upload, one GET of every frame from the staged blobs, and (after a
storage worker applied the room) the same GET from Zarr. Writes
bench/results/gateway_http.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from trajhub.shared import codec
from trajhub.shared.embedded_redis import EmbeddedRedis
from trajhub.shared.zarr_store import open_store

HERE = Path(__file__).resolve().parent
ROOM = "bench"


def make_bodies(n_frames: int, n_atoms: int, chunk: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    numbers = rng.integers(1, 90, n_atoms)
    frames = [{"numbers": numbers, "positions": rng.normal(size=(n_atoms, 3)) + i,
               "cell": np.eye(3) * 20.0, "pbc": np.ones(3, bool),
               "calc.energy": np.array(-float(i))} for i in range(n_frames)]
    return [codec.frames_to_bytes(frames[i:i + chunk]) for i in range(0, n_frames, chunk)]


def start_gateway(redis_url: str, storage: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TRAJHUB_REDIS_URL": redis_url, "TRAJHUB_STORAGE_URL": str(storage),
           "TRAJHUB_PORT": str(port), "TRAJHUB_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "trajhub.gateway"], env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.terminate()
    raise RuntimeError("gateway did not start")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed_get(client: httpx.Client) -> tuple[float, int, int]:
    t = time.perf_counter()
    r = client.get(f"/api/v1/rooms/{ROOM}/frames")
    r.raise_for_status()
    n = len(codec.unpackb(r.content)["frames"])
    return time.perf_counter() - t, n, len(r.content)


async def apply(redis_url: str, storage: Path) -> None:
    from trajhub.storage.worker import StorageWorker

    worker = StorageWorker(redis_url, open_store(str(storage)), "bench")
    try:
        await worker.apply_room(ROOM)
    finally:
        await worker.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--atoms", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=100)
    args = parser.parse_args()
    bodies = make_bodies(args.frames, args.atoms, args.chunk)
    with tempfile.TemporaryDirectory() as tmp:
        redis = EmbeddedRedis(Path(tmp) / "redis")
        redis.start()
        port = free_port()
        proc = start_gateway(redis.url, Path(tmp) / "zarr", port)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
                t = time.perf_counter()
                for body in bodies:
                    r = client.post(f"/api/v1/rooms/{ROOM}/frames", content=body,
                                    headers={"content-type": "application/msgpack"})
                    r.raise_for_status()
                post_s = time.perf_counter() - t
                get_blob_s, n, nbytes = timed_get(client)
                assert n == args.frames
                get_blob_warm_s, _, _ = timed_get(client)
                asyncio.run(apply(redis.url, Path(tmp) / "zarr"))
                get_zarr_s, n, _ = timed_get(client)
                get_zarr_warm_s, _, _ = timed_get(client)
                assert n == args.frames
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            redis.stop()
    mb = sum(len(b) for b in bodies) / 1e6
    result = {"frames": args.frames, "atoms": args.atoms, "chunk": args.chunk,
              "upload_mb": round(mb, 1), "response_mb": round(nbytes / 1e6, 1),
              "post_s": round(post_s, 3), "get_blobs_s": round(get_blob_s, 3),
              "get_blobs_again_s": round(get_blob_warm_s, 3),
              "get_zarr_s": round(get_zarr_s, 3), "get_zarr_again_s": round(get_zarr_warm_s, 3)}
    for key, value in result.items():
        print(f"{key:>18}: {value}")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "gateway_http.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
