"""Client benchmark against ``trajhub serve``: upload, read-all, single-frame latency.

    uv run python bench/client_extend.py [--frames 1000] [--atoms 1000] [--repeats 3]

Starts ``trajhub serve`` (all-in-one, embedded Redis) on a free port and, per repeat,
into a fresh room: times ``Room.extend`` of ase.Atoms (positions, forces, energy),
``Room.get(None)`` of them from a fresh client, and the p50 of ``Room.get([i])`` for
random ``i``. Also the two halves of an upload alone (encoding every chunk without the
network, posting pre-encoded bodies) and small requests (``len``, a one-atom append).
Then the client's Transport alone against a bare uvicorn endpoint (bench/_baseline_server.py):
a tiny GET round trip and a GET/POST of the same bytes as the upload.
Writes bench/results/client_extend.json.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bulk import free_port, make_frames, start_server, stop_server, wait_ready

from trajhub import Room
from trajhub.client.http import Transport

HERE = Path(__file__).resolve().parent


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(url: str, frames: list[Any], repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {"extend_s": [], "read_all_s": [], "frame_p50_ms": [],
                           "encode_only_s": [], "post_only_s": []}
    picks = random.Random(1).choices(range(len(frames)), k=200)
    for r in range(repeats):
        name = f"bench-{r}"
        with Room(url, name) as vis:
            out["extend_s"].append(timed(lambda v=vis: v.extend(frames, progress=False)))
        with Room(url, name) as reader:
            got: list[Any] = []
            out["read_all_s"].append(timed(lambda v=reader, g=got: g.extend(v.get(None))))
            assert len(got) == len(frames)
            lat = [timed(lambda v=reader, i=i: v.get([i])) for i in picks]
            out["frame_p50_ms"].append(median(lat) * 1e3)
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
        out["len_ms"] = median(timed(lambda: len(vis)) for _ in range(200)) * 1e3
        out["append_1atom_ms"] = median(timed(lambda: vis.append(frames[0][:1]))
                                        for _ in range(50)) * 1e3
    return out


def run_bare(n_bytes: int) -> dict[str, Any]:
    """The Transport alone against a bare endpoint: what the client itself costs."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "_baseline_server.py"), str(port)])
    out: dict[str, Any] = {}
    try:
        wait_ready(f"http://127.0.0.1:{port}/tiny")
        transport = Transport(f"http://127.0.0.1:{port}")
        out["bare_tiny_get_ms"] = median(
            timed(lambda: transport.request("GET", "/tiny")) for _ in range(500)) * 1e3
        pool = transport._pool.connection_from_url(transport.base_url)
        conn = pool._get_conn()  # the kept-alive connection the GETs used
        out["tcp_nodelay"] = bool(conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        pool._put_conn(conn)
        body = b"\x01" * n_bytes
        out["bare_get_s"] = median(timed(lambda: transport.request(
            "GET", "/source", params={"n": str(n_bytes)})) for _ in range(5))
        out["bare_post_s"] = median(timed(lambda: transport.request(
            "POST", "/sink", content=body)) for _ in range(5))
    finally:
        proc.terminate()
        proc.wait()
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
            stop_server(proc)
    out.update(run_bare(int(out["mb"] * 1e6)))
    out.update(frames=args.frames, atoms=args.atoms)
    print(f"{args.frames} frames x {args.atoms} atoms = {out['mb']:.1f} MB in "
          f"{out['chunks']} upload chunks")
    for key in ("extend_s", "read_all_s", "frame_p50_ms", "encode_only_s", "post_only_s"):
        print(f"  {key:<15} median {median(out[key]):.3f}  {[round(x, 3) for x in out[key]]}")
    print(f"  len {out['len_ms']:.2f} ms, append of one atom {out['append_1atom_ms']:.2f} ms")
    print(f"  bare endpoint: tiny GET {out['bare_tiny_get_ms']:.3f} ms (TCP_NODELAY "
          f"{out['tcp_nodelay']}), GET {out['mb']:.1f} MB {out['bare_get_s']:.3f} s, "
          f"POST {out['bare_post_s']:.3f} s")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "client_extend.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
