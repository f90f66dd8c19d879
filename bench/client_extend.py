"""Client upload benchmark: does encoding the next chunk during the upload help?

    uv run python bench/client_extend.py [--frames 1000] [--atoms 1000] [--repeats 3]

Starts ``trajhub serve`` (all-in-one, embedded Redis) on a free port and times
``Room.extend`` of ase.Atoms (positions, forces, energy) with ``overlap=True`` and
``overlap=False``, alternating, each into a fresh room; plus the two halves alone:
encoding every chunk (no network) and posting pre-encoded bodies (no encoding).
Also times small requests (len, append) for the per-request latency.
Writes bench/results/client_extend.json.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import httpx
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from trajhub import Room

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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [str(BIN / "trajhub"), "serve", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError("server did not start")


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(url: str, frames: list[Atoms], repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {"overlap_s": [], "serial_s": [], "encode_only_s": [],
                           "post_only_s": []}
    for r in range(repeats):
        for overlap in (True, False):
            with Room(url, f"bench-{r}-{int(overlap)}", overlap=overlap) as vis:
                key = "overlap_s" if overlap else "serial_s"
                out[key].append(timed(lambda v=vis: v.extend(frames, progress=False)))
                assert len(vis) == len(frames)
        with Room(url, f"bench-halves-{r}") as vis:
            chunks: list[Any] = []
            out["encode_only_s"].append(
                timed(lambda v=vis, cs=chunks: cs.extend(v._chunks(frames))))
            out["post_only_s"].append(timed(
                lambda v=vis, cs=chunks: [v.transport.post_frames(v.room, c.body) for c in cs]))
            out["chunks"] = len(chunks)
            out["mb"] = sum(len(c.body) for c in chunks) / 1e6
    with Room(url, "bench-small") as vis:
        vis.append(frames[0][:1])
        out["len_ms"] = median(timed(lambda: len(vis)) for _ in range(50)) * 1e3
        out["append_1atom_ms"] = median(timed(lambda: vis.append(frames[0][:1]))
                                        for _ in range(50)) * 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--atoms", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    frames = make_frames(args.frames, args.atoms)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_server(Path(tmp), port)
        try:
            out = run(f"http://127.0.0.1:{port}", frames, args.repeats)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    out.update(frames=args.frames, atoms=args.atoms)
    print(f"{args.frames} frames x {args.atoms} atoms = {out['mb']:.1f} MB in "
          f"{out['chunks']} chunks")
    for key in ("overlap_s", "serial_s", "encode_only_s", "post_only_s"):
        print(f"  {key:<15} median {median(out[key]):.3f} s  {[round(x, 3) for x in out[key]]}")
    print(f"  len {out['len_ms']:.2f} ms, append of one atom {out['append_1atom_ms']:.2f} ms")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "client_extend.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
