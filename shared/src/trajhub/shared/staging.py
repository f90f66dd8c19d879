"""Staging packs: a bulk upload's frames staged as one object in the frame store.

A small edit stages its frame in Redis (``{room}:blob:<hash>``, the frame's canonical
bytes). A bulk upload instead writes all its frames as one *pack* in the shared store,
``<room>/_staging/<ms>-<id>``, and puts a small *marker* in the same Redis key: the
pack's name and the frame's offset and size. Everything that checks or reads a staged
blob (control's commit script: EXISTS and PERSIST; storage; reads of committed frames
not yet applied) keeps working on the Redis key and follows a marker to the pack.
Through Redis and its AOF, large frames moved at 0.2-0.3 GB/s here and filled Redis's
memory; a pack is one sequential write (and one fdatasync) of the request's bytes.

A marker starts with 0xc1, a byte msgpack never uses, so no frame blob starts with it.

A pack is deleted when no marker points to it any more: storage checks after it has
applied a pack's frames and unlinked their markers, and ``sweep`` deletes packs older
than the staging TTL whose markers all expired (an upload that was never committed).
Every marker that points to a pack is set before the commit that uses it, so a pack
found unreferenced after one of its frames was applied never gains a marker again.

Pack layout: ``TRJPACK1``, the frame count (u32 LE), each frame's sha256 (32 bytes),
then the frames' bytes back to back.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis
from zarr.abc.store import RangeByteRequest, Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore

from trajhub.shared import keys
from trajhub.shared.buffers import BlockPool
from trajhub.shared.files import pread_into
from trajhub.shared.names import check_room_name

MARKER = b"\xc1"
STAGING_DIR = "_staging"
MAGIC = b"TRJPACK1"
_COUNT = struct.Struct("<I")
READ_RUN_BYTES = 16 << 20
"""Frames read from a pack with one ``pread`` (those that follow each other there)."""
IOV_MAX = 512
"""Buffers per ``os.writev`` call (Linux allows 1024)."""

# The markers among some blob keys (a frame staged in Redis answers nil: its bytes are
# not sent back); with ARGV[1] == 'unlink', the keys are unlinked too (one round trip
# for storage's cleanup), in slices: Lua's unpack() stops at 8000 values. A marker is
# at most 255 bytes, so its first 256 are all of it: one call a key, and a frame's own
# bytes are never copied whole.
MARKERS_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  local head = redis.call('GETRANGE', key, 0, 255)
  if string.byte(head, 1) == 193 and #head < 256 then out[i] = head
  else out[i] = false end
end
if ARGV[1] == 'unlink' then
  for i = 1, #KEYS, 1000 do
    redis.call('UNLINK', unpack(KEYS, i, math.min(i + 999, #KEYS)))
  end
end
return out
"""

# Stage blobs (or markers) in one command, where a pipeline of one SET per blob costs
# redis-py ~20 us of Python each: SET KEYS[i] ARGV[i + 1] EX ARGV[1] NX. NX: never reset
# the TTL of a blob that a commit already PERSISTed.
STAGE_LUA = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1], 'EX', ARGV[1], 'NX')
end
return #KEYS
"""

# Where each blob is, in one round trip: a marker whole (its frame's size is in it),
# else the size of the frame staged in Redis (0: no such key). As in MARKERS_LUA, one
# call a key reads a marker whole; a frame staged in Redis of 256 bytes or more costs a
# second.
LOCATE_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  local head = redis.call('GETRANGE', key, 0, 255)
  if string.byte(head, 1) == 193 and #head < 256 then
    out[i] = head
  elseif #head < 256 then
    out[i] = #head
  else
    out[i] = redis.call('STRLEN', key)
  end
end
return out
"""


class PackRef(NamedTuple):
    """Where a staged frame lives: ``size`` bytes at ``offset`` of ``room``'s pack."""

    pack: str
    offset: int
    size: int


class Located(NamedTuple):
    """A staged blob's size (0: gone) and, if it is a marker, the pack frame it names."""

    size: int
    ref: PackRef | None


def marker(ref: PackRef) -> bytes:
    return MARKER + f"{ref.pack} {ref.offset} {ref.size}".encode()


