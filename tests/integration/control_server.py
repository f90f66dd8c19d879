"""Serve control's HTTP API with uvicorn on a free 127.0.0.1 port, in a thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from trajhub.control import create_app
from trajhub.control.control import Clock
from trajhub.shared.settings import Settings


@contextlib.contextmanager
def serve(redis_url: str, *, clock: Clock | None = None) -> Iterator[str]:
    """Control's app (its Control on ``clock``, else Redis's clock); yields its URL."""
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets it sees as TCP.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(Settings(redis_url=redis_url), clock=clock)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("control server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
