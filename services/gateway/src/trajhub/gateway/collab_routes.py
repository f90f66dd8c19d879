"""Collaboration over HTTP: locks, patches, undo/redo, history, the step and the
presenter token (docs/api.md, "Collaboration over HTTP")."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from trajhub.gateway.body import (
    body_size,
    decode_msgpack_map,
    only_fields,
    read_body,
    read_json_object,
    require_msgpack,
)
from trajhub.gateway.collab import lock_target, step_json
from trajhub.gateway.errors import ApiError
from trajhub.gateway.history_routes import history_error, history_reader
from trajhub.gateway.patch import check_base, load_and_merge, locate, parse_patch_body
from trajhub.gateway.routes import Author, IdemKey, LockFence, LockToken, gateway
from trajhub.gateway.writes import (
    build_command,
    check_room,
    commit,
    describe,
    lock_fields,
    pick_author,
    stage_and_commit,
    write_answer,
)
from trajhub.shared.collab import (
    LockAcquire,
    LockRelease,
    LockRenew,
    LockResult,
    PresenterRelease,
    PresenterRequest,
    PresenterResult,
    SetStep,
)
from trajhub.shared.events import Event, PatchFrames, Redo, Undo
from trajhub.shared.history_reader import HistoryGone

router = APIRouter()
M = TypeVar("M", bound=BaseModel)

ROOM = "/api/v1/rooms/{room}"
IfMatch = Annotated[str | None, Header(alias="If-Match")]
MAX_SEQ = 2**62
HISTORY_MAX = 1000


def validated(model: type[M], data: dict[str, Any]) -> M:
    """The model from JSON-like data, strictly (no "3" for 3, no true for 1); 422 with
    the reason otherwise."""
    try:
        return model.model_validate({k: v for k, v in data.items() if v is not None},
                                    strict=True)
    except ValidationError as exc:
        raise ApiError(422, describe(exc)) from None


def refused(result: LockResult | PresenterResult) -> ApiError:
    extra = {"holder": result.holder.model_dump()} if result.holder is not None else {}
    return ApiError(result.http_status, result.reason or f"refused ({result.status})",
                    extra=extra)


# -- locks --------------------------------------------------------------------------------
@router.post(f"{ROOM}/locks", status_code=201)
async def acquire_lock(room: str, request: Request, author: Author = None,
                       idempotency_key: IdemKey = None) -> JSONResponse:
    gw = gateway(request)
    check_room(room)
    body = only_fields(await read_json_object(request),
                       ("target", "ttl_ms", "message", "author"))
    who = pick_author(body.pop("author", None), author)
    if "target" in body:
        try:
            body["target"] = lock_target(body["target"])
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None
    idem = {"idempotency_key": idempotency_key} if idempotency_key else {}
    command = validated(LockAcquire, {**body, "room": room, "author": who, **idem})
    result = await gw.collab.acquire_lock(command)
    if not result.ok:
        raise refused(result)
    return JSONResponse({"status": "ok", "token": result.token, "fence": result.fence,
                         "expires_at": result.expires_at, "target": result.target},
                        status_code=201)


@router.get(f"{ROOM}/locks")
async def list_locks(room: str, request: Request) -> dict[str, Any]:
    listing = await gateway(request).collab.list_locks(check_room(room))
    return {"room": room, "locks": [h.model_dump() for h in listing.locks]}


@router.put(f"{ROOM}/locks/{{token}}")
async def renew_lock(room: str, token: str, request: Request) -> dict[str, Any]:
    gw = gateway(request)
    check_room(room)
    body = only_fields(await read_json_object(request), ("ttl_ms",))
    result = await gw.collab.renew_lock(validated(LockRenew, {**body, "room": room,
                                                               "token": token}))
    if not result.ok:
        raise refused(result)
    return {"token": result.token, "fence": result.fence, "expires_at": result.expires_at}


@router.delete(f"{ROOM}/locks/{{token}}")
async def release_lock(room: str, token: str, request: Request) -> dict[str, Any]:
    gw = gateway(request)
    check_room(room)
    result = await gw.collab.release_lock(validated(LockRelease, {"room": room,
                                                                   "token": token}))
    if not result.ok:
        raise refused(result)
    return {"status": "ok", "fence": result.fence}


# -- patch --------------------------------------------------------------------------------
@router.patch(f"{ROOM}/frames/{{index}}")
async def patch_frame(room: str, index: int, request: Request, if_match: IfMatch = None,
                      idempotency_key: IdemKey = None, author: Author = None,
                      lock: LockToken = None, fence: LockFence = None) -> JSONResponse:
    gw = gateway(request)
    check_room(room)
    held = lock_fields(lock, fence)
    with gw.writing(body_size(request)):
        require_msgpack(request)
        limit = gw.settings.max_upload_bytes
        message = decode_msgpack_map(await read_body(request, limit), limit)
        who = pick_author(message.pop("author", None), author)
        patch = parse_patch_body(message, if_match)
        position, entry = await locate(gw, room, index, patch.frame_id)
        check_base(room, position, entry, patch.base_version)
        merged = await load_and_merge(gw, room, position, entry, patch.frame)
        command = build_command(
            PatchFrames, room=room, frame_ids=[entry.frame_id],
            base_versions=[patch.base_version], hashes=[merged.hash],
            keys=sorted(patch.frame), author=who, idempotency_key=idempotency_key, **held)
        await gw.stager.check_budget(len(merged.blob))
        result = await stage_and_commit(gw.stager, gw.control, command, [merged.hash],
                                        [merged.blob])
    assert result.event is not None
    return JSONResponse({**write_answer(result), "keys": result.event.keys})


# -- undo, redo, history ------------------------------------------------------------------
async def revert(model: type[Undo] | type[Redo], room: str, request: Request,
                 idempotency_key: str | None, author: str | None, lock: str | None,
                 fence: str | None) -> dict[str, Any]:
    gw = gateway(request)
    check_room(room)
    held = lock_fields(lock, fence)
    body = only_fields(await read_json_object(request), ("author",))
    command = build_command(model, room=room, author=pick_author(body.get("author"), author),
                            idempotency_key=idempotency_key, **held)
    event = (await commit(gw.control, command)).event
    assert event is not None
    return {"room": event.room, "seq": event.seq, "kind": event.kind, "change": event.change,
            "reverts": event.reverts, "indices": event.indices,
            "frame_ids": [f.frame_id for f in event.frames], "n_frames": event.n_frames}


@router.post(f"{ROOM}/undo")
async def undo(room: str, request: Request, idempotency_key: IdemKey = None,
               author: Author = None, lock: LockToken = None,
               fence: LockFence = None) -> dict[str, Any]:
    return await revert(Undo, room, request, idempotency_key, author, lock, fence)


@router.post(f"{ROOM}/redo")
async def redo(room: str, request: Request, idempotency_key: IdemKey = None,
               author: Author = None, lock: LockToken = None,
               fence: LockFence = None) -> dict[str, Any]:
    return await revert(Redo, room, request, idempotency_key, author, lock, fence)


def history_entry(event: Event) -> dict[str, Any]:
    return {"seq": event.seq, "kind": event.kind, "change": event.change,
            "author": event.author, "time": event.time, "edit_id": event.edit_id,
            "indices": event.indices, "frame_ids": [f.frame_id for f in event.frames],
            "versions": [f.version for f in event.frames],
            "base_versions": event.base_versions, "keys": event.keys,
            "reverts": event.reverts}


@router.get(f"{ROOM}/history")
async def history(room: str, request: Request,
                  since: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
                  limit: Annotated[int, Query(ge=1, le=HISTORY_MAX)] = 100) -> dict[str, Any]:
    check_room(room)
    reader = await history_reader(request)
    # Seqs are contiguous: limit + 1 events tell whether there are more.
    try:
        found = [e async for e in reader.events(room, since, since + limit + 1)]
    except HistoryGone as exc:
        raise history_error(exc) from None
    if not found and await reader.head(room) == 0:
        raise ApiError(404, f"room {room!r} does not exist")
    events = [history_entry(e) for e in found[:limit]]
    more = len(found) > limit
    return {"room": room, "events": events, "next": events[-1]["seq"] if more else None}


# -- step and presenter -------------------------------------------------------------------
@router.get(f"{ROOM}/step")
async def get_step(room: str, request: Request) -> dict[str, Any]:
    return step_json(await gateway(request).collab.get_step(check_room(room)))


@router.put(f"{ROOM}/step")
async def set_step(room: str, request: Request, author: Author = None) -> dict[str, Any]:
    gw = gateway(request)
    check_room(room)
    body = only_fields(await read_json_object(request, required=True),
                       ("frame", "token", "author"))
    who = pick_author(body.pop("author", None), author)
    if "frame" not in body:
        raise ApiError(422, "request body has no 'frame'")
    result = await gw.collab.set_step(validated(SetStep, {**body, "room": room,
                                                          "author": who}))
    if not result.ok:
        raise refused(result)
    return {"status": "ok", "frame": result.frame, "step_seq": result.step_seq}


@router.post(f"{ROOM}/presenter")
async def request_presenter(room: str, request: Request, author: Author = None,
                            idempotency_key: IdemKey = None) -> dict[str, Any]:
    gw = gateway(request)
    check_room(room)
    body = only_fields(await read_json_object(request), ("token", "ttl_ms", "author"))
    who = pick_author(body.pop("author", None), author)
    idem = {"idempotency_key": idempotency_key} if idempotency_key else {}
    result = await gw.collab.request_presenter(
        validated(PresenterRequest, {**body, "room": room, "author": who, **idem}))
    if not result.ok:
        raise refused(result)
    return {"token": result.token, "expires_at": result.expires_at}


@router.delete(f"{ROOM}/presenter/{{token}}")
async def release_presenter(room: str, token: str, request: Request) -> dict[str, Any]:
    gw = gateway(request)
    check_room(room)
    result = await gw.collab.release_presenter(
        validated(PresenterRelease, {"room": room, "token": token}))
    if not result.ok:
        raise refused(result)
    return {"status": "ok"}
