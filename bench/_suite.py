"""The workloads of ``python -m bench``, each beside its raw baseline measured in the same run.

Every workload takes a running ``Deployment`` (or makes its own) and returns rows:
``{"workload", "figure", "value", "unit", "baseline", "ratio", "target", "pass", ...}``.
``ratio`` is trajhub / baseline for times, and trajhub / baseline *throughput* for the
bulk transfers (so 0.5 means half the bare speed); ``target`` is a condition on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bulk
import control
import history
import numpy as np
import redis
import redis.asyncio as aioredis
import zarr
from _deploy import Deployment, RssSampler, rss_by_process, tree_rss
from _fanout import BareServer, bare_emit, trajhub_frames_changed, trajhub_room_frame
from _measure import no_gc, percentile
from _serve import Http, free_port, wait_ready

from trajhub import Room
from trajhub.client.convert import atoms_to_frame
from trajhub.shared import codec, hashing, keys
from trajhub.shared.frames import Frame
from trajhub.shared.zarr_store import ZarrFrameStore, chunk_compressors, data_chunks

HERE = Path(__file__).resolve().parent
Row = dict[str, Any]
CHUNK_BYTES = 16 * 1024 * 1024  # the client's request size (trajhub.client.room)
CHUNK_FRAMES = 1000
APPLY_TIMEOUT_S = 600.0


@dataclass
class Sizes:
    bulk: list[tuple[int, int]]  # (frames, atoms)
    fetches: int
    commits: int
    per_client: int
    fanout_s: float
    history: list[int]
    joins: int
    rss_gb: list[float]
    lag_samples: int


FULL = Sizes(bulk=[(1000, 1000), (100, 100_000), (10_000, 100)], fetches=500, commits=1000,
             per_client=100, fanout_s=10.0, history=[1_000, 10_000, 100_000], joins=100,
             rss_gb=[1.0, 5.0], lag_samples=50)
QUICK = Sizes(bulk=[(200, 1000), (10, 100_000), (2000, 100)], fetches=100, commits=200,
              per_client=20, fanout_s=2.0, history=[1_000, 5_000], joins=30,
              rss_gb=[0.05, 0.1], lag_samples=15)


def row(workload: str, figure: str, value: float, unit: str, baseline: float | None,
        ratio: float | None, target: str = "", ok: bool | None = None, **extra: Any) -> Row:
    return {"workload": workload, "figure": figure, "value": round(value, 4), "unit": unit,
            "baseline": None if baseline is None else round(baseline, 4),
            "ratio": None if ratio is None else round(ratio, 3), "target": target,
            "pass": ok, **extra}


def at_most(ratio: float, limit: float) -> tuple[str, bool]:
    return f"<= {limit:g}", ratio <= limit


def at_least(ratio: float, limit: float) -> tuple[str, bool]:
    return f">= {limit:g}", ratio >= limit


def timed(fn: Callable[..., object], *args: Any, **kwargs: Any) -> float:
    """Seconds ``fn`` takes to return; what it returns is dropped after the clock stops
    (a reader keeps the frames it read: freeing 10,000 of them took ~4 ms more)."""
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    elapsed = time.perf_counter() - t0
    del result
    return elapsed


REPEATS = 3
"""Repeatable transfers (bare ones, warm reads) are timed this often; the median counts:
on this machine a single bare read of 56 MB took 0.024 s in one run and 0.17 s in another."""


def median_timed(fn: Callable[..., object], *args: Any, **kwargs: Any) -> float:
    return statistics.median(timed(fn, *args, **kwargs) for _ in range(REPEATS))


# -- shared helpers ---------------------------------------------------------------------------
class BareHttp:
    """``_baseline_server.py`` (uvicorn moving bytes) in a child process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BareHttp:
        proc = subprocess.Popen([sys.executable, str(HERE / "_baseline_server.py"),
                                 str(self.port)])
        # _baseline_server has no /readyz: wait on /tiny through the same helper.
        self.proc = _wait_tiny(proc, self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)


