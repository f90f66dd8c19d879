"""Reading frames: the index from Redis, data from the frame cache, Zarr (applied slots)
or staged blobs.

Storage sets ``{r}:applied slots`` only after the slots are readable in Zarr, and
deletes blobs only after that, so a slot below the applied count is read from Zarr and
a slot above it from its blob, falling back to Zarr when the blob was applied meanwhile.

Every full frame read from a blob or from Zarr goes into the gateway's ``FrameCache``
(content hash -> canonical bytes). A small request that misses reads ahead: the Zarr
chunks it needs hold the neighbouring slots too, so the frames at the next logical
indices are read, encoded and cached in the same call, ready for a viewer scrubbing on.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import redis.asyncio as aioredis

from trajhub.control import IndexReader
from trajhub.gateway.cache import FrameCache
from trajhub.shared import keys as rkeys
from trajhub.shared.codec import frame_to_bytes, packb
from trajhub.shared.events import FrameEntry
from trajhub.shared.ports import FrameStore

log = logging.getLogger(__name__)

READ_AHEAD_MAX_REQUEST = 8
"""A request reads ahead only when at most this many of its frames come from Zarr."""
SCRUB_WINDOW = (8, 56)
JUMP_WINDOW = (2, 14)
"""Logical indices read ahead (behind, ahead of the requested ones): the wide window when
the request lies within SCRUB_STEP of the room's previous one (a viewer scrubbing), the
narrow one after a jump (random access), where neighbours are less likely to be wanted
and a wide window would cost an extra Zarr chunk per key."""
SCRUB_STEP = 8
READ_AHEAD_SLOT_REACH = 64
"""Neighbours whose slot lies farther than this from every requested slot are skipped:
they live in other Zarr chunks, so reading them would cost more than it saves."""
READ_AHEAD_SHARE = 0.25
"""One request reads ahead at most this share of the cache budget."""
INLINE_MAX_BYTES = 2**20
"""Up to this many bytes of whole frames are cut down to ``keys=`` on the event loop."""
ROOM_MEMORY = 4096


async def applied_slots(redis: aioredis.Redis, room: str) -> int:
    value = await redis.hget(rkeys.applied(room), "slots")
    return int(value) if value is not None else 0


async def applied_and_origin(redis: aioredis.Redis, room: str
                             ) -> tuple[int, tuple[str, int] | None]:
    """The room's applied slots and, for a fork, ``(base room, parent_slots)``; one
    round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hget(rkeys.applied(room), "slots")
        pipe.hmget(rkeys.meta(room), ["parent", "parent_slots"])
        slots, (parent, parent_slots) = await pipe.execute()
    origin = None
    if parent is not None and parent_slots is not None:
        name = parent.decode() if isinstance(parent, bytes) else str(parent)
        origin = (name, int(parent_slots))
    return int(slots or 0), origin


def select_keys(blob: bytes, keys: Sequence[str]) -> bytes:
    """A staged blob (canonical frame bytes) cut down to ``keys``, re-packed."""
    frame = msgpack.unpackb(blob, raw=False)
    return packb({k: frame[k] for k in sorted(keys) if k in frame})


def subset_all(by_slot: Mapping[int, bytes], keys: Sequence[str] | None) -> dict[int, bytes]:
    if keys is None:
        return dict(by_slot)
    return {s: select_keys(b, keys) for s, b in by_slot.items()}


def _near(slot: int, targets: Sequence[int], reach: int) -> bool:
    """Whether ``slot`` lies within ``reach`` of a slot of sorted ``targets``."""
    i = bisect_left(targets, slot)
    return any(abs(targets[j] - slot) < reach for j in (i - 1, i) if 0 <= j < len(targets))


@dataclass
class _RoomMemory:
    """What a loader remembers of a room: its typical encoded frame size, and the logical
    indices of its last request."""

    frame_bytes: int = 0
    last: tuple[int, int] | None = None

    def window(self, first: int, last: int) -> tuple[int, int]:
        """The read-ahead window (start, stop) of logical indices for a request of
        ``first..last``."""
        behind, ahead = JUMP_WINDOW
        if (self.last is not None and self.last[0] - SCRUB_STEP <= last
                and first <= self.last[1] + SCRUB_STEP):
            behind, ahead = SCRUB_WINDOW
        return max(0, first - behind), last + ahead + 1


