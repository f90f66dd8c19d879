"""Eight OS processes race on the same frames of one room, each with its own Redis
connection and Control: replaces with base versions from their own last read, delete +
insert, patches, lock / commit with the fence / release (and commits with a stale
fence), undo, redo and idempotent retries. Afterwards the log must account for every
accepted commit exactly once and nothing else, have no seq gap, replay to the live
index, and every refusal must be a proper 409/423 (404: nothing to undo, a lock on a
frame deleted meanwhile, or releasing a lock that expired)."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import traceback
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any, cast

import redis.asyncio as aioredis
from control_testutil import index, stage

from trajhub.control import Control, IndexReader
from trajhub.shared import keys
from trajhub.shared.collab import LockAcquire, LockRelease, LockResult
from trajhub.shared.events import (
    Command,
    CommitResult,
    DeleteFrames,
    Event,
    InsertFrames,
    PatchFrames,
    Redo,
    ReplaceFrames,
    Undo,
)
from trajhub.shared.replay import replay

ROOM = "race"
PROCS = 8
EDITS = 200
FRAMES = 12
POOL = 40
LOCK_TTL_MS = 2000


@dataclass
class Outcome:
    """What one process saw: its accepted commits, replays and refusals."""

    worker: int
    accepted: list[tuple[int, str, str]] = field(default_factory=list)  # seq, edit_id, op
    replays: list[tuple[int, str]] = field(default_factory=list)  # seq, edit_id
    # op, status, http status, reason
    refused: list[tuple[str, str, int, str]] = field(default_factory=list)
    error: str | None = None


class Racer:
    def __init__(self, r: aioredis.Redis, wid: int, hashes: list[str], seed: int) -> None:
        self.control, self.reader = Control(r), IndexReader(r)
        self.author = f"p{wid}"
        self.hashes = hashes
        self.rng = random.Random(seed)
        self.out = Outcome(wid)
        self.view: dict[int, int] = {}  # frame id -> version, as of this process' last read
        self.n_keys = 0
        self.last_ok: Command | None = None

    def key(self) -> str:
        self.n_keys += 1
        return f"{self.author}-{self.n_keys:05d}"

    async def read(self) -> None:
        # One atomic read (the gateway's reader), as the others commit meanwhile.
        view = await self.reader.read(ROOM)
        self.view = {e.frame_id: e.version for e in view.entries}

    def pick(self, most: int) -> tuple[list[int], list[int]]:
        fids = self.rng.sample(sorted(self.view), min(most, len(self.view),
                                                      self.rng.randint(1, most)))
        return fids, [self.view[f] for f in fids]

    async def commit(self, cmd: Command) -> CommitResult:
        result = await self.control.commit(cmd)
        if result.status != "ok":
            self.out.refused.append((cmd.op, result.status, result.http_status,
                                     result.reason or ""))
            if result.status == "conflict":
                await self.read()
            return result
        event = result.event
        assert event is not None and event.edit_id == cmd.idempotency_key
        if result.replayed:
            self.out.replays.append((event.seq, event.edit_id))
            return result
        self.out.accepted.append((event.seq, event.edit_id, cmd.op))
        self.last_ok = cmd
        for entry in event.frames:
            if event.change == "delete":
                self.view.pop(entry.frame_id, None)
            else:
                self.view[entry.frame_id] = entry.version
        return result

    async def lock_op(self, op: str, call: Awaitable[LockResult]) -> LockResult:
        result = await call
        if not result.ok:
            self.out.refused.append((op, result.status, result.http_status, result.reason or ""))
        return result

    async def step(self) -> None:
        rng = self.rng
        if not self.view or rng.random() < 0.3:
            await self.read()
        if not self.view:
            await self.commit(InsertFrames(room=ROOM, author=self.author,
                                           idempotency_key=self.key(),
                                           hashes=[rng.choice(self.hashes)]))
            return
        roll = rng.random()
        if roll < 0.05 and self.last_ok is not None:
            # A retry after a lost answer: the record answers, nothing is appended.
            result = await self.commit(self.last_ok)
            assert result.status == "ok" and result.replayed, result
        elif roll < 0.35:
            fids, base = self.pick(2)
            await self.commit(ReplaceFrames(
                room=ROOM, author=self.author, idempotency_key=self.key(), frame_ids=fids,
                base_versions=base, hashes=[rng.choice(self.hashes) for _ in fids]))
        elif roll < 0.5:
            fids, base = self.pick(2)
            await self.commit(PatchFrames(
                room=ROOM, author=self.author, idempotency_key=self.key(), frame_ids=fids,
                base_versions=base, keys=["positions"],
                hashes=[rng.choice(self.hashes) for _ in fids]))
        elif roll < 0.65:
            fids, base = self.pick(1)
            gone = await self.commit(DeleteFrames(room=ROOM, author=self.author,
                                                  idempotency_key=self.key(), frame_ids=fids,
                                                  base_versions=base))
            if gone.status == "ok":
                await self.commit(InsertFrames(
                    room=ROOM, author=self.author, idempotency_key=self.key(),
                    at=rng.choice([None, 0]),
                    hashes=[rng.choice(self.hashes)]))
        elif roll < 0.8:
            await self.locked_edit()
        else:
            op = Undo if rng.random() < 0.65 else Redo
            await self.commit(op(room=ROOM, author=self.author, idempotency_key=self.key()))

    async def locked_edit(self) -> None:
        rng = self.rng
        room = rng.random() < 0.25
        target: Any = "room" if room else {"frame_ids": self.pick(2)[0]}
        lock = await self.lock_op("lock", self.control.acquire_lock(LockAcquire(
            room=ROOM, author=self.author, target=target, ttl_ms=LOCK_TTL_MS)))
        if not lock.ok:
            return
        assert lock.token is not None and lock.fence is not None and lock.target is not None
        await self.read()
        fids = list(lock.target.get("frame_ids") or self.pick(2)[0])
        stale = rng.random() < 0.1
        fenced: dict[str, Any] = {"room": ROOM, "author": self.author,
                                  "idempotency_key": self.key(), "lock_token": lock.token,
                                  "fence": lock.fence + 1 if stale else lock.fence}
        if fids:
            result = await self.commit(ReplaceFrames(
                frame_ids=fids, base_versions=[self.view.get(f, 0) for f in fids],
                hashes=[rng.choice(self.hashes) for _ in fids], **fenced))
        else:  # the others emptied the room: refill it under the room lock
            result = await self.commit(InsertFrames(hashes=[rng.choice(self.hashes)], **fenced))
        assert not (stale and result.status == "ok"), "a stale fence was accepted"
        await self.lock_op("release", self.control.release_lock(
            LockRelease(room=ROOM, token=lock.token)))


async def _race(url: str, wid: int, hashes: list[str], seed: int, barrier: Barrier) -> Outcome:
    r = aioredis.Redis.from_url(url)
    try:
        racer = Racer(r, wid, hashes, seed)
        await racer.read()
        barrier.wait(timeout=60)  # every process connected: start together
        for _ in range(EDITS):
            await racer.step()
        return racer.out
    finally:
        await r.aclose()


def _worker(url: str, wid: int, hashes: list[str], seed: int, barrier: Barrier,
            results: Queue[Outcome]) -> None:
    try:
        results.put(asyncio.run(_race(url, wid, hashes, seed, barrier)))
    except BaseException:
        results.put(Outcome(wid, error=traceback.format_exc()))


async def _setup(url: str) -> tuple[list[str], str]:
    r = aioredis.Redis.from_url(url)
    try:
        hashes = await stage(r, ROOM, list(range(POOL)), ex=600)
        result = await Control(r).commit(InsertFrames(
            room=ROOM, author="setup", hashes=hashes[:FRAMES], idempotency_key="setup-000001"))
        assert result.status == "ok"
        return hashes, "setup-000001"
    finally:
        await r.aclose()


async def _log_and_index(url: str) -> tuple[list[tuple[bytes, dict[bytes, bytes]]], Any]:
    r = aioredis.Redis.from_url(url)
    try:
        log = cast(list[tuple[bytes, dict[bytes, bytes]]], await r.xrange(keys.events(ROOM)))
        return log, (await index(r, ROOM), await r.hget(keys.meta(ROOM), "seq"))
    finally:
        await r.aclose()


def _refusal_is_proper(op: str, status: str, http: int, reason: str) -> bool:
    if not reason:
        return False
    if op in ("lock", "release"):
        # Someone else holds it; the frame was deleted since the read; the lock expired.
        return (http == 423 or (http == 404 and "does not exist" in reason)
                or (op == "release" and http == 404 and "no live lock" in reason))
    if op in ("undo", "redo") and http == 404:
        return reason.startswith(f"nothing to {op}")
    return http in (409, 423)


def test_processes_racing_on_one_room_leave_a_consistent_log(redis_url: str) -> None:
    hashes, setup_key = asyncio.run(_setup(redis_url))
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(PROCS)
    results: Queue[Outcome] = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(redis_url, wid, hashes, 1000 + wid, barrier,
                                               results), daemon=True)
             for wid in range(PROCS)]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
    errors = [o.error for o in outcomes if o.error]
    assert not errors, errors[0]
    assert all(p.exitcode == 0 for p in procs)

    raw, (live, meta_seq) = asyncio.run(_log_and_index(redis_url))
    events = [Event.from_stream(fields) for _, fields in raw]
    n = len(events)
    # Seqs 1..N, no gap, each the stream id; the live index is the replay of the log.
    assert [e.seq for e in events] == list(range(1, n + 1))
    assert [stream_id for stream_id, _ in raw] == [f"{s}-0".encode() for s in range(1, n + 1)]
    assert int(meta_seq) == n
    assert replay(events) == live

    # Every accepted commit is in the log exactly once, under its seq, by its author;
    # nothing is in the log that no process accepted.
    logged = {e.edit_id: e for e in events}
    assert len(logged) == n, "an edit id appears twice in the log"
    accepted = {setup_key: (1, "setup")}
    kinds = {"insert": "frames_inserted", "replace": "frames_replaced",
             "patch": "frames_patched", "delete": "frames_deleted", "undo": "undo", "redo": "redo"}
    for o in outcomes:
        for seq, edit_id, op in o.accepted:
            assert edit_id not in accepted, f"{edit_id} accepted twice"
            accepted[edit_id] = (seq, f"p{o.worker}")
            assert edit_id not in logged or logged[edit_id].kind == kinds[op]
    assert {k: (e.seq, e.author) for k, e in logged.items()} == accepted
    # A retry is answered with the first result, never appended again.
    for o in outcomes:
        for seq, edit_id in o.replays:
            assert accepted[edit_id] == (seq, f"p{o.worker}")
    # Every undo/redo reverts an earlier event of its own author.
    for e in events:
        if e.reverts is not None:
            assert e.reverts < e.seq and events[e.reverts - 1].author == e.author

    refusals = [r for o in outcomes for r in o.refused]
    bad = [r for r in refusals if not _refusal_is_proper(*r)]
    assert not bad, bad[:5]
    # The race really raced: edits were refused for conflicts and locks, and accepted.
    statuses = Counter(status for _, status, _, _ in refusals)
    assert statuses["conflict"] > 0 and statuses["locked"] > 0
    assert n > PROCS * EDITS // 10
