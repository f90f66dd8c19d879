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
import math
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import repeat
from typing import Any, NamedTuple, Protocol

import msgpack
import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from trajhub.control import IndexReader
from trajhub.control.index import IndexOutOfRange, RawIndex
from trajhub.gateway.cache import Blob, FrameCache, Ordered
from trajhub.gateway.index_watch import IndexWatch
from trajhub.gateway.pipelined import PipelinedRedis
from trajhub.shared import keys as rkeys
from trajhub.shared.codec import frame_parts, packb
from trajhub.shared.frame_encoder import (
    EmptySlab,
    empty_slab,
    encode_columns,
    encode_frames,
    encode_slab,
)
from trajhub.shared.frames import Array, SlotColumns
from trajhub.shared.ports import FrameStore
from trajhub.shared.staging import StagingPacks, packs_of, read_staged

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
SLAB_SHARE = 0.5
"""A run of alike frames read from Zarr of at most this share of the cache budget is
cached as one slab (see ``FrameCache.put_slab``), so that reading it again sends views of
the slab rather than copying each frame into the answer."""
INLINE_MAX_BYTES = 2**20
"""Up to this many bytes of whole frames are cut down to ``keys=`` on the event loop."""
ROOM_MEMORY = 4096
SPLICE_MIN_BYTES = 2**20
"""Frames at least this large that a read of several frames takes from Zarr are answered
as their arrays' own buffers between the encoded bytes around them (``frame_parts``):
never joined into one bytes object (a copy into fresh memory, a fifth of such a read),
nor cached (a few of them would flush the cache). A read of one frame (a viewer's) is
joined and cached as any other."""
# Index reads kept to be asked again only if the room moved on (ReadViews): at most
# this many entries in all (~0.3 KB each; a view's own objects count as VIEW_OVERHEAD
# more), of reads of at least this many frames (the read-ahead windows of a viewer's
# scrubbing, ~65 frames each, are not kept), or of any size with an index watch.
VIEWS_MAX_ENTRIES = 2**16
VIEWS_MIN_FRAMES = 256
VIEW_OVERHEAD = 4
INDEX_WINDOW = 256
"""With the index watch, a read of a few indices not made before is cut out of the read of
their aligned window of this many (made once, kept while the room does not move): a
viewer scrubbing, or jumping about, no longer asks Redis for each new frame's entry."""

Parts = tuple[bytes | memoryview, ...]
"""A frame's encoded bytes in pieces (their concatenation is its ``frame_to_bytes``)."""


class EntryLike(Protocol):
    """What the read path uses of an index entry (a FrameEntry, or an Entry)."""

    @property
    def frame_id(self) -> int: ...
    @property
    def version(self) -> int: ...
    @property
    def hash(self) -> str: ...
    @property
    def slot(self) -> int: ...


class Entry(NamedTuple):
    """An index entry as the read path parses it: a FrameEntry without pydantic's
    per-object validation (~5 us each, which dominated reads of thousands of frames)."""

    frame_id: int
    version: int
    hash: str
    slot: int


@dataclass(frozen=True)
class ReadView:
    """``IndexView`` with light entries: ``entries[i]`` is the frame at ``indices[i]``."""

    seq: int
    n_frames: int
    exists: bool
    indices: list[int]
    entries: list[Entry]

    @cached_property
    def entry_fields(self) -> bytes:
        """``pack_entry_fields`` of this view, packed once: a kept view (ReadViews)
        answers every repeat of its read."""
        return pack_entry_fields(self.indices, self.entries)


def parse_entries(fids: bytes | str, packed: bytes | str) -> list[Entry]:
    """The entries of read_index.lua's two flat strings (``fid,...`` and
    ``version:hash:slot,...``; see ``trajhub.shared.index``)."""
    fid_text = fids.decode() if isinstance(fids, bytes) else fids
    if not fid_text:
        return []
    text = packed.decode() if isinstance(packed, bytes) else packed
    parts = text.replace(":", ",").split(",")
    ids = fid_text.split(",")
    if len(parts) != 3 * len(ids):
        raise ValueError(f"malformed index entries for {len(ids)} frame ids")
    # tuple.__new__ makes each Entry in C (Entry(...) runs a Python-level __new__).
    return list(map(tuple.__new__, repeat(Entry),
                    zip(map(int, ids), map(int, parts[0::3]), parts[1::3],
                        map(int, parts[2::3]), strict=True)))


