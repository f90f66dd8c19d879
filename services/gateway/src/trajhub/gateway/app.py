"""The gateway ASGI app: FastAPI (HTTP) wrapped by python-socketio (``/socket.io``)."""

from __future__ import annotations

from typing import Any

import socketio
from fastapi import FastAPI

from trajhub.control import ControlUnavailable
from trajhub.gateway import home, web
from trajhub.gateway.collab_routes import router as collab_router
from trajhub.gateway.compact_routes import router as compact_router
from trajhub.gateway.errors import NotStarted, install_error_handlers
from trajhub.gateway.fork_routes import router as fork_router
from trajhub.gateway.history_routes import router as history_router
from trajhub.gateway.routes import fast_frame_reads, router
from trajhub.gateway.runtime import Gateway
from trajhub.gateway.snapshot_routes import router as snapshot_router
from trajhub.gateway.upload_routes import router as upload_router
from trajhub.shared.ports import ControlPort, FrameStore
from trajhub.shared.settings import Settings


def create_app(settings: Settings, *, control: ControlPort | None = None,
               store: FrameStore | None = None) -> Any:
    """A new, independent gateway app (its state lives on ``app.gateway``)."""
    gw = Gateway(settings, control=control, store=store)
    api = FastAPI(title="trajhub gateway", version="1", lifespan=gw.lifespan)
    api.state.gateway = gw
    install_error_handlers(api, unavailable=(ControlUnavailable, NotStarted))
    api.include_router(router)
    api.include_router(collab_router)
    api.include_router(history_router)
    api.include_router(snapshot_router)
    api.include_router(fork_router)
    api.include_router(upload_router)
    api.include_router(compact_router)
    api.include_router(home.router)
    api.include_router(web.router)
    app = socketio.ASGIApp(gw.sio, other_asgi_app=fast_frame_reads(api),
                           socketio_path="socket.io")
    app.gateway = gw
    app.api = api
    return app
