"""Snapshotter snapshots, archive and trimming on a real Redis and real Zarr (tmp_path)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from control_testutil import stage

from trajhub.cli import snapshot as cli_snapshot
from trajhub.control import Control, IndexReader
from trajhub.gateway.app import create_app
from trajhub.shared import keys
from trajhub.shared.consumer import seq_of
from trajhub.shared.events import (
    Command,
    DeleteFrames,
    Event,
    FrameEntry,
    InsertFrames,
    Redo,
    ReplaceFrames,
    Undo,
)
from trajhub.shared.history import decode_segment, decode_snapshot, index_at
from trajhub.shared.history_store import ZarrHistoryStore
from trajhub.shared.settings import Settings
from trajhub.snapshotter import history as snap
from trajhub.snapshotter.history import read_progress, take_snapshot
from trajhub.snapshotter.worker import SnapshotterWorker

ROOM = "hist"
pytestmark = pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")

Recorded = dict[int, list[FrameEntry]]


class Room:
    """Commits a varied stream of real events and records the live index after each."""

    def __init__(self, r: aioredis.Redis, room: str = ROOM) -> None:
        self.r = r
        self.room = room
        self.control = Control(r)
        self.reader = IndexReader(r)
        self.n = 0
        self.at: Recorded = {}
        self.events: dict[int, Event] = {}

    async def commit(self, count: int) -> None:
        for _ in range(count):
            i = self.n
            self.n += 1
            hashes = await stage(self.r, self.room, [i % 7, (i + 3) % 7])
            view = await self.reader.read(self.room)
            command: Command
            if view.n_frames > 3 and i % 5 == 3:
                command = DeleteFrames(room=self.room, indices=[i % view.n_frames])
            elif view.n_frames > 0 and i % 3 == 2:
                command = ReplaceFrames(room=self.room, indices=[i % view.n_frames],
                                        hashes=hashes[:1])
            else:
                command = InsertFrames(room=self.room, hashes=hashes,
                                       at=(i % (view.n_frames + 1)) if i % 2 else None)
            result = await self.control.commit(command)
            assert result.status == "ok", result.reason
            assert result.event is not None
            self.events[result.event.seq] = result.event
            after = await self.reader.read(self.room)
            self.at[after.seq] = after.entries

    @property
    def seq(self) -> int:
        return max(self.events, default=0)


async def storage_reads(r: aioredis.Redis, count: int, room: str = ROOM) -> list[bytes]:
    """Group ``storage`` takes delivery of up to ``count`` new entries (not acked)."""
    reply: Any = await r.xreadgroup(keys.STORAGE_GROUP, "st", {keys.events(room): ">"},
                                    count=count)
    return [entry_id for _, entries in reply or () for entry_id, _ in entries]


async def storage_acks_all(r: aioredis.Redis, room: str = ROOM) -> None:
    ids = await storage_reads(r, 100_000, room)
    pending: Any = await r.xpending_range(keys.events(room), keys.STORAGE_GROUP, "-", "+",
                                          100_000)
    ids += [p["message_id"] for p in pending]
    if ids:
        await r.xack(keys.events(room), keys.STORAGE_GROUP, *ids)


async def stream_seqs(r: aioredis.Redis, room: str = ROOM) -> list[int]:
    entries: Any = await r.xrange(keys.events(room))
    return [seq_of(i) for i, _ in entries]


def archived_events(history: ZarrHistoryStore, room: str = ROOM) -> dict[int, Event]:
    out: dict[int, Event] = {}
    for first, last in history.segment_ranges(room):
        events = decode_segment(history.get_segment(room, first, last))
        assert [e.seq for e in events] == list(range(first, last + 1))
        for e in events:
            assert out.setdefault(e.seq, e) == e  # overlapping segments agree
    return out


async def past_index(r: aioredis.Redis, history: ZarrHistoryStore, seq: int,
                     room: str = ROOM) -> list[FrameEntry]:
    """The index at ``seq`` from the latest snapshot at or below it, segments and the
    stream tail only (nothing recorded by the test)."""
    below = [s for s in history.snapshot_seqs(room) if s <= seq]
    base = None
    if below:
        _, at, entries = decode_snapshot(history.get_snapshot(room, below[-1]))
        base = (at, entries)
    events = archived_events(history, room)
    tail: Any = await r.xrange(keys.events(room))
    for _, fields in tail:
        event = Event.from_stream(fields)
        events.setdefault(event.seq, event)
    return index_at(base, [events[s] for s in sorted(events)], seq, room)


def worker(redis_url: str, history: ZarrHistoryStore, **kw: Any) -> SnapshotterWorker:
    return SnapshotterWorker(redis_url, "snap-1", history=history, every_events=10,
                             every_bytes=0, segment_events=4, **kw)


async def test_snapshots_archive_trim_and_replay(redis_url: str, r: aioredis.Redis,
                                                 tmp_path: Path) -> None:
    room = Room(r)
    history = ZarrHistoryStore(tmp_path / "zarr")
    w = worker(redis_url, history)
    try:
        await room.commit(6)
        await w.process_room(ROOM)
        assert history.snapshot_seqs(ROOM) == []  # fewer than every_events
        await room.commit(4)
        await storage_acks_all(r)
        await w.process_room(ROOM)
        assert history.snapshot_seqs(ROOM) == [10]
        await room.commit(13)
        await storage_acks_all(r)
        await w.process_room(ROOM)
    finally:
        await w.aclose()
    assert history.snapshot_seqs(ROOM) == [10, 23]
    for seq in (10, 23):
        assert decode_snapshot(history.get_snapshot(ROOM, seq)) == (ROOM, seq, room.at[seq])
    ranges = history.segment_ranges(ROOM)
    assert ranges[0][0] == 1 and ranges[-1][1] == 23
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges))
    assert all(last - first < 4 for first, last in ranges)
    assert archived_events(history) == room.events
    assert await read_progress(r, ROOM) == snap.Progress(23, 23, 23)
    assert await stream_seqs(r) == []
    assert int(await r.hget(keys.meta(ROOM), "seq") or 0) == 23
    # Any past index is reachable from history alone, and new events continue it.
    await room.commit(3)
    for seq in (0, 1, 5, 9, 10, 11, 17, 22, 23, 24, 26):
        assert await past_index(r, history, seq) == room.at.get(seq, []), seq


async def test_stalled_storage_keeps_what_it_has_not_acked(
        redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    room = Room(r)
    history = ZarrHistoryStore(tmp_path / "zarr")
    w = worker(redis_url, history)
    try:
        await room.commit(15)
        await w.process_room(ROOM)  # storage never read: nothing may go
        assert history.snapshot_seqs(ROOM) == [15]
        assert await read_progress(r, ROOM) == snap.Progress(15, 15, 0)
        assert await stream_seqs(r) == list(range(1, 16))
        # Storage takes 1..8, acks 1..5 and stalls on 6..8 (delivered, not acked).
        ids = await storage_reads(r, 8)
        await r.xack(keys.events(ROOM), keys.STORAGE_GROUP, *ids[:5])
        await room.commit(1)
        await w.process_room(ROOM)
        assert await stream_seqs(r) == list(range(6, 17))
        assert (await read_progress(r, ROOM)).trimmed_seq == 5
        # Storage catches up: the next pass trims up to the snapshot (not past it).
        await storage_acks_all(r)
        await room.commit(1)
        await w.process_room(ROOM)
    finally:
        await w.aclose()
    assert await read_progress(r, ROOM) == snap.Progress(15, 15, 15)
    assert await stream_seqs(r) == [16, 17]
    for seq in (3, 15, 16, 17):
        assert await past_index(r, history, seq) == room.at[seq]


async def test_unacked_snapshotter_itself_limits_trim(r: aioredis.Redis,
                                                      tmp_path: Path) -> None:
    """On demand, outside the worker: a group that has delivered nothing stops trims."""
    room = Room(r)
    history = ZarrHistoryStore(tmp_path / "zarr")
    await room.commit(5)
    await storage_acks_all(r)
    result = await take_snapshot(r, history, ROOM)
    assert (result.snapshot_seq, result.archived_seq, result.trimmed_seq) == (5, 5, 0)
    assert await stream_seqs(r) == [1, 2, 3, 4, 5]


class CrashingHistory(ZarrHistoryStore):
    """A real store that dies (once) before its n-th segment write."""

    def __init__(self, path: Path, crash_at: int) -> None:
        super().__init__(path)
        self.crash_at = crash_at
        self.puts = 0

    def put_segment(self, room: str, first: int, last: int, data: bytes) -> None:
        self.puts += 1
        if self.puts == self.crash_at:
            raise RuntimeError("killed")
        super().put_segment(room, first, last, data)


def store_objects(path: Path) -> dict[str, bytes]:
    root = path / ROOM / "_history"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("crash_at", [1, 3])
async def test_crash_then_rerun_gives_the_same_result(r: aioredis.Redis, tmp_path: Path,
                                                      crash_at: int) -> None:
    room = Room(r)
    await room.commit(11)  # storage never reads: nothing is trimmed, both runs see all
    crashing = CrashingHistory(tmp_path / "a", crash_at)
    with pytest.raises(RuntimeError, match="killed"):
        await take_snapshot(r, crashing, ROOM, segment_events=4)
    # Snapshot written, archive partly done, snapshot progress not recorded.
    assert crashing.snapshot_seqs(ROOM) == [11]
    assert (await read_progress(r, ROOM)).snapshot_seq == 0
    again = await take_snapshot(r, crashing, ROOM, segment_events=4)
    again_twice = await take_snapshot(r, crashing, ROOM, segment_events=4)
    progress = await read_progress(r, ROOM)
    # A clean run from scratch into another store.
    await r.delete(keys.snapshotter_state(ROOM))
    clean_store = ZarrHistoryStore(tmp_path / "b")
    clean = await take_snapshot(r, clean_store, ROOM, segment_events=4)
    assert progress == await read_progress(r, ROOM) == snap.Progress(11, 11, 0)
    assert store_objects(tmp_path / "a") == store_objects(tmp_path / "b")
    assert (again.snapshot_seq, again.archived_seq) == (clean.snapshot_seq,
                                                         clean.archived_seq) == (11, 11)
    assert again_twice.segments == 0
    assert archived_events(clean_store) == room.events


async def test_route_and_cli_snapshot_on_demand(redis_url: str, r: aioredis.Redis,
                                                tmp_path: Path) -> None:
    room = Room(r)
    await room.commit(4)
    storage_url = str(tmp_path / "zarr")
    app = create_app(Settings.from_env({}, redis_url=redis_url, storage_url=storage_url))
    await app.gateway.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gw") as client:
            got = await client.post(f"/api/v1/rooms/{ROOM}/snapshot")
            missing = await client.post("/api/v1/rooms/nobody/snapshot")
            bad = await client.post("/api/v1/rooms/a..b/snapshot")
    finally:
        await app.gateway.stop()
    assert got.status_code == 200, got.text
    assert got.json() == {"room": ROOM, "snapshot_seq": 4, "archived_seq": 4,
                          "trimmed_seq": 0, "n_frames": len(room.at[4]), "segments": 1}
    assert missing.status_code == 404 and bad.status_code == 422
    history = ZarrHistoryStore(storage_url)
    assert decode_snapshot(history.get_snapshot(ROOM, 4)) == (ROOM, 4, room.at[4])

    await room.commit(2)
    await storage_acks_all(r)
    await r.xgroup_setid(keys.events(ROOM), keys.SNAPSHOTTER_GROUP, "6-0")
    result = await asyncio.to_thread(cli_snapshot, ROOM, redis_url, storage_url)
    assert result["snapshot_seq"] == 6 and result["trimmed_seq"] == 6
    assert history.snapshot_seqs(ROOM) == [4, 6]
    assert archived_events(history) == room.events
    assert await past_index(r, history, 5) == room.at[5]



async def test_snapshot_by_bytes(redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    room = Room(r)
    history = ZarrHistoryStore(tmp_path / "zarr")
    w = SnapshotterWorker(redis_url, "snap-1", history=history, every_events=10_000,
                          every_bytes=1, batch_events=2)
    try:
        await room.commit(3)
        await w.process_room(ROOM)
    finally:
        await w.aclose()
    assert history.snapshot_seqs(ROOM)[-1] == 3
    assert archived_events(history) == room.events


async def test_snapshot_by_bytes_counts_the_events_bytes_in_the_stream(
        redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    room = Room(r)
    await room.commit(2)
    total = sum(len(fields[b"data"]) for _, fields in await r.xrange(keys.events(ROOM)))
    taken = []
    for every_bytes in (total + 1, total):  # one byte short of due, then exactly due
        history = ZarrHistoryStore(tmp_path / str(every_bytes))
        w = SnapshotterWorker(redis_url, f"snap-{every_bytes}", history=history,
                              every_events=10_000, every_bytes=every_bytes)
        try:
            await r.delete(keys.snapshotter_state(ROOM))
            await r.xgroup_setid(keys.events(ROOM), keys.SNAPSHOTTER_GROUP, "0")
            await w.process_room(ROOM)
        finally:
            await w.aclose()
        taken.append(history.snapshot_seqs(ROOM))
    assert taken == [[], [2]]


async def test_the_stream_keeps_the_undo_window(r: aioredis.Redis, tmp_path: Path) -> None:
    room = Room(r)
    history = ZarrHistoryStore(tmp_path / "zarr")
    control = Control(r)
    await room.commit(12)
    [h] = await stage(r, ROOM, [99])
    edit = await control.commit(ReplaceFrames(room=ROOM, indices=[0], hashes=[h],
                                              author="ann"))
    assert edit.event is not None
    await room.commit(3)
    await storage_acks_all(r)
    await r.xgroup_setid(keys.events(ROOM), keys.SNAPSHOTTER_GROUP, "$")

    result = await take_snapshot(r, history, ROOM, keep_events=5)

    assert result.trimmed_seq == result.snapshot_seq - 5
    assert (await stream_seqs(r))[0] == result.snapshot_seq - 4
    assert edit.event.seq > result.trimmed_seq  # ann's edit is still in the stream
    undo = await control.commit(Undo(room=ROOM, author="ann"))
    assert undo.status == "ok", undo.reason
    await storage_acks_all(r)
    await r.xgroup_setid(keys.events(ROOM), keys.SNAPSHOTTER_GROUP, "$")
    await take_snapshot(r, history, ROOM, keep_events=0)
    assert (await stream_seqs(r)) == []
    gone = await control.commit(Redo(room=ROOM, author="ann"))
    assert gone.status == "not_found" and "no longer retained" in (gone.reason or "")


async def test_a_trim_held_back_by_storage_is_retried_without_new_events(
        redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    room = Room(r)
    history = ZarrHistoryStore(tmp_path / "zarr")
    w = worker(redis_url, history)
    try:
        await room.commit(15)
        await w.process_room(ROOM)  # storage has acknowledged nothing yet
        assert (await read_progress(r, ROOM)).trimmed_seq == 0
        assert ROOM in await w.rooms_behind()  # pending: retried at reconciliation
        await storage_acks_all(r)  # storage catches up; the room gets no new event
        await w.process_room(ROOM)
        assert (await read_progress(r, ROOM)).trimmed_seq == 15
        assert ROOM not in await w.rooms_behind()
    finally:
        await w.aclose()
    assert await stream_seqs(r) == []