def _wait_tiny(proc: subprocess.Popen[bytes], port: int) -> subprocess.Popen[bytes]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if Http(port).request("GET", "/tiny")[0] == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("the bare HTTP server did not start")


def wait_applied(redis_url: str, room: str, timeout: float = APPLY_TIMEOUT_S) -> float:
    """Seconds until storage applied the room's head seq."""
    r = redis.Redis.from_url(redis_url)
    t0 = time.perf_counter()
    try:
        head = int(r.hget(keys.meta(room), "seq") or 0)  # type: ignore[arg-type]
        while int(r.hget(keys.applied(room), "seq") or 0) < head:  # type: ignore[arg-type]
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"storage did not apply {room} in {timeout} s")
            time.sleep(0.005)
    finally:
        r.close()
    return time.perf_counter() - t0


def request_bodies(frames: list[Frame]) -> list[bytes]:
    """The bodies the client would send: chunks of <= 16 MiB and <= 1000 frames."""
    bodies, part, size = [], [], 0
    for frame in frames:
        nbytes = sum(a.nbytes for a in frame.values())
        if part and (size + nbytes > CHUNK_BYTES or len(part) >= CHUNK_FRAMES):
            bodies.append(codec.frames_to_bytes(part))
            part, size = [], 0
        part.append(frame)
        size += nbytes
    if part:
        bodies.append(codec.frames_to_bytes(part))
    return bodies


def post_frames(port: int, room: str, frames: list[Frame]) -> int:
    status, answer = Http(port).request("POST", f"/api/v1/rooms/{room}/frames",
                                        codec.frames_to_bytes(frames),
                                        {"content-type": "application/msgpack"})
    if status != 201:
        raise RuntimeError(f"POST frames: {status} {answer[:300]!r}")
    return int(json.loads(answer)["seq"])


# -- bulk: upload, read-all, cold read-all ----------------------------------------------------
def bulk_rooms(sizes: Sizes) -> Iterator[tuple[str, int, int]]:
    for n_frames, n_atoms in sizes.bulk:
        yield f"bulk-{n_frames}x{n_atoms}", n_frames, n_atoms


