"""History: join time and Redis memory vs history length, snapshots, time travel (#4).

    uv run python bench/history.py [--max-events 100000] [--frames 1000] [--joins 200]

Starts an embedded redis-server (trajhub.shared.embedded_redis) and, as a child process,
``trajhub serve --redis-url <it>`` (gateway, in-process control, storage, snapshotter),
twice: once with the snapshotter never snapshotting (``untrimmed``: the stream keeps
every event) and once with its defaults (``trimmed``: snapshot every 1,000 events, keep
10,000 events before the latest snapshot). Per variant one room of ``--frames`` frames of
8 atoms gets a history of 1k, 10k, 100k (and with ``--max-events 1000000``, 1M) events:

- Build: single-frame replace commits, sent as EVALSHA of control's own commit script in
  pipelined batches (no idempotency record, as a client without Idempotency-Key), each
  reusing a hash the room already holds (no blobs to stage or write; storage only moves
  the projection). Baseline: pipelined XADD of the same event bytes to a scratch stream.
- At each length, after storage and the snapshotter caught up: INFO ``used_memory`` and
  XLEN; then a join, as a client does it (``GET /api/v1/rooms/{room}/index`` on a
  keep-alive connection, then the Socket.IO ``join_room`` ack on a connected socket, then
  an untimed ``leave_room``), interleaved with a bare ``GET /healthz``.
- Trimmed variant, at the longest history: snapshot passes (``take_snapshot``, each after
  500 more events: snapshot write + archive + trim), the snapshot's encode/put time and
  size; ``GET .../index?at_seq=S`` (S = a snapshot 3 back, 500 events after it, and
  seq 1,500: replayed from archived segments) interleaved with the current index.

Prints markdown tables, writes bench/results/history.json and docs/history.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis
import socketio
from _measure import no_gc, percentile, stats
from _serve import Http, free_port, wait_ready

from trajhub.control import Control, IndexReader
from trajhub.control.control import _op_args
from trajhub.shared import codec, hashing, keys
from trajhub.shared.embedded_redis import EmbeddedRedis
from trajhub.shared.events import InsertFrames, ReplaceFrames
from trajhub.shared.frames import Frame
from trajhub.shared.history import encode_snapshot
from trajhub.shared.history_store import ZarrHistoryStore
from trajhub.snapshotter.history import read_progress, take_snapshot

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs"
ROOM = "history"
N_ATOMS = 8
AUTHOR = "bench"
JOIN_RATIO_AIM = 1.5
EVERY_EVENTS = 1000  # the snapshotter's default (TRAJHUB_SNAPSHOT_EVERY_EVENTS)
KEEP_EVENTS = 10_000  # its default TRAJHUB_STREAM_KEEP_EVENTS
UNDO_RETENTION = 10_000  # control's default
SNAPSHOT_PASSES = 5
EVENTS_PER_PASS = 500
SETTLE_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 30.0
VARIANTS: dict[str, dict[str, str]] = {
    # The snapshotter still follows (and acknowledges) every event but never snapshots.
    "untrimmed": {"TRAJHUB_SNAPSHOT_EVERY_EVENTS": "1000000000",
                  "TRAJHUB_SNAPSHOT_EVERY_BYTES": "0"},
    "trimmed": {"TRAJHUB_SNAPSHOT_EVERY_EVENTS": str(EVERY_EVENTS),
                "TRAJHUB_STREAM_KEEP_EVENTS": str(KEEP_EVENTS)},
}


# -- measuring ------------------------------------------------------------------------------
def interleave(calls: dict[str, Callable[[], object]], n: int, warmup: int
               ) -> dict[str, list[float]]:
    """Each call ``warmup + n`` times, in turn; milliseconds of the last n of each."""
    out: dict[str, list[float]] = {name: [] for name in calls}
    with no_gc():
        for i in range(warmup + n):
            for name, call in calls.items():
                t0 = time.perf_counter()
                call()
                if i >= warmup:
                    out[name].append((time.perf_counter() - t0) * 1e3)
    return out


def checkpoints(max_events: int) -> list[int]:
    out = [n for n in (1_000, 10_000, 100_000, 1_000_000) if n <= max_events]
    return out if out and out[-1] == max_events else [*out, max_events]


# -- frames ---------------------------------------------------------------------------------
def make_frame(tag: int) -> Frame:
    positions = np.arange(N_ATOMS * 3, dtype=np.float64).reshape(N_ATOMS, 3) * 0.1 + tag
    return {"numbers": np.array([6] + [1] * (N_ATOMS - 1), dtype=np.int64),
            "positions": positions, "cell": np.eye(3) * 10.0,
            "calc.energy": np.array(-float(tag))}


# -- the server -----------------------------------------------------------------------------
def start_server(redis_url: str, data_dir: Path, port: int,
                 env_extra: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TRAJHUB_LOG_LEVEL": "WARNING", **env_extra}
    env.pop("TRAJHUB_CONTROL_URL", None)
    cmd = [sys.executable, "-m", "trajhub.cli", "serve", "--host", "127.0.0.1", "--port",
           str(port), "--data-dir", str(data_dir), "--redis-url", redis_url]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    return wait_ready(proc, port)


class Sio:
    def __init__(self, port: int) -> None:
        self.client = socketio.Client(reconnection=False)
        self.client.connect(f"http://127.0.0.1:{port}", transports=["websocket"],
                            auth={"author": AUTHOR}, wait_timeout=CALL_TIMEOUT_S)

    def call(self, event: str, data: dict[str, Any]) -> Any:
        return self.client.call(event, data, timeout=CALL_TIMEOUT_S)

    def close(self) -> None:
        self.client.disconnect()


# -- building history ---------------------------------------------------------------------------
class Builder:
    """Commits single-frame replaces to ``room`` as pipelined EVALSHAs of control's
    script."""

    def __init__(self, r: aioredis.Redis, n_frames: int, batch: int, room: str = ROOM) -> None:
        self.r = r
        self.room = room
        self.control = Control(r, undo_retention=UNDO_RETENTION)
        self.n_frames = n_frames
        self.batch = batch
        self.hashes: list[str] = []
        self.k = 0

    async def create_room(self) -> None:
        frames = [make_frame(i) for i in range(self.n_frames)]
        self.hashes = [hashing.frame_hash(f) for f in frames]
        stage = {h: codec.frame_to_bytes(f) for h, f in zip(self.hashes, frames, strict=True)}
        result = await self.control.commit(InsertFrames(room=self.room, hashes=self.hashes),
                                           stage=stage)
        if result.status != "ok":
            raise RuntimeError(f"insert: {result.reason}")

    def _call(self) -> tuple[list[str], list[str | int]]:
        i = self.k % self.n_frames
        # Another frame's content: it already has a slot, so nothing needs staging.
        h = self.hashes[(i + 1 + self.k // self.n_frames) % self.n_frames]
        self.k += 1
        room = self.room
        _, op_args = _op_args(ReplaceFrames(room=room, indices=[i], hashes=[h], author=AUTHOR))
        script_keys = [*keys.room_keys(room), keys.undo_stack(room, AUTHOR),
                       keys.redo_stack(room, AUTHOR), keys.idempotency(room, ""),
                       keys.blob(room, h)]
        args: list[str | int] = ["", uuid.uuid4().hex, repr(time.time()), AUTHOR, room, "", "",
                                 0, UNDO_RETENTION, *op_args]
        return script_keys, args

    async def grow(self, n: int) -> float:
        """Commit ``n`` events; seconds taken."""
        script = self.control._scripts["replace"]
        await self.r.script_load(script.script)
        t0 = time.perf_counter()
        left = n
        while left:
            size = min(self.batch, left)
            async with self.r.pipeline(transaction=False) as pipe:
                for _ in range(size):
                    script_keys, args = self._call()
                    pipe.evalsha(script.sha, len(script_keys), *script_keys, *args)
                pipe.xadd(keys.NOTIFY, {"room": self.room}, maxlen=keys.NOTIFY_MAXLEN,
                          approximate=True)
                replies = await pipe.execute(raise_on_error=True)
            bad = [a for a in replies[:-1] if b'"status":"ok"' not in bytes(a[1])]
            if bad:
                raise RuntimeError(f"commit refused: {bad[0]!r}")
            left -= size
        return time.perf_counter() - t0


async def xadd_baseline(r: aioredis.Redis, n: int, batch: int) -> float:
    """Events/s of a pipelined XADD of the room's latest event bytes to a scratch stream."""
    last: Any = await r.xrevrange(keys.events(ROOM), count=1)
    fields = last[0][1]
    scratch = "bench:xadd-baseline"
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        async with r.pipeline(transaction=False) as pipe:
            for _ in range(min(batch, n - start)):
                pipe.xadd(scratch, fields)
            await pipe.execute()
    elapsed = time.perf_counter() - t0
    await r.delete(scratch)
    return n / elapsed


