"""Slot compaction: drop the frame data no retained state references, optionally after
relaying the live frames out in logical order.

Retained are the room's states at seqs >= R and the state each fork was taken from.
R is ``head - keep_events``, but at most the seq before the first event still in the
stream (an event there can be undone, which brings back the state before it) and
never below an earlier compaction's bound. Reads of frames of a state below R answer
410 (``keys.compaction``); the index and the audit log of those states stay.

Against concurrent commits and forks, in this order:

1. referenced := the slots of the states R..H (the index at R, plus every entry the
   events R+1..H brought) and, recursively, the base slots of patch slots (the store
   knows those of applied slots, which include every slot of states up to R: the
   stream is only trimmed below what storage has applied; the events name the rest);
2. one script sets ``below`` to R and forgets the content hash of every candidate slot,
   so that a later commit of the same content gets a fresh slot rather than reusing a
   dropped one; it answers the head H2;
3. the slots of forked states (the forks are read after step 2: a fork registers
   before it checks ``below``) and of events H+1..H2 (a commit before step 2 may have
   reused a candidate's content) leave the candidates;
4. the data chunks whose every slot is a candidate are deleted.

A relayout (``RelayoutFrames``) commits the live frames to fresh slots in logical
order, staging each frame read back from the store (hash checked) as its blob: storage
writes them like any other slots, readers read the blobs until it has, and the old
slots become droppable once the retention window has passed the relayout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis

from trajhub.control import IndexReader
from trajhub.shared import keys
from trajhub.shared.codec import frame_to_bytes
from trajhub.shared.events import CommitResult, Event, FrameEntry, RelayoutFrames
from trajhub.shared.frames import Frame
from trajhub.shared.hashing import frame_hash
from trajhub.shared.history_reader import HistoryReader
from trajhub.shared.ports import ControlPort, HistoryStore
from trajhub.shared.zarr_store import DropStats

RELAYOUT_AUTHOR = "trajhub-compactor"
RELAYOUT_BYTES = 16 * 1024 * 1024
"""Frame bytes staged per relayout commit (at least one frame)."""
RELAYOUT_MAX_FRAMES = 4096
RELAYOUT_RETRIES = 5
APPLIED_WAIT_S = 30.0
STAGE_TTL_S = 3600

# Set the bound (never lower it) and forget the hashes of the candidate slots where the
# room still maps them to that slot. KEYS: slots, compaction, meta. ARGV: R, time, then
# hash/slot pairs. Answers the room's head seq.
_FORGET_LUA = """
local below = tonumber(redis.call('HGET', KEYS[2], 'below') or '0')
if tonumber(ARGV[1]) > below then
  redis.call('HSET', KEYS[2], 'below', ARGV[1])
