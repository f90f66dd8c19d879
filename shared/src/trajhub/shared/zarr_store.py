"""The Zarr v3 ``FrameStore``: one group per room, frames in write-once slots.

Layout of ``<root>/<room>/`` (see docs/architecture.md, "Zarr layout"):

- ``K``: frame key ``K`` (numeric/bool), shape ``(slots, max_dim0, ...)``, zero padded.
  ``K.shape``: int32 ``(slots, max(ndim, 1))``, each slot's true shape; a row whose first
  entry is -1 means the slot has no ``K`` (a 0-d value stores ``[0]`` when present).
  The padded array has one ndim and dtype; a later value of ``K`` with another dtype or
  ndim goes to a variant array ``K@<dtype>_<ndim>d`` (e.g. ``info.x@f4_1d``) with its own
  ``.shape`` companion, so round trips stay exact.
- ``K`` for unicode values: variable-length bytes, one ``packb(encode_array(v))`` per
  slot, ``b""`` where the slot has no ``K``.
- ``_hash``: uint8 ``(slots, 32)``, the raw sha256 content hash of each slot (of the
  whole, merged frame for a patch slot).
- ``_base``: int64 ``(slots,)``, present once a patch was written (group attribute
  ``layered``): -1 for a slot holding a whole frame; for a patch slot, the slot holding
  the rest of its frame. A patch slot holds only the keys the patch set (and those of
  an earlier patch it was made on), so its frame is ``{**frame(_base[s]), **own(s)}``:
  the base's keys, overridden by every key slot ``s`` holds. Bases are always whole
  slots (chains are flattened when written), and rows beyond the array's length are -1.
- ``_order``, ``_frame_id``, ``_version``: int64 ``(n_frames,)``, the projection.
- group attributes: ``n_slots`` (slots fully written), ``applied_seq``, ``n_frames``,
  ``projection_sha256`` (detects a projection torn by a crash), ``trajhub_arrays``
  (frame key -> ``[[array, dtype, ndim], ...]``, the arrays that hold it) and
  ``layered`` (whether ``_base`` exists).

Plain zarr reads: ``g = zarr.open_group(path); n = g["positions.shape"][s, 0];
g["positions"][s, :n]``; where the slot lacks the key (``n == -1``) and
``"_base" in g and s < g["_base"].shape[0] and g["_base"][s] >= 0``, read the key
from slot ``g["_base"][s]`` the same way.

A store keeps in memory, per room, every ``.shape`` array and the data arrays of small
per-frame keys (``SMALL_ROW_BYTES``: cell, pbc, energy), loaded on first read and grown
by reading only new rows (slots are write-once, and a writer appends what it wrote), so
reading a frame costs one Zarr call per per-atom key. A writer also keeps a copy of
the chunk each array last grew in (``TAIL_CACHE_BYTES`` in all): a small append encodes
that chunk from the copy and puts it whole, rather than having Zarr read it back, and a
projection commit rewrites only the projection chunks that changed.

Every write is a whole-object put: zarr's LocalStore (>= 3.1.3), and this module's own
chunk puts to a local directory, write each chunk and metadata document to a temporary
file and rename it into place, a memory store swaps
dict entries, and an object store (``s3://``, FsspecStore) replaces whole objects, so a
reader never sees half a chunk. Slots become readable by
contract only below ``n_slots`` (and, for the gateway, below ``{room}:applied``), which
moves after their chunks are written.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import json
import math
import os
import sys
import threading
import warnings
from bisect import bisect_left
from collections.abc import Callable, Coroutine, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numcodecs import blosc
from zarr.abc.codec import BytesBytesCodec
from zarr.abc.store import Store
from zarr.api.asynchronous import open_group
from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec
from zarr.core.array import AsyncArray
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.core.codec_pipeline import BatchedCodecPipeline
from zarr.core.config import config as zarr_config
from zarr.core.dtype import VariableLengthBytes
from zarr.core.group import AsyncGroup
from zarr.core.metadata import ArrayV3Metadata
from zarr.core.sync import sync
from zarr.errors import NodeNotFoundError, UnstableSpecificationWarning
from zarr.storage import LocalStore, MemoryStore, StorePath

from trajhub.shared.buffers import BlockPool
from trajhub.shared.codec import decode_array, encode_array, packb, unpackb
from trajhub.shared.files import atomic_put, pread_into
from trajhub.shared.frames import (
    MAX_NDIM,
    Array,
    Frame,
    FrameError,
    FrameRun,
    SlotColumns,
    canonical_array,
    check_dtype,
    is_per_atom,
)
from trajhub.shared.gil import Breather
from trajhub.shared.hashing import is_hash
from trajhub.shared.names import InvalidName, check_key_name, check_room_name
from trajhub.shared.ports import Into, ProjectionCommit

# VariableLengthBytes has no ratified v3 spec yet; zarr warns on every use.
warnings.filterwarnings("ignore", category=UnstableSpecificationWarning,
                        message=r".*VariableLengthBytes")

T = TypeVar("T")
ZArray = AsyncArray[Any]

FORMAT_VERSION = 1
ARRAYS_ATTR = "trajhub_arrays"
STRING_DTYPE = "U"
HASH_ARRAY = "_hash"
BASE_ARRAY = "_base"
LAYERED_ATTR = "layered"
PARENT_ATTR = "parent"
PARENT_SLOTS_ATTR = "parent_slots"
MAX_FORK_DEPTH = 64
PROJECTION_ARRAYS = ("_order", "_frame_id", "_version")

CODEC = "auto"
"""Chunk compression: "lz4" (blosc lz4 + byte shuffle), "zstd" (zstd level 1), "none", or
"auto": lz4 for integer, bool and string arrays (atomic numbers, shapes: they shrink
several-fold), none for float and complex ones (simulation noise barely compresses, and
decompressing costs every frame read a blosc call; see bench/zarr_store.py). The
per-slot bookkeeping arrays (each key's ``.shape``, ``_hash``) are never compressed:
they are small, every commit appends to them, and an append to a raw chunk is written
into its file in place (``_write_rows``) where a compressed one is a new file."""
CHUNK_TARGET_BYTES = 1024 * 1024
"""Uncompressed bytes per chunk; appending a frame rewrites one chunk per array. Smaller
chunks read a single frame a little faster but write bulk markedly slower (more files;
see bench/zarr_store.py)."""
MAX_SLOT_CHUNK = 4096
MIN_ATOM_CHUNK = 64
STRING_SLOT_CHUNK = 4096
PROJECTION_CHUNK = 4096
"""Entries per chunk of a projection array; a commit rewrites the chunks that changed."""
RUN_GAP = 64
"""Requested slots closer than this are read as one block (one Zarr call per key)."""
SMALL_ROW_BYTES = 128
"""Per-frame keys (not per atom) with padded rows up to this size (cell, pbc, energy)
are kept in memory once read, like every ``.shape`` array: a frame read then costs one
Zarr call per per-atom key only."""
SMALL_CACHE_BYTES = 8 * 1024 * 1024
"""Largest in-memory copy of one small array (beyond it, reads go to Zarr)."""
DROP_BATCH = 64
"""Chunks ``drop_slots`` sizes and deletes concurrently."""
TAIL_CACHE_BYTES = 16 * 1024 * 1024
"""Copies of the last chunk written of each array (see ``_write_tail``), all rooms
together (least recently used go)."""


@dataclass
class DropStats:
    """What ``ZarrFrameStore.drop_slots`` freed."""

    slots: int = 0
    """Slots marked dropped (their chunks go once every slot in them is dropped)."""
    chunks: int = 0
    bytes: int = 0


class ProjectionError(RuntimeError):
    """The stored projection does not match its checksum (a crash tore the commit)."""


@dataclass(frozen=True)
class _Variant:
    """One array that holds values of a frame key with one dtype (and ndim)."""

    name: str
    dtype: str
    ndim: int

    @property
    def is_string(self) -> bool:
        return self.dtype == STRING_DTYPE

    @property
    def shape_name(self) -> str:
        return f"{self.name}.shape"


Registry = dict[str, tuple[_Variant, ...]]
Layer = tuple[int, Sequence[str]]
"""A patch slot's ``(base slot, keys it stores)``; see ``ZarrFrameStore.write_slots``."""


@dataclass(frozen=True)
class _RoomInfo:
    n_slots: int
    applied_seq: int
    registry: Registry
    layered: bool = False
    """The room has a ``_base`` array (some slot is a patch)."""
    parent: str | None = None
    """A fork: slots below ``parent_slots`` are the ``parent`` room's (nothing copied)."""
    parent_slots: int = 0


@dataclass(frozen=True)
class _Rows:
    """The first ``count`` rows of a slot-indexed array, kept in memory: a ``.shape``
    array, or the data array of a small per-frame key (``SMALL_ROW_BYTES``). Rows below
    ``n_slots`` never change (write-once), so the cache grows by reading only new rows.
    ``buf`` may be shared with a newer, longer entry; only rows >= ``count`` are written
    after this entry was made, so views of ``rows`` stay valid. ``buf`` is read-only
    except while it is being extended: callers get views of it."""

    buf: Array
    count: int

    @staticmethod
    def of(rows: Array) -> _Rows:
        rows.flags.writeable = False
        return _Rows(rows, len(rows))

    @property
    def rows(self) -> Array:
        return self.buf[:self.count]

    @property
    def nbytes(self) -> int:
        return self.count * self.buf[:1].nbytes

    def extended(self, new: Array) -> _Rows:
        end = self.count + len(new)
        buf = self.buf
        if end > len(buf):
            buf = np.empty((max(end, 2 * len(buf)), *buf.shape[1:]), dtype=buf.dtype)
            buf[:self.count] = self.rows
        buf.flags.writeable = True
        buf[self.count:end] = new
        buf.flags.writeable = False
        return _Rows(buf, end)


@dataclass(frozen=True)
class _Cached:
    array: ZArray
    generation: int
    """The room's n_slots read before this array's metadata: the array covers every
    slot below it that holds the array's key."""


@dataclass(frozen=True)
class _Projected:
    """A projection array as this store last committed it (with ``applied_seq``)."""

    array: ZArray
    generation: int
    values: Array


@dataclass
class _Tail:
    """The chunk a room's array grows in, as last written by this store."""

    chunk: int
    end: int
    """The slot count after that write: the copy is current while n_slots is this."""
    data: Array


# -- helpers ------------------------------------------------------------------------------

def _pow2_ceil(n: int) -> int:
    return 1 << max(0, (max(n, 1) - 1).bit_length())


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def chunk_compressors(dtype: Any) -> tuple[BytesBytesCodec, ...]:
    """The compressors of a data array of ``dtype`` (see CODEC)."""
    itemsize = getattr(dtype, "itemsize", 1) or 1
    kind = getattr(dtype, "kind", "O")
    if CODEC == "none" or (CODEC == "auto" and kind in "fc"):
        return ()
    if CODEC == "zstd":
        return (ZstdCodec(level=1),)
    return (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=itemsize,
                       blocksize=max(1, BLOSC_BLOCK_BYTES // itemsize)),)


BLOSC_BLOCK_BYTES = 64 * 2**10
"""Blosc's blocks in new arrays (its own choice was the whole chunk, up to 1 MiB). Each
decompression and compression takes about two blocks of scratch memory, which at 1 MiB
was fresh memory every time (past the mmap threshold, ``memory.tune_malloc``): a
100,000-atom frame's ``numbers`` decompressed in 0.47 ms, 0.15 ms in 64 KiB blocks, and
compressed in 0.46 against 0.20 ms, for 1% more bytes (Blosc multiplies the blocksize
it is given by the item size for shuffled lz4: hence the division)."""


def _slot_chunk(bytes_per_slot: int) -> int:
    return max(1, min(MAX_SLOT_CHUNK, CHUNK_TARGET_BYTES // max(bytes_per_slot, 1)))


def data_chunks(key: str, first_shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunk shape for the padded array of ``key``; ``first_shape`` is the padded shape
    of the first batch written to it.

    Atoms: at least that count rounded up to a power of two (min 64); other axes: their
    first size; slots: enough for ~CHUNK_TARGET_BYTES (at most MAX_SLOT_CHUNK).
    """
    inner = [max(1, n) for n in first_shape]
    if inner and is_per_atom(key):
        inner[0] = max(MIN_ATOM_CHUNK, _pow2_ceil(first_shape[0]))
    return (_slot_chunk(math.prod(inner) * itemsize), *inner)


def _variant_name(key: str, dtype: str, ndim: int, taken: Iterable[_Variant]) -> str:
    if not any(True for _ in taken):
        return key
    if dtype == STRING_DTYPE:
        return f"{key}@str"
    return f"{key}@{dtype.lstrip('<>|=')}_{ndim}d"


def _runs(slots: Iterable[int], gap: int = RUN_GAP) -> list[tuple[int, int]]:
    """Half-open ranges covering sorted unique ``slots``, merging gaps below ``gap``."""
    runs: list[tuple[int, int]] = []
    for s in sorted(set(slots)):
        if runs and s - runs[-1][1] < gap:
            runs[-1] = (runs[-1][0], s + 1)
        else:
            runs.append((s, s + 1))
    return runs


def _parse_registry(attrs: Mapping[str, Any]) -> Registry:
    raw = attrs.get(ARRAYS_ATTR) or {}
    return {key: tuple(_Variant(str(n), str(d), int(nd)) for n, d, nd in entries)
            for key, entries in raw.items()}


def _registry_json(registry: Registry) -> dict[str, list[list[Any]]]:
    return {key: [[v.name, v.dtype, v.ndim] for v in variants]
            for key, variants in sorted(registry.items())}


def _room_info(attrs: Mapping[str, Any] | None) -> _RoomInfo:
    if attrs is None:
        return _RoomInfo(0, 0, {})
    parent = attrs.get(PARENT_ATTR)
    return _RoomInfo(int(attrs.get("n_slots", 0)), int(attrs.get("applied_seq", 0)),
                     _parse_registry(attrs), bool(attrs.get(LAYERED_ATTR, False)),
                     str(parent) if parent else None,
                     int(attrs.get(PARENT_SLOTS_ATTR, 0)) if parent else 0)


def _projection_digest(*arrays: Array) -> str:
    h = hashlib.sha256()
    for arr in arrays:
        h.update(len(arr).to_bytes(8, "little"))
        h.update(np.ascontiguousarray(arr, dtype="<i8").tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class _Projection:
    seq: int
    arrays: tuple[Array, Array, Array]  # order, frame ids, versions (int64)


def _projection_arrays(commit: ProjectionCommit) -> _Projection:
    arrays = (_as_int64(commit.order, "order"), _as_int64(commit.frame_ids, "frame_ids"),
              _as_int64(commit.versions, "versions"))
    if len({len(a) for a in arrays}) != 1:
        raise ValueError("order, frame_ids and versions differ in length")
    return _Projection(int(commit.seq), arrays)


def _check_projection(room: str, projection: _Projection, applied_seq: int,
                      n_slots: int) -> None:
    if projection.seq < applied_seq:
        raise ValueError(f"room {room!r}: seq {projection.seq} is older than the applied "
                         f"seq {applied_seq}")
    order = projection.arrays[0]
    if order.size and (order.min() < 0 or order.max() >= n_slots):
        raise ValueError(f"room {room!r}: order refers to slots outside "
                         f"0..{n_slots - 1}")


def _projection_attrs(projection: _Projection) -> dict[str, Any]:
    """The group attributes that commit ``projection`` (with ``n_slots``)."""
    return {"applied_seq": projection.seq, "n_frames": len(projection.arrays[0]),
            "projection_sha256": _projection_digest(*projection.arrays)}


def _as_int64(values: Sequence[int] | Array, what: str) -> Array:
    arr = np.asarray(values)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(f"{what} must be a 1-d sequence of integers")
    return arr.astype("<i8")


# -- the store ----------------------------------------------------------------------------

def _exact(array: ZArray) -> ZArray:
    # By default zarr skips writing a chunk equal to the fill value, and -0.0 == 0.0:
    # a chunk of negative zeros would read back as positive zeros. Always write.
    return array.with_config({"write_empty_chunks": True})


_MEMORY_STORES: dict[str, MutableMapping[str, Any]] = {}
_MEMORY_LOCK = threading.Lock()


FSSPEC_OPTIONS: dict[str, Any] = {"use_listings_cache": False}
"""Options for every fsspec filesystem (zarr's FsspecStore adds ``asynchronous=True``).
Listings (rooms, snapshots, segments, chunks to drop) must show objects that other
processes wrote since: s3fs would otherwise cache a prefix's listing for good."""
PROTOCOL_OPTIONS: dict[str, dict[str, Any]] = {"s3": {"max_concurrency": 1}}
"""Per protocol. s3fs with ``max_concurrency > 1`` sends a HEAD before every whole-object
GET (to split objects above its 50 MB block size into ranges): a second round trip
per chunk read, for objects that are ~1 MiB here."""


def fsspec_options(url: str) -> dict[str, Any]:
    """The fsspec storage options ``open_zarr_store`` uses for ``url``."""
    protocol = url.split("://", 1)[0].lower()
    protocol = {"s3a": "s3"}.get(protocol, protocol)
    return {**FSSPEC_OPTIONS, **PROTOCOL_OPTIONS.get(protocol, {})}


def open_zarr_store(url: str) -> Store:
    """The zarr Store at ``url``: a directory, ``file://DIR``, ``memory://[name]`` (shared
    by every store opened with the same URL in this process) or another fsspec URL, such
    as ``s3://bucket/prefix`` (s3fs; endpoint, region and credentials from the standard
    AWS variables and files, e.g. ``AWS_ENDPOINT_URL`` for an S3-compatible server)."""
    if url.startswith("memory://"):
        with _MEMORY_LOCK:
            data = _MEMORY_STORES.setdefault(url, {})
        return MemoryStore(data)
    if url.startswith("file://"):
        return LocalStore(url[len("file://"):])
    if "://" in url:
        try:
            from zarr.storage import FsspecStore
            return FsspecStore.from_url(url, storage_options=fsspec_options(url))
        except ImportError as exc:
            raise ValueError(f"storage URL {url!r} needs fsspec and its backend "
                             f"installed: {exc}") from None
    return LocalStore(url)


def open_store(url: str) -> ZarrFrameStore:
    """A FrameStore at ``url`` (see ``open_zarr_store`` for the URL rules)."""
    return ZarrFrameStore(open_zarr_store(url))


class ZarrFrameStore:
    """FrameStore on any zarr v3 store. Thread safe; one writer per room at a time."""

    def __init__(self, store: Store | str | Path) -> None:
        self.store: Store = store if isinstance(store, Store) else LocalStore(store)
        self._lock = threading.Lock()
        self._rooms: dict[str, _RoomInfo] = {}
        self._arrays: dict[tuple[str, str], _Cached] = {}
        self._rows: dict[tuple[str, str], _Rows] = {}
        self._tails: dict[tuple[str, str], _Tail] = {}
        self._projection: dict[tuple[str, str], _Projected] = {}
        self._write_locks: dict[str, threading.Lock] = {}

    def __repr__(self) -> str:
        return f"ZarrFrameStore({self.store!r})"

    # -- small reads ----------------------------------------------------------------------

    def n_slots(self, room: str) -> int:
        return self._refresh(room).n_slots

    def applied_seq(self, room: str) -> int:
        return self._refresh(room).applied_seq

    def keys(self, room: str) -> list[str]:
        """Frame keys that some slot of the room holds."""
        return sorted(self._refresh(room).registry)

    def rooms(self) -> list[str]:
        return _run(self._rooms_async())

    async def _rooms_async(self) -> list[str]:
        try:
            names = [n async for n in self.store.list_dir("")]
        except FileNotFoundError:
            return []
        names = [n for n in names if _valid_room(n)]
        attrs = await asyncio.gather(*(self._load_attrs(n) for n in names))
        return sorted(n for n, a in zip(names, attrs, strict=True) if a is not None)

    async def _load_attrs(self, room: str) -> dict[str, Any] | None:
        """The room group's attributes straight from the store (None: no such group)."""
        buf = await self.store.get(f"{room}/zarr.json", prototype=default_buffer_prototype())
        if buf is None:
            return None
        meta = json.loads(buf.to_bytes())
        if meta.get("node_type") != "group":
            return None
        return dict(meta.get("attributes") or {})

    def _refresh(self, room: str) -> _RoomInfo:
        return _run(self._arefresh(room))

    async def _arefresh(self, room: str) -> _RoomInfo:
        check_room(room)
        info = _room_info(await self._load_attrs(room))
        with self._lock:
            old = self._rooms.get(room)
            if old is not None and info.n_slots < old.n_slots:
                self._forget(room)  # slots only grow: the room was deleted and re-made
            self._rooms[room] = info
        return info

    def _forget(self, room: str) -> None:
        """Drop what is cached about ``room``'s arrays (caller holds ``_lock``)."""
        caches: tuple[dict[tuple[str, str], Any], ...] = (
            self._arrays, self._rows, self._tails, self._projection)
        for cache in caches:
            for k in [k for k in cache if k[0] == room]:
                del cache[k]

    def _room_for(self, room: str, max_slot: int) -> _RoomInfo:
        return _run(self._aroom_for(room, max_slot))

    async def _aroom_for(self, room: str, max_slot: int) -> _RoomInfo:
        with self._lock:
            info = self._rooms.get(room)
        if info is None or max_slot >= info.n_slots:
            info = await self._arefresh(room)
        if max_slot >= info.n_slots:
            raise IndexError(f"room {room!r}: slot {max_slot} is not written "
                             f"(n_slots={info.n_slots})")
        return info

    # -- array cache ----------------------------------------------------------------------

    async def _array(self, room: str, name: str, need: int, generation: int,
                     force: bool = False, fresh: bool = False) -> ZArray | None:
        """The cached array, re-opened when ``need`` lies beyond it and it predates
        ``generation`` (another process may have grown it); with ``fresh``, whenever it
        predates ``generation`` (its padded axes may have grown since); None if it does
        not exist."""
        with self._lock:
            cached = self._arrays.get((room, name))
        if cached is not None and not force and (
                cached.generation >= generation
                or (not fresh and need < cached.array.shape[0])):
            return cached.array
        try:
            array: ZArray = _exact(await _open_array(self.store, f"{room}/{name}"))
        except NodeNotFoundError:
            return None
        with self._lock:
            self._arrays[(room, name)] = _Cached(array, generation)
        return array

    def _remember(self, room: str, array: ZArray, generation: int) -> None:
        with self._lock:
            self._arrays[(room, array.basename)] = _Cached(array, generation)

    # -- reading frames -------------------------------------------------------------------

    def read_slots(self, room: str, slots: Sequence[int],
                   keys: Sequence[str] | None = None) -> list[Frame]:
        """Frames at ``slots`` (any order, repeats allowed), restricted to ``keys``;
        a patch slot gives its whole frame (merged over its base slot).

        One block read per contiguous run of slots (and of their bases) per array; the
        arrays returned are read-only views into those blocks.
        """
        check_room(room)
        slot_list = [int(s) for s in slots]
        if not slot_list:
            return []
        if min(slot_list) < 0:
            raise IndexError(f"negative slot {min(slot_list)}")
        by_slot = _run(self._read_room(room, slot_list, keys, 0))
        return [dict(by_slot[s]) for s in slot_list]

    def read_columns(self, room: str, slots: Sequence[int], keys: Sequence[str] | None = None,
                     into: Into | None = None) -> tuple[list[SlotColumns], dict[int, Frame]]:
        """``read_slots`` of the distinct ``slots``, without cutting each frame out of the
        blocks read where that is not needed: runs of consecutive slots whose frames have
        the same keys, each of one shape and from one block, come as columns (views of
        those blocks), the other slots as frames by slot. Patch slots and a fork's
        inherited slots always come as frames, as do all slots when a key has values of
        several dtypes or strings.

        ``into``: when the slots are one such run, it is told each key's (dtype, shape)
        before anything is read and may give arrays ``(len(slots), *shape)`` (views of a
        bytearray) to read the keys' blocks into, rather than into blocks of their own;
        the columns are then views of those arrays (for a key read some other way, the
        caller copies its column in)."""
        check_room(room)
        slot_list = sorted({int(s) for s in slots})
        if not slot_list:
            return [], {}
        if slot_list[0] < 0:
            raise IndexError(f"negative slot {slot_list[0]}")
        return _run(self._read_columns(room, slot_list, keys, into))

    async def _read_columns(self, room: str, slots: list[int], keys: Sequence[str] | None,
                            into: Into | None = None
                            ) -> tuple[list[SlotColumns], dict[int, Frame]]:
        info = await self._aroom_for(room, slots[-1])
        wanted = info.registry if keys is None else {
            k: info.registry[k] for k in keys if k in info.registry}
        plain = slots[0] >= info.parent_slots and not await self._bases(room, info, slots) \
            and all(len(vs) == 1 and not vs[0].is_string for vs in wanted.values())
        if not plain:
            return [], await self._read_merged(room, info, slots, keys, 0)
        pieces = _Pieces()
        dest = await self._destinations(room, info, slots, wanted, into) \
            if into is not None else {}
        frames = await self._read(room, info, slots, wanted, pieces.take, dest)
        return pieces.columns(slots, frames), frames

    async def _destinations(self, room: str, info: _RoomInfo, slots: list[int],
                            wanted: Registry, into: Into) -> dict[str, Array]:
        """``into``'s arrays when ``slots`` are one run in which every frame holds the
        same keys (of ``wanted``: one variant each), each key of one shape; else none."""
        a, b = slots[0], slots[-1] + 1
        if b - a != len(slots):
            return {}
        items = [(key, vs[0]) for key, vs in wanted.items()]
        shapes = await asyncio.gather(*(self._cached_rows(room, v.shape_name, info.n_slots, -1)
                                        for _, v in items))
        plan: dict[str, tuple[np.dtype[Any], tuple[int, ...]]] = {}
        for (key, v), rows in zip(items, shapes, strict=True):
            if rows is None or len(rows) < b:
                return {}
            part = rows[a:b, :max(v.ndim, 1)]
            held = part[:, 0] >= 0
            if not held.any():
                continue
            if not held.all() or (v.ndim and (part != part[0]).any()):
                return {}
            plan[key] = (np.dtype(v.dtype), tuple(int(n) for n in part[0, :v.ndim]))
        # (_read_run takes an array only if it is the block's shape and dtype)
        return (into(plan) or {}) if plan else {}

    async def _read_room(self, room: str, slots: list[int], keys: Sequence[str] | None,
                         depth: int) -> dict[int, Frame]:
        if depth > MAX_FORK_DEPTH:
            raise ValueError(f"room {room!r}: forks nest deeper than {MAX_FORK_DEPTH}")
        info = await self._aroom_for(room, max(slots))
        return await self._read_merged(room, info, slots, keys, depth)

    async def _read_merged(self, room: str, info: _RoomInfo, slots: list[int],
                           keys: Sequence[str] | None, depth: int) -> dict[int, Frame]:
        """``_read``, with each patch slot's frame laid over its base's; a fork's slots
        below ``parent_slots`` (and patch bases there) come from its parent room, one
        batched read per room."""
        wanted = info.registry if keys is None else {
            k: info.registry[k] for k in keys if k in info.registry}
        cut = info.parent_slots
        own = [s for s in slots if s >= cut]
        bases = await self._bases(room, info, own)
        inherited = sorted({s for s in slots if s < cut} | {b for b in bases.values() if b < cut})
        if not bases and not inherited:
            return await self._read(room, info, own, wanted)
        own_reads = [*own, *(b for b in bases.values() if b >= cut)]
        jobs = [self._read(room, info, own_reads, wanted) if own_reads else _nothing()]
        if inherited:
            assert info.parent is not None
            jobs.append(self._read_room(info.parent, inherited, keys, depth + 1))
        parts = await asyncio.gather(*jobs)
        out = {k: v for part in parts for k, v in part.items()}
        for s, b in bases.items():
            out[s] = {**out[b], **out[s]}  # bases are whole (or merged): out[b] is final
        return out

    async def _bases(self, room: str, info: _RoomInfo, slots: Sequence[int]
                     ) -> dict[int, int]:
        """Base slot of each patch slot among ``slots`` (all below ``info.n_slots``)."""
        if not info.layered or not slots:
            return {}
        rows = await self._cached_rows(room, BASE_ARRAY, info.n_slots, -1)
        if rows is None:
            return {}
        unique = np.unique(np.asarray(slots, dtype=np.int64))
        found = rows[unique]
        patched = found >= 0
        return dict(zip(unique[patched].tolist(), found[patched].tolist(), strict=True))

    async def _read(self, room: str, info: _RoomInfo, slots: list[int],
                    wanted: Registry, take: _Take | None = None,
                    dest: Mapping[str, Array] | None = None) -> dict[int, Frame]:
        runs = _runs(slots)
        unique = sorted(set(slots))
        frames: dict[int, Frame] = {s: {} for s in unique}
        variants = [(key, v) for key, vs in wanted.items() for v in vs]
        await asyncio.gather(*(self._read_variant(room, info, key, v, runs, unique, frames,
                                                  take or _take, (dest or {}).get(key))
                               for key, v in variants))
        return frames

    async def _read_variant(self, room: str, info: _RoomInfo, key: str, v: _Variant,
                            runs: list[tuple[int, int]], unique: list[int],
                            frames: dict[int, Frame], take: _Take,
                            out: Array | None = None) -> None:
        need = unique[-1]
        if v.is_string:
            array = await self._array(room, v.name, need, info.n_slots)
            if array is not None:
                await asyncio.gather(*(self._read_strings(array, key, a, b, unique, frames)
                                       for a, b in runs))
            return
        shapes, data_arr = await asyncio.gather(
            self._cached_rows(room, v.shape_name, info.n_slots, -1),
            self._array(room, v.name, need, info.n_slots))
        if shapes is None or data_arr is None:
            return
        if _small(key, data_arr, info.n_slots):
            rows = await self._cached_rows(room, v.name, info.n_slots, 0, small_key=key)
            if rows is not None:
                take(key, v, shapes, rows, 0, unique, frames)
                return
        await asyncio.gather(*(self._read_run(room, info, key, v, shapes, data_arr,
                                              a, b, unique, frames, take, out)
                               for a, b in runs))

    async def _cached_rows(self, room: str, name: str, n_slots: int, fill: int,
                           small_key: str | None = None) -> Array | None:
        """Rows ``0..n_slots`` (at least) of array ``name`` from the in-memory cache,
        reading only the rows it lacks (one call); None if the array does not exist.
        Rows beyond the array hold ``fill``: the array covers every slot below n_slots
        that holds its key (see _Cached). ``small_key``: ``name`` is the data array of
        that frame key, whose padded axes may grow (so its metadata must be at least as
        new as ``n_slots``); None if it is no longer small."""
        key = (room, name)
        with self._lock:
            cached = self._rows.get(key)
        if cached is not None and cached.count >= n_slots:
            return cached.rows
        fresh = small_key is not None
        array = await self._array(room, name, n_slots - 1, n_slots, fresh=fresh)
        if array is None or (small_key is not None and not _small(small_key, array, n_slots)):
            return None
        dims = tuple(array.shape[1:])
        base = cached if cached is not None and cached.buf.shape[1:] == dims else None
        start = base.count if base is not None else 0  # padded axes grew: start over
        new = np.full((n_slots - start, *dims), fill, dtype=array.dtype)
        stop = min(n_slots, array.shape[0])
        if stop > start and 0 not in dims:  # (rows of no values: nothing to read)
            new[:stop - start] = await self._fetch_block(array, start, stop, dims)
        with self._lock:
            current = self._rows.get(key)
            if current is cached:
                entry = base.extended(new) if base is not None else _Rows.of(new)
                self._rows[key] = entry
                return entry.rows
            if current is not None and current.count >= n_slots \
                    and current.buf.shape[1:] == dims:
                return current.rows
        # Raced with another reader, a writer or a reset.
        if base is None:
            new.flags.writeable = False
            return new
        return await self._cached_rows(room, name, n_slots, fill, small_key)

    async def _read_strings(self, array: ZArray, key: str, a: int, b: int,
                            unique: list[int], frames: dict[int, Frame]) -> None:
        b = min(b, array.shape[0])
        if a >= b:
            return
        block = await _fetch(array, (slice(a, b),))
        for s in _within(unique, a, b):
            raw = block[s - a]
            if raw:
                frames[s][key] = decode_array(unpackb(raw), key)

    async def _read_run(self, room: str, info: _RoomInfo, key: str, v: _Variant,
                        shapes: Array, data_arr: ZArray, a: int, b: int,
                        unique: list[int], frames: dict[int, Frame], take: _Take,
                        out: Array | None = None) -> None:
        """Read the slots of ``unique`` in ``a..b`` that hold ``key`` with one call;
        ``shapes`` are the variant's cached shape rows (covering ``b``). ``out``: the
        block to read into, if it is just that block."""
        within = _within(unique, a, b)
        present = list(itertools.compress(within, (shapes[within, 0] >= 0).tolist())) \
            if within else []
        if not present:
            return
        a, b = present[0], present[-1] + 1
        dims = tuple(int(n) for n in shapes[present, :v.ndim].max(axis=0)) if v.ndim else ()
        if any(d > n for d, n in zip(dims, data_arr.shape[1:], strict=True)):
            # Our cached metadata predates a resize along the padded axes.
            fresh = await self._array(room, v.name, b, info.n_slots, force=True)
            assert fresh is not None
            data_arr = fresh
        if out is not None and (out.shape != (b - a, *dims) or out.dtype != data_arr.dtype):
            out = None
        if math.prod(dims) == 0:
            block = np.zeros((b - a, *dims), dtype=data_arr.dtype)
        else:
            block = await self._fetch_block(data_arr, a, b, dims, out)
        if out is None:
            block.flags.writeable = False
        take(key, v, shapes, block, a, present, frames)

    async def _fetch_block(self, array: ZArray, a: int, b: int, dims: tuple[int, ...],
                           out: Array | None = None) -> Array:
        """Slots ``a..b`` of ``array``, each cut to ``dims`` (into ``out`` if given). Raw
        chunks in a local directory are read straight into the block (``_RawChunks``);
        anything else, or anything unexpected there, through Zarr."""
        raw = _raw_chunks(array, self.store)
        if raw is not None:
            block = await asyncio.to_thread(raw.read, a, b, dims, out)
            if block is not None:
                return block
        block = await _fetch(array, (slice(a, b), *(slice(0, d) for d in dims)))
        if out is None:
            return block
        out[...] = block
        return out

    def read_hashes(self, room: str, slots: Sequence[int]) -> list[str]:
        """Content hashes of ``slots`` (any order, repeats allowed)."""
        check_room(room)
        slot_list = [int(s) for s in slots]
        if not slot_list:
            return []
        info = self._room_for(room, max(slot_list))
        cut = info.parent_slots
        if info.parent is not None and min(slot_list) < cut:
            below = sorted({s for s in slot_list if s < cut})
            found = dict(zip(below, self.read_hashes(info.parent, below), strict=True))
            above = [s for s in slot_list if s >= cut]
            if above:
                found.update(zip(above, _run(self._read_hashes(room, info, above)),
                                 strict=True))
            return [found[s] for s in slot_list]
        return _run(self._read_hashes(room, info, slot_list))

    async def _read_hashes(self, room: str, info: _RoomInfo, slots: list[int]) -> list[str]:
        array = await self._array(room, HASH_ARRAY, max(slots), info.n_slots)
        if array is None:
            raise IndexError(f"room {room!r} has no hashes")
        runs = _runs(slots)
        blocks = await asyncio.gather(*(_fetch(array, (slice(a, b),)) for a, b in runs))
        out: dict[int, str] = {}
        for (a, b), block in zip(runs, blocks, strict=True):
            for s in range(a, b):
                out[s] = bytes(block[s - a]).hex()
        return [out[s] for s in slots]

    def parent_slots(self, room: str) -> int:
        """A fork's first own slot (slots below are its parent's); 0 for other rooms."""
        return self._refresh(room).parent_slots

    def base_slots(self, room: str, slots: Sequence[int]) -> dict[int, int]:
        """The base slot of each patch slot among the room's own written ``slots``
        (others are left out)."""
        check_room(room)
        info = self._refresh(room)
        own = [int(s) for s in slots if info.parent_slots <= int(s) < info.n_slots]
        return _run(self._bases(room, info, own)) if own else {}

    # -- compaction -----------------------------------------------------------------------

    def drop_slots(self, room: str, slots: Iterable[int]) -> DropStats:
        """Delete the data chunks of the room's own arrays whose every slot is in
        ``slots`` (slots no retained state references). A chunk reaching up to the
        room's slot count is kept: only slots below it are write-once, so a deleted
        chunk is never written again and this cannot race with the room's writer.
        Shape, hash and base rows stay (they are small); reading a dropped slot gives
        fill values, so callers must not read them."""
        check_room(room)
        return _run(self._drop_slots(room, slots))

    async def _drop_slots(self, room: str, slots: Iterable[int]) -> DropStats:
        info = await self._arefresh(room)
        dropped = np.zeros(info.n_slots, dtype=bool)
        picked = np.fromiter((s for s in slots if info.parent_slots <= s < info.n_slots),
                             dtype=np.int64)
        dropped[picked] = True
        stats = DropStats(slots=int(dropped.sum()))
        if not stats.slots:
            return stats
        for name in sorted({v.name for vs in info.registry.values() for v in vs}):
            array = await self._array(room, name, 0, info.n_slots, force=True)
            if array is not None:
                await self._drop_chunks(room, name, array.chunks[0], dropped, stats)
        return stats

    async def _drop_chunks(self, room: str, name: str, per_chunk: int, dropped: Array,
                           stats: DropStats) -> None:
        prefix = f"{room}/{name}/c/"
        doomed = []
        async for key in self.store.list_prefix(prefix):
            first = int(key[len(prefix):].split("/", 1)[0]) * per_chunk
            end = first + per_chunk
            if end <= len(dropped) and dropped[first:end].all():
                doomed.append(key)
        # Concurrently, in batches: on an object store each call is a round trip.
        for i in range(0, len(doomed), DROP_BATCH):
            batch = doomed[i:i + DROP_BATCH]
            sizes = await asyncio.gather(*(self.store.getsize(k) for k in batch))
            await asyncio.gather(*(self.store.delete(k) for k in batch))
            stats.bytes += sum(sizes)
            stats.chunks += len(batch)

    # -- writing --------------------------------------------------------------------------

    def _write_lock(self, room: str) -> threading.Lock:
        with self._lock:
            return self._write_locks.setdefault(room, threading.Lock())

    def write_slots(self, room: str, start: int, frames: Sequence[Frame],
                    hashes: Sequence[str], layers: Sequence[Layer | None] | None = None,
                    commit: ProjectionCommit | None = None) -> None:
        """Write ``frames`` to slots ``start ..``: one Zarr write per array per call.

        Slots below ``n_slots`` are skipped (write-once); ``start > n_slots`` raises.
        ``n_slots`` moves (group attributes) after every chunk is written.

        ``layers[i]`` = ``(base, keys)`` makes slot ``start + i`` a patch slot: of the
        whole merged frame ``frames[i]`` (hashed by ``hashes[i]``) it stores only
        ``keys``, the rest being read from slot ``base`` (an earlier slot, also one
        written by this call). If ``base`` is itself a patch slot, the new slot stores
        its keys too and takes its base, so a base is always a whole slot. A patch
        whose frame lacks one of those keys (it would remove a key) is stored whole.

        ``commit``: the projection arrays are written beside the slots and the group
        attributes then record both at once (``commit_projection``'s checks apply).
        """
        check_room(room)
        if len(frames) != len(hashes):
            raise ValueError(f"{len(frames)} frames but {len(hashes)} hashes")
        if start < 0:
            raise ValueError(f"negative start slot {start}")
        bad = [h for h in hashes if not is_hash(h)]
        if bad:
            raise ValueError(f"not a sha256 hex digest: {str(bad[0])[:80]!r}")
        checked = _check_layers(start, len(frames), layers)
        projection = None if commit is None else _projection_arrays(commit)
        run = _canonical_run(frames) if isinstance(frames, FrameRun) and checked is None \
            else None
        canonical: Sequence[Frame]
        if run is not None:
            canonical = run
        else:
            canonical = []
            breathe = Breather()
            for frame in frames:
                canonical.append(_canonical_frame(frame))
                breathe()
        with self._write_lock(room):
            _run(self._write_slots(room, start, canonical, list(hashes), checked,
                                   projection))

    def init_fork(self, room: str, parent: str, parent_slots: int) -> None:
        """Make ``room`` a fork of ``parent``: its slots below ``parent_slots`` are read
        from ``parent``'s group (nothing is copied) and its own slots start there.
        Idempotent; raises ValueError if the room already holds slots or another
        parent."""
        check_room(room)
        check_room(parent)
        if parent == room or parent_slots < 0:
            raise ValueError(f"room {room!r} cannot fork {parent!r} at slot {parent_slots}")
        with self._write_lock(room):
            _run(self._init_fork(room, parent, int(parent_slots)))

    async def _init_fork(self, room: str, parent: str, parent_slots: int) -> None:
        group = await self._open_group(room)
        info = _room_info(group.attrs)
        if info.parent == parent and info.parent_slots == parent_slots:
            return
        if info.n_slots or info.parent is not None:
            raise ValueError(f"room {room!r} already has slots or another parent; cannot "
                             f"make it a fork of {parent!r}")
        await _update_attributes(group, {
            "trajhub_format": FORMAT_VERSION, "n_slots": parent_slots,
            "applied_seq": info.applied_seq, PARENT_ATTR: parent,
            PARENT_SLOTS_ATTR: parent_slots})
        with self._lock:
            self._forget(room)
            self._rooms[room] = replace(info, n_slots=parent_slots, parent=parent,
                                        parent_slots=parent_slots)

    async def _open_group(self, room: str) -> AsyncGroup:
        group = await open_group(store=self.store, path=room, mode="a", zarr_format=3)
        if not group.attrs:
            # Also materialize the root group, so zarr.open_group(root)[room] works.
            await open_group(store=self.store, mode="a", zarr_format=3)
        return group

    async def _write_slots(self, room: str, start: int, frames: Sequence[Frame],
                           hashes: list[str], layers: list[Layer | None] | None,
                           projection: _Projection | None = None) -> None:
        group = await self._open_group(room)
        info = _room_info(group.attrs)
        n = info.n_slots
        if start > n:
            raise ValueError(f"room {room!r}: write at slot {start} would leave a gap "
                             f"(n_slots={n})")
        frames, hashes = frames[n - start:], hashes[n - start:]
        if not frames:
            if projection is not None:
                await self._commit(room, projection)
            return
        end = n + len(frames)
        commit_attrs: dict[str, Any] = {}
        if projection is not None:
            _check_projection(room, projection, info.applied_seq, end)
            commit_attrs = _projection_attrs(projection)
        stored, bases = await self._layered(
            room, info, frames, None if layers is None else layers[n - start:])
        registry = dict(info.registry)
        plans = _plan_run(stored, registry) if isinstance(stored, FrameRun) \
            else _plan(stored, registry)
        hash_block = np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes),
                                   dtype=np.uint8).reshape(len(hashes), 32)
        jobs: list[Coroutine[Any, Any, Any]] = [
            *(self._write_variant(group, room, n, end, p) for p in plans),
            self._write_block(group, room, n, end, HASH_ARRAY, hash_block,
                              chunks=(MAX_SLOT_CHUNK, 32), fill=0, raw=True)]
        if bases is not None:
            jobs.append(self._write_block(group, room, n, end, BASE_ARRAY, bases,
                                          chunks=(MAX_SLOT_CHUNK,), fill=-1))
        if projection is not None:
            jobs.extend(self._write_projection_array(group, room, name, values,
                                                     info.applied_seq)
                        for name, values in zip(PROJECTION_ARRAYS, projection.arrays,
                                                strict=True))
        written = await asyncio.gather(*jobs)
        layered = info.layered or bases is not None
        applied_seq = info.applied_seq if projection is None else projection.seq
        await _update_attributes(group, {
            "trajhub_format": FORMAT_VERSION, ARRAYS_ATTR: _registry_json(registry),
            "n_slots": end, "applied_seq": applied_seq, **commit_attrs,
            **({LAYERED_ATTR: True} if layered else {})})
        with self._lock:
            if projection is not None:
                self._remember_projection(room, written[-len(PROJECTION_ARRAYS):],
                                          projection.seq)
            self._rooms[room] = _RoomInfo(end, applied_seq, registry, layered,
                                          info.parent, info.parent_slots)
            self._extend_row_caches(room, n, end, registry, info.registry, plans)
            if layered:
                self._extend_rows(room, BASE_ARRAY, n, end, -1, not info.layered, bases)

    async def _layered(self, room: str, info: _RoomInfo, frames: Sequence[Frame],
                       layers: list[Layer | None] | None
                       ) -> tuple[Sequence[Frame], Array | None]:
        """What to store of ``frames`` (at slots ``info.n_slots ..``): each patch
        slot's kept keys only, and the ``_base`` rows (None: every slot is whole)."""
        if layers is None or all(layer is None for layer in layers):
            return frames, None
        n = info.n_slots
        old = await self._bases(room, info, [layer[0] for layer in layers
                                             if layer is not None and layer[0] < n])
        held = await self._held_keys(room, info, sorted(old))
        bases = np.full(len(frames), -1, dtype="<i8")
        kept: list[set[str]] = [set() for _ in frames]
        out: list[Frame] = []
        for i, (frame, layer) in enumerate(zip(frames, layers, strict=True)):
            if layer is None:
                out.append(frame)
                continue
            base, keep = layer[0], set(layer[1])
            if base >= n and bases[base - n] >= 0:  # a patch written by this call
                keep |= kept[base - n]
                base = int(bases[base - n])
            elif base in old:  # an earlier patch: flatten the chain
                keep |= held[base]
                base = old[base]
            if not keep <= frame.keys():
                out.append(frame)  # it would remove a key: store the frame whole
                continue
            bases[i], kept[i] = base, keep
            out.append({k: frame[k] for k in sorted(keep)})
        return out, (bases if (bases >= 0).any() else None)

    async def _held_keys(self, room: str, info: _RoomInfo, slots: list[int]
                         ) -> dict[int, set[str]]:
        """The frame keys each of sorted ``slots`` (below ``info.n_slots``) stores."""
        held: dict[int, set[str]] = {s: set() for s in slots}
        if not slots:
            return held
        runs = _runs(slots)

        async def variant(key: str, v: _Variant) -> None:
            if not v.is_string:
                shapes = await self._cached_rows(room, v.shape_name, info.n_slots, -1)
                if shapes is not None:
                    for s in slots:
                        if shapes[s, 0] >= 0:
                            held[s].add(key)
                return
            array = await self._array(room, v.name, slots[-1], info.n_slots)
            if array is None:
                return
            for a, b in runs:
                b = min(b, array.shape[0])
                if a < b:
                    block = await _fetch(array, (slice(a, b),))
                    for s in _within(slots, a, b):
                        if block[s - a]:
                            held[s].add(key)

        await asyncio.gather(*(variant(k, v) for k, vs in info.registry.items() for v in vs))
        return held

    def _extend_row_caches(self, room: str, n: int, end: int, registry: Registry,
                           before: Registry, plans: list[_Plan]) -> None:
        """Append the rows just written at ``n..end`` to the cached rows (caller holds
        ``_lock``), so a reader in this process does not read them back."""
        written = {p.variant.name: p for p in plans}
        known = {v.name for vs in before.values() for v in vs}
        for key, variants in registry.items():
            for v in variants:
                if v.is_string:
                    continue
                plan = written.get(v.name)
                self._extend_rows(room, v.shape_name, n, end, -1, v.name not in known,
                                  None if plan is None else plan.shapes)
                if (room, v.name) in self._rows:
                    self._extend_rows(room, v.name, n, end, 0, False,
                                      None if plan is None else plan.data, key)

    def _extend_rows(self, room: str, name: str, n: int, end: int, fill: int, new: bool,
                     block: Array | None, key: str | None = None) -> None:
        cached = self._rows.get((room, name))
        if cached is None and new and block is not None:  # created by this write
            cached = _Rows.of(np.full((n, *block.shape[1:]), fill, dtype=block.dtype))
        if cached is None or cached.count != n:
            return  # not loaded, or behind: a read loads what it lacks
        dims = cached.buf.shape[1:]
        if block is None:
            block = np.full((end - n, *dims), fill, dtype=cached.buf.dtype)
        elif block.shape[1:] != dims:
            if any(b > d for b, d in zip(block.shape[1:], dims, strict=True)):
                del self._rows[(room, name)]  # the padded axes grew: reload when read
                return
            block = _pad_to(block, dims)
        entry = cached.extended(block)
        if key is not None and entry.nbytes > SMALL_CACHE_BYTES:
            del self._rows[(room, name)]
        else:
            self._rows[(room, name)] = entry

    async def _write_variant(self, group: AsyncGroup, room: str, n: int, end: int,
                             plan: _Plan) -> None:
        v = plan.variant
        if v.is_string:
            await self._write_block(group, room, n, end, v.name, plan.data,
                                    chunks=(STRING_SLOT_CHUNK,), fill=b"",
                                    dtype=VariableLengthBytes())
            return
        await asyncio.gather(
            self._write_block(group, room, n, end, v.name, plan.data,
                              chunks=data_chunks(plan.key, plan.data.shape[1:],
                                                 plan.data.itemsize), fill=0),
            self._write_block(group, room, n, end, v.shape_name, plan.shapes,
                              chunks=(MAX_SLOT_CHUNK, plan.shapes.shape[1]), fill=-1,
                              raw=True))

    async def _write_block(self, group: AsyncGroup, room: str, n: int, end: int, name: str,
                           block: Array, *, chunks: tuple[int, ...], fill: Any,
                           dtype: Any = None, raw: bool = False) -> None:
        """Grow (or create) array ``name`` to hold ``block`` at slots ``n..end`` and write
        it with one call. Padded axes beyond ``block`` are left as they are. Rows grow a
        whole slot chunk at a time so that appending one frame rarely rewrites metadata;
        rows at or beyond ``n_slots`` hold fill values. ``raw``: a new array's chunks are
        not compressed, whatever CODEC says."""
        array = await self._array_for_write(room, name, n)
        dims = block.shape[1:]
        stale = array is not None and (array.ndim != block.ndim or (
            dtype is None and array.dtype != block.dtype))
        if array is None or stale:
            # (stale: left by a write that crashed before registering it; never readable)
            array = await self._create(group, name, (_round_up(end, chunks[0]), *dims),
                                       block.dtype if dtype is None else dtype, chunks, fill,
                                       overwrite=stale, raw=raw)
        else:
            rows = array.shape[0] if end <= array.shape[0] else _round_up(end, array.chunks[0])
            shape = (rows, *(max(a, b) for a, b in zip(array.shape[1:], dims, strict=True)))
            if shape != array.shape:
                await array.resize(shape, delete_outside_chunks=False)
        if block.size and not await self._write_tail(room, array, n, end, block):
            await array.setitem((slice(n, end), *(slice(0, d) for d in dims)), block)
        self._remember(room, array, end)

    async def _write_tail(self, room: str, array: ZArray, n: int, end: int,
                          block: Array) -> bool:
        """Write ``block`` at slots ``n..end`` by encoding the chunks they fall in
        ourselves, the first from the copy of the last chunk written kept in memory: no
        read back and no Zarr indexing, which is most of what a small append costs (a
        stream of edits appends a slot or a few at a time) and ~a third of a bulk write.
        Rows at or beyond ``n`` hold fill values, so a chunk starting there needs no
        read either. The chunk holding slot ``n`` of an array of raw chunk files (see
        ``_raw_chunks``) is not rewritten at all: the new slots' rows are written into
        its file in place (``_write_rows``). False (nothing written) for an array chunked
        along another axis too, or whose chunks are not plain (see ``_chunk_encoder``)."""
        with self._lock:
            tail = self._tails.pop((room, array.basename), None)
        per, chunks = array.chunks[0], array.chunks
        if (any(s > k for s, k in zip(array.shape[1:], chunks[1:], strict=True))
                or math.prod(chunks) * array.dtype.itemsize > 2 * CHUNK_TARGET_BYTES):
            return False
        encode = _chunk_encoder(array)
        if encode is None:
            return False
        in_place = _in_place(array, self.store)
        inner = tuple(slice(0, d) for d in block.shape[1:])
        for c in range(n // per, (end - 1) // per + 1):
            first = c * per
            if in_place is not None and first < n \
                    and _write_rows(in_place, c, n - first, block[:first + per - n]):
                tail = None
                continue
            if tail is not None and tail.chunk == c and tail.end == n:
                data = tail.data
            else:
                data = np.full(chunks, array.metadata.fill_value, dtype=array.dtype)
                if first < n:
                    held = await _fetch(array, (slice(first, n),))
                    data[(slice(0, n - first), *(slice(0, d) for d in held.shape[1:]))] = held
            a, b = max(n, first), min(end, first + per)
            data[(slice(a - first, b - first), *inner)] = block[a - n:b - n]
            await self._put_chunk(array, (c, *(0 for _ in chunks[1:])), encode(data))
            tail = _Tail(c, end, data)
        if tail is not None and in_place is None:  # (raw chunks need no copy: see above)
            with self._lock:
                self._tails[(room, array.basename)] = tail
                _trim(self._tails, TAIL_CACHE_BYTES)
        return True

    async def _array_for_write(self, room: str, name: str, n: int) -> ZArray | None:
        with self._lock:
            cached = self._arrays.get((room, name))
        if cached is not None and cached.generation == n:
            return cached.array
        # Another writer (or a crash) may have changed it since we cached it.
        return await self._array(room, name, n, n, force=True)

    async def _create(self, group: AsyncGroup, name: str, shape: tuple[int, ...], dtype: Any,
                      chunks: tuple[int, ...], fill: Any, overwrite: bool = False,
                      raw: bool = False) -> ZArray:
        return _exact(await group.create_array(
            name, shape=shape, dtype=dtype, chunks=chunks, fill_value=fill,
            compressors=() if raw else chunk_compressors(dtype), overwrite=overwrite))

    # -- projection -----------------------------------------------------------------------

    def commit_projection(self, room: str, seq: int, order: Sequence[int],
                          frame_ids: Sequence[int], versions: Sequence[int]) -> None:
        """Write ``_order``/``_frame_id``/``_version`` (one write each), then the group
        attributes ``applied_seq``/``n_slots`` (the commit point)."""
        check_room(room)
        projection = _projection_arrays(ProjectionCommit(seq, order, frame_ids, versions))
        with self._write_lock(room):
            _run(self._commit(room, projection))

    async def _commit(self, room: str, projection: _Projection) -> None:
        group = await self._open_group(room)
        info = _room_info(group.attrs)
        _check_projection(room, projection, info.applied_seq, info.n_slots)
        written = await asyncio.gather(*(
            self._write_projection_array(group, room, name, values, info.applied_seq)
            for name, values in zip(PROJECTION_ARRAYS, projection.arrays, strict=True)))
        await _update_attributes(group, {
            "trajhub_format": FORMAT_VERSION, "n_slots": info.n_slots,
            **_projection_attrs(projection)})
        with self._lock:
            self._remember_projection(room, written, projection.seq)
            self._rooms[room] = replace(info, applied_seq=projection.seq)

    async def _write_projection_array(self, group: AsyncGroup, room: str, name: str,
                                      values: Array, applied_seq: int
                                      ) -> tuple[ZArray, Array]:
        """Write projection array ``name``: the chunks whose values differ from those
        this store last committed, or all of them if the room's ``applied_seq`` is not
        that commit's (another writer since). The array grows a chunk at a time and does
        not shrink (the group's ``n_frames`` says how many entries count), so a commit
        rarely rewrites its metadata; entries appended to a raw chunk that holds
        committed ones are written into its file in place (``_write_rows``: the
        committed entries do not change, and a crash leaves the last commit whole)."""
        with self._lock:
            last = self._projection.pop((room, name), None)
        before: Array | None = None
        if last is not None and last.generation == applied_seq:
            array, before = last.array, last.values
        else:
            try:
                array = await _open_array(group.store, f"{group.path}/{name}")
            except NodeNotFoundError:
                array = await self._create(group, name,
                                           (_round_up(len(values), PROJECTION_CHUNK),),
                                           np.dtype("<i8"), (PROJECTION_CHUNK,), 0, raw=True)
        if array.shape[0] < len(values):
            await self._resize_projection(array, _round_up(len(values), array.chunks[0]))
        encode = _chunk_encoder(array)
        if encode is None:
            if len(values):
                await array.setitem(slice(0, len(values)), values)
            return array, values
        in_place = _in_place(array, self.store)
        per = array.chunks[0]
        for k in range(-(-len(values) // per)):
            part = values[k * per:(k + 1) * per]
            if before is not None and np.array_equal(part, before[k * per:(k + 1) * per]):
                continue
            if before is not None and in_place is not None:
                held = min(max(len(before) - k * per, 0), len(part))
                if held and np.array_equal(part[:held], before[k * per:k * per + held]) \
                        and (held == len(part)  # (shrunk: what counts is as it was)
                             or _write_rows(in_place, k, held, part[held:])):
                    continue
            data = np.full(per, array.metadata.fill_value, dtype=array.dtype)
            data[:len(part)] = part
            await self._put_chunk(array, (k,), encode(data))
        return array, values

    async def _resize_projection(self, array: ZArray, length: int) -> None:
        """Grow a projection array to ``length`` entries. A local one's metadata document
        is rewritten here (as zarr's resize would, less its serialization and thread
        hop)."""
        if not isinstance(self.store, LocalStore):
            await array.resize((length,))
            return
        meta = array.metadata.update_shape((length,))
        document = json.dumps(meta.to_dict(), allow_nan=True,
                              indent=zarr_config.get("json_indent")).encode()
        atomic_put(self.store.root / array.store_path.path / "zarr.json", document)
        object.__setattr__(array, "metadata", meta)  # what zarr's own resize does

    async def _put_chunk(self, array: ZArray, coords: tuple[int, ...], data: Buffer) -> None:
        """Store one encoded chunk. A local directory is written right here: a small
        file's write costs less than handing it to a thread. Other stores get a copy
        (``data`` may view a kept chunk, which the next append changes; a memory store
        would keep the view)."""
        key = f"{array.store_path.path}/{array.metadata.encode_chunk_key(coords)}"
        if isinstance(self.store, LocalStore):
            atomic_put(self.store.root / key, data.as_buffer_like())
        else:
            await self.store.set(key, data.from_bytes(data.to_bytes()))

    def _remember_projection(self, room: str, written: Sequence[tuple[ZArray, Array]],
                             seq: int) -> None:
        """Keep the arrays just committed with ``seq`` (caller holds ``_lock``)."""
        for array, values in written:
            self._projection[(room, array.basename)] = _Projected(array, seq, values)

    def read_projection(self, room: str) -> tuple[int, Array, Array, Array]:
        """``(applied_seq, order, frame_ids, versions)`` as committed; a room without a
        committed projection gives ``(0, [], [], [])``. Raises ProjectionError if a crash
        tore the last commit (rebuild the projection from the index then)."""
        check_room(room)
        return _run(self._read_projection(room))

    async def _read_projection(self, room: str) -> tuple[int, Array, Array, Array]:
        attrs = await self._load_attrs(room)
        empty = np.zeros(0, dtype="<i8")
        if attrs is None or "projection_sha256" not in attrs:
            return int((attrs or {}).get("applied_seq", 0)), empty, empty.copy(), empty.copy()
        length = int(attrs["n_frames"])

        async def read(name: str) -> Array:
            try:
                array: ZArray = await _open_array(self.store, f"{room}/{name}")
            except NodeNotFoundError:
                return empty
            if array.shape[0] < length:
                return empty
            return np.asarray(await array.getitem(slice(0, length)), dtype="<i8") \
                if length else empty.copy()

        order, fids, versions = await asyncio.gather(*(read(n) for n in PROJECTION_ARRAYS))
        if _projection_digest(order, fids, versions) != attrs["projection_sha256"]:
            raise ProjectionError(f"room {room!r}: the projection does not match its "
                                  f"checksum (interrupted commit of seq "
                                  f"{attrs.get('applied_seq')})")
        return int(attrs["applied_seq"]), order, fids, versions


# -- write planning -----------------------------------------------------------------------

@dataclass
class _Plan:
    key: str
    variant: _Variant
    data: Array
    shapes: Array


def _check_layers(start: int, count: int, layers: Sequence[Layer | None] | None
                  ) -> list[Layer | None] | None:
    """``layers`` as a list of ``(int, tuple of str)``, None if no slot is a patch;
    raises if one does not fit."""
    if layers is None:
        return None
    out: list[Layer | None] = list(layers)
    if len(out) != count:
        raise ValueError(f"{count} frames but {len(out)} layers")
    for i, layer in enumerate(out):
        if layer is None:
            continue
        base, keys = int(layer[0]), tuple(str(k) for k in layer[1])
        if not 0 <= base < start + i:
            raise ValueError(f"slot {start + i}: base slot {base} is not an earlier slot")
        out[i] = (base, keys)
    return out if any(layer is not None for layer in out) else None


def _canonical_frame(frame: Mapping[str, Any]) -> Frame:
    out: Frame = {}
    for key, value in frame.items():
        try:
            check_key_name(key)
        except InvalidName as exc:
            raise ValueError(str(exc)) from None
        out[key] = canonical_array(value, key)
    return out


def _canonical_run(run: FrameRun) -> FrameRun | None:
    """``run`` if its keys are valid names and its columns of allowed little-endian
    dtypes (what ``_canonical_frame`` keeps as it is), else None (taken frame by frame,
    which converts or raises)."""
    for key, column in run.columns.items():
        try:
            check_key_name(key)
        except InvalidName:
            return None
        try:
            plain = check_dtype(column.dtype, key) == column.dtype
        except FrameError:
            return None
        if not plain or column.dtype.kind == "U" or column.ndim - 1 > MAX_NDIM:
            return None
    return run


def _plan_run(run: FrameRun, registry: Registry) -> list[_Plan]:
    """``_plan`` of a run's frames, from its columns, kept as they are (views into the
    buffer the frames were read into) unless their dtype is not the variant's: the
    writes copy the values once, into the chunks or the files, and a copy here cost
    a run's size in fresh memory per write (~16 MB per pack chunk applied)."""
    plans = []
    n = len(run)
    for key in sorted(run.columns):
        column = run.columns[key]
        v = _variant_of(key, column[0, ...], registry)
        shapes = np.zeros((n, max(v.ndim, 1)), dtype=np.int32)
        shapes[:, :v.ndim] = column.shape[1:]
        plans.append(_Plan(key, v, np.asarray(column, dtype=np.dtype(v.dtype)), shapes))
    return plans


def _variant_of(key: str, arr: Array, registry: Registry) -> _Variant:
    """The registered variant that can hold ``arr``, registering a new one if needed."""
    dtype = STRING_DTYPE if arr.dtype.kind == "U" else arr.dtype.str
    ndim = -1 if dtype == STRING_DTYPE else arr.ndim
    known = registry.get(key, ())
    for v in known:
        if v.dtype == dtype and v.ndim == ndim:
            return v
    v = _Variant(_variant_name(key, dtype, ndim, known), dtype, ndim)
    registry[key] = (*known, v)
    return v


def _plan(frames: Sequence[Frame], registry: Registry) -> list[_Plan]:
    """Padded blocks (one per array) for a batch of frames; extends ``registry``."""
    members: dict[tuple[str, _Variant], list[int]] = {}
    breathe = Breather()
    last: tuple[tuple[str, np.dtype[Any], int], ...] | None = None
    rows_of: list[list[int]] = []
    for i, frame in enumerate(frames):
        # A trajectory's frames mostly repeat the keys, dtypes and ndims of the one
        # before: their variants are looked up once per such run.
        held = tuple([(key, a.dtype, a.ndim) for key, a in frame.items()])
        if held != last:
            rows_of = [members.setdefault((key, _variant_of(key, frame[key], registry)), [])
                       for key in sorted(frame)]
            last = held
        for rows in rows_of:
            rows.append(i)
        breathe()
    plans = []
    for (key, v), rows in members.items():
        values = [frames[i][key] for i in rows]
        if v.is_string:
            data = np.full(len(frames), b"", dtype=object)
            for i, arr in zip(rows, values, strict=True):
                data[i] = packb(encode_array(arr))
            plans.append(_Plan(key, v, data, np.zeros((0, 0), dtype=np.int32)))
            continue
        true_shapes = np.array([a.shape for a in values], dtype=np.int32).reshape(
            len(values), v.ndim)
        dims = tuple(int(n) for n in true_shapes.max(axis=0)) if v.ndim else ()
        shapes = np.full((len(frames), max(v.ndim, 1)), -1, dtype=np.int32)
        shapes[rows, :] = true_shapes if v.ndim else 0
        plans.append(_Plan(key, v, _padded(values, rows, len(frames), dims, v.dtype,
                                           (true_shapes == dims).all()), shapes))
    return plans


def _padded(values: list[Array], rows: list[int], n: int, dims: tuple[int, ...],
            dtype: str, same: bool) -> Array:
    """The values stacked at ``rows`` of an ``(n, *dims)`` block, zero padded; ``same``:
    every value's shape is ``dims``."""
    if len(rows) == n and same:
        return np.array(values, dtype=np.dtype(dtype))  # (np.stack: ~1 us more a value)
    data = np.zeros((n, *dims), dtype=np.dtype(dtype))
    for i, arr in zip(rows, values, strict=True):
        index: tuple[int | slice, ...] = (i, *(slice(0, d) for d in arr.shape))
        data[index] = arr
    return data


def _small(key: str, array: ZArray, n_slots: int) -> bool:
    """Whether to keep ``array``'s rows in memory (see SMALL_ROW_BYTES)."""
    row = math.prod(array.shape[1:]) * array.dtype.itemsize
    return not is_per_atom(key) and row <= SMALL_ROW_BYTES \
        and n_slots * row <= SMALL_CACHE_BYTES


_Take = Callable[[str, _Variant, Array, Array, int, list[int], dict[int, Frame]], None]
MIN_COLUMN_FRAMES = 2


class _Pieces:
    """The blocks a read would cut into frames (``take`` is its ``_take``), kept whole
    until ``columns`` knows which slots can stay in them."""

    def __init__(self) -> None:
        self._by_key: dict[str, list[tuple[_Variant, Array, Array, int, list[int]]]] = {}

    def take(self, key: str, v: _Variant, shapes: Array, block: Array, a: int,
             slots: list[int], frames: dict[int, Frame]) -> None:
        self._by_key.setdefault(key, []).append((v, shapes, block, a, slots))

    def columns(self, slots: list[int], frames: dict[int, Frame]) -> list[SlotColumns]:
        """The runs of ``slots`` (sorted, distinct) that come as columns: at least
        MIN_COLUMN_FRAMES consecutive slots holding the same keys, each from one block and
        of one shape. The other slots are cut into ``frames``, and the column slots
        removed from it."""
        at = np.asarray(slots, dtype=np.int64)
        keys = list(self._by_key)
        held = np.zeros((len(keys), len(at)), dtype=bool)
        piece = np.full((len(keys), len(at)), -1, dtype=np.int64)
        cut = np.ones(len(at), dtype=bool)  # a run starts here
        cut[1:] = np.diff(at) != 1
        shapes_of: list[Array] = []
        for k, key in enumerate(keys):
            ndim = self._by_key[key][0][0].ndim
            true_shape = np.full((len(at), ndim), -1, dtype=np.int64)
            for p, (_, shapes, _, _, picked) in enumerate(self._by_key[key]):
                pos = np.searchsorted(at, picked)
                rows = shapes[picked]
                has = rows[:, 0] >= 0
                held[k, pos] = has
                piece[k, pos[has]] = p
                true_shape[pos[has]] = rows[has, :ndim]
            cut[1:] |= (true_shape[1:] != true_shape[:-1]).any(axis=1)
            shapes_of.append(true_shape)
        cut[1:] |= ((held[:, 1:] != held[:, :-1]) | (piece[:, 1:] != piece[:, :-1])).any(axis=0)
        starts = np.flatnonzero(cut).tolist()
        out: list[SlotColumns] = []
        for i, j in zip(starts, [*starts[1:], len(at)], strict=True):
            if j - i < MIN_COLUMN_FRAMES:
                continue
            first = slots[i]
            arrays = {}
            for k, key in enumerate(keys):
                if held[k, i]:
                    _, _, block, a, _ = self._by_key[key][piece[k, i]]
                    arrays[key] = block[(slice(first - a, first - a + j - i),
                                         *(slice(0, n) for n in shapes_of[k][i].tolist()))]
            out.append(SlotColumns(first, j - i, arrays))
            for s in slots[i:j]:
                del frames[s]
        for key, pieces in self._by_key.items():
            for v, shapes, block, a, picked in pieces:
                if frames:
                    _take(key, v, shapes, block, a, [s for s in picked if s in frames],
                          frames)
        return out


def _take(key: str, v: _Variant, shapes: Array, block: Array, a: int,
          slots: Iterable[int], frames: dict[int, Frame]) -> None:
    """Cut each of ``slots`` that holds ``key`` out of ``block`` (rows from slot ``a``)
    to its true shape, as a read-only view."""
    picked = slots if isinstance(slots, list) else list(slots)
    if not picked:
        return
    rows = shapes[picked]  # one fancy index, not a numpy row (and scalars) per slot
    held = rows[:, 0] >= 0
    if not v.ndim:
        for s in itertools.compress(picked, held.tolist()):
            frames[s][key] = block[s - a, ...]  # a 0-d view, read-only as the block
        return
    # A slot whose true shape is the block's whole row needs no slicing: block[i] is
    # the very view block[i, :n0, :n1, ...] gives (the common case, a trajectory).
    whole = held & (rows[:, :v.ndim] == block.shape[1:]).all(axis=1)
    if whole.all():
        for s in picked:
            frames[s][key] = block[s - a]
        return
    for s, h, w, shape in zip(picked, held.tolist(), whole.tolist(), rows.tolist(),
                              strict=True):
        if w:
            frames[s][key] = block[s - a]
        elif h:
            index = (s - a, *(slice(0, n) for n in shape[:v.ndim]))
            frames[s][key] = block[index]  # read-only: so is the block


def _chunk_encoder(array: ZArray) -> Callable[[Array], Buffer] | None:
    """Encodes one whole chunk of ``array`` the way Zarr would (its own codecs), for a
    plain numeric array; None for anything else (strings, sharding, filters)."""
    pipeline = array.codec_pipeline
    if not isinstance(pipeline, BatchedCodecPipeline) or pipeline.array_array_codecs:
        return None
    to_bytes = pipeline.array_bytes_codec
    compressors = [c for c in pipeline.bytes_bytes_codecs
                   if isinstance(c, BloscCodec | ZstdCodec)]
    if not isinstance(to_bytes, BytesCodec) \
            or len(compressors) != len(pipeline.bytes_bytes_codecs):
        return None
    prototype = default_buffer_prototype()
    spec = array.metadata.get_chunk_spec((0,) * array.ndim, array.config, prototype)

    def encode(data: Array) -> Buffer:
        out = to_bytes._encode_sync(prototype.nd_buffer.from_numpy_array(data), spec)
        for codec in compressors:
            assert out is not None
            out = codec._encode_sync(out, spec)
        assert out is not None
        return out
    return encode


@dataclass(frozen=True)
class _RawChunks:
    """An array whose chunks are files of its values' bytes as they are in memory (no
    compressor, little-endian on a little-endian machine, C order): a block of slots is
    read from them with one ``preadv`` per chunk file and slot run, into the block itself.
    Zarr's own read makes three copies of the data (file -> bytes, bytes -> decoded
    chunk view, chunk -> output), each into fresh memory."""

    array: ZArray
    directory: Path
    blosc: bool = False
    """Chunk files are Blosc-compressed (integers, booleans): each is decompressed into a
    pooled chunk buffer and its rows copied into the block (Zarr's read of them made
    as many copies, into fresh memory, plus its own per-chunk work)."""

    def read(self, a: int, b: int, dims: tuple[int, ...], out: Array | None = None
             ) -> Array | None:
        """Slots ``a..b``, axes 1.. cut to ``dims`` (from 0), into ``out`` if given (a
        view of a bytearray, each slot's values contiguous); None when the selection is
        not one this reads (a partial chunk beyond axis 1) or a chunk file is not the
        size its shape says (the caller then asks Zarr, which reports what is wrong)."""
        chunks = tuple(self.array.chunks)
        if tuple(dims[1:]) != chunks[2:]:
            return None
        dtype = self.array.dtype
        row_bytes = math.prod(chunks[2:]) * dtype.itemsize
        file_bytes = math.prod(chunks) * dtype.itemsize
        c0 = chunks[0]
        c1 = chunks[1] if len(chunks) > 1 else 1
        d1 = dims[0] if dims else 1
        contiguous = out is None
        if out is None:
            out = READ_BLOCKS.empty((b - a, *dims), dtype)
            flat, base, slot_bytes = out.reshape(-1).data.cast("B"), 0, d1 * row_bytes
        else:
            where = _bytes_under(out, d1 * row_bytes)
            if where is None:
                return None
            flat, base, slot_bytes = where
        rows = out.reshape(b - a, d1, -1) if out.ndim > 1 else out.reshape(b - a, 1, 1)
        if not np.shares_memory(rows, out):  # (a reshape that had to copy)
            return None
        for k1, r0 in enumerate(range(0, d1, c1)):
            r1 = min(d1, r0 + c1)
            for k0 in range(a // c0, (b - 1) // c0 + 1):
                s0, s1 = max(a, k0 * c0), min(b, (k0 + 1) * c0)
                coords = (k0, k1, *(0 for _ in chunks[2:])) if len(chunks) > 1 else (k0,)
                path = self.directory / self.array.metadata.encode_chunk_key(coords)
                if self.blosc:
                    chunk = _decompressed(path, chunks, dtype)
                    if chunk is None:
                        return None
                    if chunk is _UNWRITTEN:
                        rows[s0 - a:s1 - a, r0:r1] = self.array.metadata.fill_value
                    else:
                        part = chunk.reshape(c0, c1, -1)[s0 - k0 * c0:s1 - k0 * c0]
                        rows[s0 - a:s1 - a, r0:r1] = part[:, :r1 - r0]
                    continue
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:  # never written: the fill value
                    rows[s0 - a:s1 - a, r0:r1] = self.array.metadata.fill_value
                    continue
                try:
                    if os.fstat(fd).st_size != file_bytes:
                        return None
                    at = (s0 - k0 * c0) * c1 * row_bytes
                    if contiguous and r1 - r0 == c1 == d1:  # whole chunk rows: the
                        # slots are contiguous in the file and in the block
                        target = rows[s0 - a:s1 - a].data.cast("B")
                        done = pread_into(fd, target, at) == len(target)
                    else:  # the first rows of each slot's chunk rows (a trajectory's
                        # atoms short of the chunk), or a slot apart from the next in
                        # ``out``: one preadv per run of slots
                        starts = [base + (s - a) * slot_bytes + r0 * row_bytes
                                  for s in range(s0, s1)]
                        done = _pread_rows(fd, flat, starts, (r1 - r0) * row_bytes,
                                           c1 * row_bytes, at)
                    if not done:
                        return None
                finally:
                    os.close(fd)
        return out


def _in_place(array: ZArray, store: Store) -> _RawChunks | None:
    """``array``'s chunk files, if they hold its raw values (``_write_rows`` can write
    into them); else None."""
    raw = _raw_chunks(array, store)
    return raw if raw is not None and not raw.blosc else None


def _write_rows(raw: _RawChunks, chunk: int, row: int, rows: Array) -> bool:
    """Write ``rows`` (slots of chunk ``chunk`` from its row ``row`` on, each padded to
    the chunk's row with fill values) into the chunk's file in place; False (nothing
    written) if there is no such file of the chunk's size.

    Safe without a temporary file, which the file system charges for (see
    ``trajhub.shared.files``): only the rows of slots not yet committed change, and no
    reader reads those; a write cut off by a crash is written again before they are
    committed. Rows beyond ``rows`` keep what they hold (fill values, unless a crashed
    write left others there; they are not slots of the room either)."""
    array = raw.array
    chunks = tuple(array.chunks)
    buffers = _slot_bytes(rows, chunks, array.dtype, array.metadata.fill_value)
    path = raw.directory / array.metadata.encode_chunk_key((chunk, *(0 for _ in chunks[1:])))
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return False
    try:
        if os.fstat(fd).st_size != math.prod(chunks) * array.dtype.itemsize:
            return False
        _pwrite_all(fd, buffers, row * math.prod(chunks[1:]) * array.dtype.itemsize)
        return True
    finally:
        os.close(fd)


def _slot_bytes(rows: Array, chunks: tuple[int, ...], dtype: np.dtype[Any], fill: Any
                ) -> list[memoryview]:
    """The bytes of ``rows`` as a chunk file holds them, slot after slot, each padded to
    the chunk's row with ``fill``. Where each slot's values are contiguous and large,
    and only its axis 1 (atoms) falls short of the chunk's, these are views of them
    with one shared run of fill bytes between: no padded copy, which for a trajectory's
    large frames was a fresh block the size of the write (as much as ~16 MB per
    applied pack chunk, mapped in and given back each time)."""
    if rows.dtype == dtype and rows.shape[1:] == chunks[1:] and rows.flags.c_contiguous:
        return [rows.data.cast("B")]
    if (rows.dtype == dtype and len(rows) and rows.ndim > 1
            and rows.shape[2:] == chunks[2:] and rows.shape[1] <= chunks[1]
            and rows[0].flags.c_contiguous and rows[0].nbytes >= SCATTER_MIN_BYTES):
        pad = _fill_bytes(dtype, fill, (chunks[1] - rows.shape[1]) * math.prod(chunks[2:]))
        out: list[memoryview] = []
        for slot in rows:
            out.append(slot.data.cast("B"))
            if len(pad):
                out.append(pad)
        return out
    padded = np.full((len(rows), *chunks[1:]), fill, dtype=dtype)
    padded[(slice(None), *(slice(0, d) for d in rows.shape[1:]))] = rows
    return [padded.data.cast("B")]


SCATTER_MIN_BYTES = 8192
"""Slots at least this large are written from where they are (``_slot_bytes``); smaller
ones are cheaper copied into one padded block than written as a buffer each."""


@functools.lru_cache(maxsize=64)
def _fill_bytes(dtype: np.dtype[Any], fill: Any, count: int) -> memoryview:
    return np.full(count, fill, dtype=dtype).data.cast("B")


def _pwrite_all(fd: int, buffers: list[memoryview], offset: int) -> None:
    """Write ``buffers`` one after another into ``fd`` from ``offset``, with one
    ``pwritev`` per IOV_BATCH of them (a short write goes on where it stopped)."""
    i = 0
    while i < len(buffers):
        batch = buffers[i:i + IOV_BATCH]
        done = os.pwritev(fd, batch, offset)
        offset += done
        for buf in batch:
            if done < len(buf):
                buffers[i] = buf[done:]  # (the caller's list: its own, made to write)
                break
            done -= len(buf)
            i += 1


IOV_BATCH = 1000
"""Buffers per ``pwritev``, within Linux's IOV_MAX of 1024."""


_UNWRITTEN = np.empty(0)


def _bytes_under(out: Array, slot_bytes: int) -> tuple[memoryview, int, int] | None:
    """(the bytearray under ``out`` as bytes, where ``out`` starts in it, the distance
    between its slots) when ``out`` is a view of a bytearray whose every slot holds
    its ``slot_bytes`` contiguously; else None."""
    owner: Any = out
    while isinstance(owner, np.ndarray):
        owner = owner.base
    if isinstance(owner, memoryview):
        owner = owner.obj
    if not isinstance(owner, bytearray) or not out.flags.writeable or not len(out) \
            or not out[0].flags.c_contiguous or out.strides[0] < slot_bytes:
        return None
    start = out.ctypes.data - np.frombuffer(owner, np.uint8).ctypes.data
    if start < 0 or start + (len(out) - 1) * out.strides[0] + slot_bytes > len(owner):
        return None
    return memoryview(owner), start, out.strides[0]


def _decompressed(path: Path, chunks: tuple[int, ...], dtype: np.dtype[Any]
                  ) -> Array | None:
    """The chunk in Blosc-compressed ``path`` (a pooled buffer), _UNWRITTEN if there is no
    such file, None if its content is not the chunk's size of Blosc data."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # never written: the fill value
        return _UNWRITTEN
    # A Blosc header: version, format, flags, typesize, then the sizes (uint32 LE) of
    # the data, of a block and of the whole compressed buffer.
    nbytes = math.prod(chunks) * dtype.itemsize
    if (len(data) < BLOSC_HEADER or int.from_bytes(data[4:8], "little") != nbytes
            or int.from_bytes(data[12:16], "little") != len(data)):
        return None  # not this chunk's Blosc data: Zarr says what it is
    chunk = READ_BLOCKS.empty(chunks, dtype)
    try:
        blosc.decompress(data, chunk)
    except (RuntimeError, ValueError):
        return None
    return chunk


BLOSC_HEADER = 16


def _pread_rows(fd: int, flat: memoryview, starts: list[int], size: int, stride: int,
                offset: int) -> bool:
    """From ``fd`` at ``offset``, ``len(starts)`` records of ``stride`` bytes: the first
    ``size`` bytes of each into ``flat[start:start + size]``, the rest of it into a
    scratch buffer, with one ``preadv`` per PREADV_RECORDS records (a call per record
    cost ~10 us each). False if the file ends or a read comes back short."""
    skip = [_scratch(stride - size)] if stride > size and len(starts) > 1 else []
    for i in range(0, len(starts), PREADV_RECORDS):
        batch = starts[i:i + PREADV_RECORDS]
        buffers: list[memoryview | bytearray] = []
        for start in batch:
            buffers.append(flat[start:start + size])
            buffers += skip
        if skip:
            buffers.pop()  # nothing to skip after the last record
        want = len(batch) * stride - (stride - size)
        if os.preadv(fd, buffers, offset) != want:
            return False
        offset += len(batch) * stride
    return True


def _scratch(size: int) -> memoryview:
    """``size`` bytes of this thread's scratch buffer, for what a read skips: a new
    zeroed one per read was fresh memory each time (the padding of every 100,000-atom
    frame, 745 KB a key, mapped in and given back: ~150 MB per read of 100 such
    frames)."""
    buf: bytearray | None = getattr(_SCRATCH, "buf", None)
    if buf is None or len(buf) < size:
        buf = _SCRATCH.buf = bytearray(size)
    return memoryview(buf)[:size]


_SCRATCH = threading.local()
PREADV_RECORDS = 500
"""Records per ``preadv`` call: two buffers each, within the 1024 of IOV_MAX."""
READ_BLOCKS = BlockPool(32 * 2**20)
"""The memory of raw read blocks: a block is dropped as soon as its frames are encoded
or sent, and the next read's blocks reuse its memory instead of faulting in new memory
(4.99 against 11.6 ms for two frames of 100,000 atoms in a server process)."""


def _raw_chunks(array: ZArray, store: Store) -> _RawChunks | None:
    if not isinstance(store, LocalStore) or sys.byteorder != "little" \
            or array.dtype.kind not in "biufc":
        return None
    pipeline = array.codec_pipeline
    if not isinstance(pipeline, BatchedCodecPipeline) or pipeline.array_array_codecs:
        return None
    compressors = pipeline.bytes_bytes_codecs
    if compressors and (len(compressors) > 1 or not isinstance(compressors[0], BloscCodec)):
        return None
    to_bytes = pipeline.array_bytes_codec
    if not isinstance(to_bytes, BytesCodec) \
            or (to_bytes.endian is not None and to_bytes.endian.value != "little"):
        return None
    return _RawChunks(array, store.root / array.store_path.path, blosc=bool(compressors))


async def _update_attributes(group: AsyncGroup, attrs: dict[str, Any]) -> None:
    """``group.update_attributes(attrs)``; a local group's document is put in place with
    ``atomic_put`` (see ``trajhub.shared.files``), not by Zarr, which renames over it:
    ~1 ms of every commit here."""
    store = group.store_path.store
    if not isinstance(store, LocalStore) or group.metadata.zarr_format != 3:
        await group.update_attributes(attrs)
        return
    group.metadata.attributes.update(attrs)
    document = group.metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"]
    atomic_put(store.root / group.store_path.path / "zarr.json", document.as_buffer_like())


def _trim(cache: dict[tuple[str, str], _Tail], budget: int) -> None:
    """Drop the oldest entries of ``cache`` (insertion order) beyond ``budget`` bytes."""
    total = sum(t.data.nbytes for t in cache.values())
    for k in list(cache):
        if total <= budget:
            return
        total -= cache.pop(k).data.nbytes


def _pad_to(block: Array, dims: tuple[int, ...]) -> Array:
    out = np.zeros((len(block), *dims), dtype=block.dtype)
    out[(slice(None), *(slice(0, d) for d in block.shape[1:]))] = block
    return out


async def _open_array(store: Store, path: str) -> ZArray:
    """The v3 array at ``path``. In a local directory its metadata document is read
    here, on the I/O loop (a few hundred bytes): Zarr's open hands each file read to a
    worker thread, and a room's first read opens a dozen arrays."""
    if isinstance(store, LocalStore):
        try:
            raw = (store.root / path / "zarr.json").read_bytes()
        except FileNotFoundError:
            raise NodeNotFoundError(f"no array at {path!r}") from None
        document = json.loads(raw)
        if document.get("node_type") == "array":
            return AsyncArray(metadata=ArrayV3Metadata.from_dict(document),
                              store_path=StorePath(store, path))
    return await AsyncArray.open(StorePath(store, path), zarr_format=3)


async def _fetch(array: ZArray, selection: tuple[int | slice, ...]) -> Array:
    return np.asarray(await array.getitem(selection))


def _within(sorted_slots: list[int], a: int, b: int) -> list[int]:
    return sorted_slots[bisect_left(sorted_slots, a):bisect_left(sorted_slots, b)]


def check_room(room: str) -> str:
    """A room name that is also safe as a group directory beside the root's zarr.json."""
    check_room_name(room)
    if room == "zarr.json":
        raise InvalidName("room name 'zarr.json' is reserved by the storage layout")
    return room


def _valid_room(name: str) -> bool:
    try:
        check_room(name)
    except InvalidName:
        return False
    return True


async def _nothing() -> dict[int, Frame]:
    return {}


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on zarr's I/O loop (callers are plain or worker threads)."""
    return sync(coro)