async def head_seq(r: aioredis.Redis, room: str = ROOM) -> int:
    return int(await r.hget(keys.meta(room), "seq") or 0)


async def settle(r: aioredis.Redis, trimmed: bool, room: str = ROOM) -> dict[str, Any]:
    """Wait until storage applied and the snapshotter saw the head (and, trimmed, its
    trim stopped moving); the seconds waited and where each stood."""
    t0 = time.perf_counter()
    head = await head_seq(r, room)
    last_trim, stable = -1, 0
    while time.perf_counter() - t0 < SETTLE_TIMEOUT_S:
        applied = int(await r.hget(keys.applied(room), "seq") or 0)
        seen = int(await r.hget(keys.snapshotter_state(room), "seq") or 0)
        progress = await read_progress(r, room)
        if applied >= head and seen >= head:
            stable = stable + 1 if progress.trimmed_seq == last_trim else 0
            if not trimmed or stable >= 3:
                break
        last_trim = progress.trimmed_seq
        await asyncio.sleep(0.1)
    progress = await read_progress(r, room)
    return {"settle_s": round(time.perf_counter() - t0, 2), "head": head,
            "applied": int(await r.hget(keys.applied(room), "seq") or 0),
            "snapshot_seq": progress.snapshot_seq, "trimmed_seq": progress.trimmed_seq}


