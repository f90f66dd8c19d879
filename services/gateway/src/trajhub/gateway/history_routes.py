"""Time travel over HTTP: a room's index now or at a past seq (``GET .../index``), and
the helpers the frames and history routes use to read the past.

The history store (snapshots and archived segments) lives at the frame store's URL; it
is opened on first use and kept on the app's state.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from trajhub.gateway.errors import ApiError
from trajhub.gateway.room_index import index_json, live_index
from trajhub.gateway.runtime import Gateway
from trajhub.gateway.selection import Selection
from trajhub.gateway.writes import check_room
from trajhub.shared.events import FrameEntry
from trajhub.shared.history_reader import HistoryGone, HistoryReader, SeqBeyondHead, UnknownRoom
from trajhub.shared.history_store import open_history_store
from trajhub.shared.ports import HistoryStore

router = APIRouter()

MAX_SEQ = 2**62
AtSeq = Annotated[int | None, Query(ge=0, le=MAX_SEQ)]


def _gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


async def history_store(request: Request) -> HistoryStore:
    """The app's history store, opened on first use (503 while it cannot be)."""
    state = request.app.state
    store: HistoryStore | None = getattr(state, "history_store", None)
    if store is not None:
        return store
    lock: asyncio.Lock = state.__dict__.setdefault("history_store_lock", asyncio.Lock())
    async with lock:
        store = getattr(state, "history_store", None)
        if store is None:
            url = _gateway(request).settings.storage_url
            try:
                store = await asyncio.to_thread(open_history_store, url)
            except Exception as exc:
                raise ApiError(503, f"history store {url!r} cannot be opened: "
                                    f"{exc}") from exc
            state.history_store = store
    return store


async def history_reader(request: Request) -> HistoryReader:
    """The app's reader (one, so that its cached store listings are reused)."""
    state = request.app.state
    redis = _gateway(request).redis
    reader: HistoryReader | None = getattr(state, "history_reader", None)
    if reader is None or reader.redis is not redis:
        reader = HistoryReader(redis, await history_store(request))
        state.history_reader = reader
    return reader


def history_error(exc: Exception) -> ApiError:
    """The HTTP answer for a HistoryReader refusal."""
    if isinstance(exc, HistoryGone):
        return ApiError(410, exc.reason, extra={"seq": exc.seq})
    if isinstance(exc, UnknownRoom):
        return ApiError(404, str(exc))
    if isinstance(exc, SeqBeyondHead):
        return ApiError(422, f"at_seq: {exc}", extra={"head": exc.head})
    raise exc


async def past_index(request: Request, room: str, seq: int) -> list[FrameEntry]:
    """The room's entries at ``seq`` (404 unknown room, 422 future seq, 410 gone)."""
    reader = await history_reader(request)
    try:
        return await reader.index_at(room, seq)
    except (HistoryGone, UnknownRoom, SeqBeyondHead) as exc:
        raise history_error(exc) from None


def select_past(room: str, seq: int, entries: list[FrameEntry], sel: Selection
                ) -> tuple[list[int], list[FrameEntry]]:
    """``sel`` applied to a past index: (indices, their entries); 404 out of range."""
    n = len(entries)
    if sel.indices is None:
        positions = list(range(n))[slice(sel.start, sel.stop, sel.step)]
    else:
        bad = [i for i in sel.indices if i >= n]
        if bad:
            raise ApiError(404, f"room {room!r} at seq {seq}: index {bad[0]} out of range "
                                f"for {n} frames")
        positions = sel.indices
    return positions, [entries[i] for i in positions]


@router.get("/api/v1/rooms/{room}/index")
async def get_index(room: str, request: Request, at_seq: AtSeq = None) -> dict[str, Any]:
    """The room's whole index, now (one atomic read) or as of ``at_seq``."""
    check_room(room)
    if at_seq is not None:
        return index_json(room, at_seq, await past_index(request, room, at_seq))
    body = await live_index(_gateway(request).index, room)
    if body is None:
        raise ApiError(404, f"room {room!r} does not exist")
    return body