Selection = tuple[str | int | None, ...]


class ReadViews:
    """Index reads of many frames, kept with the room's ``created`` to be asked again
    ``unless`` the room is still at their seq (``read_index.lua``): at one seq a read's
    answer never changes, so a repeated read of a long range (a reader reading a whole
    trajectory again) costs one small script instead of resolving and parsing every
    entry. Bounded by the entries held (least recently used first); reads of fewer than
    ``min_frames`` frames are not kept (their script costs no more than the check)."""

    def __init__(self, max_entries: int = VIEWS_MAX_ENTRIES,
                 min_frames: int = VIEWS_MIN_FRAMES) -> None:
        self.max_entries = max_entries
        self.min_frames = min_frames
        self._views: OrderedDict[tuple[str, Selection], tuple[str, ReadView]] = OrderedDict()
        self._held = 0

    def get(self, room: str, sel: Selection) -> tuple[str, ReadView] | None:
        kept = self._views.get((room, sel))
        if kept is not None:
            self._views.move_to_end((room, sel))
        return kept

    def put(self, room: str, sel: Selection, created: str, view: ReadView) -> None:
        n = len(view.entries)
        if not view.exists or not created or n < self.min_frames or n > self.max_entries:
            return
        old = self._views.pop((room, sel), None)
        if old is not None:
            self._held -= _charge(old[1])
        self._views[(room, sel)] = (created, view)
        self._held += _charge(view)
        while self._held > self.max_entries:
            _, (_, dropped) = self._views.popitem(last=False)
            self._held -= _charge(dropped)


def _charge(view: ReadView) -> int:
    """A kept view's share of ``max_entries``: its entries, and a view's own objects
    counted as a few more (a watched gateway keeps one-frame reads too)."""
    return len(view.entries) + VIEW_OVERHEAD


class IndexScript:
    """``IndexReader.read`` (the same script, the same answers and errors) returning
    light entries, for the frame read path; sent over ``fast`` (a pipelined
    connection) when there is one, through redis-py when not or when it fails. A read
    of many frames made before at the room's current seq is answered from ``views``
    after one small script; with a ``watch``, a read of any size made before is answered
    from ``views`` without Redis while the watch knows the room has not moved."""

    def __init__(self, redis: aioredis.Redis, fast: PipelinedRedis | None = None) -> None:
        self._reader = IndexReader(redis)
        self._fast = fast
        self.views = ReadViews()
        self.watch: IndexWatch | None = None

    def use_watch(self, watch: IndexWatch) -> None:
        self.watch = watch
        self.views.min_frames = 1

    async def read(self, room: str, *, indices: list[int] | None = None,
                   start: int | None = 0, stop: int | None = None,
                   step: int | None = 1) -> ReadView:
        sel: Selection = ("i", *indices) if indices is not None else ("s", start, stop, step)
        kept = self.views.get(room, sel)
        watch = self.watch
        if watch is not None:
            now = watch.current(room)
            if now is None:
                watch.arm(room)
            elif kept is not None and now == (kept[1].seq, kept[0]):
                return kept[1]
            elif indices is not None and (first := _window_of(indices)) is not None:
                derived = await self._from_window(room, sel, indices, first)
                if derived is not None:
                    return derived
        unless = None if kept is None else (kept[1].seq, kept[0])
        raw = None
        if self._fast is not None:
            raw = await self._read_fast(room, indices, start, stop, step, unless)
        if raw is None:
            raw = await self._reader.read_raw(room, indices=indices, start=start, stop=stop,
                                              step=step, unless=unless)
        if raw.unchanged and kept is not None:
            return kept[1]
        view = ReadView(seq=raw.seq, n_frames=raw.n_frames, exists=raw.exists,
                        indices=raw.indices, entries=parse_entries(raw.fids, raw.packed))
        self.views.put(room, sel, raw.created, view)
        return view

    async def _from_window(self, room: str, sel: Selection, indices: list[int],
                           first: int) -> ReadView | None:
        """The read of ``indices`` (all in the window from ``first``) cut out of the
        window's read, kept while the room does not move; None when the window does not
        hold them all (the caller's own read then says why)."""
        try:
            window = await self.read(room, start=first, stop=first + INDEX_WINDOW, step=1)
        except IndexOutOfRange:
            return None
        kept = self.views.get(room, ("s", first, first + INDEX_WINDOW, 1))
        if not window.exists or kept is None or kept[1] is not window \
                or max(indices) - first >= len(window.entries):
            return None
        view = ReadView(seq=window.seq, n_frames=window.n_frames, exists=True,
                        indices=list(indices),
                        entries=[window.entries[i - first] for i in indices])
        self.views.put(room, sel, kept[0], view)
        return view

    async def _read_fast(self, room: str, indices: list[int] | None, start: int | None,
                         stop: int | None, step: int | None,
                         unless: tuple[int, str] | None) -> RawIndex | None:
        """The read over the pipelined connection; None if that connection failed (the
        caller then uses redis-py, which reconnects and retries)."""
        assert self._fast is not None
        keys_, args = IndexReader.script_call(room, indices=indices, start=start, stop=stop,
                                              step=step, unless=unless)
        sha, source = self._reader.script
        call: tuple[str | int, ...] = ("EVALSHA", sha, len(keys_), *keys_, *args)
        try:
            try:
                reply = await self._fast.call(*call)
            except ResponseError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                await self._fast.call("SCRIPT", "LOAD", source)
                reply = await self._fast.call(*call)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.debug("gateway: pipelined index read failed (%s); using redis-py", exc)
            return None
        return IndexReader.answer(reply, indices)