async def memory(r: aioredis.Redis) -> dict[str, int]:
    info: Any = await r.info("memory")
    return {"used_memory": int(info["used_memory"]), "xlen": int(await r.xlen(keys.events(ROOM)))}


# -- joins and time travel ----------------------------------------------------------------------
def joins(port: int, n: int, warmup: int, rooms: tuple[str, ...] = (ROOM,)
          ) -> dict[str, list[float]]:
    """Milliseconds of ``n`` joins (after ``warmup``), each after a bare ``GET /healthz``:
    ``out["join"]`` of ``rooms[0]``, ``out[room]`` of each room. With several rooms every
    pass joins each of them in turn, starting from a different one each pass, so that
    their joins are timed side by side: this machine's speed drifts by more than the
    difference a history length makes (a bare request's p50 moved by up to 1.7x from one
    minute to the next)."""
    conn, sio = Http(port, CALL_TIMEOUT_S), Sio(port)

    def join(room: str) -> None:
        conn.get_ok(f"/api/v1/rooms/{room}/index")
        ack = sio.call("join_room", {"room": room})
        if "error" in ack:
            raise RuntimeError(f"join_room: {ack}")

    def leave(room: str) -> None:  # untimed: the next join starts from a socket not in it
        sio.call("leave_room", {"room": room})

    def timed_join(room: str) -> None:
        t0 = time.perf_counter()
        join(room)
        out[room].append((time.perf_counter() - t0) * 1e3)
        leave(room)

    def healthz() -> None:
        t0 = time.perf_counter()
        conn.get_ok("/healthz")
        out["healthz"].append((time.perf_counter() - t0) * 1e3)

    out: dict[str, list[float]] = {}
    try:
        with no_gc():
            for i in range(warmup + n):
                if i in (0, warmup):
                    out = {"healthz": [], **{room: [] for room in rooms}}
                k = i % len(rooms)
                for room in rooms[k:] + rooms[:k]:
                    healthz()
                    timed_join(room)
    finally:
        sio.close()
        conn.close()
    out["join"] = out[rooms[0]]
    return out


def time_travel(port: int, seqs: dict[str, int], n: int, warmup: int
                ) -> dict[str, list[float]]:
    conn = Http(port, CALL_TIMEOUT_S)
    base = f"/api/v1/rooms/{ROOM}/index"
    calls: dict[str, Callable[[], object]] = {"current": lambda: conn.get_ok(base)}
    for name, seq in seqs.items():
        calls[name] = lambda seq=seq: conn.get_ok(f"{base}?at_seq={seq}")  # type: ignore[misc]
    try:
        return interleave(calls, n, warmup)
    finally:
        conn.close()


async def snapshot_passes(r: aioredis.Redis, builder: Builder, history: ZarrHistoryStore
                          ) -> dict[str, Any]:
    """Timed take_snapshot passes, each after EVENTS_PER_PASS more events, and the
    snapshot's encode/put split and size."""
    passes: list[float] = []
    for _ in range(SNAPSHOT_PASSES):
        await builder.grow(EVENTS_PER_PASS)
        t0 = time.perf_counter()
        await take_snapshot(r, history, ROOM, keep_events=KEEP_EVENTS)
        passes.append((time.perf_counter() - t0) * 1e3)
    view = await IndexReader(r).read(ROOM)
    encode_ms, put_ms, size = [], [], 0
    for _ in range(SNAPSHOT_PASSES):
        t0 = time.perf_counter()
        data = encode_snapshot(ROOM, view.seq, view.entries)
        t1 = time.perf_counter()
        history.put_snapshot(ROOM, view.seq, data)
        encode_ms.append((t1 - t0) * 1e3)
        put_ms.append((time.perf_counter() - t1) * 1e3)
        size = len(data)
    return {"pass_ms": round(statistics.median(passes), 2), "passes_ms": passes,
            "events_per_pass": EVENTS_PER_PASS,
            "encode_ms": round(statistics.median(encode_ms), 3),
            "put_ms": round(statistics.median(put_ms), 3), "snapshot_bytes": size,
            "snapshot_count": len(history.snapshot_seqs(ROOM))}


