"""``POST /api/v1/rooms/{room}/compact``: slot compaction now, in the gateway process.

Query: ``keep_events`` (default ``TRAJHUB_STREAM_KEEP_EVENTS``): the states of the last
that many events keep their frames (never fewer than undo can reach); ``relayout=true``
first relays the live frames out in logical order (new events ``frames_relaid``, same
content, versions and frame ids). See ``trajhub.snapshotter.compaction``. Answers the
``CompactionResult`` fields; 404 for a room without events, 503 (Retry-After) while
storage has not applied the room's latest events. Frames of states before
``retained_from_seq`` answer 410 from then on.

With ``TRAJHUB_ADMIN_USER`` and ``TRAJHUB_ADMIN_PASSWORD`` both set, the endpoint requires
those HTTP Basic credentials (401 + ``WWW-Authenticate`` otherwise).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from trajhub.gateway.errors import ApiError
from trajhub.gateway.history_routes import history_store
from trajhub.gateway.runtime import Gateway
from trajhub.gateway.writes import check_room
from trajhub.shared import keys
from trajhub.shared.settings import Settings
from trajhub.snapshotter.compaction import (
    CompactableStore,
    CompactionError,
    StorageBehind,
    compact,
)

router = APIRouter()


@router.post("/api/v1/rooms/{room}/compact")
async def compact_room(request: Request, room: str,
                       keep_events: Annotated[int | None, Query(ge=0)] = None,
                       relayout: bool = False) -> dict[str, Any]:
    gw: Gateway = request.app.state.gateway
    require_admin(request, gw.settings)
    check_room(room)
    if not await gw.redis.exists(keys.meta(room)):
        raise ApiError(404, f"room {room!r} has no events")
    history = await history_store(request)
    store: Any = await gw.store()
    keep = gw.settings.stream_keep_events if keep_events is None else keep_events
    try:
        result = await compact(gw.redis, gw.control, _compactable(store), history, room,
                               keep_events=keep, relayout=relayout)
    except StorageBehind as exc:
        raise ApiError(503, str(exc), headers={"Retry-After": "2"}) from None
    except CompactionError as exc:
        raise ApiError(409, str(exc)) from None
    return asdict(result)


def require_admin(request: Request, settings: Settings) -> None:
    """Refuse (401) unless the request carries the admin's Basic credentials, when the
    settings name an admin; compare in constant time so a wrong guess leaks nothing."""
    if not (settings.admin_user and settings.admin_password):
        return
    given = _basic_credentials(request.headers.get("authorization", ""))
    if given is not None:
        user_ok = secrets.compare_digest(given[0].encode(), settings.admin_user.encode())
        password_ok = secrets.compare_digest(given[1].encode(),
                                             settings.admin_password.encode())
        if user_ok and password_ok:
            return
    raise ApiError(401, "admin credentials required (HTTP Basic)",
                   headers={"WWW-Authenticate": 'Basic realm="trajhub admin", charset="UTF-8"'})


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(token.strip(), validate=True).decode(
            "utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def _compactable(store: Any) -> CompactableStore:
    if not all(hasattr(store, m) for m in ("drop_slots", "base_slots", "parent_slots")):
        raise ApiError(501, f"the frame store {store!r} does not support compaction")
    compactable: CompactableStore = store
    return compactable