def parse_marker(value: bytes | memoryview | None) -> PackRef | None:
    """The PackRef a marker names; None for anything else (a frame's own bytes)."""
    if value is None or len(value) > 255 or bytes(value[:1]) != MARKER:
        return None
    try:
        pack, offset, size = bytes(value[1:]).decode().split(" ")
        return PackRef(pack, int(offset), int(size))
    except ValueError:
        return None


def pack_name(now: float | None = None) -> str:
    """A new pack's name: its creation time (ms, sortable) and a random id."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:013d}-{uuid.uuid4().hex}"


def pack_age_s(name: str, now: float | None = None) -> float:
    try:
        ms = int(name.split("-", 1)[0])
    except ValueError:
        return 0.0
    return (time.time() if now is None else now) - ms / 1000


def pack_header(hashes: Sequence[str]) -> bytes:
    return MAGIC + _COUNT.pack(len(hashes)) + b"".join(bytes.fromhex(h) for h in hashes)


def header_hashes(head: bytes) -> list[str] | None:
    """The hashes a pack's header lists, or None if ``head`` is not (all of) a header."""
    if not head.startswith(MAGIC) or len(head) < len(MAGIC) + _COUNT.size:
        return None
    (n,) = _COUNT.unpack_from(head, len(MAGIC))
    start = len(MAGIC) + _COUNT.size
    if len(head) < start + 32 * n:
        return None
    return [head[start + 32 * i:start + 32 * (i + 1)].hex() for i in range(n)]


