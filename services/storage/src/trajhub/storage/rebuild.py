"""Rebuild a room's storage projection (its Zarr group) from the room's history.

The events (archived segments + the Redis stream tail, ``HistoryReader``) say which
slot holds which content: every ``new_slots`` entry names a slot, the content hash of
its frame and, for a patch slot, its ``base`` and ``keys``. Replaying them gives the
slots (``0..n-1``, write-once) and the projection (``Projection``, as storage computes
it). The frames themselves come from the first of these sources that has the hash:

1. ``zarr``: the room's existing group, any slot whose stored ``_hash`` is that hash
   (needs the group's attributes ``n_slots``/``trajhub_arrays`` and its data arrays);
2. ``blob``: a staged blob ``{room}:blob:<hash>`` still in Redis (storage deletes them
   once applied, so only recent, not yet applied frames are there);
3. ``archive``: ``<room>/_history/blob/<hash>`` (``BlobArchive``), written by storage
   when ``TRAJHUB_ARCHIVE_BLOBS`` is on;
4. ``slot``: a slot already rebuilt with the same hash.

Every frame is hashed and compared with the event's hash before it is written (a
source whose content does not match is recorded and the next source tried), and the
new group is read back and hashed again after the projection commit. A slot whose
content is nowhere is reported (slot, hash, the frame indices that show it); then the
new group is left unfinished and nothing is swapped.

So: with the data arrays intact (projection, attributes of the projection or a torn
commit damaged) everything is recoverable; with the data arrays (or the group) gone,
only frames still staged in Redis, or archived because ``TRAJHUB_ARCHIVE_BLOBS`` was
on when storage applied them, are.

Where the result goes: ``into`` (a directory, URL or ``ZarrFrameStore``) receives the
room's group and nothing live is touched; the operator stops storage and swaps the
directories. Without ``into`` the store must be a local directory: the group is built
in ``<root>/.rebuild/<stamp>/<room>``, under the room's storage lease (a running
storage worker keeps away from the room), then swapped in by renames: the old group's
entries (all but ``_history`` and ``_staging``, its ``zarr.json`` first) move to
``<root>/.rebuild/<stamp>/<room>.old``, the new arrays move in and the new
``zarr.json`` last. The swap is a few renames, not one: a reader during it may fail a
read (and retry), and a crash in it leaves both halves under ``.rebuild`` to finish by
hand. Readers that cached the old arrays (gateway, storage) should be restarted.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from zarr.storage import LocalStore

from trajhub.shared import keys
from trajhub.shared.events import SlotWrite
from trajhub.shared.frames import Frame
from trajhub.shared.hashing import frame_hash
from trajhub.shared.history_reader import HistoryReader
from trajhub.shared.history_store import HISTORY_DIR, ZarrHistoryStore
from trajhub.shared.ports import HistoryStore
from trajhub.shared.staging import STAGING_DIR, packs_of, read_staged
from trajhub.shared.zarr_store import ZarrFrameStore, open_store
from trajhub.storage.blob_archive import BlobArchive
from trajhub.storage.worker import Projection, _layers, frame_view

CHUNK_SLOTS = 1024
"""Slots gathered, checked and written per store call."""
REBUILD_DIR = ".rebuild"
"""Under a local store's root; not a valid room name, so no reader lists it."""

_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RebuildError(RuntimeError):
    """The rebuild cannot start or cannot be committed (the message says why)."""


@dataclass(frozen=True)
class Mismatch:
    """A source that holds other content than the hash the event names."""

    slot: int
    hash: str
    source: str
    actual: str


@dataclass(frozen=True)
class MissingFrame:
    """A slot whose content no source has."""

    slot: int
    hash: str
    indices: list[int]
    """Positions in the room's current order that show this content (empty: the
    content is only in the room's past)."""


