"""Snapshotter: follows every room's events (group ``snapshotter``).

It records the seq it has seen per room (``{r}:snapshotter``) and, every
``every_events`` events (or ``every_bytes`` bytes of events) since the room's last
snapshot, takes a snapshot pass (``trajhub.snapshotter.history.take_snapshot``):
snapshot of the index, archived segments, stream trimmed. Trimming is retried after
each acknowledged batch while the stream holds archived events, since what it may trim
waits on every consumer group's acknowledgements (its own included).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from trajhub.shared import keys
from trajhub.shared.consumer import RoomConsumer
from trajhub.shared.events import EventHead
from trajhub.shared.history_store import open_history_store
from trajhub.shared.ports import HistoryStore
from trajhub.shared.settings import Settings
from trajhub.snapshotter.history import (
    SEGMENT_BYTES,
    SEGMENT_EVENTS,
    RoomNotFound,
    read_progress,
    take_snapshot,
    trim,
)

log = logging.getLogger("trajhub.snapshotter")

# The seen seq only moves forward, even if two replicas race on one room.
_ADVANCE_LUA = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if tonumber(ARGV[1]) > cur then
  redis.call('HSET', KEYS[1], 'seq', ARGV[1])
  return 1
end
return 0
"""


class SnapshotterWorker(RoomConsumer[EventHead]):
    event_type = EventHead  # it reads the index from Redis, never an event's frames

    @classmethod
    def from_settings(cls, settings: Settings, history: HistoryStore | None = None,
                      consumer: str | None = None, **kw: Any) -> SnapshotterWorker:
        """A worker as configured by ``settings``; ``history`` defaults to the history
        store at ``settings.storage_url``."""
        if history is None:
            history = open_history_store(settings.storage_url)
        return cls(settings.redis_url, consumer or settings.consumer_name, history=history,
                   every_events=settings.snapshot_every_events,
                   every_bytes=settings.snapshot_every_bytes,
                   keep_events=settings.stream_keep_events, **kw)

    def __init__(self, redis_url: str, consumer: str, *, history: HistoryStore | None = None,
                 every_events: int = 1000, every_bytes: int = 64 * 1024 * 1024,
                 segment_events: int = SEGMENT_EVENTS, segment_bytes: int = SEGMENT_BYTES,
                 claim_idle_ms: int = 5_000, reconcile_s: float = 2.0,
                 batch_events: int = 256, keep_events: int = 0,
                 yield_to: Callable[[], bool] | None = None) -> None:
        """Without ``history`` it only records the seq it has seen (no snapshots).
        ``keep_events``: events before the latest snapshot kept in the stream (undo
        reaches back that far)."""
        super().__init__(redis_url, keys.SNAPSHOTTER_GROUP, consumer,
                         claim_idle_ms=claim_idle_ms, reconcile_s=reconcile_s,
                         batch_events=batch_events, logger=log, yield_to=yield_to)
        self._advance = self.redis.register_script(_ADVANCE_LUA)
        self.history = history
        self.every_events = every_events
        self.every_bytes = every_bytes
        self.segment_events = segment_events
        self.segment_bytes = segment_bytes
        self.keep_events = keep_events
        # Bytes of events seen since the last snapshot, per room (in memory: after a
        # restart the count starts over, which only delays a snapshot).
        self._bytes: dict[str, int] = {}
        self._trim_pending: set[str] = set()

    async def handle_events(self, room: str, events: Sequence[EventHead]) -> None:
        """``events`` are contiguous, in seq order, each seen once per successful pass
        (at least once overall). Raise to retry them later."""
        if self.history is None or not events:
            return
        progress = await read_progress(self.redis, room)
        if self.every_bytes:
            self._bytes[room] = self._bytes.get(room, 0) + sum(e.json_bytes for e in events)
        due = (events[-1].seq - progress.snapshot_seq >= self.every_events
               or (self.every_bytes > 0 and self._bytes.get(room, 0) >= self.every_bytes))
        if not due:
            return
        try:
            result = await take_snapshot(self.redis, self.history, room,
                                         segment_events=self.segment_events,
                                         segment_bytes=self.segment_bytes,
                                         keep_events=self.keep_events)
        except RoomNotFound:
            return
        self._bytes[room] = 0
        log.info("snapshot room=%s seq=%d archived=%d trimmed=%d", room,
                 result.snapshot_seq, result.archived_seq, result.trimmed_seq,
                 extra={"room": room, "seq": result.snapshot_seq, "event": "snapshot"})

    async def after_ack(self, room: str, events: Sequence[EventHead]) -> None:
        """Trim further once acknowledgements (this batch's, other groups') allow it."""
        if self.history is not None:
            await self._trim(room)

    async def _trim(self, room: str) -> None:
        """Trim as far as progress allows. If another group's acknowledgements hold the
        trim back, the room stays on ``_trim_pending`` and is retried at every
        reconciliation, so a stream shrinks even when the room has no new events."""
        progress = await read_progress(self.redis, room)
        want = min(progress.archived_seq, progress.snapshot_seq - self.keep_events)
        if want <= progress.trimmed_seq:
            self._trim_pending.discard(room)
            return
        if await trim(self.redis, room, self.keep_events) >= want:
            self._trim_pending.discard(room)
        else:
            self._trim_pending.add(room)

    async def rooms_behind(self) -> set[str]:
        return await super().rooms_behind() | self._trim_pending

    async def process_room(self, room: str) -> int:
        done = await super().process_room(room)
        if room in self._trim_pending:
            await self._trim(room)
        return done

    def progress_key(self, room: str) -> str:
        return keys.snapshotter_state(room)

    async def progress_seq(self, room: str) -> int:
        seq = await self.redis.hget(keys.snapshotter_state(room), "seq")
        return int(seq or 0)

    async def handle_batch(self, room: str, events: Sequence[EventHead]) -> int:
        await self.handle_events(room, events)
        await self._advance(keys=[keys.snapshotter_state(room)], args=[events[-1].seq])
        log.debug("seen room=%s seq=%d events=%d", room, events[-1].seq, len(events),
                  extra={"room": room, "seq": events[-1].seq, "events": len(events)})
        return len(events)
