"""``trajhub-gateway``: run the gateway with uvicorn (SIGTERM: graceful shutdown)."""

from __future__ import annotations

import importlib.util
import logging

import uvicorn

from trajhub.gateway.app import create_app
from trajhub.shared.settings import Settings

GRACEFUL_SHUTDOWN_S = 10


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def main() -> None:
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port,
        loop="uvloop" if _have("uvloop") else "asyncio",
        http="httptools" if _have("httptools") else "h11",
        lifespan="on", log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    # uvicorn turns SIGTERM/SIGINT into a graceful shutdown (lifespan stop runs).
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