@dataclass
class RebuildReport:
    room: str
    seq: int = 0
    events: int = 0
    n_slots: int = 0
    n_frames: int = 0
    slots_written: int = 0
    frames_checked: int = 0
    bytes_written: int = 0
    sources: dict[str, int] = field(default_factory=dict)
    mismatches: list[Mismatch] = field(default_factory=list)
    missing: list[MissingFrame] = field(default_factory=list)
    target: str = ""
    swapped: bool = False
    old_group: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.missing and self.slots_written == self.n_slots and not any(
            m.source == "rebuilt" for m in self.mismatches)

    @property
    def slots_per_s(self) -> float:
        return self.slots_written / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_written / 1e6 / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {"room": self.room, "ok": self.ok, "seq": self.seq, "events": self.events,
                "n_slots": self.n_slots, "n_frames": self.n_frames,
                "slots_written": self.slots_written, "frames_checked": self.frames_checked,
                "sources": self.sources,
                "mismatches": [vars(m) for m in self.mismatches],
                "missing": [vars(m) for m in self.missing], "target": self.target,
                "swapped": self.swapped, "old_group": self.old_group,
                "seconds": round(self.seconds, 3),
                "slots_per_s": round(self.slots_per_s, 1),
                "mb_per_s": round(self.mb_per_s, 2)}


# -- history --------------------------------------------------------------------------

async def _replay(redis: aioredis.Redis, history: HistoryStore, room: str,
                  report: RebuildReport) -> tuple[Projection, list[SlotWrite]]:
    """The projection at the room's head and every slot write, by slot."""
    proj = Projection(0, 0)
    writes: dict[int, SlotWrite] = {}
    async for event in HistoryReader(redis, history).events(room, after=0):
        proj.apply(event)
        for w in event.new_slots:
            writes.setdefault(w.slot, w)
        report.events += 1
    if proj.seq == 0:
        raise RebuildError(f"room {room!r} has no events")
    slots = sorted(writes)
    if slots != list(range(len(slots))):
        gap = next(i for i, s in enumerate([*slots, -1]) if s != i)
        raise RebuildError(f"room {room!r}: the events write no slot {gap} "
                           f"(of {len(slots)}); history is incomplete")
    proj.n_slots = len(slots)
    return proj, [writes[s] for s in slots]


# -- content sources -------------------------------------------------------------------

class _Sources:
    """Finds whole frames by content hash, checking each against its hash."""

    def __init__(self, redis: aioredis.Redis, room: str, old: ZarrFrameStore | None,
                 new: ZarrFrameStore, archive: BlobArchive | None,
                 report: RebuildReport) -> None:
        self.redis, self.room, self.old, self.new = redis, room, old, new
        self.archive, self.report = archive, report
        self.old_slots: dict[str, int] = {}
        self.new_slots: dict[str, int] = {}
        if old is not None:
            self.old_slots = _stored_hashes(old, room)

    async def frames(self, writes: Sequence[SlotWrite]) -> dict[str, Frame]:
        need = {w.hash: w.slot for w in writes}
        found: dict[str, Frame] = {}
        for source in (self._from_old, self._from_blobs, self._from_archive,
                       self._from_new):
            wanted = {h: s for h, s in need.items() if h not in found}
            if not wanted:
                break
            for h, frame, name in await source(wanted):
                actual = frame_hash(frame)
                if actual != h:
                    self.report.mismatches.append(Mismatch(wanted[h], h, name, actual))
                    continue
                found[h] = frame
                self.report.sources[name] = self.report.sources.get(name, 0) + 1
        return found

    async def _from_old(self, wanted: dict[str, int]) -> list[tuple[str, Frame, str]]:
        hashes = [h for h in wanted if h in self.old_slots]
        if not hashes or self.old is None:
            return []
        try:
            frames = await asyncio.to_thread(self.old.read_slots, self.room,
                                             [self.old_slots[h] for h in hashes])
        except Exception:  # damaged group (arrays or chunks gone): other sources then
            return []
        return [(h, f, "zarr") for h, f in zip(hashes, frames, strict=True)]

    async def _from_blobs(self, wanted: dict[str, int]) -> list[tuple[str, Frame, str]]:
        hashes = list(wanted)
        blobs = await read_staged(self.redis, packs_of(self.old), self.room,
                                  [keys.blob(self.room, h) for h in hashes])
        return _decoded(hashes, blobs, "blob")

    async def _from_archive(self, wanted: dict[str, int]) -> list[tuple[str, Frame, str]]:
        if self.archive is None:
            return []
        hashes = list(wanted)
        blobs = await asyncio.to_thread(self.archive.get_many, self.room, hashes)
        return _decoded(hashes, blobs, "archive")

    async def _from_new(self, wanted: dict[str, int]) -> list[tuple[str, Frame, str]]:
        hashes = [h for h in wanted if h in self.new_slots]
        if not hashes:
            return []
        frames = await asyncio.to_thread(self.new.read_slots, self.room,
                                         [self.new_slots[h] for h in hashes])
        return [(h, f, "slot") for h, f in zip(hashes, frames, strict=True)]


