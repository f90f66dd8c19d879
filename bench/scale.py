"""Scale-out: commit and broadcast throughput with 1 vs 2 gateways and 1 vs 3 storage.

    uv run python bench/scale.py [--seconds 8] [--writers 8] [--rooms 16]
                                 [--followers 2] [--atoms 32] [--json scale]

For each layout (gateways x storage replicas) it starts the services as separate
processes on one embedded redis-server (one control per gateway, one snapshotter), then
``--writers`` client threads append one frame per request (``Room.append``) to
``--rooms`` rooms for ``--seconds``, spread over the gateways, while ``--followers``
Socket.IO clients per gateway, each joined to every room, count ``frames_changed``.

Reported per layout: acknowledged commits/s (client side), broadcasts delivered/s (all
followers together), p50/p99 commit latency, storage's apply rate (events applied per
second from the start until it has caught up) and how long after the writers stopped it
caught up. Everything (clients included) shares this machine's cores, so the figures are
relative: they show what scales with processes, not a cluster's capacity.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
import socketio
from _measure import stats

from trajhub import Room
from trajhub.shared import keys
from trajhub.shared.embedded_redis import EmbeddedRedis

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


class Layout:
    """Redis-backed services: ``gateways`` gateways (each with its own control),
    ``storage`` storage replicas and one snapshotter."""

    def __init__(self, root: Path, redis_url: str, gateways: int, storage: int) -> None:
        self.root, self.redis_url = root, redis_url
        self.n_gateways, self.n_storage = gateways, storage
        self.gateway_urls: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, name: str, key: str, **extra: str) -> None:
        env = {**os.environ, "TRAJHUB_REDIS_URL": self.redis_url,
               "TRAJHUB_STORAGE_URL": str(self.root / "zarr"), "TRAJHUB_HOST": "127.0.0.1",
               "TRAJHUB_CONSUMER_NAME": key, "TRAJHUB_LOG_LEVEL": "WARNING", **extra}
        log = open(self.root / f"{key}.log", "ab")  # noqa: SIM115 - lives with the process
        self.procs.append(subprocess.Popen([str(BIN / f"trajhub-{name}")], env=env,
                                           stdout=log, stderr=subprocess.STDOUT))

    def start(self) -> Layout:
        urls: list[str] = []
        for i in range(self.n_gateways):
            cport, gport = free_port(), free_port()
            self._spawn("control", f"control-{i}", TRAJHUB_PORT=str(cport))
            self._spawn("gateway", f"gateway-{i}", TRAJHUB_PORT=str(gport),
                        TRAJHUB_CONTROL_URL=f"http://127.0.0.1:{cport}")
            urls += [f"http://127.0.0.1:{cport}", f"http://127.0.0.1:{gport}"]
            self.gateway_urls.append(f"http://127.0.0.1:{gport}")
        for i in range(self.n_storage):
            self._spawn("storage", f"storage-{i}")
        self._spawn("snapshotter", "snapshotter")
        deadline = time.monotonic() + 120
        while not all(ready(u) for u in urls):
            if time.monotonic() > deadline:
                raise RuntimeError(f"services not ready; see {self.root}/*.log")
            time.sleep(0.2)
        r = redis.Redis.from_url(self.redis_url)
        while r.zcard(keys.STORAGE_REPLICAS) < self.n_storage:
            if time.monotonic() > deadline:
                raise RuntimeError("storage replicas did not register")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


class Follower:
    def __init__(self, url: str, rooms: list[str]) -> None:
        self.count = 0
        self.sio = socketio.Client(reconnection=False)
        self.sio.on("frames_changed", self._on_change)
        self.sio.connect(url, transports=["websocket"])
        for room in rooms:
            self.sio.call("join_room", {"room": room}, timeout=10)

    def _on_change(self, _data: Any) -> None:
        self.count += 1

    def close(self) -> None:
        self.sio.disconnect()


def make_frame(rng: np.random.Generator, n_atoms: int) -> dict[str, np.ndarray]:
    return {"numbers": np.full(n_atoms, 29, dtype=np.int64),
            "positions": rng.uniform(0, 10, (n_atoms, 3)),
            "cell": np.eye(3) * 10, "pbc": np.ones(3, dtype=bool)}


def run_layout(layout: Layout, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    rooms = [f"{tag}-{i}" for i in range(args.rooms)]
    r = redis.Redis.from_url(layout.redis_url)
    followers = [Follower(url, rooms) for url in layout.gateway_urls
                 for _ in range(args.followers)]
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(args.writers)]

    def writer(i: int) -> None:
        url = layout.gateway_urls[i % len(layout.gateway_urls)]
        mine = rooms[i::args.writers] or [rooms[i % len(rooms)]]
        handles = [Room(url, room=room) for room in mine]
        rng = np.random.default_rng(i)
        k = 0
        while not stop.is_set():
            frame = make_frame(rng, args.atoms)
            t0 = time.perf_counter()
            handles[k % len(handles)].append(frame)
            latencies[i].append((time.perf_counter() - t0) * 1000)
            k += 1

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(args.writers)]
    seq0 = sum(int(r.hget(keys.meta(room), "seq") or 0) for room in rooms)
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    commits = sum(len(x) for x in latencies)

    def lagging() -> int:
        return sum(int(r.hget(keys.meta(room), "seq") or 0)
                   - int(r.hget(keys.applied(room), "seq") or 0) for room in rooms)

    stopped = time.perf_counter()
    while lagging() > 0:
        if time.perf_counter() - stopped > 120:
            raise RuntimeError("storage did not catch up")
        time.sleep(0.02)
    caught_up = time.perf_counter()
    seqs = sum(int(r.hget(keys.meta(room), "seq") or 0) for room in rooms) - seq0
    expected = seqs * len(followers)
    while sum(f.count for f in followers) < expected and time.perf_counter() - caught_up < 10:
        time.sleep(0.02)
    delivered = sum(f.count for f in followers)
    broadcast_s = time.perf_counter() - t0
    for f in followers:
        f.close()
    owners = {r.get(keys.storage_lease(room)) for room in rooms} - {None}
    return {"gateways": layout.n_gateways, "storage": layout.n_storage,
            "commits": commits, "commits_per_s": round(commits / elapsed, 1),
            "commit_latency": stats([x for xs in latencies for x in xs], 2),
            "broadcasts": delivered, "broadcasts_expected": expected,
            "broadcasts_per_s": round(delivered / broadcast_s, 1),
            "apply_per_s": round(seqs / (caught_up - t0), 1),
            "apply_catch_up_s": round(caught_up - stopped, 2),
            "storage_owners": len(owners)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--rooms", type=int, default=16)
    ap.add_argument("--followers", type=int, default=2, help="per gateway")
    ap.add_argument("--atoms", type=int, default=32)
    ap.add_argument("--layouts", default="1x1,1x3,2x1,2x3",
                    help="gateways x storage replicas, comma separated")
    ap.add_argument("--json", default="scale")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="trajhub-scale-") as tmp:
        for spec in args.layouts.split(","):
            gateways, storage = (int(x) for x in spec.split("x"))
            root = Path(tmp) / spec
            root.mkdir()
            with EmbeddedRedis(root / "redis") as server:
                layout = Layout(root, server.url, gateways, storage).start()
                try:
                    results.append(run_layout(layout, args, f"s{spec}"))
                finally:
                    layout.stop()
            print(f"done {spec}", file=sys.stderr, flush=True)
    header = (f"{'gw':>3} {'storage':>7} {'commits/s':>10} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'bcast/s':>9} {'delivered':>11} {'apply/s':>8} {'catch-up s':>10} "
              f"{'owners':>6}")
    print(header)
    for x in results:
        lat = x["commit_latency"]
        print(f"{x['gateways']:>3} {x['storage']:>7} {x['commits_per_s']:>10} "
              f"{lat['p50_ms']:>7} {lat['p99_ms']:>7} {x['broadcasts_per_s']:>9} "
              f"{x['broadcasts']:>5}/{x['broadcasts_expected']:<5} {x['apply_per_s']:>8} "
              f"{x['apply_catch_up_s']:>10} {x['storage_owners']:>6}")
    out = HERE / "results" / f"{args.json}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "cpus": os.cpu_count(),
                               "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