end
redis.call('HSET', KEYS[2], 'time', ARGV[2])
for i = 3, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return tonumber(redis.call('HGET', KEYS[3], 'seq') or '0')
"""


class CompactionError(RuntimeError):
    """Compaction cannot go on (frames not applied in time, a frame's hash is wrong)."""


class StorageBehind(CompactionError):
    """Storage has not applied the room's latest events in time."""


class CompactableStore(Protocol):
    def n_slots(self, room: str) -> int: ...

    def read_slots(self, room: str, slots: Sequence[int],
                   keys: Sequence[str] | None = None) -> list[Frame]: ...

    def read_hashes(self, room: str, slots: Sequence[int]) -> list[str]: ...

    def base_slots(self, room: str, slots: Sequence[int]) -> dict[int, int]: ...

    def drop_slots(self, room: str, slots: Iterable[int]) -> DropStats: ...

    def parent_slots(self, room: str) -> int: ...


@dataclass(frozen=True)
class CompactionResult:
    room: str
    head_seq: int
    retained_from_seq: int
    """States at this seq and later (and forked states) keep their frames."""
    relaid_frames: int
    own_slots: int
    """Slots the room's own arrays hold (a fork's inherited slots are not counted)."""
    referenced_slots: int
    dropped_slots: int
    chunks_deleted: int
    bytes_freed: int


async def compact(redis: aioredis.Redis, control: ControlPort, store: CompactableStore,
                  history: HistoryStore, room: str, *, keep_events: int,
                  relayout: bool = False) -> CompactionResult:
    """Compact ``room`` (see the module docstring); safe beside readers and writers."""
    relaid = await relayout_room(redis, control, store, room) if relayout else 0
    reader = HistoryReader(redis, history)
    head = await reader.head(room)
    bound = await retention_bound(redis, room, head, keep_events)
    referenced = await _referenced(reader, store, room, bound, head)
    first_own = await asyncio.to_thread(store.parent_slots, room)
    n_slots = await asyncio.to_thread(store.n_slots, room)
    candidates = set(range(first_own, n_slots)) - referenced
    head2 = await _forget(redis, store, room, bound, candidates)
    candidates -= await _pinned_by_forks(redis, reader, store, room, bound)
    candidates -= _closure(store, room, _entry_slots(
        [e async for e in reader.events(room, head, head2)]))
    stats = await asyncio.to_thread(store.drop_slots, room, candidates)
    await redis.hincrby(keys.compaction(room), "slots_dropped", stats.slots)
    return CompactionResult(room=room, head_seq=head2, retained_from_seq=bound,
                            relaid_frames=relaid, own_slots=n_slots - first_own,
                            referenced_slots=len(referenced & set(range(first_own, n_slots))),
                            dropped_slots=stats.slots, chunks_deleted=stats.chunks,
                            bytes_freed=stats.bytes)


async def retention_bound(redis: aioredis.Redis, room: str, head: int, keep_events: int) -> int:
    """R: the first seq whose state keeps its frames."""
    first: Any = await redis.xrange(keys.events(room), count=1)
    in_stream = int(first[0][0].split(b"-")[0]) if first else head + 1
    earlier = int(await redis.hget(keys.compaction(room), "below") or 0)
    return max(earlier, min(head - keep_events, in_stream - 1), 0)


async def compacted_below(redis: aioredis.Redis, room: str) -> int:
    """Frames of states before this seq may be gone (0: none are)."""
    return int(await redis.hget(keys.compaction(room), "below") or 0)


# -- what is referenced -------------------------------------------------------------------


def _entry_slots(events: Iterable[Event]) -> set[int]:
    """The slots the events' entries point at, and the bases of their patch slots."""
    slots = {f.slot for e in events if e.change != "delete" for f in e.frames}
    return slots | {w.base for e in events for w in e.new_slots if w.base is not None}


def _closure(store: CompactableStore, room: str, slots: set[int]) -> set[int]:
    """``slots`` with the base slots of patch slots, recursively."""
    out = set(slots)
    todo = sorted(slots)
    while todo:
        bases = set(store.base_slots(room, todo).values()) - out
        out |= bases
        todo = sorted(bases)
    return out


async def _referenced(reader: HistoryReader, store: CompactableStore, room: str, bound: int,
                      head: int) -> set[int]:
    slots = {e.slot for e in await reader.index_at(room, bound)} if bound else set()
    slots |= _entry_slots([e async for e in reader.events(room, bound, head)])
    return await asyncio.to_thread(_closure, store, room, slots)


async def _pinned_by_forks(redis: aioredis.Redis, reader: HistoryReader,
                           store: CompactableStore, room: str, bound: int) -> set[int]:
    seqs = await _forked_seqs(redis, room)
    slots: set[int] = set()
    for seq in seqs:
        if seq < bound:
            slots |= {e.slot for e in await reader.index_at(room, seq)}
    return await asyncio.to_thread(_closure, store, room, slots)


async def _forked_seqs(redis: aioredis.Redis, room: str) -> list[int]:
    """The seqs of ``room`` its forks were taken at: a fork's own record where it exists,
    else the seq its registration names (the fork may be in flight). A registration
    whose room became something else is forgotten."""
    forks: Any = await redis.hgetall(keys.forks(room))
    seqs: set[int] = set()
    for child, registered in forks.items():
        name = _text(child)
        parent, parent_seq = await redis.hmget(keys.meta(name), ["parent", "parent_seq"])
        if parent is not None and _text(parent) == room:
            seqs.add(int(parent_seq or 0))
        elif await redis.exists(keys.meta(name)):
            await redis.hdel(keys.forks(room), name)
        else:
            seqs.add(int(registered))
    return sorted(seqs - {0})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _forget(redis: aioredis.Redis, store: CompactableStore, room: str, bound: int,
                  candidates: set[int]) -> int:
    ordered = sorted(candidates)
    hashes = await asyncio.to_thread(store.read_hashes, room, ordered) if ordered else []
    pairs = [x for h, s in zip(hashes, ordered, strict=True) for x in (h, str(s))]
    head = await redis.eval(_FORGET_LUA, 3, keys.slots(room), keys.compaction(room),
                            keys.meta(room), str(bound), repr(time.time()),
                            *pairs)
    return int(head)


async def _applied(redis: aioredis.Redis, room: str, field: str) -> int:
    return int(await redis.hget(keys.applied(room), field) or 0)


# -- relayout -----------------------------------------------------------------------------


def in_logical_order(entries: Sequence[FrameEntry]) -> bool:
    """Whether each new content takes the next slot, in logical order."""
    seen: set[str] = set()
    expected: int | None = None
    for e in entries:
        if e.hash in seen:
            continue
        if expected is not None and e.slot != expected:
            return False
        seen.add(e.hash)
        expected = e.slot + 1
    return True


async def relayout_room(redis: aioredis.Redis, control: ControlPort, store: CompactableStore,
                        room: str) -> int:
    """Relay the room's live frames out in logical order; the number of frames relaid
    (0 when they already were in order)."""
    view = await IndexReader(redis).read(room)
    if in_logical_order(view.entries):
        return 0
    keep_from = int(await redis.hget(keys.meta(room), "next_slot") or 0)
    await _wait_applied(redis, room, view.seq)
    relaid: set[str] = set()
    done, batch = 0, 64
    while done < len(view.entries):
        entries = view.entries[done:done + batch]
        nbytes = await _relay_batch(redis, control, store, room, entries, relaid, keep_from)
        done += len(entries)
        batch = max(1, min(RELAYOUT_MAX_FRAMES, RELAYOUT_BYTES * len(entries) // max(nbytes, 1)))
    return done


async def _relay_batch(redis: aioredis.Redis, control: ControlPort, store: CompactableStore,
                       room: str, entries: Sequence[FrameEntry], relaid: set[str],
                       keep_from: int) -> int:
    """Relay ``entries`` out (re-reading the ones an edit changed meanwhile); their bytes."""
    for _ in range(RELAYOUT_RETRIES):
        stage = await asyncio.to_thread(_blobs, store, room, entries, relaid)
        command = RelayoutFrames(room=room, author=RELAYOUT_AUTHOR,
                                 frame_ids=[e.frame_id for e in entries],
                                 base_versions=[e.version for e in entries],
                                 hashes=[e.hash for e in entries], keep_from=keep_from)
        await _stage(redis, room, stage)
        result: CommitResult = await control.commit(command)
        if result.status == "ok":
            relaid.update(stage)
            return sum(len(b) for b in stage.values())
        if result.status != "conflict":
            raise CompactionError(f"relayout of room {room!r} refused: {result.reason}")
        entries = await _current(redis, room, entries)
        if not entries:
            return 0
    raise CompactionError(f"room {room!r}: frames kept changing during the relayout")


async def _stage(redis: aioredis.Redis, room: str, blobs: dict[str, bytes]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for h, blob in blobs.items():
            pipe.set(keys.blob(room, h), blob, ex=STAGE_TTL_S, nx=True)
        await pipe.execute()


async def _current(redis: aioredis.Redis, room: str, entries: Sequence[FrameEntry]
                   ) -> list[FrameEntry]:
    """The current entries of those of ``entries`` that still exist, applied."""
    view = await IndexReader(redis).read(room)
    wanted = {e.frame_id for e in entries}
    await _wait_applied(redis, room, view.seq)
    return [e for e in view.entries if e.frame_id in wanted]


def _blobs(store: CompactableStore, room: str, entries: Sequence[FrameEntry],
           relaid: set[str]) -> dict[str, bytes]:
    """Each content not relaid yet, read back from its slot and hash-checked."""
    todo = {e.hash: e.slot for e in entries if e.hash not in relaid}
    frames = store.read_slots(room, list(todo.values()))
    out: dict[str, bytes] = {}
    for (h, slot), frame in zip(todo.items(), frames, strict=True):
        if frame_hash(frame) != h:
            raise CompactionError(f"room {room!r}: slot {slot} does not hold content {h}")
        out[h] = frame_to_bytes(frame)
    return out


async def _wait_applied(redis: aioredis.Redis, room: str, seq: int) -> None:
    deadline = time.monotonic() + APPLIED_WAIT_S
    while await _applied(redis, room, "seq") < seq:
        if time.monotonic() > deadline:
            raise StorageBehind(f"room {room!r}: storage has not applied seq {seq} "
                                f"within {APPLIED_WAIT_S:.0f} s; try again later")
        await asyncio.sleep(0.05)