def _stored_hashes(store: ZarrFrameStore, room: str) -> dict[str, int]:
    """Content hash -> a slot of the existing group holding it ({} if unreadable)."""
    try:
        n = store.n_slots(room)
        hashes = store.read_hashes(room, range(n)) if n else []
    except Exception:  # no group, no _hash array, bad attributes: not a source
        return {}
    out: dict[str, int] = {}
    for slot, h in enumerate(hashes):
        out.setdefault(h, slot)
    return out


def _decoded(hashes: list[str], blobs: Sequence[bytes | None], source: str
             ) -> list[tuple[str, Frame, str]]:
    out = []
    for h, blob in zip(hashes, blobs, strict=True):
        if blob is None:
            continue
        try:
            out.append((h, frame_view(blob), source))
        except Exception:  # undecodable: as if absent (the hash check cannot run)
            continue
    return out


# -- writing ---------------------------------------------------------------------------

def _nbytes(frames: Sequence[Frame]) -> int:
    return sum(int(a.nbytes) for f in frames for a in f.values())


async def _write(sources: _Sources, target: ZarrFrameStore, room: str,
                 writes: list[SlotWrite], chunk_slots: int, report: RebuildReport,
                 renew: Any) -> None:
    """Write every slot from its sources; after a missing frame, only look (report)."""
    writing = True
    for a in range(0, len(writes), chunk_slots):
        await renew()
        chunk = writes[a:a + chunk_slots]
        found = await sources.frames(chunk)
        report.frames_checked += sum(1 for w in chunk if w.hash in found)
        present = next((i for i, w in enumerate(chunk) if w.hash not in found), len(chunk))
        for w in chunk[present:]:
            if w.hash not in found:
                report.missing.append(MissingFrame(w.slot, w.hash, []))
        if not writing or present == 0:
            writing = False
            continue
        part = chunk[:present]
        frames = [found[w.hash] for w in part]
        await asyncio.to_thread(target.write_slots, room, part[0].slot, frames,
                                [w.hash for w in part], _layers(part))
        report.slots_written += len(part)
        report.bytes_written += _nbytes(frames)
        for w in part:
            sources.new_slots.setdefault(w.hash, w.slot)
        writing = present == len(chunk)


async def _verify(target: ZarrFrameStore, room: str, writes: list[SlotWrite],
                  chunk_slots: int, report: RebuildReport) -> None:
    """Read the new group back and hash every slot's (merged) frame."""
    for a in range(0, len(writes), chunk_slots):
        chunk = writes[a:a + chunk_slots]
        slots = [w.slot for w in chunk]
        frames = await asyncio.to_thread(target.read_slots, room, slots)
        stored = await asyncio.to_thread(target.read_hashes, room, slots)
        for w, frame, h in zip(chunk, frames, stored, strict=True):
            actual = frame_hash(frame)
            if actual != w.hash or h != w.hash:
                report.mismatches.append(Mismatch(w.slot, w.hash, "rebuilt", actual))


# -- the swap --------------------------------------------------------------------------

def _swap_local(root: Path, staging: Path, room: str) -> Path:
    """Move the new group at ``staging/room`` to ``root/room``, the old one's entries
    (but ``_history`` and ``_staging``) to ``staging/room.old``; ``zarr.json`` out first
    and in last."""
    live, new, old = root / room, staging / room, staging / f"{room}.old"
    old.mkdir(parents=True)
    live.mkdir(exist_ok=True)
    if (live / "zarr.json").exists():
        (live / "zarr.json").rename(old / "zarr.json")
    for entry in list(live.iterdir()):
        if entry.name not in (HISTORY_DIR, STAGING_DIR):
            entry.rename(old / entry.name)
    for entry in list(new.iterdir()):
        if entry.name != "zarr.json":
            entry.rename(live / entry.name)
    (new / "zarr.json").rename(live / "zarr.json")
    new.rmdir()
    return old


