"""``trajhub-control``: serve control's HTTP API (SIGTERM: graceful shutdown, exit 0)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from trajhub.control.http import create_app
from trajhub.control.runner import run_asgi
from trajhub.shared.settings import Settings

DEFAULT_PORT = 5001


def port_for(settings: Settings, environ: Mapping[str, str]) -> int:
    """TRAJHUB_PORT if set, else control's own default (the gateway has 5000)."""
    return settings.port if "TRAJHUB_PORT" in environ else DEFAULT_PORT


def main() -> None:
    settings = Settings.from_env()
    run_asgi(create_app(settings), settings.host, port_for(settings, os.environ),
             settings.log_level, access_log=settings.access_log)


if __name__ == "__main__":
    main()
