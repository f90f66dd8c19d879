"""``trajhub-control``: serve control's HTTP API with uvicorn."""

from __future__ import annotations

import os
from collections.abc import Mapping

import uvicorn

from trajhub.control.http import create_app
from trajhub.shared.settings import Settings

DEFAULT_PORT = 5001


def port_for(settings: Settings, environ: Mapping[str, str]) -> int:
    """TRAJHUB_PORT if set, else control's own default (the gateway has 5000)."""
    return settings.port if "TRAJHUB_PORT" in environ else DEFAULT_PORT


def main() -> None:
    settings = Settings.from_env()
    # uvicorn handles SIGTERM/SIGINT: stops accepting, finishes requests, runs lifespan.
    uvicorn.run(create_app(settings), host=settings.host, port=port_for(settings, os.environ),
                log_level=settings.log_level.lower(), proxy_headers=False)


if __name__ == "__main__":
    main()
