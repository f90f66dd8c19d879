"""Run an ASGI app under uvicorn the way every trajhub HTTP service does."""

from __future__ import annotations

import importlib.util
import signal
from typing import Any

import uvicorn

from trajhub.shared.memory import tune_malloc

GRACEFUL_SHUTDOWN_S = 10


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run_asgi(app: Any, host: str, port: int, log_level: str, *,
             access_log: bool = False) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully and return (exit status 0).

    uvicorn finishes in-flight requests and runs the lifespan shutdown, then restores
    the previous signal handlers and re-raises the signal; the no-op handlers installed
    here receive that re-raise, so the process ends normally instead of by the signal.
    """
    tune_malloc()
    config = uvicorn.Config(
        app, host=host, port=port, lifespan="on", log_level=log_level.lower(),
        access_log=access_log,
        loop="uvloop" if _have("uvloop") else "asyncio",
        http="httptools" if _have("httptools") else "h11",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    uvicorn.Server(config).run()
