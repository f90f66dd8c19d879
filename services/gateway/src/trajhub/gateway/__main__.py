"""``trajhub-gateway``: run the gateway with uvicorn (SIGTERM: graceful shutdown, exit 0)."""

from __future__ import annotations

import logging

from trajhub.control.runner import run_asgi
from trajhub.gateway.app import create_app
from trajhub.shared.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    app.gateway.freeze_heap = True
    run_asgi(app, settings.host, settings.port, settings.log_level,
             access_log=settings.access_log)


if __name__ == "__main__":
    main()
