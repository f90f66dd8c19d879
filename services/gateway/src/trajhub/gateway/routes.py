"""The HTTP API (data channel)."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, FastAPI, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from trajhub.control import IndexOutOfRange, IndexReader, IndexView
from trajhub.gateway.body import (
    MSGPACK,
    body_size,
    check_declared_size,
    content_type,
    decode_optional_map,
    only_fields,
    read_body,
    require_msgpack,
)
from trajhub.gateway.errors import ApiError
from trajhub.gateway.history_routes import AtSeq, past_index, select_past
from trajhub.gateway.ingest import PreparedFrames, parse_upload
from trajhub.gateway.reader import (
    IndexScript,
    PartsResponse,
    ReadView,
    coalesce,
    coalesce_into,
    pack_entry_fields,
    pack_frames_parts,
    small_nbytes,
)
from trajhub.gateway.rooms import room_head
from trajhub.gateway.runtime import Gateway
from trajhub.gateway.selection import Selection, parse_keys, parse_selection
from trajhub.gateway.writes import (
    build_command,
    check_room,
    commit,
    delete_answer,
    int_list,
    lock_fields,
    optional_int_list,
    pick_author,
    stage_and_commit,
    targets_field,
    write_answer,
)
from trajhub.shared.events import DeleteFrames, InsertFrames, ReplaceFrames
from trajhub.snapshotter.compaction import compacted_below

router = APIRouter()

OptInt = Annotated[int | None, Query()]
OptStr = Annotated[str | None, Query()]
IdemKey = Annotated[str | None, Header(alias="Idempotency-Key")]
Author = Annotated[str | None, Header(alias="X-Trajhub-Author")]
LockToken = Annotated[str | None, Header(alias="X-Trajhub-Lock")]
LockFence = Annotated[str | None, Header(alias="X-Trajhub-Fence")]
DELETE_BODY_LIMIT = 16 * 2**20
MAX_FRAMES_PER_READ = 10_000
"""One response is built in memory: larger selections must be paged (the client does)."""
INLINE_RESPONSE_BYTES = 2**20
"""GET responses that join (copy) fewer bytes are put together on the loop: a thread hop
would cost more; larger ones are copied into a reused buffer (``Gateway.answers``) in a
thread. Frames of RESPONSE_CHUNK_BYTES or more are sent as they are."""
RESPONSE_CHUNK_BYTES = 32 * 2**10
"""Smaller frames are joined into parts of about this size, each one ASGI message."""
INLINE_UPLOAD_BYTES = 64 * 2**10
"""Smaller uploads (a single edit) are parsed and hashed on the loop (~0.1 ms); the thread
hop costs more than that, and much more when the loop's threads are busy."""


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


