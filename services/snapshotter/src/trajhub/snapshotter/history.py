"""Snapshots, archiving and stream trimming of one room (used by the worker, the CLI and
the gateway's ``POST /api/v1/rooms/{room}/snapshot``).

One pass (:func:`take_snapshot`):

1. read the live index atomically (``IndexReader.read``: seq S and its entries) and put
   the snapshot at S in the history store;
2. archive every event ``archived_seq+1 .. S`` as segments (at most ``segment_events``
   events or about ``segment_bytes`` bytes each);
3. record ``snapshot_seq`` and ``archived_seq`` in ``{room}:snapshotter``;
4. trim the stream (:func:`trim`): XTRIM MINID below
   ``min(archived_seq, snapshot_seq, every group's acknowledged seq) + 1``.

Crash safety: objects are written before the progress that points at them, objects are
whole and deterministic per seq (range), progress fields only move forward (Lua
compare-and-set), and trimming reads the recorded progress inside its script. A crash
anywhere leaves at worst an unreferenced object, rewritten identically by the next
pass; two replicas at once may write overlapping segments (identical events where they
overlap; readers take any segment covering a seq).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis.asyncio as aioredis

from trajhub.control import IndexReader
from trajhub.shared import keys
from trajhub.shared.consumer import seq_of
from trajhub.shared.events import stream_data
from trajhub.shared.history import encode_segment_json, encode_snapshot
from trajhub.shared.ports import HistoryStore

SEGMENT_EVENTS = 1000
SEGMENT_BYTES = 4 * 1024 * 1024
PAGE = 1000
"""Stream entries read per XRANGE while archiving."""

SNAPSHOT_SEQ = "snapshot_seq"
ARCHIVED_SEQ = "archived_seq"
TRIMMED_SEQ = "trimmed_seq"

# Moves one progress field forward, never back (replicas may race on one room).
ADVANCE_LUA = """
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > cur then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"""

# Trims below min(recorded snapshot - ARGV[2] events kept, recorded archive, ARGV[1] =
# what every group has acknowledged): read here, atomically with the trim, so a stale
# caller cannot outrun it.
TRIM_LUA = """
local snap = tonumber(redis.call('HGET', KEYS[2], 'snapshot_seq') or '0')
local arch = tonumber(redis.call('HGET', KEYS[2], 'archived_seq') or '0')
local bound = math.min(snap - tonumber(ARGV[2]), arch, tonumber(ARGV[1]))
if bound <= 0 then
  return 0
end
redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-0', bound + 1))
local cur = tonumber(redis.call('HGET', KEYS[2], 'trimmed_seq') or '0')
if bound > cur then
  redis.call('HSET', KEYS[2], 'trimmed_seq', string.format('%d', bound))
