"""Storage: applies each room's events to the FrameStore (Zarr), in seq order.

For a batch of events it writes every ``new_slots`` entry from the staged blobs (one
store call per contiguous slot range), applies the events to the room's projection
(logical order -> slot, frame ids, versions) kept in memory, and commits:
``store.commit_projection`` (the commit point), ``HSET {r}:applied``, XACK, then DEL
the applied blobs. Every step is idempotent, so a crash anywhere is repaired by
re-applying from the store's applied seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from trajhub.shared import codec, keys
from trajhub.shared.consumer import IntegrityError, RoomConsumer, seq_of, stream_pairs
from trajhub.shared.events import Event, SlotWrite
from trajhub.shared.frames import Frame
from trajhub.shared.hashing import frame_hash
from trajhub.shared.ports import FrameStore
from trajhub.shared.zarr_store import ProjectionError

log = logging.getLogger("trajhub.storage")

MAX_CHUNK_BYTES = 16 * 1024 * 1024
"""Blob bytes fetched, decoded and written per store call (at least one slot)."""


class ProjectionStore(FrameStore, Protocol):
    """A FrameStore that can also read back the committed projection."""

    def read_projection(self, room: str) -> tuple[int, Any, Any, Any]:
        """``(applied_seq, order, frame_ids, versions)``; raises if the commit was torn."""
        ...


@dataclass
class Projection:
    """A room's logical order as of ``seq``: per index, slot, frame id and version."""

    seq: int
    n_slots: int
    order: list[int] = field(default_factory=list)
    frame_ids: list[int] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)

    def copy(self) -> Projection:
        return Projection(self.seq, self.n_slots, list(self.order), list(self.frame_ids),
                          list(self.versions))

    def apply(self, event: Event) -> None:
        """Apply one event's index change; raises IntegrityError if it does not fit."""
        if event.seq != self.seq + 1:
            raise IntegrityError(f"event seq {event.seq} applied at seq {self.seq}")
        if event.kind == "frames_deleted":
            self._delete(event.indices)
        else:
            if len(event.frames) != len(event.indices):
                raise IntegrityError(f"seq {event.seq}: {len(event.indices)} indices for "
                                     f"{len(event.frames)} frames")
            pairs = sorted(zip(event.indices, event.frames, strict=True),
                           key=lambda p: p[0])
            for index, entry in pairs:
                row = (entry.slot, entry.frame_id, entry.version)
                if event.kind == "frames_inserted":
                    self._check(index, len(self.order) + 1, event)
                    self.order.insert(index, row[0])
                    self.frame_ids.insert(index, row[1])
                    self.versions.insert(index, row[2])
                else:
                    self._check(index, len(self.order), event)
                    self.order[index], self.frame_ids[index], self.versions[index] = row
        if len(self.order) != event.n_frames:
            raise IntegrityError(f"seq {event.seq}: {len(self.order)} frames after applying,"
                                 f" the event says {event.n_frames}")
        self.seq = event.seq

    def _delete(self, indices: Sequence[int]) -> None:
        # Indices are positions before the deletion: remove from the back.
        for index in sorted(set(indices), reverse=True):
            if not 0 <= index < len(self.order):
                raise IntegrityError(f"delete index {index} of {len(self.order)} frames")
            del self.order[index], self.frame_ids[index], self.versions[index]

    @staticmethod
    def _check(index: int, bound: int, event: Event) -> None:
        if not 0 <= index < bound:
            raise IntegrityError(f"seq {event.seq}: index {index} out of range ({bound})")