def _window_of(indices: list[int]) -> int | None:
    """The first index of the INDEX_WINDOW-aligned window holding every one of
    ``indices`` (none negative), if there is one."""
    if not indices or min(indices) < 0:
        return None
    first = min(indices) // INDEX_WINDOW * INDEX_WINDOW
    return first if max(indices) < first + INDEX_WINDOW else None


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


def select_keys(blob: Blob, keys: Sequence[str]) -> bytes:
    """A staged blob (canonical frame bytes) cut down to ``keys``, re-packed."""
    frame = msgpack.unpackb(blob, raw=False)
    return packb({k: frame[k] for k in sorted(keys) if k in frame})


def subset_all(by_slot: Mapping[int, Blob], keys: Sequence[str] | None) -> dict[int, Blob]:
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

    full: dict[int, Blob] = field(default_factory=dict)
    partial: dict[int, Blob] = field(default_factory=dict)
    spliced: dict[int, Parts] = field(default_factory=dict)
    cached: int = 0
    from_blobs: int = 0
    from_zarr: int = 0
    read_ahead: int = 0


@dataclass(frozen=True, slots=True)
class Loaded:
    """What ``FrameLoader.load_frames`` found: encoded frames by slot (``spliced``: those
    answered in pieces, only when asked for), and whether any of them was read from
    Zarr. ``ordered``, when asked for and every frame is cached: parts whose
    concatenation is the entries' frames in their order (``by_slot`` is empty then)."""

    by_slot: dict[int, Blob]
    from_zarr: bool
    spliced: dict[int, Parts] = field(default_factory=dict)
    ordered: Ordered | None = None