end
return bound
"""


class RoomNotFound(LookupError):
    """The room has no events."""

    def __init__(self, room: str) -> None:
        super().__init__(f"room {room!r} does not exist")
        self.room = room


class ArchiveGap(RuntimeError):
    """Events to archive are gone from the stream and not archived (must not happen)."""


@dataclass(frozen=True)
class Progress:
    snapshot_seq: int = 0
    archived_seq: int = 0
    trimmed_seq: int = 0


@dataclass(frozen=True)
class SnapshotResult:
    room: str
    snapshot_seq: int
    archived_seq: int
    trimmed_seq: int
    n_frames: int
    segments: int
    """Segments written by this pass."""


async def read_progress(redis: aioredis.Redis, room: str) -> Progress:
    values = await redis.hmget(keys.snapshotter_state(room),
                               [SNAPSHOT_SEQ, ARCHIVED_SEQ, TRIMMED_SEQ])
    snap, arch, trimmed = (int(v or 0) for v in values)
    return Progress(snap, arch, trimmed)


async def advance(redis: aioredis.Redis, room: str, field: str, seq: int) -> None:
    await redis.eval(ADVANCE_LUA, 1, keys.snapshotter_state(room),
                     field, str(seq))


async def take_snapshot(redis: aioredis.Redis, history: HistoryStore, room: str, *,
                        segment_events: int = SEGMENT_EVENTS,
                        segment_bytes: int = SEGMENT_BYTES,
                        keep_events: int = 0) -> SnapshotResult:
    """Snapshot the room's live index, archive its events up to the snapshot and trim
    what every consumer group has acknowledged, keeping the last ``keep_events`` before
    the snapshot in the stream (undo reads the events it reverts from the stream). Safe
    to run anywhere, any time."""
    view = await IndexReader(redis).read(room)
    if view.seq == 0:
        raise RoomNotFound(room)
    progress = await read_progress(redis, room)
    if view.seq > progress.snapshot_seq:
        data = await asyncio.to_thread(encode_snapshot, room, view.seq, view.entries)
        await asyncio.to_thread(history.put_snapshot, room, view.seq, data)
    archived, written = await archive(redis, history, room, view.seq,
                                      segment_events=segment_events,
                                      segment_bytes=segment_bytes)
    await advance(redis, room, SNAPSHOT_SEQ, view.seq)
    trimmed = await trim(redis, room, keep_events)
    return SnapshotResult(room=room, snapshot_seq=view.seq, archived_seq=archived,
                          trimmed_seq=trimmed, n_frames=len(view.entries), segments=written)


async def archive(redis: aioredis.Redis, history: HistoryStore, room: str, upto: int, *,
                  segment_events: int = SEGMENT_EVENTS,
                  segment_bytes: int = SEGMENT_BYTES) -> tuple[int, int]:
    """Archive events ``archived_seq+1 .. upto`` as segments, recording ``archived_seq``
    after each. Returns (the recorded archived seq, segments written). Events are
    archived as the stream holds them (their JSON), not parsed: for a long history
    that was most of the work, and it held the process's GIL."""
    nxt = (await read_progress(redis, room)).archived_seq + 1
    written = 0
    while nxt <= upto:
        events = await _read_events(redis, room, nxt, upto, max(PAGE, segment_events))
        if not events or events[0].seq != nxt:
            # Another replica archived and trimmed meanwhile: go on after its archive.
            recorded = (await read_progress(redis, room)).archived_seq
            if recorded < nxt:
                raise ArchiveGap(f"room {room!r}: event seq {nxt} is gone from the stream "
                                 f"but only 1..{recorded} is archived")
            nxt = recorded + 1
            continue
        chunks = _chunks(events, segment_events, segment_bytes)
        for i, chunk in enumerate(chunks):
            if i and i == len(chunks) - 1 and chunk[-1].seq < upto:
                break  # cut short by the page, not by a limit: read it again in full
            data = await asyncio.to_thread(encode_segment_json, room, chunk[0].seq,
                                           [e.data for e in chunk])
            await asyncio.to_thread(history.put_segment, room, chunk[0].seq, chunk[-1].seq,
                                    data)
            await advance(redis, room, ARCHIVED_SEQ, chunk[-1].seq)
            written += 1
            nxt = chunk[-1].seq + 1
    return (await read_progress(redis, room)).archived_seq, written


class _Stored(NamedTuple):
    """An event as the stream holds it: its seq, its JSON and the entry's size."""

    seq: int
    data: bytes | str
    size: int


async def _read_events(redis: aioredis.Redis, room: str, first: int, last: int,
                       count: int) -> list[_Stored]:
    """Contiguous events from ``first`` (stops at the first gap)."""
    entries: Any = await redis.xrange(keys.events(room), min=f"{first}-0",
                                      max=f"{last}-0", count=count)
    events: list[_Stored] = []
    for entry_id, fields in entries or ():
        seq = seq_of(entry_id)
        if events and seq != events[-1].seq + 1:
            break
        events.append(_Stored(seq, stream_data(fields), sum(len(v) for v in fields.values())))
    return events


def _chunks(events: Sequence[_Stored], max_events: int,
            max_bytes: int) -> list[list[_Stored]]:
    chunks: list[list[_Stored]] = []
    current: list[_Stored] = []
    current_bytes = 0
    for event in events:
        if current and (len(current) >= max_events or current_bytes + event.size > max_bytes):
            chunks.append(current)
            current, current_bytes = [], 0
        current.append(event)
        current_bytes += event.size
    if current:
        chunks.append(current)
    return chunks


async def acknowledged_seq(redis: aioredis.Redis, room: str) -> int:
    """The highest seq every consumer group of the room's stream has acknowledged (0
    when the room has no groups: nothing is known to be safe)."""
    stream = keys.events(room)
    groups: Any = await redis.xinfo_groups(stream)
    if not groups:
        return 0
    names = {_text(_field(g, "name")) for g in groups}
    if not set(keys.CONSUMER_GROUPS) <= names:
        return 0
    positions = []
    for group in groups:
        position = seq_of(_field(group, "last-delivered-id"))
        if int(_field(group, "pending")):
            summary: Any = await redis.xpending(stream, _field(group, "name"))
            oldest = summary.get("min") if summary else None
            if oldest is not None and summary.get("pending"):
                position = min(position, seq_of(oldest) - 1)
        positions.append(position)
    return min(positions)


async def trim(redis: aioredis.Redis, room: str, keep_events: int = 0) -> int:
    """Trim the room's stream below what is archived, snapshotted (less ``keep_events``)
    and acknowledged by every group; returns the seq trimmed up to (0: nothing may be
    trimmed)."""
    acked = await acknowledged_seq(redis, room)
    bound = await redis.eval(TRIM_LUA, 2, keys.events(room),
                             keys.snapshotter_state(room), str(acked), str(keep_events))
    return int(bound)


def _field(record: Any, name: str) -> Any:
    value = record.get(name)
    return record.get(name.encode()) if value is None else value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