def bench_bulk(dep: Deployment, bare: BareHttp, sizes: Sizes) -> list[Row]:
    ours: dict[str, dict[str, float]] = {}
    base: dict[str, dict[str, float]] = {}
    warm: dict[str, list[float]] = {}  # every warm read, beside their median
    for room, n_frames, n_atoms in bulk_rooms(sizes):
        frames = bulk.make_frames(n_frames, n_atoms)
        bodies = request_bodies([atoms_to_frame(a) for a in frames])
        base[room] = bare_transfer(bare.port, bodies)
        base[room]["sha256_s"] = sha256_s(bodies)
        base[room]["disk_s"] = disk_write_s(dep.root / "disk-probe", bodies)
        got = ours[room] = {"bytes": float(sum(map(len, bodies)))}
        got["upload_s"] = timed(Room(dep.url, room=room).extend, frames, progress=False)
        # read what is stored (in the all-in-one process storage would compete otherwise)
        got["apply_wait_s"] = wait_applied(dep.redis_url, room)
        reader = Room(dep.url, room=room)
        # The first read after the upload finds few frames in the gateway's cache (a
        # bulk upload is not written through): reported apart, not as a warm read.
        got["first_read_s"] = timed(reader.get, None)
        warm[room] = [timed(reader.get, None) for _ in range(REPEATS)]
        got["read_all_s"] = statistics.median(warm[room])
    dep.restart()
    for room, _, _ in bulk_rooms(sizes):
        ours[room]["cold_read_all_s"] = timed(Room(dep.url, room=room).get, None)
    rows = []
    for room, n_frames, n_atoms in bulk_rooms(sizes):
        mb = ours[room]["bytes"] / 1e6
        for fig, base_fig, limit in (("upload_s", "upload_s", 0.3),
                                     ("read_all_s", "read_all_s", 0.5),
                                     ("cold_read_all_s", "read_all_s", 0.5)):
            value, b = ours[room][fig], base[room][base_fig]
            ratio = b / value  # throughput fraction of the bare endpoint
            target, ok = at_least(ratio, limit)
            runs = {"runs_s": [round(x, 4) for x in warm[room]]} if fig == "read_all_s" else {}
            rows.append(row(f"bulk {n_frames}x{n_atoms}", fig.removesuffix("_s"), value, "s",
                            b, ratio, target, ok, mb=round(mb, 1),
                            mb_per_s=round(mb / value, 1), frames=n_frames, atoms=n_atoms,
                            **runs))
        value, b = ours[room]["first_read_s"], base[room]["read_all_s"]
        rows.append(row(f"bulk {n_frames}x{n_atoms}", "first read after upload", value, "s",
                        b, b / value, mb=round(mb, 1)))
        # Not a target: how close upload comes to its own floor, moving the bytes (the
        # bare endpoint) and hashing them once (the content hash), beside the HTTP one.
        value = ours[room]["upload_s"]
        b = base[room]["upload_s"] + base[room]["sha256_s"]
        rows.append(row(f"bulk {n_frames}x{n_atoms}", "upload vs bare + sha256", value, "s",
                        b, b / value, mb=round(mb, 1),
                        sha256_mb_per_s=round(mb / base[room]["sha256_s"], 1)))
        # Nor this: a durable upload writes every byte to the data disk once (a pack,
        # fdatasync'd before the commit); on this VM's disk that is the floor of a large
        # upload (~1 GB/s for a burst of a few hundred MB, then ~0.3 GB/s).
        b = base[room]["disk_s"]
        rows.append(row(f"bulk {n_frames}x{n_atoms}", "upload vs bare disk write + fdatasync",
                        value, "s", b, b / value, mb=round(mb, 1),
                        disk_mb_per_s=round(mb / b, 1)))
        # Not a target either: the bare read above drops each answer, so its memory is
        # reused; a reader keeps every frame, and the kernel's first touch of that much
        # new memory is a large cost on this machine (~0.8 ms per MB).
        value, b = ours[room]["read_all_s"], base[room]["read_keep_s"]
        rows.append(row(f"bulk {n_frames}x{n_atoms}", "read all vs bare that keeps the bytes",
                        value, "s", b, b / value, mb=round(mb, 1)))
    return rows


def sha256_s(bodies: list[bytes]) -> float:
    """Seconds to sha256 the request bodies once (the content hash every upload needs;
    0.25-0.4 GB/s on a CPU without SHA instructions, ~1-2 GB/s with them)."""
    def run() -> None:
        for body in bodies:
            hashlib.sha256(body).digest()
    return median_timed(run)


def disk_write_s(where: Path, bodies: list[bytes]) -> float:
    """Seconds to write the request bodies to files beside the deployment's data, one
    write and one fdatasync each, as staging packs are written (timed once: a repeat
    would find the disk's burst allowance spent, or not, by chance)."""
    where.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i, body in enumerate(bodies):
        fd = os.open(where / f"probe-{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view):]
            os.fdatasync(fd)
        finally:
            os.close(fd)
    elapsed = time.perf_counter() - t0
    for i in range(len(bodies)):
        (where / f"probe-{i}").unlink()
    return elapsed


def bare_transfer(port: int, bodies: list[bytes]) -> dict[str, float]:
    """The same bytes in the same number of requests, through the bare endpoint, with the
    client's HTTP library (urllib3)."""
    import urllib3

    pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1, timeout=120)
    try:
        def upload() -> None:
            for b in bodies:
                pool.request("POST", "/sink", body=b)

        def read() -> None:
            for b in bodies:
                _ = pool.request("GET", f"/source?n={len(b)}").data

        def read_keep() -> list[bytearray]:
            kept = []
            for b in bodies:  # each into a new buffer of its own, as fast as it gets
                answer = pool.request("GET", f"/source?n={len(b)}", preload_content=False)
                buf = bytearray(len(b))
                view, got = memoryview(buf), 0
                while got < len(b):
                    got += answer._fp.readinto(view[got:])
                view.release()
                answer.release_conn()
                kept.append(buf)
            return kept

        return {"upload_s": median_timed(upload), "read_all_s": median_timed(read),
                "read_keep_s": median_timed(read_keep)}
    finally:
        pool.close()