# -- one variant --------------------------------------------------------------------------------
def run_variant(name: str, args: argparse.Namespace) -> dict[str, Any]:
    trimmed = name == "trimmed"
    points: list[dict[str, Any]] = []
    out: dict[str, Any] = {"variant": name, "points": points}
    with tempfile.TemporaryDirectory() as tmp, asyncio.Runner() as runner:
        redis = EmbeddedRedis(Path(tmp) / "redis").start()
        port = free_port()
        proc: subprocess.Popen[bytes] | None = None
        r = aioredis.Redis.from_url(redis.url)
        try:
            proc = start_server(redis.url, Path(tmp) / "serve", port, VARIANTS[name])
            out["used_memory_empty"] = runner.run(memory(r))["used_memory"]
            builder = Builder(r, args.frames, args.batch)
            runner.run(builder.create_room())
            for target in checkpoints(args.max_events):
                n = target - runner.run(head_seq(r))
                seconds = runner.run(builder.grow(n))
                point: dict[str, Any] = {"events": target, "built": n,
                                         "events_per_s": round(n / seconds)}
                point |= runner.run(settle(r, trimmed))
                point |= runner.run(memory(r))
                ms = joins(port, args.joins, args.warmup)
                point |= {"join": stats(ms["join"], 3), "healthz": stats(ms["healthz"], 3)}
                points.append(point)
                print(f"  {name} {target:>9,} events: {point['events_per_s']:,} ev/s, "
                      f"settle {point['settle_s']} s, "
                      f"{point['used_memory'] / 2**20:.1f} MiB, xlen {point['xlen']:,}, "
                      f"join p50 {point['join']['p50_ms']} ms", flush=True)
            out["xadd_events_per_s"] = round(runner.run(xadd_baseline(r, 20_000, args.batch)))
            if trimmed:
                history = ZarrHistoryStore(Path(tmp) / "serve" / "zarr")
                out["snapshot"] = runner.run(snapshot_passes(r, builder, history))
                out["time_travel"] = travel(runner, r, history, port, args)
        finally:
            runner.run(r.aclose())
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
            redis.stop()
    return out


def travel(runner: asyncio.Runner, r: aioredis.Redis, history: ZarrHistoryStore, port: int,
           args: argparse.Namespace) -> dict[str, Any]:
    runner.run(settle(r, True))
    snaps = history.snapshot_seqs(ROOM)
    back = snaps[-4] if len(snaps) >= 4 else snaps[0]
    seqs = {f"at a snapshot 3 back (seq {back})": back,
            f"500 events after it (seq {back + 500})": back + 500,
            "seq 1,500 (archived segments)": 1_500}
    ms = time_travel(port, seqs, args.joins, args.warmup)
    current = percentile(ms["current"], 0.5)
    rows = {name: {**stats(values, 3), "x_current": round(percentile(values, 0.5) / current, 2)}
            for name, values in ms.items()}
    return {"seqs": seqs, "rows": rows}


