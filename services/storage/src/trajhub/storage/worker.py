"""Storage: applies each room's events to the FrameStore (Zarr), in seq order.

For a batch of events it writes every ``new_slots`` entry from the staged blobs (one
store call per contiguous slot range; a patch's slot keeps only its changed keys over
its ``base`` slot, see ``FrameStore.write_slots``), applies the events to the room's
projection (logical order -> slot, frame ids, versions) kept in memory, and commits:
the projection rides with the batch's last slot write (``write_slots(commit=...)``: one
commit point for both; ``store.commit_projection`` when the batch writes no slot or a
blob is missing), then ``HSET {r}:applied``, XACK, then UNLINK the applied blobs.
Every step is idempotent, so a crash anywhere is repaired by re-applying from the
store's applied seq.

Replicas share the rooms: each holds the lease of the rooms it works on and, through
the registry ``trajhub:storage:replicas``, prefers the rooms rendezvous hashing gives it
(see ``trajhub.shared.consumer``); a room assigned elsewhere is released between batches.

A blob's key is the content hash the gateway computed from the frame it validated
before staging it, so applying does not hash the frames again (``verify=True`` does,
halting the room on a mismatch). The worker shares its event loop with the gateway in
the all-in-one server: everything that blocks or burns CPU for long runs in a thread,
and blobs are fetched, decoded and written in chunks of ``max_chunk_bytes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from trajhub.shared import codec, keys
from trajhub.shared.buffers import BlockPool
from trajhub.shared.consumer import (
    BATCH_FRAMES,
    IntegrityError,
    RoomConsumer,
    seq_of,
    stream_pairs,
)
from trajhub.shared.events import Event, SlotWrite
from trajhub.shared.frames import Array, Frame, FrameRun
from trajhub.shared.gil import Breather
from trajhub.shared.hashing import frame_hash
from trajhub.shared.history_reader import HistoryGone, HistoryReader
from trajhub.shared.history_store import ZarrHistoryStore
from trajhub.shared.ports import FrameStore, HistoryStore, ProjectionCommit
from trajhub.shared.staging import (
    locate_staged,
    packs_of,
    pointing_markers,
    read_located,
    release_packs,
    unlink_staged,
    views_in_a_row,
)
from trajhub.shared.zarr_store import ProjectionError
from trajhub.storage.blob_archive import BlobArchive

log = logging.getLogger("trajhub.storage")

MAX_CHUNK_BYTES = 16 * 1024 * 1024
"""Blob bytes fetched, decoded and written per store call (at least one slot). Each store
call costs about a chunk per array beside the data (it rewrites the partly filled ones),
so smaller chunks cost more CPU in all; the next chunk is fetched and decoded while one
is being written, so about three chunks are in memory at a time."""
RUN_MIN_FRAMES = 8
"""Blobs decoded as one FrameRun when they are laid out alike (fewer: frame by frame)."""
RUN_MAX_BLOB_BYTES = 64 * 1024
"""Nor larger blobs, unless they follow each other in one buffer (see
``views_in_a_row``): a run of others costs a copy of them, which pays where the work per
frame outweighs its bytes (small frames), and only adds to the memory of large ones."""
PACK_READS = BlockPool(48 * 2**20)
"""Memory of the pack frames storage reads (see ``StagingPacks.read_into``): two chunks
of MAX_CHUNK_BYTES are in flight at a time (one fetched while the other is written),
and the next reads reuse their memory instead of faulting in new memory."""


class ProjectionStore(FrameStore, Protocol):
    """A FrameStore that can also read back the committed projection."""

    def read_projection(self, room: str) -> tuple[int, Any, Any, Any]:
        """``(applied_seq, order, frame_ids, versions)``; raises if the commit was torn."""
        ...

    def init_fork(self, room: str, parent: str, parent_slots: int) -> None:
        """Make ``room`` a fork: slots below ``parent_slots`` are ``parent``'s."""
        ...