# -- single frame -----------------------------------------------------------------------------
def bench_frame(dep: Deployment, bare: BareHttp, sizes: Sizes) -> list[Row]:
    room, n_frames, n_atoms = next(bulk_rooms(sizes))
    r = redis.Redis.from_url(dep.redis_url)
    if not r.exists(keys.meta(room)):
        frames = [atoms_to_frame(a) for a in bulk.make_frames(n_frames, n_atoms)]
        post_frames(dep.port, room, frames)
    r.close()
    wait_applied(dep.redis_url, room)
    ours, theirs = Http(dep.port), Http(bare.port)
    picks = random.Random(1).choices(range(n_frames), k=sizes.fetches + 20)
    path = f"/api/v1/rooms/{room}/frames?indices="
    calls: dict[str, Callable[[int], object]] = {
        "all keys": lambda i: ours.get_ok(f"{path}{i}"),
        "positions": lambda i: ours.get_ok(f"{path}{i}&keys=positions"),
        "bare": lambda i: theirs.get_ok("/tiny"),
    }
    ms: dict[str, list[float]] = {name: [] for name in calls}
    with no_gc():
        for k, i in enumerate(picks):
            for name, call in calls.items():
                t0 = time.perf_counter()
                call(i)
                if k >= 20:
                    ms[name].append((time.perf_counter() - t0) * 1e3)
    ours.close()
    theirs.close()
    rows = []
    for name in ("all keys", "positions"):
        for q, label in ((0.5, "p50"), (0.99, "p99")):
            value, b = percentile(ms[name], q), percentile(ms["bare"], q)
            target, ok = at_most(value / b, 2.0) if q == 0.5 else ("", None)
            rows.append(row(f"frame fetch ({name})", label, value, "ms", b, value / b, target,
                            ok, room=room))
    return rows


