"""Socket.IO fan-out: one sender at a fixed rate, N follower sockets, per-message latency.

The sender records when it sent each message (keyed by the seq the message carries); every
follower records when it received it, on the same clock (one process). Followers are
python-socketio ``AsyncClient``s over websocket on this process's event loop (uvloop, as
the servers', when installed: the 50 followers share one loop, which must not be what
limits either server's figure).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import socketio
from _measure import percentile
from _serve import Http, free_port, wait_ready

HERE = Path(__file__).resolve().parent
CALL_TIMEOUT_S = 10.0
GRACE_S = 1.0  # after the last send, how long stragglers may still arrive


@dataclass
class Spec:
    """How to join a room and recognize its messages, on one server."""

    url: str
    join_event: str
    join_data: dict[str, Any]
    recv_event: str
    key: str  # the field of a received message that names what was sent


@dataclass
class Result:
    sent: dict[int, float] = field(default_factory=dict)
    received: list[list[tuple[int, float]]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self, followers: int) -> dict[str, Any]:
        latencies = [(t - self.sent[k]) * 1e3 for per in self.received for k, t in per
                     if k in self.sent]
        expected = len(self.sent) * followers
        return {"sent": len(self.sent), "followers": followers, "delivered": len(latencies),
                "lost": expected - len(latencies),
                "delivered_per_s": round(len(latencies) / self.seconds, 1)
                if self.seconds else 0.0,
                "p50_ms": round(percentile(latencies, 0.5), 3) if latencies else None,
                "p99_ms": round(percentile(latencies, 0.99), 3) if latencies else None}


async def connect(url: str, author: str) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(url, transports=["websocket"], auth={"author": author},
                         wait_timeout=CALL_TIMEOUT_S)
    return client


async def follow(spec: Spec, n: int, result: Result) -> list[socketio.AsyncClient]:
    clients = await asyncio.gather(*(connect(spec.url, f"follower-{i}") for i in range(n)))
    for client in clients:
        got: list[tuple[int, float]] = []
        result.received.append(got)

        def on_message(data: dict[str, Any], got: list[tuple[int, float]] = got) -> None:
            got.append((int(data[spec.key]), time.perf_counter()))

        client.on(spec.recv_event, on_message)
    acks = await asyncio.gather(*(c.call(spec.join_event, spec.join_data,
                                         timeout=CALL_TIMEOUT_S) for c in clients))
    bad = [a for a in acks if not isinstance(a, dict) or "error" in a]
    if bad:
        raise RuntimeError(f"{spec.join_event}: {bad[0]!r}")
    return list(clients)


async def paced(rate: float, seconds: float, send: Callable[[int], Awaitable[None]]) -> None:
    """``send(k)`` at ``rate`` per second on an absolute schedule (a late one is not
    made up for by sending faster than the rate allows: the next waits its turn)."""
    period = 1.0 / rate
    t0 = time.perf_counter()
    k = 0
    while (due := t0 + k * period) < t0 + seconds:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(k)
        k += 1


def run_loop(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    result: dict[str, Any] = uvloop.run(coro)
    return result


async def run(spec: Spec, followers: int, rate: float, seconds: float,
              sender: Callable[[Result, float, float], Awaitable[None]]) -> dict[str, Any]:
    result = Result()
    clients = await follow(spec, followers, result)
    try:
        t0 = time.perf_counter()
        await sender(result, rate, seconds)
        result.seconds = time.perf_counter() - t0
        await asyncio.sleep(GRACE_S)
    finally:
        await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)
    return result.summary(followers)


# -- senders ----------------------------------------------------------------------------------
def socket_sender(url: str, setup: list[tuple[str, dict[str, Any]]], event: str,
                  data: Callable[[int], dict[str, Any]], ack_key: str
                  ) -> Callable[[Result, float, float], Awaitable[None]]:
    """A socket that emits ``event`` (after the ``setup`` calls) and keys each send by
    ``ack[ack_key]``."""
    async def sender(result: Result, rate: float, seconds: float) -> None:
        client = await connect(url, "presenter")
        try:
            for name, payload in setup:
                ack = await client.call(name, payload, timeout=CALL_TIMEOUT_S)
                if not isinstance(ack, dict) or "error" in ack:
                    raise RuntimeError(f"{name}: {ack!r}")

            async def send(k: int) -> None:
                t0 = time.perf_counter()
                ack = await client.call(event, data(k), timeout=CALL_TIMEOUT_S)
                if not isinstance(ack, dict) or "error" in ack:
                    raise RuntimeError(f"{event}: {ack!r}")
                result.sent[int(ack[ack_key])] = t0

            await paced(rate, seconds, send)
        finally:
            await client.disconnect()
    return sender


def commit_sender(port: int, room: str, bodies: Callable[[int], bytes]
                  ) -> Callable[[Result, float, float], Awaitable[None]]:
    """HTTP PUTs (a single-frame replace each) from a thread, keyed by the commit's seq."""
    def loop(result: Result, rate: float, seconds: float) -> None:
        conn = Http(port, CALL_TIMEOUT_S)
        period, t_start, k = 1.0 / rate, time.perf_counter(), 0
        try:
            while (due := t_start + k * period) < t_start + seconds:
                time.sleep(max(0.0, due - time.perf_counter()))
                t0 = time.perf_counter()
                path = f"/api/v1/rooms/{room}/frames"
                status, answer = conn.request("PUT", path, bodies(k), {
                    "content-type": "application/msgpack", "Idempotency-Key": uuid.uuid4().hex})
                if status != 200:
                    raise RuntimeError(f"PUT frames: {status} {answer[:300]!r}")
                result.sent[int(json.loads(answer)["seq"])] = t0
                k += 1
        finally:
            conn.close()

    async def sender(result: Result, rate: float, seconds: float) -> None:
        await asyncio.to_thread(loop, result, rate, seconds)
    return sender


# -- the two servers --------------------------------------------------------------------------
def trajhub_room_frame(url: str, room: str, n_frames: int, followers: int, rate: float,
                       seconds: float) -> dict[str, Any]:
    spec = Spec(url, "join_room", {"room": room}, "room_frame", "step_seq")
    sender = socket_sender(url, [("presenter_request", {"room": room, "ttl_ms": 60_000})],
                           "set_room_frame", lambda k: {"room": room, "frame": k % n_frames},
                           "step_seq")
    return run_loop(run(spec, followers, rate, seconds, sender))


def trajhub_frames_changed(url: str, port: int, room: str, bodies: Callable[[int], bytes],
                           followers: int, rate: float, seconds: float) -> dict[str, Any]:
    spec = Spec(url, "join_room", {"room": room}, "frames_changed", "seq")
    return run_loop(run(spec, followers, rate, seconds, commit_sender(port, room, bodies)))


class BareServer:
    """``_sio_baseline.py`` in a child process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> BareServer:
        proc = subprocess.Popen([sys.executable, str(HERE / "_sio_baseline.py"),
                                 str(self.port)])
        self.proc = wait_ready(proc, self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)


def bare_emit(url: str, followers: int, rate: float, seconds: float) -> dict[str, Any]:
    room = "bare"
    spec = Spec(url, "join", {"room": room}, "tick", "k")
    sender = socket_sender(url, [], "step", lambda k: {"room": room, "k": k}, "k")
    return run_loop(run(spec, followers, rate, seconds, sender))