class StagingPacks:
    """Packs of staged frames in a zarr v3 store (local directory: plain files, written
    with one ``writev`` and an fdatasync; any other store: one object). Thread safe."""

    def __init__(self, store: Store, *, fsync: bool = True) -> None:
        self.store = store
        self.fsync = fsync
        self._root = Path(str(store.root)) if isinstance(store, LocalStore) else None

    def __repr__(self) -> str:
        return f"StagingPacks({self.store!r})"

    @staticmethod
    def key(room: str, pack: str) -> str:
        check_room_name(room)
        if not pack or "/" in pack or pack.startswith("."):
            raise ValueError(f"not a pack name: {pack[:80]!r}")
        return f"{room}/{STAGING_DIR}/{pack}"

    # -- writing --------------------------------------------------------------------------

    def write(self, room: str, hashes: Sequence[str],
              blobs: Sequence[bytes | memoryview]) -> dict[str, bytes]:
        """Write one pack of the distinct ``hashes``; returns hash -> marker."""
        distinct: dict[str, bytes | memoryview] = {}
        for h, b in zip(hashes, blobs, strict=True):
            distinct.setdefault(h, b)
        name = pack_name()
        header = pack_header(list(distinct))
        markers: dict[str, bytes] = {}
        offset = len(header)
        for h, b in distinct.items():
            markers[h] = marker(PackRef(name, offset, len(b)))
            offset += len(b)
        parts: list[bytes | memoryview] = [header, *distinct.values()]
        if self._root is not None:
            self._write_file(self._root / self.key(room, name), parts, offset)
        else:
            data = b"".join(parts)
            sync(self.store.set(self.key(room, name),
                                default_buffer_prototype().buffer.from_bytes(data)))
        return markers

    def _write_file(self, path: Path, parts: list[bytes | memoryview], total: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            written = 0
            for i in range(0, len(parts), IOV_MAX):
                batch = parts[i:i + IOV_MAX]
                want = sum(len(p) for p in batch)
                done = os.writev(fd, batch)
                if done < want:  # a short write: finish this batch piece by piece
                    rest = b"".join(batch)[done:]
                    while rest:
                        rest = rest[os.write(fd, rest):]
                written += want
            if written != total:
                raise OSError(f"pack {path.name}: wrote {written} of {total} bytes")
            if self.fsync:
                os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        tmp.replace(path)

    # -- reading --------------------------------------------------------------------------

    def read_into(self, room: str, refs: Sequence[PackRef], pool: BlockPool
                  ) -> Sequence[bytes | memoryview | None]:
        """``read``; a local pack's frames as memoryviews into one block of ``pool``,
        back to back in the order of ``refs``: no copy of each frame, frames that a run
        can view in place (``views_in_a_row``), and memory the pool hands out again once
        nothing refers to it."""
        if self._root is not None:
            return self._read_files(room, refs, pool)
        return self.read(room, refs)

    def read(self, room: str, refs: Sequence[PackRef]) -> list[bytes | None]:
        """Each ref's bytes (None where its pack is gone or too short)."""
        if self._root is not None:
            # (without a pool every piece is a slice of bytes: no copy, no conversion)
            return cast(list[bytes | None], self._read_files(room, refs))
        proto = default_buffer_prototype()

        async def get(ref: PackRef) -> bytes | None:
            buf = await self.store.get(
                self.key(room, ref.pack), prototype=proto,
                byte_range=RangeByteRequest(ref.offset, ref.offset + ref.size))
            data = None if buf is None else buf.to_bytes()
            return data if data is not None and len(data) == ref.size else None

        async def run() -> list[bytes | None]:
            return list(await asyncio.gather(*(get(r) for r in refs)))

        return sync(run())

    def _read_files(self, room: str, refs: Sequence[PackRef], pool: BlockPool | None = None
                    ) -> list[bytes | memoryview | None]:
        """One ``pread`` per run of refs that follow each other in a pack (a bulk
        upload's frames do, in the order they were staged), up to READ_RUN_BYTES; with
        ``pool``, all into one block, the frames back to back in the order of ``refs``
        (from one pack or several)."""
        assert self._root is not None
        out: list[bytes | memoryview | None] = [None] * len(refs)
        block = None if pool is None else pool.empty((sum(r.size for r in refs),), np.uint8).data
        fds: dict[str, int | None] = {}
        try:
            i = at_block = 0
            while i < len(refs):
                first = refs[i]
                if first.pack not in fds:
                    try:
                        fds[first.pack] = os.open(self._root / self.key(room, first.pack),
                                                  os.O_RDONLY)
                    except FileNotFoundError:
                        fds[first.pack] = None
                end, j = first.offset + first.size, i + 1
                while (j < len(refs) and refs[j].pack == first.pack
                       and refs[j].offset == end and end - first.offset < READ_RUN_BYTES):
                    end, j = end + refs[j].size, j + 1
                fd = fds[first.pack]
                size = end - first.offset
                if fd is not None:
                    if block is None:
                        data: bytes | memoryview = os.pread(fd, size, first.offset)
                    else:
                        data = block[at_block:at_block + size]
                        data = data[:pread_into(fd, data, first.offset)]
                    at = 0
                    for k in range(i, j):
                        piece = data[at:at + refs[k].size]  # (all of data: no copy)
                        out[k] = piece if len(piece) == refs[k].size else None
                        at += refs[k].size
                i, at_block = j, at_block + size
        finally:
            for fd in fds.values():
                if fd is not None:
                    os.close(fd)
        return out

    def hashes(self, room: str, pack: str) -> list[str] | None:
        """The hashes a pack holds (None: no such pack; [] if it is damaged)."""
        key = self.key(room, pack)
        fixed = len(MAGIC) + _COUNT.size
        head = self._head(key, fixed)
        if head is None:
            return None
        if len(head) < fixed or not head.startswith(MAGIC):
            return []
        (n,) = _COUNT.unpack_from(head, len(MAGIC))
        full = self._head(key, fixed + 32 * n)
        if full is None:
            return None
        return header_hashes(full) or []

    def _head(self, key: str, size: int) -> bytes | None:
        if self._root is not None:
            try:
                with open(self._root / key, "rb") as f:
                    return f.read(size)
            except FileNotFoundError:
                return None
        buf = sync(self.store.get(key, prototype=default_buffer_prototype(),
                                  byte_range=RangeByteRequest(0, size)))
        return None if buf is None else buf.to_bytes()

    # -- listing and deleting -------------------------------------------------------------

    def packs(self, room: str) -> list[str]:
        prefix = f"{room}/{STAGING_DIR}"
        check_room_name(room)

        async def run() -> list[str]:
            try:
                return [n async for n in self.store.list_dir(prefix)]
            except FileNotFoundError:
                return []

        return sorted(n for n in sync(run()) if not n.startswith("."))

    def rooms(self) -> list[str]:
        """Rooms with a staging area (a directory listing of the store's root)."""
        async def run() -> list[str]:
            try:
                return [n async for n in self.store.list_dir("")]
            except FileNotFoundError:
                return []

        out = []
        for name in sync(run()):
            try:
                check_room_name(name)
            except ValueError:
                continue
            out.append(name)
        return sorted(out)

    def delete(self, room: str, pack: str) -> None:
        if self._root is not None:
            (self._root / self.key(room, pack)).unlink(missing_ok=True)
            return
        sync(self.store.delete(self.key(room, pack)))


def views_in_a_row(blobs: Sequence[bytes | memoryview], size: int) -> npt.NDArray[np.uint8] | None:
    """``blobs`` as the rows of one array, without a copy, when each is a memoryview of
    ``size`` bytes that directly follows the one before in the same buffer (frames a
    pooled ``StagingPacks.read_into`` read in one go); else None."""
    if not blobs or not all(isinstance(b, memoryview) and b.nbytes == size for b in blobs):
        return None
    owner: Any = blobs[0].obj  # type: ignore[union-attr]
    if any(b.obj is not owner for b in blobs):  # type: ignore[union-attr]
        return None
    base = np.frombuffer(owner, np.uint8)
    start = np.frombuffer(blobs[0], np.uint8).ctypes.data - base.ctypes.data
    if start < 0 or start + size * len(blobs) > base.size:
        return None
    rows = base[start:start + size * len(blobs)].reshape(len(blobs), size)
    for i, b in enumerate(blobs):  # (addresses only: no bytes are compared)
        if np.frombuffer(b, np.uint8).ctypes.data != rows[i].ctypes.data:
            return None
    return rows


# -- the Redis side: which packs are still referenced -------------------------------------

async def pointing_markers(redis: aioredis.Redis, room: str, hashes: Sequence[str], *,
                           unlink: bool = False) -> list[PackRef | None]:
    """The PackRef of each hash's staged blob (None: none, or staged in Redis); with
    ``unlink``, the staged blobs are unlinked in the same call."""
    out: list[PackRef | None] = []
    script = redis.register_script(MARKERS_LUA)
    for i in range(0, len(hashes), 10_000):
        got: list[Any] = await script(keys=[keys.blob(room, h) for h in hashes[i:i + 10_000]],
                                      args=["unlink" if unlink else ""])
        out.extend(parse_marker(v) if v else None for v in got)
    return out


async def release_packs(redis: aioredis.Redis, packs: StagingPacks, room: str,
                        names: Sequence[str],
                        unlinked: Mapping[str, str] | None = None) -> list[str]:
    """Delete each of ``names`` that no marker points to any more; returns those.

    ``unlinked`` (hash -> pack): markers the caller read and then unlinked. A pack all of
    whose frames are among them is deleted without asking Redis again: its markers were
    all set before the commit that used them, so none can appear after."""
    deleted = []
    for name in dict.fromkeys(names):
        hashes = await asyncio.to_thread(packs.hashes, room, name)
        if hashes is None:
            continue
        if unlinked is None or any(unlinked.get(h) != name for h in hashes):
            refs = await pointing_markers(redis, room, hashes)
            if any(r is not None and r.pack == name for r in refs):
                continue
        await asyncio.to_thread(packs.delete, room, name)
        deleted.append(name)
    return deleted


async def sweep(redis: aioredis.Redis, packs: StagingPacks, ttl_s: float,
                now: float | None = None) -> list[tuple[str, str]]:
    """Delete the packs older than ``ttl_s`` that no marker points to (uploads that were
    never committed, or packs whose release was cut off by a crash); returns them."""
    deleted: list[tuple[str, str]] = []
    for room in await asyncio.to_thread(packs.rooms):
        old = [p for p in await asyncio.to_thread(packs.packs, room)
               if pack_age_s(p, now) > ttl_s]
        deleted += [(room, p) for p in await release_packs(redis, packs, room, old)]
    return deleted


def has_markers(values: Sequence[Any]) -> bool:
    return any(isinstance(v, bytes) and v[:1] == MARKER and len(v) <= 255 for v in values)


def resolve(packs: StagingPacks | None, room: str,
            values: Sequence[bytes | None]) -> list[bytes | None]:
    """``values`` (staged blob keys' values) with each marker replaced by its frame's
    bytes from the pack: None where the pack is gone (applied and released since)."""
    out = list(values)
    wanted = [(i, ref) for i, v in enumerate(values) if (ref := parse_marker(v)) is not None]
    if not wanted:
        return out
    got = packs.read(room, [r for _, r in wanted]) if packs is not None else \
        [None] * len(wanted)
    for (i, _), blob in zip(wanted, got, strict=True):
        out[i] = blob
    return out


async def read_staged(redis: aioredis.Redis, packs: StagingPacks | None, room: str,
                      blob_keys: Sequence[str]) -> list[bytes | None]:
    """The staged blobs at ``blob_keys`` (one MGET), each marker followed into its pack
    (in a thread): None where a blob or its pack is gone."""
    values: list[Any] = await redis.mget(blob_keys)
    if has_markers(values):
        return await asyncio.to_thread(resolve, packs, room, values)
    return values


async def locate_staged(redis: aioredis.Redis, room: str, hashes: Sequence[str]
                        ) -> list[Located]:
    """Each hash's staged blob: its size and, for a marker, the pack frame it names."""
    script = redis.register_script(LOCATE_LUA)
    out: list[Located] = []
    for i in range(0, len(hashes), 10_000):
        got: list[Any] = await script(keys=[keys.blob(room, h) for h in hashes[i:i + 10_000]])
        for v in got:
            if not isinstance(v, bytes):
                out.append(Located(int(v), None))
            elif (ref := parse_marker(v)) is not None:
                out.append(Located(ref.size, ref))
            else:  # not a marker after all: MGET brings it, and decoding it fails
                out.append(Located(len(v), None))
    return out


async def read_located(redis: aioredis.Redis, packs: StagingPacks | None, room: str,
                       hashes: Sequence[str], located: Sequence[Located],
                       pool: BlockPool | None = None) -> list[bytes | memoryview | None]:
    """The blobs of ``hashes``, ``located`` by ``locate_staged``: frames in packs read
    from there (in a thread; with ``pool``, see ``StagingPacks.read_into``), only the
    others from Redis (one MGET)."""
    in_redis = [i for i, at in enumerate(located) if at.ref is None]
    out: list[bytes | memoryview | None] = [None] * len(hashes)
    if in_redis:
        values: list[Any] = await redis.mget([keys.blob(room, hashes[i]) for i in in_redis])
        for i, v in zip(in_redis, values, strict=True):
            out[i] = v
    refs = [(i, at.ref) for i, at in enumerate(located) if at.ref is not None]
    if refs:
        wanted = [r for _, r in refs]
        got: Sequence[bytes | memoryview | None] = [None] * len(refs)
        if packs is not None and pool is not None:
            got = await asyncio.to_thread(packs.read_into, room, wanted, pool)
        elif packs is not None:
            got = await asyncio.to_thread(packs.read, room, wanted)
        for (i, _), blob in zip(refs, got, strict=True):
            out[i] = blob
    return out


async def unlink_staged(redis: aioredis.Redis, room: str, hashes: Sequence[str]) -> None:
    """Unlink the staged blobs of ``hashes`` (freed in the background), 1,000 keys a
    command. (Not in a pipeline: redis-py's asyncio cluster pipeline does not queue
    commands of several keys, it only makes a coroutine of each.)"""
    for i in range(0, len(hashes), 1000):
        await redis.unlink(*(keys.blob(room, h) for h in hashes[i:i + 1000]))


def packs_of(frame_store: object, *, fsync: bool = True) -> StagingPacks | None:
    """The staging packs beside a Zarr FrameStore's rooms (None for another store)."""
    root = getattr(frame_store, "store", None)
    return StagingPacks(root, fsync=fsync) if isinstance(root, Store) else None