# -- commits ----------------------------------------------------------------------------------
def bench_commit(dep: Deployment, sizes: Sizes) -> list[Row]:
    control.create_room(dep.port)
    sync = redis.Redis.from_url(dep.redis_url)
    trivial = sync.register_script("return 1")
    conn = control.Http(dep.port)
    bodies = iter([control.put_body(control.LATENCY_FRAME, tag) for tag in
                   range(sizes.commits + 50)])
    ms = control.interleave({"EVALSHA": lambda: trivial(),
                             "commit": lambda: conn.replace(next(bodies), "bench")},
                            sizes.commits, 50)
    conn.close()
    rows = []
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        value, b = percentile(ms["commit"], q), percentile(ms["EVALSHA"], q)
        rows.append(row("commit (HTTP PUT, 1 frame)", label, value, "ms", b, value / b))
    for clients in (1, 16):
        load = control.throughput_part(dep.port, clients, sizes.per_client * (16 // clients))
        base = evalsha_rate(dep.redis_url, clients, sizes.per_client * (16 // clients) * 5)
        rows.append(row("commit (HTTP PUT, 1 frame)", f"commits/s, {clients} client(s)",
                        load["commits_per_s"], "1/s", base, load["commits_per_s"] / base,
                        p50_ms=load["latency"]["p50_ms"], p99_ms=load["latency"]["p99_ms"]))
    sync.close()
    return rows


def evalsha_rate(redis_url: str, clients: int, per_client: int) -> float:
    """EVALSHA ``return 1`` round trips per second, ``clients`` threads each with its own
    connection (the baseline of commits/s)."""
    conns = [redis.Redis.from_url(redis_url) for _ in range(clients)]
    scripts = [c.register_script("return 1") for c in conns]
    for s in scripts:
        s()
    start = threading.Barrier(clients + 1)

    def work(c: int) -> None:
        start.wait()
        for _ in range(per_client):
            scripts[c]()

    threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.close()
    return clients * per_client / elapsed


# -- fan-out ----------------------------------------------------------------------------------
FANOUT_ROOM = "fanout"
FANOUT_FRAMES = 64
FOLLOWERS = 50
RATE_HZ = 60.0


def bench_fanout(dep: Deployment, sizes: Sizes) -> list[Row]:
    post_frames(dep.port, FANOUT_ROOM, [control.make_frame(-1 - i) for i in
                                        range(FANOUT_FRAMES)])
    with BareServer() as bare_server:
        bare = bare_emit(bare_server.url, FOLLOWERS, RATE_HZ, sizes.fanout_s)
    step = trajhub_room_frame(dep.url, FANOUT_ROOM, FANOUT_FRAMES, FOLLOWERS, RATE_HZ,
                              sizes.fanout_s)
    changed = trajhub_frames_changed(
        dep.url, dep.port, FANOUT_ROOM,
        lambda k: control.put_body(k % FANOUT_FRAMES, 5_000_000 + k), FOLLOWERS, RATE_HZ,
        sizes.fanout_s)
    rows = []
    for name, got in (("room_frame (presenter step)", step), ("frames_changed", changed)):
        workload = f"fan-out {name}, {FOLLOWERS} sockets @ {RATE_HZ:g} Hz"
        rows.append(row(workload, "delivered/s", got["delivered_per_s"], "1/s",
                        bare["delivered_per_s"],
                        got["delivered_per_s"] / bare["delivered_per_s"],
                        lost=got["lost"], bare_lost=bare["lost"]))
        for key in ("p50_ms", "p99_ms"):
            value, b = got[key], bare[key]
            if value is None or b is None:
                rows.append(row(workload, key.removesuffix("_ms"), float("nan"), "ms", b, None,
                                "", False, error="nothing delivered"))
                continue
            target, ok = at_most(value / b, 2.0) if key == "p99_ms" else ("", None)
            rows.append(row(workload, key.removesuffix("_ms"), value, "ms", b, value / b,
                            target, ok))
    return rows


# -- join vs history --------------------------------------------------------------------------
JOIN_REFERENCE_ROOM = "history-1k"
"""A room built like history.ROOM but kept at the first history length: each length's
joins are timed beside joins of this room (history.joins)."""


def bench_join(dep: Deployment, sizes: Sizes) -> list[Row]:
    points: list[tuple[int, float, float, float]] = []
    with asyncio.Runner() as runner:
        r = aioredis.Redis.from_url(dep.redis_url)
        try:
            reference = history.Builder(r, 1000, 500, room=JOIN_REFERENCE_ROOM)
            runner.run(reference.create_room())
            head = runner.run(history.head_seq(r, JOIN_REFERENCE_ROOM))
            runner.run(reference.grow(sizes.history[0] - head))
            runner.run(history.settle(r, trimmed=False, room=JOIN_REFERENCE_ROOM))
            builder = history.Builder(r, 1000, 500)
            runner.run(builder.create_room())
            for target in sizes.history:
                runner.run(builder.grow(target - runner.run(history.head_seq(r))))
                runner.run(history.settle(r, trimmed=False))
                ms = history.joins(dep.port, sizes.joins, 10,
                                   rooms=(history.ROOM, JOIN_REFERENCE_ROOM))
                points.append((target, percentile(ms["join"], 0.5),
                               percentile(ms[JOIN_REFERENCE_ROOM], 0.5),
                               percentile(ms["healthz"], 0.5)))
        finally:
            runner.run(r.aclose())
    first = points[0][1]
    rows = []
    for events, join, beside, healthz in points:
        target, ok = at_most(join / beside, history.JOIN_RATIO_AIM)
        rows.append(row("join vs history (1000 frames)", f"p50 at {events:,} events", join,
                        "ms", beside, join / beside, target, ok, events=events,
                        baseline_events=sizes.history[0],
                        first_point_ms=round(first, 3), x_first_point=round(join / first, 3),
                        healthz_p50_ms=round(healthz, 3)))
    return rows


# -- peak RSS while uploading -----------------------------------------------------------------
RSS_ATOMS = 10_000
RSS_BATCH = 50  # frames per extend: ~28 MB generated at a time


def rss_frames(rng: np.random.Generator, n: int) -> list[Frame]:
    numbers = np.full(RSS_ATOMS, 6, dtype=np.int64)
    return [{"numbers": numbers, "positions": rng.random((RSS_ATOMS, 3)) * 20,
             "cell": np.eye(3) * 20, "pbc": np.ones(3, dtype=bool),
             "calc.forces": rng.random((RSS_ATOMS, 3))} for _ in range(n)]


def bench_rss(sizes: Sizes, services: bool) -> tuple[list[Row], dict[str, Any]]:
    """One fresh server; upload until each of ``sizes.rss_gb`` (cumulative) is reached and
    applied; the peak RSS so far at each. "Flat" = the peak at the last size within 10% of
    the first's: nothing on the write path may keep what it moved."""
    frame_bytes = RSS_ATOMS * (8 + 24 + 24)
    rng = np.random.default_rng(7)
    points: list[dict[str, Any]] = []
    series: list[tuple[float, float]] = []  # (GB uploaded, RSS MB) after each batch
    with tempfile.TemporaryDirectory() as tmp, Deployment(Path(tmp), services) as dep:
        time.sleep(0.5)
        idle_mb = tree_rss(dep.pids()) / 2**20
        sampler = RssSampler(dep.pids(), every=0.05)
        room = Room(dep.url, room="rss")
        sent, t0 = 0, time.perf_counter()
        try:
            for gb in sorted(sizes.rss_gb):
                goal = max(RSS_BATCH, round(gb * 1e9 / frame_bytes))
                while sent < goal:
                    n = min(RSS_BATCH, goal - sent)
                    room.extend(rss_frames(rng, n), progress=False)
                    sent += n
                    series.append((round(sent * frame_bytes / 1e9, 3),
                                   round(tree_rss(dep.pids()) / 2**20, 1)))
                upload_s = time.perf_counter() - t0
                wait_applied(dep.redis_url, "rss")
                points.append({"gb": gb, "frames": sent, "upload_s": round(upload_s, 2),
                               "idle_mb": round(idle_mb, 1),
                               "peak_mb": round(sampler.peak / 2**20, 1),
                               "after_apply_mb": rss_by_process(dep.pids())})
        finally:
            sampler.stop()
    rows = []
    first = points[0]
    for point in points:
        target, ok = at_most(point["peak_mb"], 300.0)
        rows.append(row("peak memory (PSS), server processes + Redis",
                        f"uploading {point['gb']:g} GB", point["peak_mb"], "MB", None, None,
                        f"{target} MB", ok, idle_mb=point["idle_mb"],
                        upload_s=point["upload_s"]))
        if point is not first:
            target, ok = at_most(point["peak_mb"] / first["peak_mb"], 1.1)
            rows.append(row("peak memory (PSS), server processes + Redis",
                            f"{point['gb']:g} GB / {first['gb']:g} GB", point["peak_mb"], "MB",
                            first["peak_mb"], point["peak_mb"] / first["peak_mb"], target, ok))
    return rows, {"points": points, "series": series}


# -- storage apply lag ------------------------------------------------------------------------
LAG_FRAMES = 10
LAG_ATOMS = 1000


class BareZarr:
    """The baseline of storage lag: the same frames written with Zarr's own API, one
    range write per key (``array[a:b] = values``), into arrays chunked and compressed
    as trajhub's store chunks them (``data_chunks``, ``CODEC``), made beforehand with
    room for every sample; none of the store's bookkeeping (shapes, hashes, projection,
    commit point)."""

    def __init__(self, root: Path, capacity: int) -> None:
        self.group = zarr.open_group(str(root), mode="w")
        self.capacity = capacity
        self.arrays: dict[str, Any] = {}
        self.slot = 0

    def write(self, frames: list[Frame]) -> float:
        """Milliseconds of the range writes of ``frames`` at the next slots."""
        columns = {k: np.stack([np.asarray(f[k]) for f in frames]) for k in frames[0]}
        for key, values in columns.items():
            if key not in self.arrays:
                self.arrays[key] = self.group.create_array(
                    key, shape=(self.capacity, *values.shape[1:]), dtype=values.dtype,
                    chunks=data_chunks(key, values.shape[1:], values.itemsize),
                    compressors=chunk_compressors(values.dtype), fill_value=0)
        a, b = self.slot, self.slot + len(frames)
        t0 = time.perf_counter()
        for key, values in columns.items():
            self.arrays[key][a:b] = values
        self.slot = b
        return (time.perf_counter() - t0) * 1e3


def bench_lag(dep: Deployment, sizes: Sizes) -> list[Row]:
    room = "lag"
    rng = np.random.default_rng(3)
    r = redis.Redis.from_url(dep.redis_url)
    conn = Http(dep.port)
    lags, bare, ours = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        zarr_bare = BareZarr(Path(tmp) / "zarr", (sizes.lag_samples + 2) * LAG_FRAMES)
        store = ZarrFrameStore(Path(tmp) / "store")
        slot = 0
        for _ in range(sizes.lag_samples + 2):
            frames = [dict(atoms_to_frame(a)) for a in bulk.make_frames(LAG_FRAMES, LAG_ATOMS)]
            for f in frames:  # new content each time
                f["positions"] = rng.random((LAG_ATOMS, 3)) * 20
            body = codec.frames_to_bytes(frames)
            status, answer = conn.request("POST", f"/api/v1/rooms/{room}/frames", body,
                                          {"content-type": "application/msgpack"})
            acked = time.perf_counter()
            if status != 201:
                raise RuntimeError(f"POST frames: {status} {answer[:300]!r}")
            seq = int(json.loads(answer)["seq"])
            while int(r.hget(keys.applied(room), "seq") or 0) < seq:  # type: ignore[arg-type]
                time.sleep(0.0005)
            lags.append((time.perf_counter() - acked) * 1e3)
            bare.append(zarr_bare.write(frames))
            hashes = [hashing.frame_hash(f) for f in frames]
            ours.append(timed(store.write_slots, "bare", slot, frames, hashes) * 1e3)
            slot += len(frames)
    conn.close()
    r.close()
    lags, bare, ours = lags[2:], bare[2:], ours[2:]  # the first ones create the arrays
    workload = f"storage apply lag ({LAG_FRAMES}x{LAG_ATOMS} per commit)"
    rows = []
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        value, b = percentile(lags, q), percentile(bare, q)
        target, ok = at_most(value / b, 2.0) if q == 0.5 else ("", None)
        rows.append(row(workload, label, value, "ms", b, value / b, target, ok))
    # Not a target: beside the store's own write of the same frames (its bookkeeping
    # too, no commit), the baseline until the twenty-second #6 session.
    value, b = percentile(lags, 0.5), percentile(ours, 0.5)
    rows.append(row(workload, "p50 vs the store's own write_slots", value, "ms", b, value / b))
    return rows


__all__ = ["FULL", "QUICK", "BareHttp", "Sizes", "bench_bulk", "bench_commit", "bench_fanout",
           "bench_frame", "bench_join", "bench_lag", "bench_rss", "wait_ready"]
