"""Reading a room's past: its events and its index at any seq still reachable.

A room's events live in its Redis stream (``{room}:events``, id ``<seq>-0``) until the
snapshotter archives them into segments of the ``HistoryStore`` and trims the stream
below what is archived. ``HistoryReader`` joins both: archived segments for the seqs the
stream no longer holds, then the stream, with no gap and no duplicate. A seq that is
neither archived nor in the stream raises ``HistoryGone``.

The index at seq S is the latest snapshot at or below S (the empty room at 0) plus the
events after it, replayed (``trajhub.shared.history.index_at``). Only the segments
covering the seqs a read needs are fetched, found by bisecting the listing (segment keys
name their seq range), and only the events it needs are parsed.

Listings are cached per room, because listing the store can cost more than the read
itself. Segments are immutable, so a cached segment listing is used only while it covers
the seqs asked for: anything beyond it lists the store again. The snapshot listing is
kept ``listing_ttl_s``: a snapshot written since is not used until then, which costs a
longer replay but gives the same index. A cached object that has vanished since
(compaction) makes the read list again and retry once.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis

from trajhub.shared import keys
from trajhub.shared.events import Event, FrameEntry
from trajhub.shared.history import decode_segment, decode_snapshot, index_at
from trajhub.shared.ports import HistoryStore

PAGE = 1000
"""Stream entries read per XRANGE."""
LISTING_TTL_S = 1.0
"""How long a cached snapshot listing is used (see the module docstring)."""
CACHED_ROOMS = 256
"""Rooms whose listings a reader keeps (least recently used dropped first)."""

K = TypeVar("K")
V = TypeVar("V")


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


class _Lru(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def drop(self, key: K) -> None:
        self._items.pop(key, None)


class Segments:
    """A room's archived segments ``(first, last)``, sorted; finds the one covering a
    seq by bisection."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self.ranges = sorted(ranges)
        self._firsts = [first for first, _ in self.ranges]
        # reach[i]: the highest seq any of ranges[:i + 1] covers (ranges may overlap).
        self._reach: list[int] = []
        for _, last in self.ranges:
            self._reach.append(max(last, self._reach[-1]) if self._reach else last)

    def covering(self, seq: int) -> tuple[int, int] | None:
        """The latest-starting segment holding ``seq``, or None."""
        i = bisect_right(self._firsts, seq) - 1
        while i >= 0 and self._reach[i] >= seq:
            first, last = self.ranges[i]
            if last >= seq:
                return first, last
            i -= 1  # an overlapping earlier segment may reach further
        return None

    def covers(self, first: int, last: int) -> bool:
        """Whether every seq ``first..last`` is in some segment."""
        nxt = first
        while nxt <= last:
            segment = self.covering(nxt)
            if segment is None:
                return False
            nxt = segment[1] + 1
        return True


class HistoryReader:
    """Past events and past indices of rooms, from Redis and the history store.

    Keep one per process (it caches the store's listings, see the module docstring).
    """

    def __init__(self, redis: aioredis.Redis, history: HistoryStore, *,
                 listing_ttl_s: float = LISTING_TTL_S) -> None:
        self.redis = redis
        self.history = history
        self.listing_ttl_s = listing_ttl_s
        self._segments: _Lru[str, Segments] = _Lru(CACHED_ROOMS)
        self._snapshots: _Lru[str, tuple[float, list[int]]] = _Lru(CACHED_ROOMS)

    def forget(self, room: str) -> None:
        """Drop the room's cached listings (the next read lists the store)."""
        self._segments.drop(room)
        self._snapshots.drop(room)

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

    async def segments(self, room: str, first: int, last: int, *, relist: bool = False
                       ) -> Segments:
        """The room's segment listing: the cached one if it covers ``first..last`` (and
        not ``relist``), else the store's (cached for next time)."""
        cached = None if relist else self._segments.get(room)
        if cached is not None and cached.covers(first, last):
            return cached
        listing = Segments(await asyncio.to_thread(self.history.segment_ranges, room))
        self._segments.put(room, listing)
        return listing

    async def _archived(self, room: str, first: int, last: int) -> AsyncIterator[Event]:
        """Events ``first..last`` from archived segments (HistoryGone if one is not).
        Listed (unless a cached listing covers them: segments are immutable) after the
        stream showed the gap: the snapshotter archives before it trims."""
        listing = await self.segments(room, first, last)
        relisted = False
        nxt = first
        while nxt <= last:
            segment = listing.covering(nxt)
            if segment is None:
                raise HistoryGone(room, nxt, _gone_reason(room, nxt, listing.ranges))
            try:
                data = await asyncio.to_thread(self.history.get_segment, room, *segment)
            except KeyError:
                if relisted:
                    raise
                # Listed, then removed (compaction): list again, once.
                listing, relisted = await self.segments(room, nxt, last, relist=True), True
                continue
            events = await asyncio.to_thread(decode_segment, data, first=nxt, last=last)
            if not events:
                raise HistoryGone(room, nxt, f"room {room!r}: archived segment "
                                             f"{segment[0]}..{segment[1]} lacks seq {nxt}")
            for event in events:
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
        try:
            return await self._index_at(room, seq, fresh=False)
        except (HistoryGone, KeyError):
            # Perhaps only our cached snapshot listing is behind (a newer snapshot, or
            # one removed since): answer from fresh listings.
            self.forget(room)
            return await self._index_at(room, seq, fresh=True)

    async def _index_at(self, room: str, seq: int, *, fresh: bool) -> list[FrameEntry]:
        snapshot = await self._snapshot_at(room, seq, fresh=fresh)
        base = 0 if snapshot is None else snapshot[0]
        events = [e async for e in self.events(room, base, seq)]
        return await asyncio.to_thread(index_at, snapshot, events, seq, room)

    async def snapshot_seqs(self, room: str, *, fresh: bool = False) -> list[int]:
        """The room's snapshot seqs, ascending (a listing at most ``listing_ttl_s`` old
        unless ``fresh``)."""
        now = time.monotonic()
        cached = None if fresh else self._snapshots.get(room)
        if cached is not None and now - cached[0] < self.listing_ttl_s:
            return cached[1]
        seqs = sorted(await asyncio.to_thread(self.history.snapshot_seqs, room))
        self._snapshots.put(room, (now, seqs))
        return seqs

    async def _snapshot_at(self, room: str, seq: int, *, fresh: bool = False
                           ) -> tuple[int, list[FrameEntry]] | None:
        seqs = await self.snapshot_seqs(room, fresh=fresh)
        i = bisect_right(seqs, seq)
        if i == 0:
            return None
        data = await asyncio.to_thread(self.history.get_snapshot, room, seqs[i - 1])
        _, at, entries = await asyncio.to_thread(decode_snapshot, data)
        return at, entries


def _gone_reason(room: str, seq: int, ranges: list[tuple[int, int]]) -> str:
    kept = f"archived seqs start at {ranges[0][0]}" if ranges else "nothing is archived"
    return (f"room {room!r}: seq {seq} is beyond retention (trimmed from the event stream "
            f"and not archived; {kept})")


def _covering(ranges: list[tuple[int, int]], seq: int) -> tuple[int, int] | None:
    """The archived segment holding ``seq`` (sorted, possibly overlapping ranges)."""
    return Segments(ranges).covering(seq)
