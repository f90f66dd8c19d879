"""``POST /api/v1/rooms/{room}/snapshot``: a snapshot pass now, in the gateway process.

Snapshots the room's live index into the history store, archives its events up to it
and trims the event stream as far as every consumer group allows
(``trajhub.snapshotter.history.take_snapshot``; safe beside a running snapshotter).
Answers ``{"room", "snapshot_seq", "archived_seq", "trimmed_seq", "n_frames",
"segments"}``; 404 for a room without events.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request

from trajhub.gateway.errors import ApiError
from trajhub.gateway.history_routes import history_store
from trajhub.gateway.runtime import Gateway
from trajhub.gateway.writes import check_room
from trajhub.snapshotter.history import RoomNotFound, take_snapshot

router = APIRouter()


@router.post("/api/v1/rooms/{room}/snapshot")
async def snapshot_room(request: Request, room: str) -> dict[str, Any]:
    check_room(room)
    gw: Gateway = request.app.state.gateway
    history = await history_store(request)
    try:
        result = await take_snapshot(gw.redis, history, room)
    except RoomNotFound as exc:
        raise ApiError(404, str(exc)) from None
    return asdict(result)
