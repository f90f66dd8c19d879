"""``PUT /api/v1/rooms/{room}``: create a room, empty or as a fork of another (without
copying frame data).

Without ``base_room`` (an empty body, ``{}`` or ``{"author"}``) the room is created
empty: its first event is ``room_created`` and it is listed from then on; 201 ``{"room",
"seq", "n_frames"}``, 409 if it exists.

Body (JSON): ``{"base_room": name, "at_seq"?: S, "author"?: str}``. The gateway reads the
base room's index at ``S`` (its current seq by default; a past one through the history
reader), waits until the base's storage has applied every slot those entries use (so
the fork can read them from the base's Zarr group), and control commits the new room's
first event ``room_forked`` holding those entries, slots included. The fork's own slots
and frame ids continue from the base's ``next_slot``/``next_fid``. Answers 201 ``{"room",
"seq", "n_frames", "base_room", "base_seq", "frame_ids", "versions", "hashes"}``; 409 if
``room`` already has events, 404 unknown base, 422 bad names or ``at_seq`` beyond the
base's head, 410 ``at_seq`` beyond retention, 503 (Retry-After) if the base's storage
lags. Undoing the fork (its author's ``undo``) deletes the forked frames, like any
insert.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from trajhub.control import IndexOutOfRange
from trajhub.gateway.errors import ApiError
from trajhub.gateway.forking import fork
from trajhub.gateway.history_routes import MAX_SEQ, past_index
from trajhub.gateway.runtime import Gateway
from trajhub.gateway.writes import build_command, check_room, checked, pick_author
from trajhub.shared.events import CreateRoom, FrameEntry

router = APIRouter()

IdemKey = Annotated[str | None, Header(alias="Idempotency-Key")]
Author = Annotated[str | None, Header(alias="X-Trajhub-Author")]
BODY_LIMIT = 64 * 2**10


def _gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


async def _fork_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > BODY_LIMIT:
        raise ApiError(413, f"a fork request body is at most {BODY_LIMIT} bytes")
    try:
        body = json.loads(raw or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(422, 'request body must be a JSON object {"base_room": name, '
                            '"at_seq"?: seq}')
    unknown = set(body) - {"base_room", "at_seq", "author"}
    if unknown:
        raise ApiError(422, f"unknown field(s) in the fork request: {sorted(unknown)}")
    if "base_room" in body and not isinstance(body["base_room"], str):
        raise ApiError(422, "base_room (the room to fork) must be a room name")
    if "at_seq" in body and "base_room" not in body:
        raise ApiError(422, "at_seq needs base_room: it is the seq of the room to fork")
    at_seq = body.get("at_seq")
    if at_seq is not None and (not isinstance(at_seq, int) or isinstance(at_seq, bool)
                               or not 0 <= at_seq <= MAX_SEQ):
        raise ApiError(422, f"at_seq must be an integer from 0 to the base room's seq, "
                            f"not {at_seq!r}")
    return body


async def _base_entries(request: Request, base: str, at_seq: int | None
                        ) -> tuple[int, list[FrameEntry]]:
    """The base room's seq and entries to fork: now (one atomic read) or at ``at_seq``."""
    if at_seq is not None:
        return at_seq, await past_index(request, base, at_seq)
    try:
        view = await _gateway(request).index.read(base)
    except IndexOutOfRange:  # pragma: no cover - a whole read names no index
        view = None
    if view is None or not view.exists:
        raise ApiError(404, f"base room {base!r} does not exist")
    return view.seq, view.entries


@router.put("/api/v1/rooms/{room}", status_code=201)
async def fork_room(room: str, request: Request, idempotency_key: IdemKey = None,
                    author: Author = None) -> JSONResponse:
    check_room(room)
    body = await _fork_body(request)
    if "base_room" not in body:
        return await _create(request, room, pick_author(body.get("author"), author),
                             idempotency_key)
    base = check_room(body["base_room"])
    if base == room:
        raise ApiError(409, f"room {room!r} already exists (a room cannot fork itself)")
    base_seq, entries = await _base_entries(request, base, body.get("at_seq"))
    gw = _gateway(request)
    event = await fork(gw.redis, gw.control, room, base, base_seq, entries,
                       pick_author(body.get("author"), author), idempotency_key)
    return JSONResponse(status_code=201, content={
        "room": event.room, "seq": event.seq, "n_frames": event.n_frames,
        "base_room": event.base_room, "base_seq": event.base_seq,
        "frame_ids": [f.frame_id for f in event.frames],
        "versions": [f.version for f in event.frames], "hashes": event.hashes})


async def _create(request: Request, room: str, author: str | None,
                  idempotency_key: str | None) -> JSONResponse:
    command = build_command(CreateRoom, room=room, author=author,
                            idempotency_key=idempotency_key)
    event = checked(await _gateway(request).control.commit(command)).event
    assert event is not None
    return JSONResponse(status_code=201, content={
        "room": event.room, "seq": event.seq, "n_frames": event.n_frames})