# -- health -------------------------------------------------------------------------------
@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    gw = gateway(request)
    try:
        await gw.redis.ping()
    except Exception as exc:
        return JSONResponse({"detail": f"Redis does not answer: {exc}"}, status_code=503)
    try:
        await gw.store()
    except ApiError as exc:
        return JSONResponse({"detail": exc.detail}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/api/v1/stats")
async def stats(request: Request) -> dict[str, Any]:
    return {"frame_cache": gateway(request).cache.stats()}


# -- rooms --------------------------------------------------------------------------------
@router.get("/api/v1/rooms")
async def list_rooms(request: Request) -> dict[str, Any]:
    rooms = await gateway(request).index.list_rooms()
    return {"rooms": [{"room": r, "n_frames": n, "seq": s} for r, n, s in sorted(rooms)]}


@router.get("/api/v1/rooms/{room}")
async def room_info(room: str, request: Request) -> dict[str, Any]:
    head = await room_head(gateway(request).redis, check_room(room))
    if not head.exists:
        raise ApiError(404, f"room {room!r} does not exist")
    return {"room": room, "n_frames": head.n_frames, "seq": head.seq,
            "applied_seq": head.applied_seq}


# -- frames: read -------------------------------------------------------------------------
async def read_index(gw: Gateway, room: str, sel: Selection, *, light: bool = False) -> Any:
    """The room's index for ``sel`` (404 unknown room or index out of range); with
    ``light``, a ReadView (entries without pydantic's validation, for reads)."""
    reader: IndexReader | IndexScript = gw.loader.index if light else gw.index
    try:
        if sel.indices is not None:
            view = await reader.read(room, indices=sel.indices)
        else:
            view = await reader.read(room, start=sel.start, stop=sel.stop, step=sel.step)
    except IndexOutOfRange as exc:
        if not exc.exists:
            raise ApiError(404, f"room {room!r} does not exist") from None
        raise ApiError(404, f"room {room!r}: {exc}") from None
    if not view.exists:
        raise ApiError(404, f"room {room!r} does not exist")
    return view


FRAMES_PATH = "/api/v1/rooms/{room}/frames"


@router.get(FRAMES_PATH)
async def get_frames(room: str, request: Request, indices: OptStr = None,
                     start: OptInt = None, stop: OptInt = None, step: OptInt = None,
                     keys: OptStr = None, at_seq: AtSeq = None) -> Response:
    return await read_frames(request, room, indices, start, stop, step, keys, at_seq)


async def read_frames(request: Request, room: str, indices: str | None, start: int | None,
                      stop: int | None, step: int | None, keys: str | None,
                      at_seq: int | None) -> Response:
    gw = gateway(request)
    check_room(room)
    sel = parse_selection(indices, start, stop, step)
    wanted = parse_keys(keys)
    for attempt in range(2):
        view: ReadView | IndexView
        if at_seq is None:
            view = await read_index(gw, room, sel, light=True)
        else:  # slots are write-once: a past frame is still where its slot says
            past = await past_index(request, room, at_seq)
            positions, picked = select_past(room, at_seq, past, sel)
            view = IndexView(seq=at_seq, n_frames=len(past), exists=True,
                             indices=positions, entries=picked)
        if len(view.indices) > MAX_FRAMES_PER_READ:
            raise ApiError(422, f"{len(view.indices)} frames asked for; at most "
                                f"{MAX_FRAMES_PER_READ} per request: page with start/stop")
        loaded = await gw.loader.load_frames(room, await gw.store(), view.entries, wanted,
                                             view.indices, splice=True, ordered=True)
        by_slot = loaded.by_slot
        if at_seq is None and not loaded.from_zarr:
            break  # cached frames and blobs are content-addressed: compaction cannot touch them
        # Compaction sets its bound before it deletes data: read after the frames, an
        # old bound means nothing they came from was deleted while they were read.
        below = await compacted_below(gw.redis, room)
        if below <= view.seq:
            break
        if at_seq is not None or attempt:
            raise ApiError(410, f"room {room!r} was compacted below seq {below}: the "
                                f"frames of seq {view.seq} are gone (its index and "
                                "history remain)", extra={"seq": view.seq})
    fields = view.entry_fields if isinstance(view, ReadView) \
        else pack_entry_fields(view.indices, view.entries)
    parts = pack_frames_parts(room, view.seq, view.n_frames, fields, view.entries, by_slot,
                              spliced=loaded.spliced, ordered=loaded.ordered)
    copied = small_nbytes(parts, RESPONSE_CHUNK_BYTES)
    if copied <= INLINE_RESPONSE_BYTES:
        return PartsResponse(coalesce(parts, RESPONSE_CHUNK_BYTES), media_type=MSGPACK)
    buf = gw.answers.take_at_least(copied)
    try:
        parts = await asyncio.to_thread(coalesce_into, parts, RESPONSE_CHUNK_BYTES, buf)
    except BaseException:
        gw.answers.give(buf)
        raise
    return PartsResponse(parts, media_type=MSGPACK, sent=lambda: gw.answers.give(buf))


_FAST_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")
_FAST_STR = ("indices", "keys")
_FAST_INTS = ("start", "stop", "step")


def _fast_query(query_string: bytes) -> dict[str, Any] | None:
    """The arguments of ``get_frames`` from a plain query (each known parameter at most
    once, non-empty, integers in their simplest form), else None: FastAPI judges it."""
    params = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    out: dict[str, Any] = {}
    for name, value in params:
        if name in out or not value:
            return None
        if name in _FAST_INTS:
            if not _FAST_INT.fullmatch(value):
                return None
            out[name] = int(value)
        elif name in _FAST_STR:
            out[name] = value
        else:
            return None
    return out


_FAST_PATH = re.compile(r"/api/v1/rooms/([^/]+)/frames")


def fast_frame_reads(api: FastAPI) -> ASGIApp:
    """``api`` with ``GET /api/v1/rooms/{room}/frames`` answered before FastAPI's
    routing, dependency and validation machinery (a large share of a cached
    single-frame read) when the query is plain (see ``_fast_query``). Everything else,
    and any request whose read raises (nothing has been sent then; a GET has no body),
    goes to ``api``, so errors and odd queries are answered exactly as the declared
    route (which also stays the one in the OpenAPI docs) answers them."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" \
                and not scope.get("root_path"):
            match = _FAST_PATH.fullmatch(scope["path"])
            args = _fast_query(scope.get("query_string", b"")) if match else None
            if match and args is not None:
                request = Request({**scope, "app": api}, receive)
                try:
                    response = await read_frames(
                        request, match.group(1), args.get("indices"), args.get("start"),
                        args.get("stop"), args.get("step"), args.get("keys"), None)
                except Exception:
                    pass  # let FastAPI's route and error handlers answer it
                else:
                    await response(scope, receive, send)
                    return
        await api(scope, receive, send)

    return app


# -- frames: write ------------------------------------------------------------------------
async def receive_frames(gw: Gateway, request: Request) -> tuple[dict[str, Any],
                                                                 PreparedFrames]:
    """Size check, budget check, capped read, then decode/validate/hash in a thread."""
    require_msgpack(request)
    limit = gw.settings.max_upload_bytes
    check_declared_size(request, limit)
    await gw.stager.check_budget(int(request.headers.get("content-length") or 0))
    body = await read_body(request, limit, gw.bodies)
    try:
        if len(body) <= INLINE_UPLOAD_BYTES:
            return parse_upload(body, limit)
        return await asyncio.to_thread(parse_upload, body, limit)
    finally:
        # Reused once the frames (views into it) are gone, i.e. after this request.
        gw.bodies.give(body)


@router.post("/api/v1/rooms/{room}/blobs", status_code=201)
async def stage_frames(room: str, request: Request) -> JSONResponse:
    """Stage frames without committing them (as ``POST .../frames`` would stage them):
    a later ``POST``/``PUT .../frames`` with ``{"hashes": [...]}`` commits them. A client
    stages its next chunk while the previous one commits; staging is idempotent (content
    addressed) and what is never committed expires after the staging TTL."""
    gw = gateway(request)
    check_room(room)
    with gw.writing(body_size(request)):
        message, frames = await receive_frames(gw, request)
        if frames.blobs is None:
            raise ApiError(422, "POST .../blobs stages frames: send {'frames': [...]}")
        only_fields(message, ())
        await gw.stager.stage(room, frames.hashes, frames.blobs)
    return JSONResponse({"room": room, "n_frames": len(frames.hashes),
                         "hashes": frames.hashes, "expires_in_s": gw.stager.ttl_s},
                        status_code=201)


@router.post("/api/v1/rooms/{room}/frames", status_code=201)
async def insert_frames(room: str, request: Request, at: Annotated[int | None, Query(ge=0)] = None,
                        idempotency_key: IdemKey = None, author: Author = None,
                        lock: LockToken = None, fence: LockFence = None) -> JSONResponse:
    gw = gateway(request)
    check_room(room)
    held = lock_fields(lock, fence)
    with gw.writing(body_size(request)):
        message, frames = await receive_frames(gw, request)
        command = build_command(InsertFrames, room=room, at=at, hashes=frames.hashes,
                                author=pick_author(message.get("author"), author),
                                idempotency_key=idempotency_key, **held)
        result = await stage_and_commit(gw.stager, gw.control, command, frames.hashes,
                                        frames.blobs)
    return JSONResponse(write_answer(result), status_code=201)


@router.put("/api/v1/rooms/{room}/frames")
async def replace_frames(room: str, request: Request, idempotency_key: IdemKey = None,
                         author: Author = None, lock: LockToken = None,
                         fence: LockFence = None) -> JSONResponse:
    gw = gateway(request)
    check_room(room)
    held = lock_fields(lock, fence)
    with gw.writing(body_size(request)):
        message, frames = await receive_frames(gw, request)
        addressing, targets = targets_field(message)
        if len(targets) != len(frames.hashes):
            raise ApiError(422, f"{len(targets)} {addressing} but {len(frames.hashes)} frames")
        command = build_command(
            ReplaceFrames, room=room, hashes=frames.hashes,
            base_versions=optional_int_list(message.get("base_versions"), "base_versions",
                                            len(targets)),
            author=pick_author(message.get("author"), author),
            idempotency_key=idempotency_key, **{addressing: targets}, **held)
        result = await stage_and_commit(gw.stager, gw.control, command, frames.hashes,
                                        frames.blobs)
    return JSONResponse(write_answer(result), status_code=200)


async def resolve_delete(gw: Gateway, room: str, sel: Selection) -> tuple[list[int], Any]:
    """Explicit indices as given; a slice resolved against the current frame count."""
    if sel.indices is not None:
        return sel.indices, None
    if sel.start is None and sel.stop is None and sel.step is None:
        raise ApiError(422, "give indices= or start/stop/step (start=0 deletes every frame)")
    view = await read_index(gw, room, sel)
    return list(view.indices), view


@router.delete("/api/v1/rooms/{room}/frames")
async def delete_frames(room: str, request: Request, indices: OptStr = None,
                        start: OptInt = None, stop: OptInt = None, step: OptInt = None,
                        idempotency_key: IdemKey = None, author: Author = None,
                        lock: LockToken = None, fence: LockFence = None) -> JSONResponse:
    gw = gateway(request)
    check_room(room)
    held = lock_fields(lock, fence)
    sel = parse_selection(indices, start, stop, step)
    body = await read_body(request, min(DELETE_BODY_LIMIT, gw.settings.max_upload_bytes))
    message = decode_optional_map(body, content_type(request), DELETE_BODY_LIMIT)
    addressing = "indices"
    if "frame_ids" in message:
        if sel.indices is not None or sel.start is not None or sel.stop is not None \
                or sel.step is not None:
            raise ApiError(422, "give either a query selection or 'frame_ids' in the body, "
                                "not both")
        addressing, targets = "frame_ids", int_list(message["frame_ids"], "frame_ids")
        if not targets:
            raise ApiError(422, "frame_ids is empty; nothing to delete")
    else:
        targets, view = await resolve_delete(gw, room, sel)
        if not targets:
            if view is None:
                raise ApiError(422, "indices is empty; nothing to delete")
            return JSONResponse({"room": room, "seq": view.seq, "n_frames": view.n_frames,
                                 "indices": []})
    command = build_command(
        DeleteFrames, room=room,
        base_versions=optional_int_list(message.get("base_versions"), "base_versions",
                                        len(targets)),
        author=pick_author(message.get("author"), author), idempotency_key=idempotency_key,
        **{addressing: targets}, **held)
    result = await commit(gw.control, command)
    return JSONResponse(delete_answer(result), status_code=200)
