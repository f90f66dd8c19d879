"""Run a gateway app with uvicorn on a free 127.0.0.1 port in a background thread.

Usage in a test module::

    from gateway_server import gateway, start_gateway  # noqa: F401  (fixtures)

``start_gateway(**settings_overrides)`` returns a running ``GatewayServer`` (stopped at
teardown); ``gateway`` is one with default settings (real Redis, Zarr in tmp_path,
in-process Control).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import uvicorn

from trajhub.gateway.app import create_app
from trajhub.shared import codec, keys
from trajhub.shared.frames import Frame
from trajhub.shared.settings import Settings
from trajhub.shared.zarr_store import open_store
from trajhub.storage.worker import StorageWorker

START_TIMEOUT_S = 20.0


class GatewayServer:
    """A uvicorn server for one ASGI app, in a daemon thread."""

    def __init__(self, app: Any, settings: Settings, port: int = 0) -> None:
        self.app = app
        self.settings = settings
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets it sees as TCP;
        # without it every keep-alive request waits ~40 ms (Nagle + delayed ACK).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, lifespan="on", log_level="warning", loop="asyncio",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run,
                                        kwargs={"sockets": [self._sock]},
                                        name=f"gateway-{self.port}", daemon=True)

    def start(self) -> GatewayServer:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=START_TIMEOUT_S)
        with contextlib.suppress(OSError):
            self._sock.close()


def gateway_settings(redis_url: str, storage: Path, **overrides: Any) -> Settings:
    return Settings(**{"redis_url": redis_url, "storage_url": str(storage), **overrides})


@pytest.fixture
def start_gateway(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., GatewayServer]]:
    servers: list[GatewayServer] = []

    def start(*, bind_port: int = 0, **overrides: Any) -> GatewayServer:
        """``bind_port``: listen there (e.g. a stopped gateway's port, to restart it)."""
        settings = gateway_settings(overrides.pop("redis_url", redis_url), tmp_path / "zarr",
                                    **overrides)
        server = GatewayServer(create_app(settings), settings, bind_port).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def gateway(start_gateway: Callable[..., GatewayServer]) -> GatewayServer:
    return start_gateway()


@pytest.fixture
def apply_room(redis_url: str, tmp_path: Path) -> Callable[[str], int]:
    """Run a storage worker over ``room`` now (the gateway fixtures' store); returns the
    number of events applied."""
    def run(room: str) -> int:
        async def go() -> int:
            worker = StorageWorker(redis_url, open_store(str(tmp_path / "zarr")), "w1")
            try:
                return await worker.apply_room(room)
            finally:
                await worker.aclose()
        return asyncio.run(go())
    return run


# -- client helpers -----------------------------------------------------------------------
MSGPACK = {"content-type": "application/msgpack"}


def make_frame(n_atoms: int, seed: int, *, extras: bool = True) -> Frame:
    """A frame with float32 positions, int32 numbers and (optionally) info/calc keys."""
    rng = np.random.default_rng(seed)
    frame: Frame = {
        "numbers": rng.integers(1, 90, n_atoms).astype(np.int32),
        "positions": rng.normal(size=(n_atoms, 3)).astype(np.float32),
    }
    if extras:
        frame["cell"] = np.eye(3) * (10.0 + seed)
        frame["pbc"] = np.array([True, True, False])
        frame["info.name"] = np.array(f"frame-{seed}")
        frame["info.tags"] = np.array(["a", "bb", f"c{seed}"])
        frame["calc.energy"] = np.array(-1.5 * seed)
        frame["calc.forces"] = rng.normal(size=(n_atoms, 3))
        frame["arrays.mask"] = rng.integers(0, 2, n_atoms).astype(bool)
    return frame


def frames_body(frames: list[Frame], **extra: Any) -> bytes:
    return codec.frames_to_bytes(frames, **extra)


def post_frames(client: httpx.Client, room: str, frames: list[Frame],
                **params: Any) -> httpx.Response:
    headers = {**MSGPACK, **params.pop("headers", {})}
    return client.post(f"/api/v1/rooms/{room}/frames", content=frames_body(frames),
                       headers=headers, params=params)


def get_frames(client: httpx.Client, room: str, **params: Any) -> dict[str, Any]:
    """GET frames; returns the decoded message with ``frames`` as numpy frames."""
    response = client.get(f"/api/v1/rooms/{room}/frames", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/msgpack"
    message: dict[str, Any] = codec.unpackb(response.content)
    message["frames"] = [codec.decode_frame(f) for f in message["frames"]]
    return message


def room_state(client: httpx.Client, room: str) -> tuple[int, int] | None:
    """(seq, n_frames) of a room, or None if it does not exist."""
    response = client.get(f"/api/v1/rooms/{room}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    info = response.json()
    return info["seq"], info["n_frames"]


def redis_snapshot(redis_url: str) -> dict[bytes, Any]:
    """Every key of the test database with its content, to prove that a refused request
    stored nothing. Staged blobs that still carry a TTL (uploads not committed) are left
    out: they are not state, they expire. So is ``trajhub:notify``, a capped stream of
    hints (control notifies in the same round trip as every commit, accepted or not)."""
    client = redis.Redis.from_url(redis_url)
    out: dict[bytes, Any] = {}
    try:
        for key in client.scan_iter(count=1000):
            if key == keys.NOTIFY.encode():
                continue
            kind = client.type(key)
            if kind == b"string":
                if b":blob:" in key and client.ttl(key) >= 0:
                    continue
                out[key] = client.get(key)
            elif kind == b"hash":
                out[key] = client.hgetall(key)
            elif kind == b"list":
                out[key] = client.lrange(key, 0, -1)
            elif kind == b"set":
                out[key] = client.smembers(key)
            elif kind == b"zset":
                out[key] = client.zrange(key, 0, -1, withscores=True)
            elif kind == b"stream":
                out[key] = client.xrange(key)
    finally:
        client.close()
    return out
