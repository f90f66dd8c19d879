"""A bare python-socketio AsyncServer that relays a client's ``step`` to a room (baseline).

    python bench/_sio_baseline.py PORT

``join {"room"}`` enters the room; ``step {"room", "k"}`` emits ``tick`` with the same data
to the room's other sockets and acks ``{"ok": true, "k"}``. Nothing else: the fan-out
figure of a presenter step or a commit notice, minus everything trajhub does.
"""

from __future__ import annotations

import sys
from typing import Any

import socketio
import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*")


@sio.on("join")  # type: ignore[untyped-decorator,unused-ignore]
async def join(sid: str, data: dict[str, Any]) -> dict[str, Any]:
    await sio.enter_room(sid, data["room"])
    return {"ok": True}


@sio.on("step")  # type: ignore[untyped-decorator,unused-ignore]
async def step(sid: str, data: dict[str, Any]) -> dict[str, Any]:
    await sio.emit("tick", data, room=data["room"], skip_sid=sid)
    return {"ok": True, "k": data["k"]}


async def readyz(_: Any) -> Response:
    return Response(b"ok")


app = socketio.ASGIApp(sio, Starlette(routes=[Route("/readyz", readyz)]))

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                loop="uvloop", http="httptools")