@dataclass
class _Load:
    """One request's frames as they are found: ``full`` hold every key, ``partial``
    only the requested ones (bulk ``keys=`` reads from Zarr, never cached)."""

    full: dict[int, bytes] = field(default_factory=dict)
    partial: dict[int, bytes] = field(default_factory=dict)
    cached: int = 0
    from_blobs: int = 0
    from_zarr: int = 0
    read_ahead: int = 0


class FrameLoader:
    """Loads the encoded bytes of a room's frames by slot (one entry per distinct slot).

    One per gateway: it remembers each room's typical encoded frame size, which bounds
    how far a request may read ahead (before the first read of a room, it does not),
    and where the room's last request was, to tell scrubbing from random access.
    """

    def __init__(self, redis: aioredis.Redis, cache: FrameCache | None = None,
                 index: IndexReader | None = None) -> None:
        self._redis = redis
        self._cache = cache if cache is not None else FrameCache(0)
        self._index = index
        self._rooms: OrderedDict[str, _RoomMemory] = OrderedDict()

    async def load(self, room: str, store: FrameStore, entries: Sequence[FrameEntry],
                   keys: Sequence[str] | None,
                   indices: Sequence[int] = ()) -> dict[int, bytes]:
        """Encoded frames by slot; ``indices`` (the logical indices of ``entries``)
        centre the read-ahead window (none without them)."""
        hash_of = {e.slot: e.hash for e in entries}
        if not hash_of:
            return {}
        hits = self._cache.get_many(hash_of.values())
        got = _Load(full={s: hits[h] for s, h in hash_of.items() if h in hits})
        got.cached = len(got.full)
        missing = [s for s in hash_of if s not in got.full]
        if missing:
            await self._load_missing(room, store, missing, hash_of, keys, indices, got)
        self._remember(room, got.full.values(), indices)
        self._log(room, got)
        if keys is None:
            return got.full
        if sum(len(b) for b in got.full.values()) <= INLINE_MAX_BYTES:
            out = subset_all(got.full, keys)
        else:
            out = await asyncio.to_thread(subset_all, got.full, keys)
        out.update(got.partial)
        return out

    async def _load_missing(self, room: str, store: FrameStore, missing: list[int],
                            hash_of: dict[int, str], keys: Sequence[str] | None,
                            indices: Sequence[int], got: _Load) -> None:
        applied, origin = await applied_and_origin(self._redis, room)
        if origin is not None and applied < origin[1]:
            # A fork whose first event storage has not applied yet: its group does not
            # know its parent, but the slots below parent_slots are the parent's (the
            # fork waited for the parent to apply them), so read them from there.
            inherited = [s for s in missing if s < origin[1]]
            missing = [s for s in missing if s >= origin[1]]
            if inherited:
                frames = await asyncio.to_thread(self._read_zarr, origin[0], store,
                                                 sorted(inherited), hash_of, {}, keys)
                (got.full if keys is None else got.partial).update(frames)
                got.from_zarr += len(inherited)
        zarr_slots = [s for s in missing if s < applied]
        blob_slots = [s for s in missing if s >= applied]
        if blob_slots:
            zarr_slots += await self._load_blobs(room, blob_slots, hash_of, got)
        if not zarr_slots:
            return
        zarr_slots.sort()
        small = self._cache.enabled and len(zarr_slots) <= READ_AHEAD_MAX_REQUEST
        # Small requests read whole frames even for keys= (so that they can be cached),
        # unless the room's frames are known to be too large for that.
        whole = keys is None or (small and self._fits(room, len(zarr_slots)))
        extra = await self._neighbours(room, zarr_slots, hash_of, indices, applied) \
            if small and whole else {}
        read_keys = None if whole else keys
        frames = await asyncio.to_thread(self._read_zarr, room, store, zarr_slots,
                                         hash_of, extra, read_keys)
        (got.full if read_keys is None else got.partial).update(frames)
        got.from_zarr += len(zarr_slots)
        got.read_ahead = len(extra)

    def _fits(self, room: str, n_frames: int) -> bool:
        """Whether ``n_frames`` of the room fit the read-ahead share of the cache (yes
        while the room's frame size is unknown: the first read learns it)."""
        memory = self._rooms.get(room)
        size = memory.frame_bytes if memory is not None else 0
        return size * n_frames <= self._cache.budget_bytes * READ_AHEAD_SHARE

    async def _load_blobs(self, room: str, slots: list[int], hash_of: dict[int, str],
                          got: _Load) -> list[int]:
        """Read staged blobs into ``got`` (and the cache); returns the slots whose blob
        is gone (applied and deleted since we read ``applied``)."""
        values: list[Any] = await self._redis.mget([rkeys.blob(room, hash_of[s])
                                                    for s in slots])
        gone = []
        found: list[tuple[str, bytes]] = []
        for slot, value in zip(slots, values, strict=True):
            if value is None:
                gone.append(slot)
            else:
                got.full[slot] = value
                found.append((hash_of[slot], value))
        self._cache.put_many(found)
        got.from_blobs = len(found)
        return gone

    async def _neighbours(self, room: str, zarr_slots: list[int], hash_of: dict[int, str],
                          indices: Sequence[int], applied: int) -> dict[int, str]:
        """Slot -> hash of uncached frames near the requested indices worth reading ahead:
        readable from Zarr, close to a requested slot, within the read-ahead budget."""
        memory = self._rooms.get(room)
        if self._index is None or not indices or memory is None or not memory.frame_bytes:
            return {}
        first, last = min(indices), max(indices)
        start, stop = memory.window(first, last)
        limit = min(stop - start, int(self._cache.budget_bytes * READ_AHEAD_SHARE)
                    // memory.frame_bytes)
        if limit <= 0:
            return {}
        view = await self._index.read(room, start=start, stop=stop)

        def distance(pair: tuple[int, FrameEntry]) -> int:
            return min(abs(pair[0] - i) for i in indices)

        picked: dict[int, str] = {}
        for _, entry in sorted(zip(view.indices, view.entries, strict=True), key=distance):
            if len(picked) >= limit:
                break
            slot = entry.slot
            if (slot >= applied or slot in hash_of or slot in picked
                    or entry.hash in self._cache
                    or not _near(slot, zarr_slots, READ_AHEAD_SLOT_REACH)):
                continue
            picked[slot] = entry.hash
        return picked

    def _read_zarr(self, room: str, store: FrameStore, slots: list[int],
                   hash_of: dict[int, str], extra: dict[int, str],
                   keys: Sequence[str] | None) -> dict[int, bytes]:
        """One Zarr read of ``slots`` plus ``extra`` (read ahead), encoded once; whole
        frames go into the cache, the read-ahead ones first (less recently used)."""
        ahead = list(extra)
        frames = store.read_slots(room, slots + ahead, keys)
        encoded = [frame_to_bytes(f) for f in frames]
        wanted = dict(zip(slots, encoded[:len(slots)], strict=True))
        if keys is None:
            self._cache.put_many(zip(extra.values(), encoded[len(slots):], strict=True),
                                 read_ahead=True)
            self._cache.put_many((hash_of[s], b) for s, b in wanted.items())
        return wanted

    def _remember(self, room: str, blobs: Iterable[bytes], indices: Sequence[int]) -> None:
        memory = self._rooms.pop(room, None) or _RoomMemory()
        self._rooms[room] = memory  # most recent last
        while len(self._rooms) > ROOM_MEMORY:
            self._rooms.popitem(last=False)
        sizes = [len(b) for b in blobs]
        if sizes:
            memory.frame_bytes = max(1, sum(sizes) // len(sizes))
        if indices:
            memory.last = (min(indices), max(indices))

    def _log(self, room: str, got: _Load) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("read %s: %d cached, %d from blobs, %d from zarr, %d read ahead; "
                      "cache %s", room, got.cached, got.from_blobs, got.from_zarr,
                      got.read_ahead, self._cache.stats())


def pack_frames_response(room: str, seq: int, n_frames: int, indices: Sequence[int],
                         entries: Sequence[FrameEntry], by_slot: dict[int, bytes]) -> bytes:
    """The GET response, with the frames' encoded bytes spliced in (never re-encoded)."""
    packer = msgpack.Packer(use_bin_type=True)
    header: list[tuple[str, Any]] = [
        ("room", room), ("seq", seq), ("n_frames", n_frames), ("indices", list(indices)),
        ("frame_ids", [e.frame_id for e in entries]),
        ("versions", [e.version for e in entries]),
        ("hashes", [e.hash for e in entries]),
    ]
    parts = [packer.pack_map_header(len(header) + 1)]
    for key, value in header:
        parts += (packer.pack(key), packer.pack(value))
    parts += (packer.pack("frames"), packer.pack_array_header(len(entries)))
    parts += (by_slot[e.slot] for e in entries)
    return b"".join(parts)