@dataclass
class Projection:
    """A room's logical order as of ``seq``: per index, slot, frame id and version."""

    seq: int
    n_slots: int
    order: list[int] = field(default_factory=list)
    frame_ids: list[int] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)

    def commit(self) -> ProjectionCommit:
        return ProjectionCommit(self.seq, self.order, self.frame_ids, self.versions)

    def copy(self) -> Projection:
        return Projection(self.seq, self.n_slots, list(self.order), list(self.frame_ids),
                          list(self.versions))

    def apply(self, event: Event) -> None:
        """Apply one event's index change (``event.change``: undo/redo and patches
        too); raises IntegrityError if it does not fit. Insert indices are the final
        positions, delete indices the positions before the deletion."""
        if event.seq != self.seq + 1:
            raise IntegrityError(f"event seq {event.seq} applied at seq {self.seq}")
        change = event.change  # undo/redo carry theirs in ``effect``
        if change == "delete":
            self._delete(event.indices)
        else:
            if len(event.frames) != len(event.indices):
                raise IntegrityError(f"seq {event.seq}: {len(event.indices)} indices for "
                                     f"{len(event.frames)} frames")
            pairs = sorted(zip(event.indices, event.frames, strict=True),
                           key=lambda p: p[0])
            for index, entry in pairs:
                row = (entry.slot, entry.frame_id, entry.version)
                if change == "insert":
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


def _layers(writes: Sequence[SlotWrite]) -> list[tuple[int, list[str]] | None] | None:
    """The patch layering of ``writes`` for ``FrameStore.write_slots`` (None: all whole)."""
    if all(w.base is None for w in writes):
        return None
    return [None if w.base is None else (w.base, list(w.keys or [])) for w in writes]