def _ints(values: Any) -> list[int]:
    return [int(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]


def _decode_checked(blobs: Sequence[bytes], writes: Sequence[SlotWrite]) -> list[Frame]:
    """Decode blobs and prove each matches the hash its slot was assigned for."""
    frames = []
    for blob, write in zip(blobs, writes, strict=True):
        frame = codec.frame_from_bytes(blob)
        actual = frame_hash(frame)
        if actual != write.hash:
            raise IntegrityError(f"slot {write.slot}: blob {write.hash} decodes to a frame "
                                 f"with hash {actual}")
        frames.append(frame)
    return frames


class StorageWorker(RoomConsumer):
    """The storage consumer (group ``storage``): one replica per room via a lease."""

    def __init__(self, redis_url: str, store: ProjectionStore, consumer: str, *,
                 lease_ms: int = 10_000, claim_idle_ms: int = 5_000,
                 reconcile_s: float = 2.0, batch_events: int = 256,
                 max_chunk_bytes: int = MAX_CHUNK_BYTES) -> None:
        super().__init__(redis_url, keys.STORAGE_GROUP, consumer, claim_idle_ms=claim_idle_ms,
                         reconcile_s=reconcile_s, lease_ms=lease_ms,
                         batch_events=batch_events, logger=log)
        self.store = store
        self.max_chunk_bytes = max_chunk_bytes
        self._projections: dict[str, Projection] = {}

    async def apply_room(self, room: str) -> int:
        """Apply everything pending for ``room`` now; return the number of events applied."""
        return await self.process_room(room)

    # -- RoomConsumer hooks ---------------------------------------------------------------

    def lease_key(self, room: str) -> str:
        return keys.storage_lease(room)

    def progress_key(self, room: str) -> str:
        return keys.applied(room)

    async def progress_seq(self, room: str) -> int:
        return (await self._projection(room)).seq

    async def on_room_acquired(self, room: str) -> None:
        # Another replica may have worked on the room while we did not hold it.
        self._projections.pop(room, None)

    async def on_room_dropped(self, room: str) -> None:
        self._projections.pop(room, None)

    async def handle_batch(self, room: str, events: Sequence[Event]) -> int:
        proj = await self._projection(room)
        writes = sorted({w.slot: w for e in events for w in e.new_slots
                         if w.slot >= proj.n_slots}.values(), key=lambda w: w.slot)
        n_slots = await self._materialize(room, proj.n_slots, writes)
        proj.n_slots = n_slots  # written slots stay written even if nothing commits now
        work = proj.copy()
        count = 0
        for event in events:
            if any(w.slot >= n_slots for w in event.new_slots):
                break  # its blob is missing: stop before it, retry later
            work.apply(event)
            count += 1
        if count == 0:
            return 0
        await self.ensure_lease(room)
        await asyncio.to_thread(self.store.commit_projection, room, work.seq, work.order,
                                work.frame_ids, work.versions)
        self._projections[room] = work
        await self.redis.hset(keys.applied(room),
                              mapping={"seq": work.seq, "slots": work.n_slots})
        log.info("applied room=%s seq=%d events=%d slots=%d", room, work.seq, count,
                 work.n_slots, extra={"room": room, "seq": work.seq, "events": count,
                                      "slots": work.n_slots})
        return count

    async def after_ack(self, room: str, events: Sequence[Event]) -> None:
        # The slots are in the store now (also for events applied before a crash).
        blob_keys = {keys.blob(room, w.hash) for e in events for w in e.new_slots}
        if blob_keys:
            await self.redis.delete(*blob_keys)

    # -- internals -----------------------------------------------------------------------

    async def _projection(self, room: str) -> Projection:
        proj = self._projections.get(room)
        if proj is None:
            n_slots = await asyncio.to_thread(self.store.n_slots, room)
            try:
                seq, order, fids, versions = await asyncio.to_thread(
                    self.store.read_projection, room)
            except ProjectionError as exc:
                log.warning("room=%s: %s; rebuilding it from the event stream", room, exc,
                            extra={"room": room})
                proj = await self._rebuild(room, n_slots)
            else:
                proj = Projection(int(seq), n_slots, _ints(order), _ints(fids),
                                  _ints(versions))
            await self._publish_applied(room, proj)
            self._projections[room] = proj
        return proj

    async def _publish_applied(self, room: str, proj: Projection) -> None:
        """Repair ``{r}:applied`` if a crash came between the store commit and its HSET
        (readers would otherwise look for blobs that are about to be deleted)."""
        seq, slots = await self.redis.hmget(keys.applied(room), ["seq", "slots"])
        if (int(seq or 0), int(slots or 0)) != (proj.seq, proj.n_slots) and proj.seq:
            await self.redis.hset(keys.applied(room),
                                  mapping={"seq": proj.seq, "slots": proj.n_slots})

    async def _rebuild(self, room: str, n_slots: int) -> Projection:
        """Replay the stream up to the store's applied seq (a crash tore the projection
        commit; the slots themselves are intact) and commit the result again."""
        applied = await asyncio.to_thread(self.store.applied_seq, room)
        proj = Projection(0, n_slots)
        while proj.seq < applied:
            got = stream_pairs(await self.redis.xrange(
                keys.events(room), f"{proj.seq + 1}-0", f"{applied}-0",
                count=self.batch_events))
            if not got or seq_of(got[0][0]) != proj.seq + 1:
                raise IntegrityError(f"cannot rebuild the projection: event {proj.seq + 1} "
                                     "is no longer in the stream")
            for _id, fields in got:
                proj.apply(Event.from_stream(fields))
        await self.ensure_lease(room)
        await asyncio.to_thread(self.store.commit_projection, room, proj.seq, proj.order,
                                proj.frame_ids, proj.versions)
        return proj

    async def _materialize(self, room: str, n_slots: int, writes: list[SlotWrite]) -> int:
        """Write ``writes`` (sorted, from slot ``n_slots`` on) from their blobs, in chunks
        of at most ``max_chunk_bytes``; the next chunk is fetched and decoded while the
        previous one is being written. Returns the first slot not written."""
        if not writes:
            return n_slots
        if writes[0].slot != n_slots or writes[-1].slot - writes[0].slot != len(writes) - 1:
            raise IntegrityError(f"slots to write {writes[0].slot}..{writes[-1].slot} "
                                 f"({len(writes)}) do not continue from n_slots={n_slots}")
        blob_keys = [keys.blob(room, w.hash) for w in writes]
        pipe = self.redis.pipeline(transaction=False)
        for key in blob_keys:
            pipe.strlen(key)
        sizes: list[int] = await pipe.execute()
        written = n_slots  # slots below are in the store
        writing: asyncio.Future[None] | None = None
        writing_end = n_slots
        try:
            for start, end in self._chunks(sizes):
                blobs: list[Any] = await self.redis.mget(blob_keys[start:end])
                got = next((i for i, b in enumerate(blobs) if b is None), len(blobs))
                chunk = writes[start:start + got]
                frames = await asyncio.to_thread(_decode_checked, blobs[:got], chunk)
                if writing is not None:
                    await writing
                    writing, written = None, writing_end
                if chunk:
                    await self.ensure_lease(room)
                    writing = asyncio.ensure_future(asyncio.to_thread(
                        self.store.write_slots, room, chunk[0].slot, frames,
                        [w.hash for w in chunk]))
                    writing_end = chunk[-1].slot + 1
                if got < len(blobs):
                    break
            if writing is not None:
                await writing
                writing, written = None, writing_end
        finally:
            if writing is not None:  # failing: let the write in flight end first
                with contextlib.suppress(Exception):
                    await writing
        if written <= writes[-1].slot:
            self._missing(room, writes[written - n_slots])
        return written

    def _chunks(self, sizes: list[int]) -> list[tuple[int, int]]:
        """Index ranges of at most ``max_chunk_bytes`` (at least one blob each), up to
        the first missing blob (size 0)."""
        chunks: list[tuple[int, int]] = []
        start = 0
        while start < len(sizes) and sizes[start]:
            end, total = start, 0
            while end < len(sizes) and sizes[end] and (
                    end == start or total + sizes[end] <= self.max_chunk_bytes):
                total += sizes[end]
                end += 1
            chunks.append((start, end))
            start = end
        return chunks

    def _missing(self, room: str, write: SlotWrite) -> None:
        log.error("blob missing room=%s slot=%d hash=%s; will retry", room, write.slot,
                  write.hash, extra={"room": room, "slot": write.slot, "hash": write.hash})