class _Lease:
    """The room's storage lease, held by the rebuild (storage workers stay away)."""

    def __init__(self, redis: aioredis.Redis, room: str, ms: int) -> None:
        self.redis, self.key, self.ms = redis, keys.storage_lease(room), ms
        self.owner = f"rebuild:{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"

    async def take(self) -> None:
        if not await self.redis.set(self.key, self.owner, nx=True, px=self.ms):
            holder = await self.redis.get(self.key)
            raise RebuildError(f"the room's storage lease is held by {holder!r}: stop "
                               "storage for the room (or wait for it) and retry")

    async def renew(self) -> None:
        if not int(await self.redis.eval(_RENEW_LUA, 1, self.key, self.owner, self.ms)):
            raise RebuildError("lost the room's storage lease during the rebuild")

    async def release(self) -> None:
        await self.redis.eval(_RELEASE_LUA, 1, self.key, self.owner)


async def _noop() -> None:
    return None


# -- entry point -----------------------------------------------------------------------

def _as_store(store: str | Path | ZarrFrameStore) -> ZarrFrameStore:
    return store if isinstance(store, ZarrFrameStore) else open_store(str(store))


def _local_root(store: ZarrFrameStore) -> Path:
    if not isinstance(store.store, LocalStore):
        raise RebuildError(f"an in-place rebuild needs a local directory store, not "
                           f"{store.store!r}: pass into=DIR and swap by hand")
    return Path(str(store.store.root))


async def rebuild(redis: aioredis.Redis, store: str | Path | ZarrFrameStore,
                  history: HistoryStore, room: str,
                  into: str | Path | ZarrFrameStore | None = None, *,
                  archive: BlobArchive | None = None, chunk_slots: int = CHUNK_SLOTS,
                  lease_ms: int = 60_000) -> RebuildReport:
    """Rebuild ``room``'s group of ``store`` from its history (see the module doc).

    ``archive`` defaults to the blob archive beside ``history`` when that is a
    ``ZarrHistoryStore``. With ``into``, the new group is written there (it must not
    hold the room yet); without, it replaces the room's group of ``store`` (a local
    directory). ``report.ok`` tells whether every slot was written and checked."""
    started = time.perf_counter()
    live = _as_store(store)
    if archive is None and isinstance(history, ZarrHistoryStore):
        archive = BlobArchive(history.store)
    report = RebuildReport(room)
    proj, writes = await _replay(redis, history, room, report)
    report.seq, report.n_slots, report.n_frames = proj.seq, proj.n_slots, len(proj.order)
    lease: _Lease | None = None
    staging: Path | None = None
    if into is None:
        root = _local_root(live)
        staging = root / REBUILD_DIR / time.strftime("%Y%m%dT%H%M%S") / f"{time.time_ns()}"
        target = ZarrFrameStore(LocalStore(staging))
        report.target = str(root / room)
        lease = _Lease(redis, room, lease_ms)
        await lease.take()
    else:
        target = _as_store(into)
        report.target = str(into if not isinstance(into, ZarrFrameStore) else into.store)
        if target.n_slots(room) or target.applied_seq(room):
            raise RebuildError(f"{report.target} already holds room {room!r}: rebuild "
                               "into a fresh place")
    try:
        sources = _Sources(redis, room, live, target, archive, report)
        await _write(sources, target, room, writes, chunk_slots, report,
                     lease.renew if lease else _noop)
        if report.missing:
            _where(report, proj)
        else:
            await asyncio.to_thread(target.commit_projection, room, proj.seq, proj.order,
                                    proj.frame_ids, proj.versions)
            await _verify(target, room, writes, chunk_slots, report)
        if lease is not None and staging is not None and report.ok:
            await lease.renew()
            old = await asyncio.to_thread(_swap_local, _local_root(live), staging, room)
            report.swapped, report.old_group = True, str(old)
            await redis.hset(keys.applied(room),
                             mapping={"seq": proj.seq, "slots": proj.n_slots})
    finally:
        if lease is not None:
            await lease.release()
        report.seconds = time.perf_counter() - started
    return report


def _where(report: RebuildReport, proj: Projection) -> None:
    """Fill in which current frame indices show each missing slot."""
    missing = {m.slot: m for m in report.missing}
    for index, slot in enumerate(proj.order):
        if slot in missing:
            missing[slot].indices.append(index)