def _ints(values: Any) -> list[int]:
    return [int(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]


# -- decoding staged blobs without copying ------------------------------------------------

class _NotCanonical(ValueError):
    """A blob that is not laid out as ``codec.frame_to_bytes`` lays frames out."""


_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from
_U64 = struct.Struct(">Q").unpack_from
# What frame_to_bytes writes before each value of an array: a map of exactly these keys.
_DTYPE_KEY, _SHAPE_KEY, _DATA_KEY = b"\x83\xa5dtype", b"\xa5shape", b"\xa4data"
_DTYPES: dict[str, np.dtype[Any]] = {}


def _dtype(text: str) -> np.dtype[Any]:
    """The dtype named ``text`` if the codec accepts it as is (little-endian)."""
    dtype = _DTYPES.get(text)
    if dtype is None:
        dtype = codec.decode_array({"dtype": text, "shape": [0], "data": b""}).dtype
        if dtype.str != text:
            raise _NotCanonical(f"dtype {text}")  # big-endian: the codec converts it
        if len(_DTYPES) < 1024:  # a few numeric dtypes, and a string dtype per length
            _DTYPES[text] = dtype
    return dtype


def _str(blob: bytes, pos: int) -> tuple[str, int]:
    b = blob[pos]
    if 0xa0 <= b <= 0xbf:
        n, pos = b & 0x1f, pos + 1
    elif b == 0xd9:
        n, pos = blob[pos + 1], pos + 2
    elif b == 0xda:
        n, pos = _U16(blob, pos + 1)[0], pos + 3
    else:
        raise _NotCanonical(f"msgpack type {b:#x} for a string")
    return blob[pos:pos + n].decode(), pos + n


def _uint(blob: bytes, pos: int) -> tuple[int, int]:
    b = blob[pos]
    if b <= 0x7f:
        return b, pos + 1
    if b == 0xcc:
        return blob[pos + 1], pos + 2
    if b == 0xcd:
        return int(_U16(blob, pos + 1)[0]), pos + 3
    if b == 0xce:
        return int(_U32(blob, pos + 1)[0]), pos + 5
    if b == 0xcf:
        return int(_U64(blob, pos + 1)[0]), pos + 9
    raise _NotCanonical(f"msgpack type {b:#x} for a size")


def _array_at(blob: bytes, view: memoryview, pos: int) -> tuple[Array, int]:
    """The array whose ``{dtype, shape, data}`` map starts at ``pos``, as a view; the
    position after it (its data are the array's ``nbytes`` bytes before)."""
    if not blob.startswith(_DTYPE_KEY, pos):
        raise _NotCanonical("array map")
    dtype_text, pos = _str(blob, pos + len(_DTYPE_KEY))
    if not blob.startswith(_SHAPE_KEY, pos) or not 0x90 <= blob[pos + 6] <= 0x98:
        raise _NotCanonical("shape")
    ndim, pos = blob[pos + 6] & 0x0f, pos + 7
    shape = []
    for _ in range(ndim):
        n, pos = _uint(blob, pos)
        shape.append(n)
    if not blob.startswith(_DATA_KEY, pos):
        raise _NotCanonical("data")
    b, pos = blob[pos + 5], pos + 6
    if b == 0xc4:
        size, pos = blob[pos], pos + 1
    elif b == 0xc5:
        size, pos = int(_U16(blob, pos)[0]), pos + 2
    elif b == 0xc6:
        size, pos = int(_U32(blob, pos)[0]), pos + 4
    else:
        raise _NotCanonical(f"msgpack type {b:#x} for data")
    dtype = _dtype(dtype_text)
    if math.prod(shape) * dtype.itemsize != size or pos + size > len(blob):
        raise _NotCanonical("size")
    return np.frombuffer(view[pos:pos + size], dtype=dtype).reshape(shape), pos + size


def _frame_at(blob: bytes) -> tuple[Frame, list[int]]:
    """The frame (arrays as views) and where each array's data end."""
    b = blob[0]
    if 0x80 <= b <= 0x8f:
        n, pos = b & 0x0f, 1
    elif b == 0xde:
        n, pos = int(_U16(blob, 1)[0]), 3
    else:
        raise _NotCanonical(f"msgpack type {b:#x} for a frame")
    view = memoryview(blob)
    frame: Frame = {}
    ends = []
    for _ in range(n):
        key, pos = _str(blob, pos)
        frame[key], pos = _array_at(blob, view, pos)
        ends.append(pos)
    if pos != len(blob):
        raise _NotCanonical("trailing bytes")
    return frame, ends


_NOT_AS_IS = (_NotCanonical, codec.CodecError, IndexError, UnicodeDecodeError, struct.error)


def frame_view(blob: bytes) -> Frame:
    """``codec.frame_from_bytes`` without copying: the arrays are read-only views into
    ``blob`` (np.frombuffer), with the codec's checks (dtype, size). A blob laid out
    otherwise than ``codec.frame_to_bytes`` does (or malformed) goes through
    ``codec.frame_from_bytes``, which copies, converts or raises CodecError."""
    try:
        return _frame_at(blob)[0]
    except _NOT_AS_IS:
        return codec.frame_from_bytes(blob)


class _Layout:
    """The bytes around the arrays' data of a frame that ``_frame_at`` read: a frame of
    the same size with the very same bytes there decodes the same way, its arrays at
    the same places (no parse: ~3x faster for small frames)."""

    def __init__(self, blob: bytes, frame: Frame, ends: list[int]) -> None:
        self.size = len(blob)
        self.arrays = [(key, a.dtype, a.shape, end - a.nbytes, end)
                       for (key, a), end in zip(frame.items(), ends, strict=True)]
        self.gaps = []  # (offset, bytes) of each run of bytes before an array's data
        at = 0
        for *_, start, end in self.arrays:
            if start > at:
                self.gaps.append((at, bytes(blob[at:start])))
            at = end

    @classmethod
    def of(cls, blob: bytes) -> tuple[Frame, _Layout | None]:
        """``frame_view(blob)``, with its layout when ``_frame_at`` read it."""
        try:
            frame, ends = _frame_at(blob)
        except _NOT_AS_IS:
            return codec.frame_from_bytes(blob), None
        return frame, (cls(blob, frame, ends) if len(frame) == len(ends) else None)

    def view(self, blob: bytes) -> Frame | None:
        """``frame_view(blob)`` if ``blob`` has this layout, else None."""
        if len(blob) != self.size:
            return None
        for at, gap in self.gaps:
            if blob[at:at + len(gap)] != gap:
                return None
        return {key: np.ndarray(shape, dtype, blob, start)
                for key, dtype, shape, start, _ in self.arrays}


def decode_blobs(blobs: Sequence[bytes | memoryview], writes: Sequence[SlotWrite],
                 verify: bool = False) -> Sequence[Frame]:
    """Decode staged blobs (zero-copy; a run of blobs laid out alike, as a FrameRun:
    views of the buffer they are in when they follow each other in one, else of one
    copy); with ``verify``, prove each matches the hash its slot was assigned for (the
    gateway already did when it staged the blob)."""
    if len(blobs) != len(writes):
        raise ValueError(f"{len(blobs)} blobs for {len(writes)} slots")
    run = _as_run(blobs) if len(blobs) >= RUN_MIN_FRAMES else None
    frames = run if run is not None else _decode_each(
        [bytes(b) if isinstance(b, memoryview) else b for b in blobs])
    if verify:
        for frame, write in zip(frames, writes, strict=True):
            actual = frame_hash(frame)
            if actual != write.hash:
                raise IntegrityError(f"slot {write.slot}: blob {write.hash} decodes to a "
                                     f"frame with hash {actual}")
    return frames


def _decode_each(blobs: Sequence[bytes]) -> list[Frame]:
    frames = []
    layout: _Layout | None = None
    breathe = Breather()  # (the gateway's event loop shares the GIL, all-in-one)
    for blob in blobs:
        frame = layout.view(blob) if layout is not None else None
        if frame is None:  # another layout (or not one _frame_at reads)
            frame, layout = _Layout.of(blob)
        frames.append(frame)
        breathe()
    return frames


def _as_run(blobs: Sequence[bytes | memoryview]) -> FrameRun | None:
    """The blobs as one FrameRun if all are laid out as the first (same size, the same
    bytes around the arrays' data: checked for all at once), else None."""
    try:
        _, layout = _Layout.of(bytes(blobs[0]))
    except _NOT_AS_IS:
        return None
    if layout is None or any(dtype.kind == "U" for _, dtype, *_ in layout.arrays) \
            or any(len(blob) != layout.size for blob in blobs):
        return None
    rows = views_in_a_row(blobs, layout.size)
    if rows is None:
        if layout.size > RUN_MAX_BLOB_BYTES:
            return None
        rows = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), layout.size)
    for at, gap in layout.gaps:
        if not (rows[:, at:at + len(gap)] == np.frombuffer(gap, dtype=np.uint8)).all():
            return None
    return FrameRun({key: rows[:, start:end].view(dtype).reshape(len(blobs), *shape)
                     for key, dtype, shape, start, end in layout.arrays}, len(blobs))