class FrameLoader:
    """Loads the encoded bytes of a room's frames by slot (one entry per distinct slot).

    One per gateway: it remembers each room's typical encoded frame size, which bounds
    how far a request may read ahead (before the first read of a room, it does not),
    and where the room's last request was, to tell scrubbing from random access.
    """

    def __init__(self, redis: aioredis.Redis, cache: FrameCache | None = None,
                 index: IndexReader | None = None, fast: PipelinedRedis | None = None) -> None:
        self._redis = redis
        self._cache = cache if cache is not None else FrameCache(0)
        self.index = IndexScript(redis, fast)
        """The room index with light entries, for the read path."""
        self._read_ahead = index is not None
        self._rooms: OrderedDict[str, _RoomMemory] = OrderedDict()
        self._packs: tuple[FrameStore, StagingPacks | None] | None = None

    async def load(self, room: str, store: FrameStore, entries: Sequence[EntryLike],
                   keys: Sequence[str] | None,
                   indices: Sequence[int] = ()) -> dict[int, Blob]:
        """Encoded frames by slot; ``indices`` (the logical indices of ``entries``)
        centre the read-ahead window (none without them)."""
        return (await self.load_frames(room, store, entries, keys, indices)).by_slot

    async def load_frames(self, room: str, store: FrameStore, entries: Sequence[EntryLike],
                          keys: Sequence[str] | None, indices: Sequence[int] = (), *,
                          splice: bool = False, ordered: bool = False) -> Loaded:
        """``load``, also saying whether any frame was read from Zarr (only those can
        be affected by a compaction running meanwhile: cached frames and blobs are
        content-addressed); with ``splice``, a bulk read's large frames from Zarr come
        as ``Loaded.spliced`` (see SPLICE_MIN_BYTES), not in ``by_slot``; with
        ``ordered``, whole frames all in the cache (before or after the read) come as
        ``Loaded.ordered``."""
        run = [e.hash for e in entries] if ordered and keys is None else None
        if run is not None:
            cached = self._cache.get_run(run)
            if cached is not None:
                self._remember(room, sum(map(len, cached)), len(entries), indices)
                self._log(room, _Load(cached=len(entries)))
                return Loaded({}, False, ordered=cached)
        hash_of = {e.slot: e.hash for e in entries}
        if not hash_of:
            return Loaded({}, False)
        hits = self._cache.get_many(hash_of.values())
        got = _Load(full={s: hits[h] for s, h in hash_of.items() if h in hits})
        got.cached = len(got.full)
        missing = [s for s in hash_of if s not in got.full]
        if missing:
            await self._load_missing(room, store, missing, hash_of, keys, indices, got,
                                     splice and len(hash_of) > 1)
        sizes = [*map(len, got.full.values())]
        if keys is None:  # (with keys, spliced frames may hold only those)
            sizes += map(parts_nbytes, got.spliced.values())
        self._remember(room, sum(sizes), len(sizes), indices)
        self._log(room, got)
        zarr = got.from_zarr > 0
        if run is not None and not got.spliced:  # now cached, maybe as a slab: its views
            cached = self._cache.get_run(run, count=False)
            if cached is not None:
                return Loaded({}, zarr, ordered=cached)
        if keys is None:
            return Loaded(got.full, zarr, got.spliced)
        if sum(len(b) for b in got.full.values()) <= INLINE_MAX_BYTES:
            out = subset_all(got.full, keys)
        else:
            out = await asyncio.to_thread(subset_all, got.full, keys)
        out.update(got.partial)
        return Loaded(out, zarr, got.spliced)

    async def _load_missing(self, room: str, store: FrameStore, missing: list[int],
                            hash_of: dict[int, str], keys: Sequence[str] | None,
                            indices: Sequence[int], got: _Load, splice: bool) -> None:
        applied, origin = await applied_and_origin(self._redis, room)
        if origin is not None and applied < origin[1]:
            # A fork whose first event storage has not applied yet: its group does not
            # know its parent, but the slots below parent_slots are the parent's (the
            # fork waited for the parent to apply them), so read them from there.
            inherited = [s for s in missing if s < origin[1]]
            missing = [s for s in missing if s >= origin[1]]
            if inherited:
                inherited.sort()
                frames, spliced = await asyncio.to_thread(
                    self._read_zarr, origin[0], store, inherited, hash_of, {}, keys,
                    splice)
                (got.full if keys is None else got.partial).update(frames)
                got.spliced.update(spliced)
                got.from_zarr += len(inherited)
        zarr_slots = [s for s in missing if s < applied]
        blob_slots = [s for s in missing if s >= applied]
        if blob_slots:
            zarr_slots += await self._load_blobs(room, store, blob_slots, hash_of, got)
        if not zarr_slots:
            return
        zarr_slots.sort()
        small = self._cache.enabled and len(zarr_slots) <= READ_AHEAD_MAX_REQUEST
        # Small requests read whole frames even for keys= (so that they can be cached),
        # unless the room's frames are known to be too large for that.
        whole = keys is None or (small and self._fits(room, len(zarr_slots)))
        # Nor is a read of several large frames read ahead: they would not be spliced.
        ahead = small and whole and not (splice and self._frame_bytes(room) >= SPLICE_MIN_BYTES)
        extra = await self._neighbours(room, zarr_slots, hash_of, indices, applied) \
            if ahead else {}
        read_keys = None if whole else keys
        # Whole frames read for keys= are cut down from their bytes later: not spliced.
        frames, spliced = await asyncio.to_thread(self._read_zarr, room, store, zarr_slots,
                                                  hash_of, extra, read_keys,
                                                  splice and read_keys == keys)
        (got.full if read_keys is None else got.partial).update(frames)
        got.spliced.update(spliced)
        got.from_zarr += len(zarr_slots)
        got.read_ahead = len(extra)

    def _fits(self, room: str, n_frames: int) -> bool:
        """Whether ``n_frames`` of the room fit the read-ahead share of the cache (yes
        while the room's frame size is unknown: the first read learns it)."""
        return self._frame_bytes(room) * n_frames <= self._cache.budget_bytes * READ_AHEAD_SHARE

    def _frame_bytes(self, room: str) -> int:
        """The room's typical encoded frame size (0 before its first read)."""
        memory = self._rooms.get(room)
        return memory.frame_bytes if memory is not None else 0

    def _packs_of(self, store: FrameStore) -> StagingPacks | None:
        if self._packs is None or self._packs[0] is not store:
            self._packs = (store, packs_of(store))
        return self._packs[1]

    async def _load_blobs(self, room: str, store: FrameStore, slots: list[int],
                          hash_of: dict[int, str], got: _Load) -> list[int]:
        """Read staged blobs (from Redis, or the packs their markers name) into ``got``
        (and the cache); returns the slots whose blob is gone (applied and deleted since
        we read ``applied``)."""
        values = await read_staged(self._redis, self._packs_of(store), room,
                                   [rkeys.blob(room, hash_of[s]) for s in slots])
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
        if not self._read_ahead or not indices or memory is None or not memory.frame_bytes:
            return {}
        first, last = min(indices), max(indices)
        start, stop = memory.window(first, last)
        limit = min(stop - start, int(self._cache.budget_bytes * READ_AHEAD_SHARE)
                    // memory.frame_bytes)
        if limit <= 0:
            return {}
        view = await self.index.read(room, start=start, stop=stop)

        def distance(pair: tuple[int, Entry]) -> int:
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
                   keys: Sequence[str] | None, splice: bool = False
                   ) -> tuple[dict[int, Blob], dict[int, Parts]]:
        """One Zarr read of ``slots`` plus ``extra`` (read ahead), encoded once; whole
        frames go into the cache, the read-ahead ones first (less recently used), a run
        of alike frames (a bulk read's) as one slab. With ``splice``, the large frames
        of ``slots`` come apart (second map, not cached)."""
        into = _SlabInto(len(slots), self._slab_fits) if keys is None and not extra else None
        columns, frames = store.read_columns(room, slots + list(extra), keys, into)
        encoded: dict[int, Blob] = {}
        slabs: list[tuple[range, memoryview, int]] = []
        for run in columns:
            run_slots = range(run.start, run.start + run.count)
            slab = into.filled(run) if into is not None else None  # (read into it)
            if slab is None and splice and run.frame_nbytes >= SPLICE_MIN_BYTES:
                frames.update(zip(run_slots, run.frames(), strict=True))
                continue
            if slab is None:
                if keys is not None or extra \
                        or not self._slab_fits(run.count * run.frame_nbytes):
                    encoded.update(zip(run_slots, encode_columns(run), strict=True))
                    continue
                slab = encode_slab(run)
            if slab is None:  # no one layout fits them (encode_columns would find the same)
                encoded.update(zip(run_slots, encode_frames(run.frames()), strict=True))
                continue
            data, stride = slab
            encoded.update(zip(run_slots, (data[i:i + stride]
                                           for i in range(0, len(data), stride)), strict=True))
            slabs.append((run_slots, data, stride))
        spliced: dict[int, Parts] = {}
        if splice:
            spliced = {s: tuple(frame_parts(frames[s])) for s in slots if s in frames
                       and sum(a.nbytes for a in frames[s].values()) >= SPLICE_MIN_BYTES}
        rest = sorted(s for s in frames if s not in spliced)
        encoded.update(zip(rest, encode_frames([frames[s] for s in rest]), strict=True))
        wanted = {s: encoded[s] for s in slots if s not in spliced}
        if keys is None:
            self._cache.put_many(((h, encoded[s]) for s, h in extra.items()), read_ahead=True)
            in_slabs: set[int] = set()
            for run_slots, data, stride in slabs:
                self._cache.put_slab([hash_of[s] for s in run_slots], data, stride)
                in_slabs.update(run_slots)
            self._cache.put_many((hash_of[s], b) for s, b in wanted.items()
                                 if s not in in_slabs)
        return wanted, spliced

    def _slab_fits(self, nbytes: int) -> bool:
        """Whether a run of ``nbytes`` (its arrays) is encoded as one slab for the cache:
        a run of at most SLAB_SHARE of its budget."""
        return nbytes <= self._cache.budget_bytes * SLAB_SHARE

    def _remember(self, room: str, nbytes: int, n_frames: int,
                  indices: Sequence[int]) -> None:
        memory = self._rooms.pop(room, None) or _RoomMemory()
        self._rooms[room] = memory  # most recent last
        while len(self._rooms) > ROOM_MEMORY:
            self._rooms.popitem(last=False)
        if n_frames:
            memory.frame_bytes = max(1, nbytes // n_frames)
        if indices:
            memory.last = (min(indices), max(indices))

    def _log(self, room: str, got: _Load) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("read %s: %d cached, %d from blobs, %d from zarr, %d read ahead; "
                      "cache %s", room, got.cached, got.from_blobs, got.from_zarr,
                      got.read_ahead, self._cache.stats())


class _SlabInto:
    """``into`` of a bulk read of ``count`` slots (see ``FrameStore.read_columns``): when
    they are one run whose slab the cache would keep, its keys are read straight into
    an empty slab (``empty_slab``) rather than into blocks that are then encoded into
    one: a new process's memory is written once instead of twice."""

    def __init__(self, count: int, fits: Callable[[int], bool]) -> None:
        self.count = count
        self.fits = fits
        self.slab: EmptySlab | None = None

    def __call__(self, layout: dict[str, tuple[np.dtype[Any], tuple[int, ...]]]
                 ) -> dict[str, Array] | None:
        nbytes = sum(math.prod(shape) * dtype.itemsize for dtype, shape in layout.values())
        if not self.fits(self.count * nbytes):
            return None
        self.slab = empty_slab(layout, self.count)
        return None if self.slab is None else self.slab.columns

    def filled(self, run: SlotColumns) -> tuple[memoryview, int] | None:
        """The slab, ``run`` copied into it where it was not read in place; None if
        ``run`` is not the run the slab was made for."""
        slab = self.slab
        if slab is None or run.count != self.count \
                or any(key not in run.arrays for key in slab.columns) \
                or any(key not in slab.columns and column.size
                       for key, column in run.arrays.items()):  # (no bytes: no column)
            return None
        self.slab = None  # (one run: a slab is handed out once)
        for key, target in slab.columns.items():
            column = run.arrays[key]
            if column.shape != target.shape:
                return None
            if not np.shares_memory(column, target):
                target[...] = column
        return slab.view(), slab.stride


def pack_entry_fields(indices: Sequence[int], entries: Sequence[EntryLike]) -> bytes:
    """The ``indices``, ``frame_ids``, ``versions`` and ``hashes`` fields of a GET
    frames answer (keys and values), packed."""
    packer = msgpack.Packer(use_bin_type=True)
    return b"".join([
        packer.pack("indices"), packer.pack(list(indices)),
        packer.pack("frame_ids"), packer.pack([e.frame_id for e in entries]),
        packer.pack("versions"), packer.pack([e.version for e in entries]),
        packer.pack("hashes"), packer.pack([e.hash for e in entries])])


def pack_frames_parts(room: str, seq: int, n_frames: int, entry_fields: bytes,
                      entries: Sequence[EntryLike], by_slot: Mapping[int, Blob],
                      spliced: Mapping[int, Parts] | None = None,
                      ordered: Ordered | None = None) -> list[bytes | memoryview]:
    """The GET response in parts whose concatenation is the answer: the header (with
    ``entry_fields``, see ``pack_entry_fields``), then each frame's encoded bytes as
    they are (never re-encoded; a slot of ``spliced`` its pieces; ``ordered``: the
    entries' frames in their order, instead of ``by_slot``). The caller joins the small
    ones (``coalesce`` / ``coalesce_into``).

    With ``ordered`` runs of frames of one layout (see ``Ordered.runs``), the answer
    says so in ``runs``, before ``frames``: ``[first, count, stride]`` each."""
    packer = msgpack.Packer(use_bin_type=True)
    runs = ordered.runs if ordered is not None else []
    header = packer.pack_map_header(9 if runs else 8) + b"".join([
        packer.pack("room"), packer.pack(room), packer.pack("seq"), packer.pack(seq),
        packer.pack("n_frames"), packer.pack(n_frames), entry_fields,
        *((packer.pack("runs"), packer.pack(runs)) if runs else ()),
        packer.pack("frames"), packer.pack_array_header(len(entries))])
    parts: list[bytes | memoryview] = [header]
    if ordered is not None:
        parts += ordered
    elif spliced:
        for e in entries:
            pieces = spliced.get(e.slot)
            if pieces is None:
                parts.append(by_slot[e.slot])
            else:
                parts += pieces
    else:
        parts += [by_slot[e.slot] for e in entries]
    return parts


def parts_nbytes(parts: Parts) -> int:
    return sum(map(len, parts))


def coalesce_into(parts: list[bytes | memoryview], chunk_bytes: int, buf: bytearray
                  ) -> list[bytes | memoryview]:
    """``parts`` with every part under ``chunk_bytes`` copied into ``buf`` (at least
    their total size), each run of them between larger parts sent as one view of ``buf``: a
    reused buffer, where joining them (``coalesce``) writes fresh memory, which cost
    ~0.7 ms per MB on a VM (3-4x the copy itself)."""
    if len(buf) < (need := small_nbytes(parts, chunk_bytes)):
        raise ValueError(f"{len(buf)}-byte buffer for {need} bytes of small parts")
    out: list[bytes | memoryview] = []
    view = memoryview(buf)
    start = pos = 0
    for part in parts:
        n = len(part)
        if n >= chunk_bytes:
            if pos > start:
                out.append(view[start:pos])
                start = pos
            out.append(part)
        else:
            view[pos:pos + n] = part
            pos += n
    if pos > start:
        out.append(view[start:pos])
    return out


def small_nbytes(parts: Sequence[bytes | memoryview], chunk_bytes: int) -> int:
    """The bytes of the parts that ``coalesce`` / ``coalesce_into`` copy."""
    return sum(n for n in map(len, parts) if n < chunk_bytes)


def coalesce(parts: list[bytes | memoryview], chunk_bytes: int) -> list[bytes | memoryview]:
    """``parts`` with consecutive parts under ``chunk_bytes`` joined into parts of about
    that size (larger parts stay as they are)."""
    out: list[bytes | memoryview] = []
    pending: list[bytes | memoryview] = []
    size = 0
    for part in parts:
        if len(part) >= chunk_bytes:
            if pending:
                out.append(b"".join(pending))
                pending, size = [], 0
            out.append(part)
            continue
        pending.append(part)
        size += len(part)
        if size >= chunk_bytes:
            out.append(b"".join(pending))
            pending, size = [], 0
    if pending:
        out.append(b"".join(pending))
    return out


class PartsResponse(Response):
    """A response sent as ``parts`` (one ASGI body message each), with the headers a
    ``Response(b"".join(parts), media_type=...)`` would have: a large answer is never
    copied into one buffer. ``sent`` is called once it has been sent (or failed), after
    the response has let go of its parts."""

    def __init__(self, parts: list[bytes | memoryview], media_type: str,
                 sent: Callable[[], None] | None = None) -> None:
        self.parts = parts
        self._sent = sent
        super().__init__(None, media_type=media_type,
                         headers={"content-length": str(sum(map(len, parts)))})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            last = len(self.parts) - 1
            for i, part in enumerate(self.parts):
                await send({"type": "http.response.body", "body": part,
                            "more_body": i < last})
            if not self.parts:
                await send({"type": "http.response.body", "body": b""})
        finally:
            self.parts = []
            if self._sent is not None:
                self._sent()
