"""Single-frame read latency with the gateway's frame cache: cold, warm, scrubbing.

    uv run python bench/frame_cache.py [--frames 1000] [--atoms 1000] [--cache-mb 64]

Uploads a room through ``trajhub serve``, waits for storage to apply it, restarts the
server (empty cache, every frame in Zarr) and times single-frame GETs with a raw
``http.client`` keep-alive loop: random access, a sequential scrub, the same with
``keys=positions,numbers``, and warm random access once everything was read. Restarts
between phases so each starts cold. Prints p50/p99 and the server's peak RSS, and the
gateway's /api/v1/stats after each phase.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from statistics import median, quantiles
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bulk import RssSampler, free_port, make_frames, start_server, stop_server

from trajhub import Room

ROOM = "bench"


def get(conn: http.client.HTTPConnection, path: str) -> bytes:
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status} {body[:200]!r}")
    return body


def timings(conn: http.client.HTTPConnection, indices: list[int], keys: str = "",
            misses: list[float] | None = None) -> list[float]:
    """Latencies (ms) of single-frame GETs; with ``misses``, those of the requests that
    missed the cache are also appended there (told by /api/v1/stats, outside the timing)."""
    suffix = f"&keys={keys}" if keys else ""
    out = []
    seen = stats(conn).get("frame_cache", {}).get("misses", 0) if misses is not None else 0
    for i in indices:
        t0 = time.perf_counter()
        get(conn, f"/api/v1/rooms/{ROOM}/frames?indices={i}{suffix}")
        out.append((time.perf_counter() - t0) * 1e3)
        if misses is not None:
            now = stats(conn).get("frame_cache", {}).get("misses", 0)
            if now != seen:
                misses.append(out[-1])
            seen = now
    return out


def summary(name: str, ms: list[float]) -> dict[str, float]:
    if not ms:
        return {}
    p99 = quantiles(ms, n=100)[98] if len(ms) > 1 else ms[0]
    row = {"p50_ms": median(ms), "p99_ms": p99, "n": len(ms)}
    print(f"{name:<34} p50 {row['p50_ms']:7.2f} ms   p99 {row['p99_ms']:7.2f} ms   n={len(ms)}")
    return row


def stats(conn: http.client.HTTPConnection) -> dict[str, Any]:
    try:
        return dict(json.loads(get(conn, "/api/v1/stats")))
    except RuntimeError:
        return {}


def wait_applied(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        info = json.loads(get(conn, f"/api/v1/rooms/{ROOM}"))
        if info["applied_seq"] == info["seq"]:
            return
        time.sleep(0.1)
    raise TimeoutError("storage did not apply the room")


def phase(data_dir: Path, port: int, name: str, run: object) -> tuple[dict[str, dict[str, float]],
                                                                       float]:
    proc = start_server(data_dir, port)
    rss = RssSampler(proc.pid)
    conn = http.client.HTTPConnection("127.0.0.1", port)
    try:
        get(conn, "/healthz")
        rows = run(conn)  # type: ignore[operator]
        print(f"  stats after {name}: {stats(conn)}")
    finally:
        conn.close()
        peak = rss.stop() / 2**20
        stop_server(proc)
    print(f"  peak RSS ({name}): {peak:.0f} MiB")
    return rows, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--atoms", type=int, default=1000)
    parser.add_argument("--cache-mb", type=float, default=None)
    parser.add_argument("--n", type=int, default=300, help="requests per random phase")
    args = parser.parse_args()
    if args.cache_mb is not None:
        os.environ["TRAJHUB_CACHE_MB"] = str(args.cache_mb)
    n = args.frames
    frames = make_frames(n, args.atoms)
    picks = random.Random(1).choices(range(n), k=args.n)
    results: dict[str, object] = {"cache_mb": args.cache_mb}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        port = free_port()
        proc = start_server(data_dir, port)
        try:
            Room(f"http://127.0.0.1:{port}", room=ROOM).extend(frames, progress=False)
            wait_applied(f"http://127.0.0.1:{port}")
        finally:
            stop_server(proc)

        def random_access(conn: http.client.HTTPConnection) -> dict[str, dict[str, float]]:
            jumps = timings(conn, list(range(0, n, 33)))  # farther apart than read-ahead
            first = timings(conn, picks)
            again = timings(conn, picks)
            return {"cold_jumps": summary("cold: every 33rd frame (misses)", jumps),
                    "random_cold": summary("random, after restart", first),
                    "random_again": summary("random, same picks again", again)}

        def scrub(conn: http.client.HTTPConnection) -> dict[str, dict[str, float]]:
            missed: list[float] = []
            forward = timings(conn, list(range(n)), misses=missed)
            warm = timings(conn, picks)
            return {"scrub_cold": summary("sequential scrub, after restart", forward),
                    "scrub_misses": summary("  of which misses (read ahead)", missed),
                    "random_warm": summary("random, after the scrub", warm)}

        def scrub_keys(conn: http.client.HTTPConnection) -> dict[str, dict[str, float]]:
            forward = timings(conn, list(range(n)), keys="positions,numbers")
            return {"scrub_keys_cold": summary("scrub keys=positions,numbers", forward)}

        for name, run in (("random", random_access), ("scrub", scrub),
                          ("scrub_keys", scrub_keys)):
            rows, peak = phase(data_dir, port, name, run)
            results.update(rows)
            results[f"peak_rss_mb_{name}"] = peak
    out = Path(__file__).resolve().parent / "results" / "frame_cache.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