def _apply_events(proj: Projection, events: Sequence[Event], n_slots: int
                  ) -> tuple[Projection, int]:
    """``proj`` with the events whose slots are all below ``n_slots`` applied (a prefix),
    and how many that is; ``proj`` itself is left as it is."""
    work = proj.copy()
    count = 0
    for event in events:
        if any(w.slot >= n_slots for w in event.new_slots):
            break  # its blob is missing: stop before it, retry later
        work.apply(event)
        count += 1
    return work, count


class StorageWorker(RoomConsumer[Event]):
    """The storage consumer (group ``storage``): one replica per room via a lease; with
    ``share=True`` replicas split the rooms through the registry."""

    event_type = Event

    def __init__(self, redis_url: str, store: ProjectionStore, consumer: str, *,
                 lease_ms: int = 10_000, claim_idle_ms: int = 5_000,
                 reconcile_s: float = 2.0, batch_events: int = 256,
                 batch_frames: int = BATCH_FRAMES, max_chunk_bytes: int = MAX_CHUNK_BYTES,
                 verify: bool = False,
                 yield_to: Callable[[], bool] | None = None,
                 archive: BlobArchive | None = None, share: bool = True,
                 registry_ttl_ms: int | None = None,
                 orphan_after_s: float | None = None, coalesce_s: float = 0.0) -> None:
        super().__init__(redis_url, keys.STORAGE_GROUP, consumer, claim_idle_ms=claim_idle_ms,
                         reconcile_s=reconcile_s, lease_ms=lease_ms,
                         batch_events=batch_events, batch_frames=batch_frames, logger=log,
                         yield_to=yield_to, registry_ttl_ms=registry_ttl_ms,
                         orphan_after_s=orphan_after_s, coalesce_s=coalesce_s)
        self.share = share
        """Heartbeat into ``trajhub:storage:replicas`` and take only this replica's share."""
        self.store = store
        self.max_chunk_bytes = max_chunk_bytes
        self.verify = verify
        """Re-hash every decoded frame before writing it (the gateway hashed it already)."""
        self.archive = archive
        """Copy every blob here before writing its slot (``TRAJHUB_ARCHIVE_BLOBS``), so
        that ``trajhub rebuild`` can restore the room without its Zarr data arrays."""
        self.packs = packs_of(store)
        """Where bulk uploads' frames are staged (markers in their Redis keys)."""
        self._located: dict[str, dict[str, str | None]] = {}
        """Per room, hash -> the pack its marker named (None: staged in Redis), as read
        for the slots written since the last ``before_ack``."""
        self._projections: dict[str, Projection] = {}

    async def apply_room(self, room: str) -> int:
        """Apply everything pending for ``room`` now; return the number of events applied."""
        return await self.process_room(room)

    # -- RoomConsumer hooks ---------------------------------------------------------------

    def lease_key(self, room: str) -> str:
        return keys.storage_lease(room)

    def progress_key(self, room: str) -> str:
        return keys.applied(room)

    def registry_key(self) -> str | None:
        return keys.STORAGE_REPLICAS if self.share else None

    async def progress_seq(self, room: str) -> int:
        return (await self._projection(room)).seq

    async def on_room_acquired(self, room: str) -> None:
        # Another replica may have worked on the room while we did not hold it.
        self._projections.pop(room, None)
        self._located.pop(room, None)

    async def on_room_dropped(self, room: str) -> None:
        self._projections.pop(room, None)
        self._located.pop(room, None)

    async def handle_batch(self, room: str, events: Sequence[Event]) -> int:
        proj = await self._projection(room)
        await self._init_fork(room, proj, events)
        writes = sorted({w.slot: w for e in events for w in e.new_slots
                         if w.slot >= proj.n_slots}.values(), key=lambda w: w.slot)
        # The projection once every blob is written, committed with the last slot write
        # (a thread: on a large room, copying and editing the order lists takes a while).
        planned = writes[-1].slot + 1 if writes else proj.n_slots
        work, count = await asyncio.to_thread(_apply_events, proj, events, planned)
        commit = work.commit() if count else None
        n_slots, committed = await self._materialize(room, proj.n_slots, writes, commit)
        proj.n_slots = n_slots  # written slots stay written even if nothing commits now
        if not committed:
            if n_slots < planned:  # a blob is missing: commit the events before it
                work, count = await asyncio.to_thread(_apply_events, proj, events, n_slots)
            if count == 0:
                return 0
            await self.ensure_lease(room)
            await asyncio.to_thread(self.store.commit_projection, room, *work.commit())
        work.n_slots = n_slots
        self._projections[room] = work
        await self.redis.hset(keys.applied(room),
                              mapping={"seq": work.seq, "slots": work.n_slots})
        log.info("applied room=%s seq=%d events=%d slots=%d", room, work.seq, count,
                 work.n_slots, extra={"room": room, "seq": work.seq, "events": count,
                                      "slots": work.n_slots})
        return count

    async def before_ack(self, room: str, events: Sequence[Event]) -> None:
        # The slots are in the store now (also for events applied before a crash). Done
        # before the ack: a crash after the ack would leave these blobs (persisted by
        # their commit) and their packs to nobody.
        hashes = list(dict.fromkeys(w.hash for e in events for w in e.new_slots))
        if not hashes:
            return
        # UNLINK frees the (large) values in the background: Redis, which the gateway
        # is staging the next upload into, is not held up. Where the blobs were not
        # located while writing (events applied before a crash), the same call names
        # the packs that markers among them pointed to.
        located = self._located.pop(room, {})
        if all(h in located for h in hashes):
            await unlink_staged(self.redis, room, hashes)
            unlinked = {h: pack for h in hashes if (pack := located[h]) is not None}
        else:
            refs = await pointing_markers(self.redis, room, hashes, unlink=True)
            unlinked = {h: r.pack for h, r in zip(hashes, refs, strict=True) if r is not None}
        if unlinked and self.packs is not None:
            # A crash before this leaves the packs, unreferenced, to the gateways' sweep.
            await release_packs(self.redis, self.packs, room, list(unlinked.values()),
                                unlinked)

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
        """Replay the room's history up to the store's applied seq (a crash tore the
        projection commit; the slots themselves are intact) and commit the result again.
        Events the snapshotter trimmed from the stream are read from its archive."""
        applied = await asyncio.to_thread(self.store.applied_seq, room)
        proj = Projection(0, n_slots)
        history = self._history_store()
        if history is not None:
            try:
                async for event in HistoryReader(self.redis, history).events(
                        room, after=0, upto=applied):
                    proj.apply(event)
            except HistoryGone as exc:
                raise IntegrityError(f"cannot rebuild the projection: {exc}") from None
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

    def _history_store(self) -> HistoryStore | None:
        """The snapshotter's archive, kept in the same Zarr store as the frames."""
        root = getattr(self.store, "store", None)
        return ZarrHistoryStore(root) if root is not None else None

    async def _init_fork(self, room: str, proj: Projection, events: Sequence[Event]) -> None:
        """A room's first event ``room_forked`` writes no slot: its group only learns its
        parent, and its own slots start at the base's ``next_slot`` as of the fork."""
        first = events[0] if events else None
        if first is None or first.kind != "room_forked" or proj.seq != 0:
            return
        if first.base_room is None or first.parent_slots is None:
            raise IntegrityError(f"room {room}: room_forked without base_room/parent_slots")
        await self.ensure_lease(room)
        await asyncio.to_thread(self.store.init_fork, room, first.base_room,
                                first.parent_slots)
        proj.n_slots = max(proj.n_slots, first.parent_slots)

    async def _materialize(self, room: str, n_slots: int, writes: list[SlotWrite],
                           commit: ProjectionCommit | None = None) -> tuple[int, bool]:
        """Write ``writes`` (sorted, from slot ``n_slots`` on) from their blobs, in chunks
        of at most ``max_chunk_bytes``; the next chunk is fetched and decoded while the
        previous one is being written. ``commit`` goes with the last chunk if every blob
        is there. Returns the first slot not written and whether ``commit`` was."""
        if not writes:
            return n_slots, False
        if writes[0].slot != n_slots or writes[-1].slot - writes[0].slot != len(writes) - 1:
            raise IntegrityError(f"slots to write {writes[0].slot}..{writes[-1].slot} "
                                 f"({len(writes)}) do not continue from n_slots={n_slots}")
        hashes = [w.hash for w in writes]
        located = await locate_staged(self.redis, room, hashes)
        self._located.setdefault(room, {}).update(
            (h, None if at.ref is None else at.ref.pack)
            for h, at in zip(hashes, located, strict=True))
        sizes = [at.size for at in located]
        written = n_slots  # slots below are in the store
        writing: asyncio.Future[None] | None = None
        writing_end = n_slots
        chunks = self._chunks(sizes)
        complete = bool(chunks) and chunks[-1][1] == len(writes)
        committed = False
        try:
            for start, end in chunks:
                await self.yield_to_foreground()
                blobs: list[Any] = await read_located(self.redis, self.packs, room,
                                                      hashes[start:end], located[start:end],
                                                      PACK_READS)
                got = next((i for i, b in enumerate(blobs) if b is None), len(blobs))
                chunk = writes[start:start + got]
                if self.archive is not None and chunk:
                    await asyncio.to_thread(self.archive.put_many, room,
                                            [w.hash for w in chunk], blobs[:got])
                frames = await asyncio.to_thread(decode_blobs, blobs[:got], chunk,
                                                 self.verify)
                if writing is not None:
                    await writing
                    writing, written = None, writing_end
                if chunk:
                    last = complete and end == len(writes) and got == len(blobs)
                    await self.ensure_lease(room)
                    writing = asyncio.ensure_future(asyncio.to_thread(
                        self.store.write_slots, room, chunk[0].slot, frames,
                        [w.hash for w in chunk], _layers(chunk),
                        commit=commit if last else None))
                    writing_end = chunk[-1].slot + 1
                    committed = last and commit is not None
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
        return written, committed and written == writes[-1].slot + 1

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
