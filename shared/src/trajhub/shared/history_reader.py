"""Reading a room's past: its events and its index at any seq still reachable.

A room's events live in its Redis stream (``{room}:events``, id ``<seq>-0``) until the
snapshotter archives them into segments of the ``HistoryStore`` and trims the stream
below what is archived. ``HistoryReader`` joins both: archived segments for the seqs the
stream no longer holds, then the stream, with no gap and no duplicate. A seq that is
neither archived nor in the stream raises ``HistoryGone``.

The index at seq S is the latest snapshot at or below S (the empty room at 0) plus the
events after it, replayed (``trajhub.shared.history.index_at``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from trajhub.shared import keys
from trajhub.shared.events import Event, FrameEntry
from trajhub.shared.history import decode_segment, decode_snapshot, index_at
from trajhub.shared.ports import HistoryStore

PAGE = 1000
"""Stream entries read per XRANGE."""


class HistoryGone(LookupError):
    """A seq the request needs is neither in the stream nor archived (beyond retention)."""

    def __init__(self, room: str, seq: int, reason: str) -> None:
        super().__init__(reason)
        self.room = room
        self.seq = seq
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class UnknownRoom(LookupError):
    """The room has no events."""

    def __init__(self, room: str) -> None:
        super().__init__(f"room {room!r} does not exist")
        self.room = room

    def __str__(self) -> str:
        return str(self.args[0])


class SeqBeyondHead(ValueError):
    """A seq after the room's latest event."""

    def __init__(self, room: str, seq: int, head: int) -> None:
        super().__init__(f"room {room!r} is at seq {head}; seq {seq} does not exist yet")
        self.room = room
        self.seq = seq
        self.head = head


def _seq_of(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[0])


class HistoryReader:
    """Past events and past indices of rooms, from Redis and the history store."""

    def __init__(self, redis: aioredis.Redis, history: HistoryStore) -> None:
        self.redis = redis
        self.history = history

    async def head(self, room: str) -> int:
        """The room's latest seq (0 if it has no events)."""
        value = await self.redis.hget(keys.meta(room), "seq")
        return int(value or 0)

    async def events(self, room: str, after: int, upto: int | None = None
                     ) -> AsyncIterator[Event]:
        """Events ``after < seq <= upto`` (to the room's latest if None), in seq order."""
        end = await self.head(room)
        if upto is not None:
            end = min(end, upto)
        nxt = after + 1
        while nxt <= end:
            batch = await self._stream(room, nxt, end)
            if not batch or batch[0].seq > nxt:
                # Trimmed from the stream: these seqs must be archived.
                gap_end = batch[0].seq - 1 if batch else end
                async for event in self._archived(room, nxt, gap_end):
                    yield event
                nxt = gap_end + 1
            for event in batch:
                if event.seq != nxt:
                    raise HistoryGone(room, nxt, f"room {room!r}: the stream skips from "
                                                 f"seq {nxt - 1} to {event.seq}")
                yield event
                nxt += 1

    async def _stream(self, room: str, first: int, last: int) -> list[Event]:
        entries: Any = await self.redis.xrange(keys.events(room), min=f"{first}-0",
                                               max=f"{last}-0", count=PAGE)
        return [Event.from_stream(fields) for _, fields in entries]

    async def _archived(self, room: str, first: int, last: int) -> AsyncIterator[Event]:
        """Events ``first..last`` from archived segments (HistoryGone if one is not).
        Listed after the stream showed the gap: the snapshotter archives before it trims."""
        ranges = await asyncio.to_thread(self.history.segment_ranges, room)
        nxt = first
        while nxt <= last:
            segment = _covering(ranges, nxt)
            if segment is None:
                raise HistoryGone(room, nxt, _gone_reason(room, nxt, ranges))
            data = await asyncio.to_thread(self.history.get_segment, room, *segment)
            events = await asyncio.to_thread(decode_segment, data)
            for event in events:
                if nxt <= event.seq <= last:
                    if event.seq != nxt:
                        raise HistoryGone(room, nxt, f"room {room!r}: archived segment "
                                                     f"{segment[0]}..{segment[1]} skips "
                                                     f"seq {nxt}")
                    yield event
                    nxt += 1

    async def index_at(self, room: str, seq: int) -> list[FrameEntry]:
        """The room's entries in logical order as of ``seq``."""
        head = await self.head(room)
        if head == 0:
            raise UnknownRoom(room)
        if seq < 0:
            raise ValueError(f"seq must be >= 0, not {seq}")
        if seq > head:
            raise SeqBeyondHead(room, seq, head)
        snapshot = await self._snapshot_at(room, seq)
        base = 0 if snapshot is None else snapshot[0]
        events = [e async for e in self.events(room, base, seq)]
        return await asyncio.to_thread(index_at, snapshot, events, seq, room)

    async def _snapshot_at(self, room: str, seq: int
                           ) -> tuple[int, list[FrameEntry]] | None:
        seqs = await asyncio.to_thread(self.history.snapshot_seqs, room)
        below = [s for s in seqs if s <= seq]
        if not below:
            return None
        data = await asyncio.to_thread(self.history.get_snapshot, room, below[-1])
        _, at, entries = await asyncio.to_thread(decode_snapshot, data)
        return at, entries


def _covering(ranges: list[tuple[int, int]], seq: int) -> tuple[int, int] | None:
    """The archived segment holding ``seq`` (sorted, possibly overlapping ranges)."""
    for first, last in reversed(ranges):
        if first <= seq <= last:
            return first, last
    return None


def _gone_reason(room: str, seq: int, ranges: list[tuple[int, int]]) -> str:
    kept = f"archived seqs start at {ranges[0][0]}" if ranges else "nothing is archived"
    return (f"room {room!r}: seq {seq} is beyond retention (trimmed from the event stream "
            f"and not archived; {kept})")
