"""Tails ``trajhub:notify`` and broadcasts each watched room's new events (metadata only)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from trajhub.gateway.tasks import cancel
from trajhub.shared import keys
from trajhub.shared.events import Event
from trajhub.shared.redis_util import async_client, is_cluster

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]
BLOCK_MS = 1000
NOTIFY_BATCH = 1000
EVENTS_BATCH = 500
SWEEP_S = 5.0  # also look at every watched room this often (notify is only a hint)
DIRECT_ROOMS = 16
"""Watched rooms whose streams the notify XREAD also reads (one server only: a cluster
refuses a cross-slot XREAD), so their events arrive in its reply, one round trip sooner
than notify + XRANGE."""
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 5.0


def event_message(event: Event) -> dict[str, Any]:
    return {"room": event.room, "seq": event.seq, "kind": event.kind, "change": event.change,
            "indices": event.indices, "hashes": event.hashes, "n_frames": event.n_frames}


class Broadcaster:
    """One per gateway. ``watched`` maps a room with joined sockets to its last
    broadcast seq; ``emit(room, message)`` sends ``frames_changed`` to the room."""

    def __init__(self, redis_url: str, emit: Emit) -> None:
        self._url = redis_url
        self._emit = emit
        self.watched: dict[str, int] = {}
        self._notify_id: bytes | str | None = None
        self._task: asyncio.Task[None] | None = None
        self._swept = time.monotonic()
        self._notify_skipped = False  # an XREAD read notify from "$", not _notify_id

    def watch(self, room: str, seq: int) -> None:
        """Start broadcasting ``room`` after ``seq`` (no-op if already watched)."""
        self.watched.setdefault(room, seq)

    def unwatch(self, room: str) -> None:
        self.watched.pop(room, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="trajhub-broadcaster")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            client = async_client(self._url, blocking=True)
            try:
                if self._notify_id is None:
                    self._notify_id = await self._tail_id(client)
                while True:
                    await self._step(client)
                    backoff = BACKOFF_MIN_S
            except (RedisError, OSError) as exc:
                log.warning("broadcaster: Redis error (%s); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            except Exception:
                log.exception("broadcaster: unexpected error; retrying in %.1f s", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()

    @staticmethod
    async def _tail_id(client: aioredis.Redis) -> bytes | str:
        last: Any = await client.xrevrange(keys.NOTIFY, "+", "-", count=1)
        return bytes(last[0][0]) if last else "0-0"

    def _direct(self, client: aioredis.Redis) -> dict[str, str]:
        """Stream key -> room of the watched rooms read along with notify."""
        if is_cluster(client):
            return {}
        direct: dict[str, str] = {}
        for room in self.watched:
            if len(direct) == DIRECT_ROOMS:
                break
            direct[keys.events(room)] = room
        return direct

    async def _step(self, client: aioredis.Redis) -> None:
        assert self._notify_id is not None
        rooms: set[str] = set()
        notify_from = await self._notify_from(client, rooms)
        for room in sorted(rooms):  # a catch-up, before this XREAD may block
            if room in self.watched:
                await self._broadcast_room(client, room)
        rooms.clear()
        direct = self._direct(client)  # no await from the choice of notify_from to here
        streams: dict[Any, Any] = {keys.NOTIFY: notify_from}
        for stream, room in direct.items():
            streams[stream] = f"{self.watched[room]}-0"
        reply: Any = await client.xread(streams, count=NOTIFY_BATCH, block=BLOCK_MS)
        for stream, entries in reply or []:
            name = stream.decode() if isinstance(stream, bytes) else str(stream)
            if name in direct:
                await self._broadcast_direct(direct[name], entries)
                continue
            for entry_id, fields in entries:
                self._notify_id = entry_id
                room = fields.get(b"room")
                if room is not None:
                    rooms.add(room.decode())
        # A directly read room's new events were all in this reply (up to the count; a
        # fuller stream answers the next XREAD at once), so its notify hints are spent.
        rooms.difference_update(direct.values())
        if time.monotonic() - self._swept > SWEEP_S:
            self._swept = time.monotonic()
            rooms.update(self.watched)
        for room in sorted(rooms):
            if room in self.watched:
                await self._broadcast_room(client, room)

    async def _notify_from(self, client: aioredis.Redis, rooms: set[str]) -> bytes | str:
        """Where the next XREAD reads notify from. While every watched room is read
        directly the entries already there are of no use ("$": the commit's own entry,
        which follows its event, would otherwise cost one more XREAD per commit). Back to
        following notify, it restarts from its tail and adds every watched room to
        ``rooms`` (to look at once), so nothing committed in between is missed."""
        assert self._notify_id is not None
        if len(self.watched) <= (0 if is_cluster(client) else DIRECT_ROOMS):
            self._notify_skipped = True
            return "$"
        if self._notify_skipped:
            self._notify_id = await self._tail_id(client)
            self._notify_skipped = False
            rooms.update(self.watched)
        return self._notify_id

    async def _broadcast_room(self, client: aioredis.Redis, room: str) -> None:
        while room in self.watched:
            after = self.watched[room]
            entries: Any = await client.xrange(keys.events(room), min=f"{after + 1}-0", max="+",
                                          count=EVENTS_BATCH)
            for entry_id, fields in entries:
                if room not in self.watched:
                    return
                await self._broadcast_entry(room, entry_id, fields)
            if len(entries) < EVENTS_BATCH:
                return

    async def _broadcast_direct(self, room: str, entries: list[Any]) -> None:
        for entry_id, fields in entries:
            # Skipped: left meanwhile, or left and re-joined after this seq.
            if room not in self.watched or int(entry_id.split(b"-")[0]) <= self.watched[room]:
                continue
            await self._broadcast_entry(room, entry_id, fields)

    async def _broadcast_entry(self, room: str, entry_id: bytes,
                               fields: dict[bytes, bytes]) -> None:
        seq = int(entry_id.split(b"-")[0])  # the stream id is <seq>-0
        # max(): the room may have been left and re-joined while we awaited.
        self.watched[room] = max(self.watched.get(room, 0), seq)
        try:
            event = Event.from_stream(fields)
        except ValueError as exc:
            log.error("broadcaster: skipping unreadable event %s of %s: %s", seq, room, exc)
            return
        await self._emit(room, event_message(event))
