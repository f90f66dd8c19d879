"""The Socket.IO control channel: joining rooms to receive ``frames_changed`` (and the
collaboration messages relayed from the bus); see ``collab_sockets`` for the rest."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
import socketio
from redis.exceptions import RedisError

from trajhub.control import IndexReader
from trajhub.gateway.broadcaster import Broadcaster
from trajhub.gateway.room_index import index_json, live_index
from trajhub.gateway.rooms import room_head
from trajhub.shared.names import InvalidName, check_room_name

log = logging.getLogger(__name__)


def sio_room(room: str) -> str:
    # Prefixed so a trajhub room can never be named like a socket's private sid room.
    return f"room:{room}"


class Membership:
    """Which sockets joined which rooms; the broadcaster watches rooms with members."""

    def __init__(self, broadcaster: Broadcaster) -> None:
        self._broadcaster = broadcaster
        self._members: dict[str, set[str]] = {}
        self._rooms_of: dict[str, set[str]] = {}

    def join(self, sid: str, room: str, seq: int) -> None:
        if room not in self._members:
            self._broadcaster.watch(room, seq)
        self._members.setdefault(room, set()).add(sid)
        self._rooms_of.setdefault(sid, set()).add(room)

    def leave(self, sid: str, room: str) -> None:
        members = self._members.get(room)
        if members is None:
            return
        members.discard(sid)
        self._rooms_of.get(sid, set()).discard(room)
        if not members:
            del self._members[room]
            self._broadcaster.unwatch(room)

    def drop(self, sid: str) -> None:
        for room in list(self._rooms_of.pop(sid, ())):
            self.leave(sid, room)

    def rooms_of(self, sid: str) -> set[str]:
        return set(self._rooms_of.get(sid, ()))


def room_argument(data: Any) -> str:
    """The room of a ``{"room": name}`` (or bare name) payload; raises InvalidName."""
    room = data.get("room") if isinstance(data, dict) else data
    if not isinstance(room, str):
        raise InvalidName("expected {'room': <name>}")
    return check_room_name(room)


class SocketHooks(Protocol):
    """What the collaboration layer adds to connecting, disconnecting and joining."""

    def connected(self, sid: str, auth: Any) -> None:
        """May raise socketio's ConnectionRefusedError."""
        ...

    async def disconnected(self, sid: str) -> None:
        ...

    async def join_state(self, room: str) -> dict[str, Any]:
        ...


def register_socket_handlers(sio: socketio.AsyncServer, membership: Membership,
                             redis: Callable[[], aioredis.Redis],
                             hooks: SocketHooks | None = None,
                             unavailable: tuple[type[Exception], ...] = (),
                             start_room: Callable[[str], Awaitable[bool]] | None = None
                             ) -> None:
    """``start_room(room)``: called when a socket joins a room without events (the
    default-room path: it may fork the default room into it)."""
    failures: tuple[type[Exception], ...] = (RedisError, OSError, *unavailable)
    reader_of: dict[str, Any] = {}  # the IndexReader of the current Redis client

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        if hooks is not None:
            hooks.connected(sid, auth)
        return True

    async def disconnect(sid: str, *reason: Any) -> None:
        membership.drop(sid)
        if hooks is not None:
            await hooks.disconnected(sid)

    async def join_room(sid: str, data: Any = None, *_: Any) -> dict[str, Any]:
        try:
            room = room_argument(data)
        except InvalidName as exc:
            return {"error": str(exc)}
        with_index = isinstance(data, dict) and data.get("index") is True
        entered = with_index and room not in membership.rooms_of(sid)
        if entered:
            # In the Socket.IO room before the index is read, so that every
            # frames_changed after the index's seq reaches this socket (no gap).
            await sio.enter_room(sid, sio_room(room))
        try:
            head = await room_head(redis(), room)
            if not head.exists and start_room is not None and await start_room(room):
                head = await room_head(redis(), room)
            extra = await hooks.join_state(room) if hooks is not None else {}
            index = await join_index(room) if with_index else None
        except failures as exc:
            if entered:
                await sio.leave_room(sid, sio_room(room))
            log.warning("join_room %s: Redis unavailable: %r", room, exc)
            return {"error": f"server unavailable ({exc}); retry later"}
        seq, n_frames = (head.seq, head.n_frames) if index is None else (
            index["seq"], index["n_frames"])
        membership.join(sid, room, seq)
        await sio.enter_room(sid, sio_room(room))
        answer = {"room": room, "seq": seq, "n_frames": n_frames, **extra}
        if index is not None:
            answer["index"] = index
        return answer

    async def join_index(room: str) -> dict[str, Any]:
        """The room's index as ``GET .../index`` answers it (empty if no events)."""
        client = redis()
        if reader_of.get("client") is not client:
            reader_of.update(client=client, reader=IndexReader(client))
        body = await live_index(reader_of["reader"], room)
        return index_json(room, 0, []) if body is None else body

    async def leave_room(sid: str, data: Any = None, *_: Any) -> dict[str, Any]:
        try:
            room = room_argument(data)
        except InvalidName as exc:
            return {"error": str(exc)}
        membership.leave(sid, room)
        await sio.leave_room(sid, sio_room(room))
        return {"ok": True}

    handlers: dict[str, Callable[..., Awaitable[Any]]] = {
        "connect": connect, "disconnect": disconnect,
        "join_room": join_room, "leave_room": leave_room,
    }
    for event, handler in handlers.items():
        sio.on(event, handler)


def make_emitter(sio: socketio.AsyncServer) -> Callable[[str, dict[str, Any]],
                                                         Awaitable[None]]:
    async def emit(room: str, message: dict[str, Any]) -> None:
        await sio.emit("frames_changed", message, room=sio_room(room))
    return emit


def make_bus_emitter(sio: socketio.AsyncServer) -> Callable[[str, str, dict[str, Any]],
                                                             Awaitable[None]]:
    """Relays a bus message (``event`` with ``data``) to the room's local sockets."""
    async def emit(room: str, event: str, data: dict[str, Any]) -> None:
        await sio.emit(event, data, room=sio_room(room))
    return emit
