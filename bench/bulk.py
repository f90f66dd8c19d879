"""Bulk benchmark: 1,000 frames x 1,000 atoms against the all-in-one server.

    uv run python bench/bulk.py [--frames 1000] [--atoms 1000]

Measures upload (Room.extend), read-all from a fresh client, read-all after a server
restart (cold), single random frame p50/p99 and peak RSS of the server processes; and,
in the same run, a bare uvicorn endpoint moving the same bytes over loopback HTTP.
Prints a table and writes bench/results/bulk.json.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import quantiles

import httpx
import numpy as np
import psutil
import urllib3
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from trajhub import Room
from trajhub.client.convert import atoms_to_frame
from trajhub.shared import codec

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def make_frames(n_frames: int, n_atoms: int) -> list[Atoms]:
    rng = np.random.default_rng(0)
    numbers = rng.integers(1, 80, n_atoms)
    frames = []
    for _ in range(n_frames):
        atoms = Atoms(numbers=numbers, positions=rng.random((n_atoms, 3)) * 20,
                      cell=np.eye(3) * 20, pbc=True)
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.random()),
                                           forces=rng.random((n_atoms, 3)))
        frames.append(atoms)
    return frames


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(url)


class RssSampler:
    """Peak summed RSS of a process tree, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def start_server(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [str(BIN / "trajhub"), "serve", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(f"http://127.0.0.1:{port}/readyz")
    return proc


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def timed(fn: object) -> float:
    """Seconds ``fn()`` takes; what it returns is dropped after the clock stops."""
    t0 = time.perf_counter()
    result = fn()  # type: ignore[operator]
    elapsed = time.perf_counter() - t0
    del result
    return elapsed


def percentile(samples: list[float], q: int) -> float:
    return quantiles(samples, n=100)[q - 1]


def bench_trajhub(frames: list[Atoms], data_dir: Path) -> dict[str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(data_dir, port)
    rss = RssSampler(proc.pid)
    out: dict[str, float] = {}
    try:
        vis = Room(url, room="bench")
        out["upload_s"] = timed(lambda: vis.extend(frames, progress=False))
        reader = Room(url, room="bench")
        out["read_all_s"] = timed(lambda: reader.get(None))
        time.sleep(1.0)  # let storage apply everything before the restart
        lat = []
        for i in random.Random(1).choices(range(len(frames)), k=300):
            t0 = time.perf_counter()
            reader.get([i])
            lat.append(time.perf_counter() - t0)
        out["frame_p50_ms"] = percentile(lat, 50) * 1e3
        out["frame_p99_ms"] = percentile(lat, 99) * 1e3
    finally:
        out["peak_rss_mb"] = rss.stop() / 2**20
        stop_server(proc)
    proc = start_server(data_dir, port)
    try:
        cold = Room(url, room="bench")
        out["cold_read_all_s"] = timed(lambda: cold.get(None))
    finally:
        stop_server(proc)
    return out


def bench_baseline(frames: list[Atoms], chunk: int) -> dict[str, float]:
    """The same bytes, the same number of requests, through a bare endpoint."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "_baseline_server.py"), str(port)])
    wait_ready(f"http://127.0.0.1:{port}/tiny")
    bodies = [codec.frames_to_bytes([atoms_to_frame(a) for a in frames[i:i + chunk]])
              for i in range(0, len(frames), chunk)]
    out: dict[str, float] = {}
    # The same HTTP library as trajhub's client (urllib3), so the ratio is like for like.
    pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1, timeout=60)
    try:
        out["upload_s"] = timed(lambda: [pool.request("POST", "/sink", body=b) for b in bodies])
        out["read_all_s"] = timed(
            lambda: [pool.request("GET", f"/source?n={len(b)}").data for b in bodies])
        lat = []
        for _ in range(300):
            t0 = time.perf_counter()
            _ = pool.request("GET", "/tiny").data
            lat.append(time.perf_counter() - t0)
        out["frame_p50_ms"] = percentile(lat, 50) * 1e3
        out["frame_p99_ms"] = percentile(lat, 99) * 1e3
        out["bytes"] = float(sum(len(b) for b in bodies))
    finally:
        proc.terminate()
        proc.wait()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--atoms", type=int, default=1000)
    args = parser.parse_args()
    frames = make_frames(args.frames, args.atoms)
    with tempfile.TemporaryDirectory() as tmp:
        ours = bench_trajhub(frames, Path(tmp) / "data")
    base = bench_baseline(frames, chunk=290)  # ~16 MB requests, like Room.extend
    zndraw = {"upload_s": 2.03, "read_all_s": 0.60, "frame_p50_ms": 4.5, "peak_rss_mb": 666}
    target = {"upload_s": 0.4, "read_all_s": 0.15, "frame_p50_ms": 1.5, "peak_rss_mb": 300}
    rows = []
    print(f"\n{args.frames} frames x {args.atoms} atoms, {base['bytes'] / 1e6:.1f} MB on the wire")
    print(f"{'metric':<18}{'trajhub':>10}{'bare HTTP':>11}{'ratio':>8}{'target':>9}{'ZnDraw':>9}")
    for key in ("upload_s", "read_all_s", "cold_read_all_s", "frame_p50_ms", "frame_p99_ms",
                "peak_rss_mb"):
        b = base.get(key if key != "cold_read_all_s" else "read_all_s")
        ratio = ours[key] / b if b else float("nan")
        rows.append({"metric": key, "trajhub": ours[key], "baseline": b, "ratio": ratio,
                     "target": target.get(key), "zndraw": zndraw.get(key)})
        print(f"{key:<18}{ours[key]:>10.3f}{(b if b else float('nan')):>11.3f}{ratio:>8.2f}"
              f"{target.get(key, float('nan')):>9.2f}{zndraw.get(key, float('nan')):>9.2f}")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "bulk.json").write_text(json.dumps({"frames": args.frames, "atoms": args.atoms,
                                               "bytes": base["bytes"], "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
