"""One pipelined Redis connection for the gateway's hottest call, the frame read's
index script.

redis-py spends ~90 µs of Python per script call (command packing, connection pool,
retry and observability wrappers): more than the round trip itself, and a third of a
cached single-frame read. Here a request is a pre-packed RESP command written straight
to the transport; replies are parsed by hiredis and matched to waiting futures in
order, so any number of concurrent requests share the connection. Anything unusual (a
cluster, TLS, a dropped connection) is left to the caller's redis-py client: this is a
fast path, never the only path.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

TIMEOUT_S = 10.0
"""As the redis-py clients' socket timeout: a reply later than this drops the connection."""
RECONNECT_AFTER_S = 1.0
"""After a failed connect, calls fail at once (callers fall back) for this long."""
Arg = str | bytes | int


def pack(args: tuple[Arg, ...]) -> bytes:
    """A RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = RedisConnectionError(f"Redis connection lost: {exc or 'closed'}")
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        if self.lost is not None or self.transport is None:
            raise self.lost or RedisConnectionError("Redis connection not open")
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((future, time.monotonic()))
        self.transport.write(packed)
        return future

    def overdue(self, now: float) -> bool:
        return bool(self.waiting) and now - self.waiting[0][1] > TIMEOUT_S


class PipelinedRedis:
    """``await call(*args)``: one command over the shared connection, connecting (and
    reconnecting after a loss) on demand. Raises redis-py's exceptions."""

    def __init__(self, connect: dict[str, Any]) -> None:
        self._connect = connect
        self._proto: _Protocol | None = None
        self._lock = asyncio.Lock()
        self._watchdog: asyncio.TimerHandle | None = None
        self._retry_at = 0.0

    @classmethod
    def for_client(cls, client: aioredis.Redis) -> PipelinedRedis | None:
        """The same server as ``client`` (unix socket or plain TCP), or None where this
        fast path does not apply (a cluster client, TLS, anything unknown)."""
        pool = getattr(client, "connection_pool", None)
        if pool is None:
            return None
        kw = pool.connection_kwargs
        # (issubclass: async_client's connections pack large commands with hiredis)
        if issubclass(pool.connection_class, aioredis.UnixDomainSocketConnection):
            where: dict[str, Any] = {"path": kw["path"]}
        elif issubclass(pool.connection_class, aioredis.Connection) \
                and not issubclass(pool.connection_class, aioredis.SSLConnection):
            where = {"host": kw.get("host", "localhost"), "port": int(kw.get("port", 6379))}
        else:
            return None
        return cls({**where, "db": int(kw.get("db") or 0), "username": kw.get("username"),
                    "password": kw.get("password")})

    async def call(self, *args: Arg) -> Any:
        proto = self._proto
        if proto is None or proto.lost is not None:
            proto = await self._open()
        reply = await proto.send(pack(args))
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
        return reply

    async def _open(self) -> _Protocol:
        async with self._lock:
            if self._proto is not None and self._proto.lost is None:
                return self._proto
            if time.monotonic() < self._retry_at:
                raise RedisConnectionError("Redis connection failed a moment ago")
            self._retry_at = time.monotonic() + RECONNECT_AFTER_S
            loop = asyncio.get_running_loop()
            try:
                if "path" in self._connect:
                    _, proto = await asyncio.wait_for(loop.create_unix_connection(
                        _Protocol, self._connect["path"]), TIMEOUT_S)
                else:
                    _, proto = await asyncio.wait_for(loop.create_connection(
                        _Protocol, self._connect["host"], self._connect["port"]), TIMEOUT_S)
            except (TimeoutError, OSError) as exc:
                raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
            try:
                await self._handshake(proto)
            except BaseException:
                if proto.transport is not None:
                    proto.transport.abort()
                raise
            self._proto = proto
            self._retry_at = 0.0
            self._arm_watchdog()
            return proto

    async def _handshake(self, proto: _Protocol) -> None:
        commands: list[tuple[Arg, ...]] = []
        if self._connect["password"] is not None:
            user = self._connect["username"]
            commands.append(("AUTH", user, self._connect["password"]) if user
                            else ("AUTH", self._connect["password"]))
        if self._connect["db"]:
            commands.append(("SELECT", self._connect["db"]))
        for command in commands:
            try:
                reply = await asyncio.wait_for(proto.send(pack(command)), TIMEOUT_S)
            except TimeoutError:
                raise RedisConnectionError(
                    f"Redis did not answer {command[0]!s} in time") from None
            if isinstance(reply, hiredis.ReplyError):
                raise RedisConnectionError(f"Redis refused {command[0]!s}: {reply}")

    def _arm_watchdog(self) -> None:
        """Once a second: a reply overdue by TIMEOUT_S drops the connection (which fails
        every waiting call), as a socket timeout would."""
        def check() -> None:
            proto = self._proto
            if proto is None:
                return
            if proto.overdue(time.monotonic()) and proto.transport is not None:
                proto.transport.abort()
                proto.connection_lost(RedisTimeoutError("Redis did not answer in time"))
            self._watchdog = asyncio.get_running_loop().call_later(1.0, check)

        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(1.0, check)

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
