"""Control through a real gateway, against bare baselines, in one run.

    uv run python bench/control.py [--n 2000] [--clients 16] [--per-client 150]

Starts an embedded redis-server (trajhub.shared.embedded_redis) and, as a child process,
``trajhub serve --redis-url <it>``: the all-in-one server (gateway, in-process control,
storage, snapshotter), which reaches Redis over the same unix socket as this bench. Then,
over loopback, each measured call interleaved with its baseline:

- Redis: EVALSHA of a trivial script (redis.asyncio, unix socket, as the gateway), beside
  the in-process ``Control.commit`` (replace 1 frame) and ``Control.acquire_lock``.
- HTTP: ``GET /healthz`` beside ``PUT /api/v1/rooms/{room}/frames`` replacing one small
  frame (a commit), on one raw keep-alive http.client connection (not httpx: slow).
- Socket.IO: an ack round trip that does nothing (``leave_room`` of a room never joined)
  beside ``lock_acquire`` then ``lock_release`` of one frame (the sync python-socketio
  client over websocket-client: ``AsyncClient`` needs aiohttp, which is not installed).
- Throughput: ``--clients`` threads, each with its own connection, replacing its own
  frame ``--per-client`` times.

Prints a markdown table (p50/p99 in ms, ratio to the baseline) with the aims and writes
bench/results/control.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import _serve
import numpy as np
import redis.asyncio as aioredis
import socketio
from _measure import no_gc, percentile, stats
from _serve import free_port, wait_ready

from trajhub.control import Control
from trajhub.shared import codec, hashing, keys
from trajhub.shared.collab import LockAcquire, LockRelease, LockTarget
from trajhub.shared.embedded_redis import EmbeddedRedis
from trajhub.shared.events import InsertFrames, ReplaceFrames
from trajhub.shared.frames import Frame

HERE = Path(__file__).resolve().parent
ROOM = "bench"
ROOM_FRAMES = 64
N_ATOMS = 8
LATENCY_FRAME = 0  # the single-client commits edit frame 0
LOCK_FRAME = 40  # the Socket.IO locks take frame 40; throughput clients edit 1..clients
AIMS = {"commit_p50_ms": 1.5, "commit_p99_ms": 5.0, "lock_p99_ms": 3.0}
CALL_TIMEOUT_S = 10.0


# -- measuring ------------------------------------------------------------------------------
def interleave(calls: dict[str, Callable[[], object]], n: int, warmup: int) -> dict[str,
                                                                                  list[float]]:
    """Run each call ``warmup + n`` times, in turn; milliseconds of the last n of each."""
    out: dict[str, list[float]] = {name: [] for name in calls}
    with no_gc():
        for i in range(warmup + n):
            for name, call in calls.items():
                t0 = time.perf_counter()
                call()
                if i >= warmup:
                    out[name].append((time.perf_counter() - t0) * 1e3)
    return out


# -- frames ---------------------------------------------------------------------------------
def make_frame(tag: int) -> Frame:
    """A small frame whose content is unique to ``tag``."""
    positions = np.arange(N_ATOMS * 3, dtype=np.float64).reshape(N_ATOMS, 3) * 0.1 + tag
    return {"numbers": np.array([6] + [1] * (N_ATOMS - 1), dtype=np.int64),
            "positions": positions, "cell": np.eye(3) * 10.0,
            "calc.energy": np.array(-float(tag))}


def put_body(index: int, tag: int) -> bytes:
    return codec.frames_to_bytes([make_frame(tag)], indices=[index])


# -- the server -----------------------------------------------------------------------------
def start_server(redis_url: str, data_dir: Path, port: int,
                 split: bool = False) -> list[subprocess.Popen[bytes]]:
    """``trajhub serve``; or, with ``split``, the gateway (with in-process control) and
    storage as two processes, the way a cluster deploys them."""
    env = {**os.environ, "TRAJHUB_LOG_LEVEL": "WARNING"}
    env.pop("TRAJHUB_CONTROL_URL", None)
    if not split:
        cmd = [sys.executable, "-m", "trajhub.cli", "serve", "--host", "127.0.0.1", "--port",
               str(port), "--data-dir", str(data_dir), "--redis-url", redis_url]
        return [wait_ready(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL), port)]
    env.update({"TRAJHUB_REDIS_URL": redis_url, "TRAJHUB_STORAGE_URL": str(data_dir / "zarr"),
                "TRAJHUB_HOST": "127.0.0.1", "TRAJHUB_PORT": str(port)})
    storage = subprocess.Popen([sys.executable, "-m", "trajhub.storage"], env=env,
                               stdout=subprocess.DEVNULL)
    gateway = subprocess.Popen([sys.executable, "-m", "trajhub.gateway"], env=env,
                               stdout=subprocess.DEVNULL)
    return [wait_ready(gateway, port), storage]


class Http(_serve.Http):
    def __init__(self, port: int) -> None:
        super().__init__(port, CALL_TIMEOUT_S)

    def healthz(self) -> None:
        status, body = self.request("GET", "/healthz")
        if status != 200:
            raise RuntimeError(f"GET /healthz: {status} {body[:200]!r}")

    def replace(self, body: bytes, author: str) -> None:
        status, answer = self.request("PUT", f"/api/v1/rooms/{ROOM}/frames", body, {
            "content-type": "application/msgpack", "Idempotency-Key": uuid.uuid4().hex,
            "X-Trajhub-Author": author})
        if status != 200:
            raise RuntimeError(f"PUT frames: {status} {answer[:300]!r}")


def create_room(port: int) -> None:
    body = codec.frames_to_bytes([make_frame(-1 - i) for i in range(ROOM_FRAMES)])
    status, answer = Http(port).request("POST", f"/api/v1/rooms/{ROOM}/frames", body,
                                        {"content-type": "application/msgpack"})
    if status != 201:
        raise RuntimeError(f"POST frames: {status} {answer[:300]!r}")


# -- (redis) EVALSHA and in-process control ------------------------------------------------------
async def redis_part(redis_url: str, n: int, warmup: int) -> dict[str, list[float]]:
    r = aioredis.Redis.from_url(redis_url)  # the gateway's client: asyncio, unix socket
    control = Control(r)
    trivial = r.register_script("return 1")
    room = "bench-inproc"
    tags = iter(range(10_000_000, 20_000_000))

    async def commit() -> None:
        frame = make_frame(next(tags))
        h = hashing.frame_hash(frame)
        await r.set(keys.blob(room, h), codec.frame_to_bytes(frame), ex=600)
        t0 = time.perf_counter()
        result = await control.commit(ReplaceFrames(room=room, indices=[0], hashes=[h]))
        timings["Control.commit"].append((time.perf_counter() - t0) * 1e3)
        assert result.status == "ok", result.reason

    async def lock() -> None:
        t0 = time.perf_counter()
        result = await control.acquire_lock(LockAcquire(room=room, target=LockTarget(frames=[1])))
        timings["Control.acquire_lock"].append((time.perf_counter() - t0) * 1e3)
        assert result.ok and result.token, result.reason
        released = await control.release_lock(LockRelease(room=room, token=result.token))
        assert released.ok, released.reason

    async def evalsha() -> None:
        t0 = time.perf_counter()
        await trivial()
        timings["EVALSHA"].append((time.perf_counter() - t0) * 1e3)

    seed = [make_frame(-1), make_frame(-2)]
    hashes = [hashing.frame_hash(f) for f in seed]
    for h, f in zip(hashes, seed, strict=True):
        await r.set(keys.blob(room, h), codec.frame_to_bytes(f), ex=600)
    assert (await control.commit(InsertFrames(room=room, hashes=hashes))).status == "ok"
    timings: dict[str, list[float]] = {"EVALSHA": [], "Control.commit": [],
                                       "Control.acquire_lock": []}
    calls: list[Callable[[], Awaitable[None]]] = [evalsha, commit, lock]
    with no_gc():
        for i in range(warmup + n):
            for call in calls:
                await call()
            if i + 1 == warmup:
                for values in timings.values():
                    values.clear()
    await r.aclose()
    return timings


def run_async(coro: Coroutine[Any, Any, dict[str, list[float]]]) -> dict[str, list[float]]:
    try:
        import uvloop  # the server's loop too
    except ImportError:
        return asyncio.run(coro)
    result: dict[str, list[float]] = uvloop.run(coro)
    return result


# -- (a) HTTP ---------------------------------------------------------------------------------
def http_part(port: int, n: int, warmup: int) -> dict[str, list[float]]:
    conn = Http(port)
    bodies = iter([put_body(LATENCY_FRAME, tag) for tag in range(warmup + n)])
    try:
        return interleave({"GET /healthz": conn.healthz,
                           "PUT frames (replace 1)": lambda: conn.replace(next(bodies),
                                                                          "bench")}, n, warmup)
    finally:
        conn.close()


# -- (b) Socket.IO ------------------------------------------------------------------------------
class Sio:
    def __init__(self, port: int) -> None:
        self.client = socketio.Client(reconnection=False)
        self.client.connect(f"http://127.0.0.1:{port}", transports=["websocket"],
                            auth={"author": "bench"}, wait_timeout=CALL_TIMEOUT_S)

    def call(self, event: str, data: dict[str, Any], timeout: float = CALL_TIMEOUT_S) -> Any:
        return self.client.call(event, data, timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()


def lock_support(sio: Sio) -> str | None:
    """None if the gateway handles lock_acquire/lock_release, else why not."""
    try:
        ack = sio.call("lock_acquire", {"room": ROOM, "target": {"frames": [LOCK_FRAME]}},
                       timeout=3)
    except socketio.exceptions.TimeoutError:
        return "the gateway does not answer lock_acquire (not handled)"
    if not isinstance(ack, dict) or "token" not in ack:
        return f"lock_acquire answered {ack!r}"
    released = sio.call("lock_release", {"room": ROOM, "token": ack["token"]})
    if not isinstance(released, dict) or not released.get("ok"):
        return f"lock_release answered {released!r}"
    return None


def sio_part(port: int, n: int, warmup: int) -> tuple[dict[str, list[float]], str | None]:
    sio = Sio(port)
    try:
        joined = sio.call("join_room", {"room": ROOM})
        if "error" in joined:
            raise RuntimeError(f"join_room: {joined}")
        unsupported = lock_support(sio)
        token: list[str] = []

        def noop() -> None:
            ack = sio.call("leave_room", {"room": "bench-never-joined"})
            assert ack == {"ok": True}, ack

        def acquire() -> None:
            ack = sio.call("lock_acquire", {"room": ROOM, "target": {"frames": [LOCK_FRAME]},
                                            "ttl_ms": 30_000})
            assert "token" in ack, ack
            token.append(ack["token"])

        def release() -> None:
            ack = sio.call("lock_release", {"room": ROOM, "token": token.pop()})
            assert ack.get("ok"), ack

        calls: dict[str, Callable[[], object]] = {"Socket.IO ack (leave_room)": noop}
        if unsupported is None:
            calls |= {"lock_acquire": acquire, "lock_release": release}
        return interleave(calls, n, warmup), unsupported
    finally:
        sio.close()


# -- (c) throughput -----------------------------------------------------------------------------
def throughput_part(port: int, clients: int, per_client: int) -> dict[str, Any]:
    conns = [Http(port) for _ in range(clients)]
    bodies = [[put_body(1 + c, 1_000_000 * (c + 1) + k) for k in range(per_client)]
              for c in range(clients)]
    for c, conn in enumerate(conns):  # open each connection (and warm it) before the start
        conn.replace(put_body(1 + c, -1000 - c), f"client-{c}")
    start = threading.Barrier(clients + 1)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def client(c: int) -> None:
        conn, out = conns[c], latencies[c]
        start.wait()
        try:
            for body in bodies[c]:
                t0 = time.perf_counter()
                conn.replace(body, f"client-{c}")
                out.append((time.perf_counter() - t0) * 1e3)
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    with no_gc():
        start.wait()
        t0 = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - t0
    for conn in conns:
        conn.close()
    if errors:
        raise RuntimeError(f"{len(errors)} clients failed, first: {errors[0]!r}")
    every = [x for per in latencies for x in per]
    return {"clients": clients, "commits": len(every), "seconds": round(elapsed, 3),
            "commits_per_s": round(len(every) / elapsed, 1), "latency": stats(every)}


# -- report -------------------------------------------------------------------------------------
def row(name: str, ms: list[float], baseline: str | None, base_ms: list[float] | None,
        evalsha_ms: list[float], aim: str = "") -> dict[str, Any]:
    p50, p99 = percentile(ms, 0.5), percentile(ms, 0.99)
    out: dict[str, Any] = {"name": name, **stats(ms), "baseline": baseline, "aim": aim}
    if base_ms is not None:
        out["x_baseline_p50"] = round(p50 / percentile(base_ms, 0.5), 2)
        out["x_baseline_p99"] = round(p99 / percentile(base_ms, 0.99), 2)
    out["x_evalsha_p50"] = round(p50 / percentile(evalsha_ms, 0.5), 1)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| what | p50 ms | p99 ms | p50 / baseline | p99 / baseline | p50 / EVALSHA "
             "| aim |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        base = (f"{r['x_baseline_p50']}x {r['baseline']}" if "x_baseline_p50" in r
                else "(baseline)")
        base99 = f"{r['x_baseline_p99']}x" if "x_baseline_p99" in r else ""
        lines.append(f"| {r['name']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {base} "
                     f"| {base99} | {r['x_evalsha_p50']}x | {r['aim']} |")
    return "\n".join(lines)


def verdict(value: float | None, aim: float) -> str:
    if value is None:
        return "not measured"
    return f"{'met' if value <= aim else 'MISSED'} ({value:.3f} ms vs {aim} ms)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="timed calls per latency row")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--split", action="store_true", help=(
        "gateway and storage as separate processes (as deployed) instead of trajhub serve"))
    parser.add_argument("--per-client", type=int, default=150,
                        help="commits per client in the throughput run")
    args = parser.parse_args()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        redis = EmbeddedRedis(Path(tmp) / "redis").start()
        port = free_port()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            procs = start_server(redis.url, Path(tmp) / "serve", port, args.split)
            create_room(port)
            redis_ms = run_async(redis_part(redis.url, args.n, args.warmup))
            http_ms = http_part(port, args.n, args.warmup)
            sio_ms, lock_unsupported = sio_part(port, args.n, args.warmup)
            load = throughput_part(port, args.clients, args.per_client)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=30)
            redis.stop()

    evalsha = redis_ms["EVALSHA"]
    commit_aim = f"p50 <= {AIMS['commit_p50_ms']}, p99 <= {AIMS['commit_p99_ms']}"
    rows = [
        row("Redis EVALSHA `return 1` (asyncio, unix socket)", evalsha, None, None, evalsha),
        row("Control.commit in-process (replace 1)", redis_ms["Control.commit"], "EVALSHA",
            evalsha, evalsha),
        row("Control.acquire_lock in-process (1 frame)", redis_ms["Control.acquire_lock"],
            "EVALSHA", evalsha, evalsha),
        row("HTTP GET /healthz", http_ms["GET /healthz"], None, None, evalsha),
        row("HTTP PUT frames, replace 1 (commit)", http_ms["PUT frames (replace 1)"],
            "/healthz", http_ms["GET /healthz"], evalsha, commit_aim),
        row("Socket.IO ack (leave_room)", sio_ms["Socket.IO ack (leave_room)"], None, None,
            evalsha),
    ]
    if lock_unsupported is None:
        sio_base = sio_ms["Socket.IO ack (leave_room)"]
        rows += [row("Socket.IO lock_acquire (1 frame)", sio_ms["lock_acquire"], "sio ack",
                     sio_base, evalsha, f"p99 <= {AIMS['lock_p99_ms']}"),
                 row("Socket.IO lock_release", sio_ms["lock_release"], "sio ack", sio_base,
                     evalsha)]
    by_name = {r["name"]: r for r in rows}
    commit_row = by_name["HTTP PUT frames, replace 1 (commit)"]
    lock_row = by_name.get("Socket.IO lock_acquire (1 frame)")
    aims = {
        "commit_p50": verdict(commit_row["p50_ms"], AIMS["commit_p50_ms"]),
        "commit_p99": verdict(commit_row["p99_ms"], AIMS["commit_p99_ms"]),
        "lock_p99": verdict(lock_row["p99_ms"] if lock_row else None, AIMS["lock_p99_ms"]),
    }
    mode = ("gateway + storage processes" if args.split else "trajhub serve (all-in-one)")
    print(f"\n{mode} + embedded Redis; {args.n} timed calls per row "
          f"after {args.warmup} warm-up, each interleaved with its baseline; "
          f"{N_ATOMS}-atom frames\n")
    print(table(rows))
    lat = load["latency"]
    print(f"\n{load['clients']} clients x {args.per_client} PUTs (each its own frame and "
          f"connection): **{load['commits_per_s']:.0f} commits/s** ({load['commits']} in "
          f"{load['seconds']} s), latency p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms")
    print("\naims: " + "; ".join(f"{k} {v}" for k, v in aims.items()))
    if lock_unsupported:
        print(f"locks over Socket.IO not measured: {lock_unsupported}")
    result = {"config": {**vars(args), "n_atoms": N_ATOMS, "room_frames": ROOM_FRAMES,
                         "cpus": os.cpu_count()},
              "rows": rows, "throughput": load, "aims": AIMS, "verdicts": aims,
              "locks_not_measured": lock_unsupported,
              "run_s": round(time.perf_counter() - t_start, 1)}
    (HERE / "results").mkdir(exist_ok=True)
    out = HERE / "results" / ("control-split.json" if args.split else "control.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out} ({result['run_s']} s)")


if __name__ == "__main__":
    main()