# -- report -------------------------------------------------------------------------------------
def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    untrimmed, trimmed = results["untrimmed"], results["trimmed"]
    lines = ["| events | build ev/s | join p50 ms (untrimmed) | join p50 ms (trimmed) "
             "| /healthz p50 ms | join / healthz | Redis MiB untrimmed | Redis MiB trimmed "
             "| stream entries, trimmed |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for u, t in zip(untrimmed["points"], trimmed["points"], strict=True):
        health = u["healthz"]["p50_ms"]
        lines.append(
            f"| {u['events']:,} | {u['events_per_s']:,} | {u['join']['p50_ms']:.2f} "
            f"| {t['join']['p50_ms']:.2f} | {health:.2f} "
            f"| {u['join']['p50_ms'] / u['healthz']['p50_ms']:.1f}x "
            f"| {mib(u['used_memory'])} | {mib(t['used_memory'])} | {t['xlen']:,} |")
    ratios = {v: round(res["points"][-1]["join"]["p50_ms"] / res["points"][0]["join"]["p50_ms"],
                       2) for v, res in results.items()}
    summary = {
        "join_ratio_max_over_1k": ratios,
        "join_ratio_aim": JOIN_RATIO_AIM,
        "join_verdict": {v: "met" if x <= JOIN_RATIO_AIM else "MISSED" for v, x in
                         ratios.items()},
        "xadd_baseline_events_per_s": untrimmed["xadd_events_per_s"],
        "redis_empty_mib": float(mib(untrimmed["used_memory_empty"])),
        "untrimmed_bytes_per_event": _growth(untrimmed["points"]),
    }
    print(f"\nroom: {args.frames} frames x {N_ATOMS} atoms; {args.joins} joins per row after "
          f"{args.warmup} warm-up, interleaved with GET /healthz\n")
    print("\n".join(lines))
    print(f"\njoin p50 at {untrimmed['points'][-1]['events']:,} / at 1k events: "
          + ", ".join(f"{v} {x}x ({summary['join_verdict'][v]}, aim <= {JOIN_RATIO_AIM})"
                      for v, x in ratios.items()))
    print(f"build baseline: pipelined XADD of the same event bytes "
          f"{summary['xadd_baseline_events_per_s']:,} ev/s; empty Redis "
          f"{summary['redis_empty_mib']} MiB; untrimmed Redis grows "
          f"{summary['untrimmed_bytes_per_event']} bytes per event")
    snap = trimmed["snapshot"]
    print(f"\nsnapshot of {args.frames} frames: {snap['snapshot_bytes']:,} bytes, encode "
          f"{snap['encode_ms']} ms + put {snap['put_ms']} ms; a take_snapshot pass after "
          f"{snap['events_per_pass']} events (snapshot + archive + trim) {snap['pass_ms']} ms "
          f"p50; {snap['snapshot_count']} snapshots in the store")
    print("\n| GET index | p50 ms | p99 ms | / current |\n|---|---:|---:|---:|")
    for name, row in trimmed["time_travel"]["rows"].items():
        print(f"| {name} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['x_current']}x |")
    return summary


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_join, ax_mem) = plt.subplots(1, 2, figsize=(10, 4))
    for name, res in results.items():
        events = [p["events"] for p in res["points"]]
        ax_join.plot(events, [p["join"]["p50_ms"] for p in res["points"]], "o-",
                     label=f"join, {name}")
        ax_mem.plot(events, [p["used_memory"] / 2**20 for p in res["points"]], "o-",
                    label=name)
    base = results["untrimmed"]["points"]
    ax_join.plot([p["events"] for p in base], [p["healthz"]["p50_ms"] for p in base], "k--",
                 label="GET /healthz")
    ax_join.set(xscale="log", xlabel="events in the room's history", ylabel="p50 ms",
                title="join (GET index + join_room ack)", ylim=(0, None))
    ax_mem.set(xscale="log", xlabel="events in the room's history", ylabel="MiB",
               title="Redis used_memory", ylim=(0, None))
    for ax in (ax_join, ax_mem):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _growth(points: list[dict[str, Any]]) -> int | None:
    """Redis bytes per event between the first and the last point (None for one point)."""
    first, last = points[0], points[-1]
    if last["events"] == first["events"]:
        return None
    return round((last["used_memory"] - first["used_memory"])
                 / (last["events"] - first["events"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-events", type=int, default=100_000,
                        help="longest history (1000000 for the 1M row; ~4x longer run)")
    parser.add_argument("--frames", type=int, default=1000, help="frames in the room")
    parser.add_argument("--joins", type=int, default=200, help="timed joins per row")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=500, help="commits per pipeline")
    parser.add_argument("--no-plot", action="store_true", help="do not write docs/history.png")
    args = parser.parse_args()
    t_start = time.perf_counter()
    results = {}
    for name in VARIANTS:
        print(f"{name}:", flush=True)
        results[name] = run_variant(name, args)
    summary = report(results, args)
    if not args.no_plot:
        plot(results, DOCS / "history.png")
        print(f"\nwrote {DOCS / 'history.png'}")
    result = {"config": {**vars(args), "n_atoms": N_ATOMS, "every_events": EVERY_EVENTS,
                         "keep_events": KEEP_EVENTS, "undo_retention": UNDO_RETENTION,
                         "cpus": os.cpu_count()},
              "summary": summary, "variants": results,
              "run_s": round(time.perf_counter() - t_start, 1)}
    (HERE / "results").mkdir(exist_ok=True)
    out = HERE / "results" / "history.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['run_s']} s)")


if __name__ == "__main__":
    main()
