"""Which rooms' indexes the gateway may answer from memory: Redis says when one moves.

Every change of a room's index is a commit, and every commit writes the room's
``{r}:meta`` (its seq). The watch reads ``meta`` on a connection of its own with
client-side tracking on (RESP3, ``CLIENT TRACKING ON``), so Redis pushes an invalidation
down that connection when the key next changes. Until then the room is known to be at
the (seq, created) read, and a read of its index made at that seq is still its answer:
``IndexScript`` serves it without a round trip (a third of a cached single-frame read).

Replies and pushes come down the one connection in the order Redis produced them, so a
room is marked current when its read's reply is parsed, and an invalidation parsed
after it unmarks it. ``current`` first takes whatever the socket already holds, so an
invalidation Redis has written is never overlooked because the event loop has not yet
got to it. A commit through this gateway unmarks its room itself (``moved``) before its
writer is answered: Redis may write the writer's reply a moment before the push. A
commit through another gateway relies on the push, which Redis writes in the same pass
as that writer's reply, long before that writer's next request can reach this gateway.
A connection without an answer to its heartbeat for ``STALE_S`` is trusted for nothing;
a lost one forgets everything and reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url

from trajhub.gateway.tasks import cancel
from trajhub.shared import keys

log = logging.getLogger("trajhub.gateway.watch")

HEARTBEAT_S = 0.5
STALE_S = 2.0
"""No answer to a heartbeat for this long: nothing is current until one comes."""
CONNECT_TIMEOUT_S = 5.0
RETRY_S = 1.0
MAX_ROOMS = 4096
"""Rooms watched at once; beyond it the least recently marked is forgotten."""

CLIENT_NAME = "trajhub-index-watch"
_PING = b"*1\r\n$4\r\nPING\r\n"


def _pack(*args: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Reply:
    """What one awaited reply is for: the handshake (``future``), a room's meta read
    (``room``, ``key``; ``void`` once a commit here moved it meanwhile) or a heartbeat."""
    __slots__ = ("future", "key", "room", "void")

    def __init__(self, future: asyncio.Future[Any] | None = None, room: str | None = None,
                 key: bytes = b"") -> None:
        self.future, self.room, self.key, self.void = future, room, key, False


class IndexWatch:
    """``current(room)``: the room's (seq, created) while Redis has not said it moved,
    else None; ``arm(room)`` starts watching a room (its answer arrives on its own);
    ``moved(room)`` forgets one at once. ``start``/``stop`` run the connection."""

    def __init__(self, redis_url: str) -> None:
        self._url = redis_url
        self._sock: socket.socket | None = None
        self._reader: Any = None
        self._waiting: deque[_Reply] = deque()
        self._current: dict[str, tuple[int, str]] = {}
        self._room_of: dict[bytes, str] = {}
        self._pong_at = 0.0
        self._ping_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = False
        """Connected, and Redis accepted the handshake."""
        self._warned = False

    # -- the read path --------------------------------------------------------------------
    def current(self, room: str) -> tuple[int, str] | None:
        if not self._ready:
            return None
        self._pump()
        if time.monotonic() - self._pong_at > STALE_S:
            return None
        return self._current.get(room)

    def arm(self, room: str) -> None:
        """Read ``room``'s meta on the tracking connection (nothing to await: the reply
        marks it current); a no-op while disconnected."""
        if not self._ready or any(r.room == room and not r.void for r in self._waiting):
            return
        key = keys.meta(room).encode()
        self._room_of.pop(key, None)
        self._room_of[key] = room
        if len(self._room_of) > MAX_ROOMS:
            self._forget_oldest()
        self._send(_pack(b"HMGET", key, b"seq", b"created"), _Reply(room=room, key=key))

    def moved(self, room: str) -> None:
        """``room``'s index changed (a commit through this gateway): not current until a
        read sent from now on says where it is."""
        self._current.pop(room, None)
        for reply in self._waiting:  # read before the commit: its answer may be stale
            if reply.room == room:
                reply.void = True

    @property
    def connected(self) -> bool:
        return self._ready

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="index-watch")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        self._drop("stopped")

    async def _run(self) -> None:
        while True:
            if self._sock is None:
                try:
                    await self._open()
                except (OSError, TimeoutError, ConnectionError) as exc:
                    self._drop(str(exc))
                    if not self._warned:
                        log.warning("gateway: index watch cannot connect (%s); index reads "
                                    "ask Redis every time until it can", exc)
                        self._warned = True
                    await asyncio.sleep(RETRY_S)
                    continue
                if self._warned:
                    log.info("gateway: index watch connected")
                    self._warned = False
            if self._ping_at is not None and time.monotonic() - self._ping_at > STALE_S:
                self._drop(f"no answer to a heartbeat in {STALE_S} s")
                continue
            if self._ping_at is None:
                self._ping_at = time.monotonic()
                self._send(_PING, _Reply())
            await asyncio.sleep(HEARTBEAT_S)

    async def _open(self) -> None:
        params: dict[str, Any] = dict(parse_url(self._url))
        if params.get("connection_class") is SSLConnection:
            raise ConnectionError("TLS connections are not watched")
        if "path" in params:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = params["path"]
        else:
            host, port = params.get("host", "localhost"), int(params.get("port", 6379))
            info = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM)
            family, _, _, _, address = info[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.sock_connect(sock, address), CONNECT_TIMEOUT_S)
        except BaseException:
            sock.close()
            raise
        self._sock, self._reader = sock, hiredis.Reader()
        self._waiting.clear()
        loop.add_reader(sock.fileno(), self._pump)
        hello: list[str | bytes] = ["HELLO", "3"]
        if params.get("password") is not None:
            hello += ["AUTH", params.get("username") or "default", params["password"]]
        hello += ["SETNAME", CLIENT_NAME]
        steps: list[list[str | bytes]] = [hello, ["CLIENT", "TRACKING", "ON"]]
        if params.get("db"):
            steps.append(["SELECT", str(params["db"])])
        for step in steps:
            future: asyncio.Future[Any] = loop.create_future()
            self._send(_pack(*step), _Reply(future=future))
            reply = await asyncio.wait_for(future, CONNECT_TIMEOUT_S)
            if isinstance(reply, hiredis.ReplyError):
                raise ConnectionError(f"Redis refused {step[0]!s} {step[1]!s}: {reply}")
        self._pong_at = time.monotonic()
        self._ping_at = None
        self._ready = True

    def _drop(self, why: str) -> None:
        """Forget everything (nothing watched is current any more) and close."""
        sock, self._sock = self._sock, None
        self._ready = False
        self._current.clear()
        self._room_of.clear()
        self._ping_at = None
        waiting, self._waiting = self._waiting, deque()
        for reply in waiting:
            if reply.future is not None and not reply.future.done():
                reply.future.set_exception(ConnectionError(f"index watch lost: {why}"))
        if sock is not None:
            with contextlib.suppress(RuntimeError):  # no running loop (closing)
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
            log.debug("gateway: index watch dropped (%s)", why)

    # -- the connection -------------------------------------------------------------------
    def _send(self, data: bytes, reply: _Reply) -> None:
        assert self._sock is not None
        try:
            sent = self._sock.send(data)
        except OSError as exc:
            self._drop(f"send failed: {exc}")
            return
        if sent != len(data):  # a few bytes on an idle socket: cannot happen but once lost
            self._drop("send was cut short")
            return
        self._waiting.append(reply)

    def _pump(self) -> None:
        """Take every byte the socket holds now and act on each reply and push."""
        sock = self._sock
        while sock is not None and self._sock is sock:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._drop(f"receive failed: {exc}")
                return
            if not data:
                self._drop("closed by Redis")
                return
            try:
                self._reader.feed(data)
                while self._sock is sock and (item := self._reader.gets()) is not False:
                    self._take(item)
            except (hiredis.ProtocolError, ValueError, TypeError) as exc:
                self._drop(f"unreadable answer: {exc}")  # never the read's problem
                return
            if len(data) < 65536:
                return

    def _take(self, item: Any) -> None:
        # hiredis hands a push over as a list: ["invalidate", keys or None (a flush)].
        # No awaited reply starts with that word (HMGET's starts with a seq or None).
        if isinstance(item, list) and len(item) == 2 and item[0] == b"invalidate":
            self._invalidate(item[1])
            return
        if not self._waiting:
            self._drop("a reply nobody asked for")
            return
        reply = self._waiting.popleft()
        if reply.future is not None:
            if not reply.future.done():
                reply.future.set_result(item)
        elif reply.room is not None:
            if not reply.void:
                self._mark(reply.room, reply.key, item)
        else:
            self._pong_at = time.monotonic()
            self._ping_at = None

    def _mark(self, room: str, key: bytes, item: Any) -> None:
        if self._room_of.get(key) != room or not isinstance(item, list):
            return  # forgotten meanwhile (MAX_ROOMS): its invalidation would be missed
        seq, created = item
        if seq is None or created is None:
            return  # no such room: nothing to keep
        self._current.pop(room, None)  # most recently marked last
        self._current[room] = (int(seq), created.decode())

    def _invalidate(self, moved: list[bytes] | None) -> None:
        if moved is None:
            self._current.clear()  # FLUSHALL / FLUSHDB
            return
        for key in moved:
            room = self._room_of.get(key)
            if room is not None:
                self._current.pop(room, None)

    def _forget_oldest(self) -> None:
        key = next(iter(self._room_of))
        self._current.pop(self._room_of.pop(key), None)
