"""Control's collaboration commands against a pure reference model (hypothesis stateful).

Three authors edit one room on a real Redis: replace (with or without base versions, by
index or frame id), patch, insert, delete, bulk insert/delete (> 16 frames: the scripts'
list-rebuilding paths), interleaved edit/edit/undo, lock (room, frames, frame ids,
ranges), renew, unlock, commits that present a lock (token + fence, sometimes stale or
expired), undo, redo (with a small undo retention), retries with the same idempotency
key, and a fake clock that moves to (or just before) a lock's expiry. Every command's
answer (status, the whole event, conflicts, lock holder) and every lock answer must be
what the model predicts; after every step the log holds exactly the accepted commands,
once each, the live index, meta and slot table equal the model's, the index equals
``replay`` of the log, and no frame's version ever goes back.
"""
from __future__ import annotations

import asyncio
import dataclasses
import operator
import sys
from collections import Counter, defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from functools import cache
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from control_testutil import index, make_frame
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from trajhub.control import Control
from trajhub.shared import codec, hashing, keys
from trajhub.shared.collab import LockAcquire, LockRelease, LockRenew
from trajhub.shared.events import (
    STATUS_HTTP,
    CommitResult,
    Conflict,
    DeleteFrames,
    Event,
    FrameEntry,
    InsertFrames,
    PatchFrames,
    Redo,
    ReplaceFrames,
    SlotWrite,
    Undo,
)
from trajhub.shared.index import unpack_entry
from trajhub.shared.replay import replay

ROOM = "sm"
AUTHORS = ("ann", "bob", "cat")
POOL_SIZE = 24
EXAMPLES = 200
UNDO_RETENTION = 2
T = TypeVar("T")
BY_FID = operator.attrgetter("frame_id")
Cmd = InsertFrames | ReplaceFrames | PatchFrames | DeleteFrames | Undo | Redo


@cache
def pool() -> tuple[tuple[str, ...], tuple[bytes, ...], str]:
    """Hashes and canonical bytes of the staged frames, and one hash never staged."""
    frames = [make_frame(i) for i in range(POOL_SIZE)]
    hashes = tuple(hashing.frame_hash(f) for f in frames)
    blobs = tuple(codec.frame_to_bytes(f) for f in frames)
    return hashes, blobs, hashing.frame_hash(make_frame(10_000))


# -- the reference model ----------------------------------------------------------------


@dataclass
class MLock:
    token: str
    author: str
    fence: int
    expires: int
    room: bool
    fids: frozenset[int]
    released: bool = False

    def live(self, now: int) -> bool:
        return not self.released and self.expires > now


@dataclass
class Prediction:
    status: str
    event: Event | None = None
    conflicts: list[Conflict] = field(default_factory=list)
    holder: str | None = None
    replayed: bool = False


class Refused(Exception):
    def __init__(self, status: str, conflicts: list[Conflict] | None = None,
                 holder: str | None = None) -> None:
        super().__init__(status)
        self.status, self.conflicts, self.holder = status, conflicts or [], holder


class Model:
    """What control should do, as plain Python over a list of entries."""

    def __init__(self, staged: set[str]) -> None:
        self.entries: list[FrameEntry] = []
        self.staged = staged
        self.slots: dict[str, int] = {}
        self.seq = self.next_fid = self.next_slot = self.fence = 0
        self.now = 1_000_000
        self.undo: dict[str, list[int]] = defaultdict(list)
        self.redo: dict[str, list[int]] = defaultdict(list)
        self.events: dict[int, Event] = {}
        self.idem: dict[str, Event] = {}
        self.locks: dict[str, MLock] = {}
        self.retention = UNDO_RETENTION

    # -- helpers -------------------------------------------------------------------------
    def positions(self) -> dict[int, int]:
        return {e.frame_id: i for i, e in enumerate(self.entries)}

    def live_locks(self) -> list[MLock]:
        return [lock for lock in self.locks.values() if lock.live(self.now)]

    def other_holder(self, fids: list[int], mine: str | None) -> MLock | None:
        """The live lock (not ``mine``) met first on 'room' then on each frame id."""
        others = [lock for lock in self.live_locks() if lock.token != mine]
        for lock in others:
            if lock.room:
                return lock
        for fid in fids:
            for lock in others:
                if fid in lock.fids:
                    return lock
        return None

    def check_locks(self, cmd: Cmd, fids: list[int]) -> None:
        other = self.other_holder(fids, cmd.lock_token)
        holder = other.author if other else None
        if cmd.lock_token is not None:
            mine = self.locks.get(cmd.lock_token)
            if mine is None or not mine.live(self.now) or mine.fence != cmd.fence:
                raise Refused("locked", holder=holder)
        if other is not None:
            raise Refused("locked", holder=holder)

    def resolve(self, cmd: ReplaceFrames | PatchFrames | DeleteFrames
                ) -> tuple[list[int], list[int]]:
        """Indices and frame ids of the targets (not_found / conflict refusals)."""
        targets = cmd.targets
        if not cmd.by_frame_id:
            if any(x >= len(self.entries) for x in targets):
                raise Refused("not_found")
            return list(targets), [self.entries[x].frame_id for x in targets]
        pos = self.positions()
        base = cmd.base_versions
        gone = [Conflict(index=-1, frame_id=fid, expected=base[i] if base else 0, actual=0,
                         hash="") for i, fid in enumerate(targets) if fid not in pos]
        if gone:
            raise Refused("conflict", gone)
        return [pos[f] for f in targets], list(targets)

    @staticmethod
    def base_conflicts(indices: list[int], current: list[FrameEntry],
                       base: list[int] | None) -> None:
        if base is None:
            return
        conflicts = [Conflict(index=i, frame_id=e.frame_id, expected=b, actual=e.version,
                              hash=e.hash)
                     for i, e, b in zip(indices, current, base, strict=True) if b != e.version]
        if conflicts:
            raise Refused("conflict", conflicts)

    def assign(self, hashes: list[str]) -> tuple[dict[str, int], list[str]]:
        slot_of: dict[str, int] = {}
        fresh: list[str] = []
        for h in dict.fromkeys(hashes):
            if h in self.slots:
                slot_of[h] = self.slots[h]
            else:
                fresh.append(h)
                slot_of[h] = self.next_slot + len(fresh) - 1
        if any(h not in self.staged for h in fresh):
            raise Refused("invalid")
        return slot_of, fresh

    def take_slots(self, fresh: list[str], slot_of: dict[str, int]) -> None:
        for h in fresh:
            self.slots[h] = slot_of[h]
        self.next_slot += len(fresh)

    def append(self, cmd: Cmd, kind: str, **body: Any) -> Event:
        self.seq += 1
        event = Event.model_validate({
            "room": ROOM, "seq": self.seq, "kind": kind, "author": cmd.author,
            "edit_id": cmd.idempotency_key, "time": 0.0,
            "fence": cmd.fence if cmd.lock_token is not None else None, **body})
        self.events[self.seq] = event
        undo, redo = self.undo[cmd.author], self.redo[cmd.author]
        if kind == "undo":
            undo.pop()
            redo.append(self.seq)
        else:
            if kind == "redo":
                redo.pop()
            else:
                redo.clear()
            undo.append(self.seq)
            del undo[:-self.retention]
        return event

    # -- commands ------------------------------------------------------------------------
    def execute(self, cmd: Cmd) -> Prediction:
        assert cmd.idempotency_key is not None
        if cmd.idempotency_key in self.idem:
            return Prediction("ok", self.idem[cmd.idempotency_key], replayed=True)
        try:
            if isinstance(cmd, InsertFrames):
                event = self.insert(cmd)
            elif isinstance(cmd, ReplaceFrames | PatchFrames):
                event = self.replace(cmd)
            elif isinstance(cmd, DeleteFrames):
                event = self.delete(cmd)
            else:
                event = self.revert(cmd)
        except Refused as refused:
            return Prediction(refused.status, conflicts=refused.conflicts,
                              holder=refused.holder)
        self.idem[cmd.idempotency_key] = event
        return Prediction("ok", event)

    def insert(self, cmd: InsertFrames) -> Event:
        self.check_locks(cmd, [])
        n = len(self.entries)
        at = n if cmd.at is None else cmd.at
        if at > n:
            raise Refused("not_found")
        slot_of, fresh = self.assign(cmd.hashes)
        new = [FrameEntry(frame_id=self.next_fid + i, version=1, hash=h, slot=slot_of[h])
               for i, h in enumerate(cmd.hashes)]
        self.entries[at:at] = new
        self.next_fid += len(new)
        self.take_slots(fresh, slot_of)
        return self.append(cmd, "frames_inserted", indices=list(range(at, at + len(new))),
                           frames=new, new_slots=[SlotWrite(slot=slot_of[h], hash=h)
                                                  for h in fresh], n_frames=n + len(new))

    def replace(self, cmd: ReplaceFrames | PatchFrames) -> Event:
        indices, fids = self.resolve(cmd)
        self.check_locks(cmd, fids)
        current = [self.entries[i] for i in indices]
        self.base_conflicts(indices, current, cmd.base_versions)
        slot_of, fresh = self.assign(cmd.hashes)
        patch = isinstance(cmd, PatchFrames)
        new = [FrameEntry(frame_id=e.frame_id, version=e.version + 1, hash=h, slot=slot_of[h])
               for e, h in zip(current, cmd.hashes, strict=True)]
        base_slot: dict[str, int] = {}
        for e, h in zip(current, cmd.hashes, strict=True):
            base_slot.setdefault(h, e.slot)
        writes = [SlotWrite(slot=slot_of[h], hash=h,
                            base=base_slot[h] if patch else None,
                            keys=list(cmd.keys) if isinstance(cmd, PatchFrames) else None)
                  for h in fresh]
        for i, entry in zip(indices, new, strict=True):
            self.entries[i] = entry
        self.take_slots(fresh, slot_of)
        return self.append(cmd, "frames_patched" if patch else "frames_replaced",
                           indices=indices, frames=new, base_versions=cmd.base_versions or [],
                           new_slots=writes, prev=current,
                           keys=list(cmd.keys) if isinstance(cmd, PatchFrames) else [],
                           n_frames=len(self.entries))

    def delete(self, cmd: DeleteFrames) -> Event:
        given, given_fids = self.resolve(cmd)
        perm = sorted(range(len(given)), key=lambda i: given[i])
        indices = [given[p] for p in perm]
        fids = [given_fids[p] for p in perm]
        base = None if cmd.base_versions is None else [cmd.base_versions[p] for p in perm]
        self.check_locks(cmd, fids)
        current = [self.entries[i] for i in indices]
        self.base_conflicts(indices, current, base)
        for i in reversed(indices):
            del self.entries[i]
        return self.append(cmd, "frames_deleted", indices=indices, frames=current,
                           base_versions=base or [], n_frames=len(self.entries))

    def revert(self, cmd: Undo | Redo) -> Event:
        stack = (self.undo if isinstance(cmd, Undo) else self.redo)[cmd.author]
        if not stack:
            raise Refused("not_found")
        top = stack[-1]
        ev = self.events[top]
        fids = [f.frame_id for f in ev.frames]
        pos = self.positions()
        n = len(self.entries)
        if ev.change == "delete":
            present = [Conflict(index=-1, frame_id=f, expected=0,
                                actual=self.entries[pos[f]].version, hash="")
                       for f in fids if f in pos]
            if present:
                raise Refused("conflict", present)
            self.check_locks(cmd, [])
            at = [min(x, n + i) for i, x in enumerate(ev.indices)]
            new = [dataclasses.replace(f, version=f.version + 1) for f in ev.frames]
            for x, entry in zip(at, new, strict=True):
                self.entries.insert(x, entry)
            body: dict[str, Any] = {"effect": "insert", "indices": at, "frames": new}
        else:
            changed = []
            for f in ev.frames:
                e = self.entries[pos[f.frame_id]] if f.frame_id in pos else None
                if e is None or e.version != f.version:
                    changed.append(Conflict(
                        index=pos.get(f.frame_id, -1), frame_id=f.frame_id, expected=f.version,
                        actual=e.version if e else 0, hash=e.hash if e else ""))
            if changed:
                raise Refused("conflict", changed)
            self.check_locks(cmd, fids)
            if ev.change == "insert":
                indices = sorted(pos[f] for f in fids)
                gone = [self.entries[i] for i in indices]
                for i in reversed(indices):
                    del self.entries[i]
                body = {"effect": "delete", "indices": indices, "frames": gone}
            else:
                indices = [pos[f] for f in fids]
                current = [self.entries[i] for i in indices]
                new = [FrameEntry(frame_id=c.frame_id, version=c.version + 1, hash=p.hash,
                                  slot=p.slot) for c, p in zip(current, ev.prev, strict=True)]
                for i, entry in zip(indices, new, strict=True):
                    self.entries[i] = entry
                body = {"effect": "replace", "indices": indices, "frames": new,
                        "prev": current}
        return self.append(cmd, cmd.op, **body, reverts=top, n_frames=len(self.entries))

    # -- locks ---------------------------------------------------------------------------
    def acquire(self, req: LockAcquire) -> tuple[str, list[int], list[int], MLock | None]:
        """Status, frame ids and indices of the target, and the blocking lock."""
        target, n = req.target, len(self.entries)
        fids: list[int] = []
        indices: list[int] = []
        if target.frame_ids is not None:
            pos = self.positions()
            if any(f not in pos for f in target.frame_ids):
                return "not_found", [], [], None
            fids, indices = list(target.frame_ids), [pos[f] for f in target.frame_ids]
        elif not target.room:
            wanted = target.indices() or []
            if any(x >= n for x in wanted):
                return "not_found", [], [], None
            indices = list(dict.fromkeys(wanted))
            fids = [self.entries[x].frame_id for x in indices]
        live = self.live_locks()
        if target.room and live:
            return "locked", [], [], live[0]
        blocking = None if target.room else self.other_holder(fids, None)
        if blocking is not None:
            return "locked", [], [], blocking
        return "ok", fids, indices, None


# -- the machine -------------------------------------------------------------------------

AUTHOR = st.sampled_from(AUTHORS)


class CollabMachine(RuleBasedStateMachine):
    def __init__(self, loop: asyncio.AbstractEventLoop, r: aioredis.Redis,
                 stats: Counter[tuple[Any, ...]]) -> None:
        super().__init__()
        self.loop, self.r, self.stats = loop, r, stats
        hashes, blobs, unstaged = pool()
        self.hashes = [*hashes, unstaged]
        self.model = Model(set(hashes))
        self.control = Control(r, clock=lambda: self.model.now, undo_retention=UNDO_RETENTION)
        self.n_keys = 0
        self.commands: list[Cmd] = []
        self.accepted: dict[str, Event] = {}
        self.expected_log: list[tuple[int, str]] = []
        self.log: list[Event] = []
        self.seen: dict[int, FrameEntry] = {}
        self.ready = False

        async def fresh_room() -> None:
            await r.flushdb()
            async with r.pipeline(transaction=False) as pipe:
                for h, blob in zip(hashes, blobs, strict=True):
                    pipe.set(keys.blob(ROOM, h), blob, ex=3600)
                await pipe.execute()

        self.aw(fresh_room())

    def aw(self, awaitable: Awaitable[T]) -> T:
        return self.loop.run_until_complete(awaitable)

    def log_after(self, seq: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        raw = self.aw(self.r.xrange(keys.events(ROOM), min=f"{seq + 1}-0"))
        return cast(list[tuple[bytes, dict[bytes, bytes]]], raw)

    def key(self) -> str:
        self.n_keys += 1
        return f"sm-{self.n_keys:06d}"

    # -- running a command and checking its answer ---------------------------------------
    def run(self, cmd: Cmd) -> CommitResult:
        predicted = self.model.execute(cmd)
        result = self.aw(self.control.commit(cmd))
        self.commands.append(cmd)
        self.stats[(cmd.op, result.status, result.replayed)] += 1
        if result.event is not None:
            self.stats[(result.event.kind, result.event.change)] += 1
        what = f"{cmd!r}\n-> {result!r}\nmodel: {predicted!r}"
        assert result.status == predicted.status, what
        assert result.http_status == STATUS_HTTP[predicted.status]
        assert result.replayed == predicted.replayed, what
        if result.status != "ok":
            assert result.event is None and result.reason, what
            assert sorted(result.conflicts, key=BY_FID) == sorted(predicted.conflicts,
                                                                  key=BY_FID), what
            holder = result.holder.author if result.holder else None
            assert holder == predicted.holder, what
            return result
        assert result.event is not None and predicted.event is not None
        idem = cmd.idempotency_key or ""
        if result.replayed:
            assert result.event == self.accepted[idem], what
        else:
            assert result.event == predicted.event.model_copy(
                update={"time": result.event.time}), what
            self.accepted[idem] = result.event
            self.expected_log.append((result.event.seq, idem))
        return result

    def draw_lock(self, data: st.DataObject, author: str) -> dict[str, Any]:
        """Sometimes present one of the author's locks (mostly a live one, mostly with
        its own fence)."""
        mine = [lock for lock in self.model.locks.values() if lock.author == author]
        if not mine or not data.draw(st.booleans(), label="with lock"):
            return {}
        live = [lock for lock in mine if lock.live(self.model.now)]
        mostly_live = data.draw(st.integers(0, 3), label="live") > 0
        lock = data.draw(st.sampled_from(live if live and mostly_live else mine), label="lock")
        good = data.draw(st.integers(0, 5), label="fence ok") > 0
        return {"lock_token": lock.token, "fence": lock.fence if good else lock.fence + 1}

    def draw_targets(self, data: st.DataObject, most: int,
                     by_fid: bool | None = None) -> dict[str, Any]:
        if by_fid is None:
            by_fid = data.draw(st.booleans(), label="by frame id")
        if by_fid:
            present = [e.frame_id for e in self.model.entries]
            every = list(range(self.model.next_fid)) or [0]
            mostly_present = data.draw(st.integers(0, 3), label="present") > 0
            choices = present if present and mostly_present else every
            fids = data.draw(st.lists(st.sampled_from(choices), min_size=1,
                                      max_size=min(most, len(choices)), unique=True))
            return {"frame_ids": fids}
        top = self.draw_top(data)
        # Often near the end: undoing a delete there after the room shrank puts the
        # frames back at the new end.
        low = max(0, top - 2) if data.draw(st.booleans(), label="tail") else 0
        indices = data.draw(st.lists(st.integers(low, top), min_size=1,
                                     max_size=min(most, top - low + 1), unique=True))
        return {"indices": indices}

    def draw_top(self, data: st.DataObject) -> int:
        """The largest index to pick from: mostly the last frame, sometimes one past."""
        n = len(self.model.entries)
        return n if n == 0 or not data.draw(st.integers(0, 7), label="past end") else n - 1

    def draw_base(self, data: st.DataObject, targets: dict[str, Any],
                  required: bool) -> list[int] | None:
        mode = data.draw(st.sampled_from(["current", "stale"] if required
                                         else ["none", "current", "stale"]), label="base")
        if mode == "none":
            return None
        entries = self.model.entries
        pos = self.model.positions()
        if "indices" in targets:
            current = [entries[x].version if x < len(entries) else 0 for x in targets["indices"]]
        else:
            current = [entries[pos[f]].version if f in pos else 0 for f in targets["frame_ids"]]
        if mode == "current":
            return current
        return [max(0, v + data.draw(st.sampled_from([0, -1, 1]))) for v in current]

    def draw_hashes(self, data: st.DataObject, k: int) -> list[str]:
        # The last pool hash was never staged: ~1 in 25 picks is refused as invalid.
        if k > 1 and data.draw(st.integers(0, 3), label="same content") == 0:
            return [data.draw(st.sampled_from(self.hashes), label="hash")] * k
        return data.draw(st.lists(st.sampled_from(self.hashes), min_size=k, max_size=k),
                         label="hashes")

    # -- rules ---------------------------------------------------------------------------
    @initialize(n=st.integers(0, 6), author=AUTHOR)
    def start(self, n: int, author: str) -> None:
        if n:
            self.run(InsertFrames(room=ROOM, author=author, hashes=list(self.hashes[:n]),
                                  idempotency_key=self.key()))
        self.ready = True

    def edit(self, data: st.DataObject, op: str, author: str) -> CommitResult:
        """One replace, patch, insert or delete by ``author``, drawn from ``data``."""
        extra: dict[str, Any] = {"room": ROOM, "author": author, "idempotency_key": self.key()}
        if op == "insert":
            k = data.draw(st.integers(1, 3), label="k")
            at = data.draw(st.none() | st.integers(0, len(self.model.entries) + 1), label="at")
            return self.run(InsertFrames(at=at, hashes=self.draw_hashes(data, k), **extra,
                                         **self.draw_lock(data, author)))
        targets = self.draw_targets(data, 2 if op == "patch" else 3)
        k = len(next(iter(targets.values())))
        base = self.draw_base(data, targets, required=op == "patch")
        extra.update(targets, base_versions=base, **self.draw_lock(data, author))
        if op == "replace":
            return self.run(ReplaceFrames(hashes=self.draw_hashes(data, k), **extra))
        if op == "patch":
            changed = data.draw(st.sampled_from([["positions"], ["positions", "info.step"]]),
                                label="keys")
            return self.run(PatchFrames(hashes=self.draw_hashes(data, k), keys=changed,
                                        **extra))
        return self.run(DeleteFrames(**extra))

    @rule(data=st.data(), author=AUTHOR)
    def replace(self, data: st.DataObject, author: str) -> None:
        self.edit(data, "replace", author)

    @rule(data=st.data(), author=AUTHOR)
    def patch(self, data: st.DataObject, author: str) -> None:
        self.edit(data, "patch", author)

    @rule(data=st.data(), author=AUTHOR)
    def insert(self, data: st.DataObject, author: str) -> None:
        self.edit(data, "insert", author)

    @rule(data=st.data(), author=AUTHOR)
    def delete(self, data: st.DataObject, author: str) -> None:
        self.edit(data, "delete", author)

    @rule(data=st.data(), authors=st.permutations(AUTHORS), ops=st.lists(
        st.sampled_from(["replace", "patch", "insert", "delete"]), min_size=2, max_size=2),
        redo=st.booleans())
    def interleaved(self, data: st.DataObject, authors: list[str], ops: list[str],
                    redo: bool) -> None:
        """The collaborative pattern: one author edits, another edits, the first undoes
        (and maybe redoes) its edit."""
        me, other = authors[:2]
        self.edit(data, ops[0], me)
        self.edit(data, ops[1], other)
        if self.run(Undo(room=ROOM, author=me, idempotency_key=self.key())).status == "ok" \
                and redo:
            self.run(Redo(room=ROOM, author=me, idempotency_key=self.key()))

    @rule(data=st.data(), author=AUTHOR, k=st.integers(17, 20))
    def bulk_insert(self, data: st.DataObject, author: str, k: int) -> None:
        # More than 16 frames: the scripts' list-rebuilding paths (and, undone, the
        # bulk removal and re-insertion paths).
        at = data.draw(st.integers(0, len(self.model.entries)), label="at")
        hashes = data.draw(st.lists(st.sampled_from(self.hashes[:-1]), min_size=k,
                                    max_size=k), label="hashes")
        self.run(InsertFrames(room=ROOM, author=author, at=at, hashes=hashes,
                              idempotency_key=self.key()))

    @precondition(lambda self: len(self.model.entries) >= 17)
    @rule(data=st.data(), author=AUTHOR)
    def bulk_delete(self, data: st.DataObject, author: str) -> None:
        n = len(self.model.entries)
        k = data.draw(st.integers(17, n), label="k")
        indices = data.draw(st.permutations(range(n)), label="order")[:k]
        self.run(DeleteFrames(room=ROOM, author=author, indices=indices,
                              idempotency_key=self.key()))

    @rule(data=st.data(), author=AUTHOR, latest=st.booleans(), undos=st.integers(0, 4),
          redos=st.integers(0, 2))
    def undo_redo(self, data: st.DataObject, author: str, latest: bool, undos: int,
                  redos: int) -> None:
        """A few undos then a few redos, often by an author who has something to undo
        or redo."""
        ops: list[type[Undo] | type[Redo]] = [Undo] * undos + [Redo] * redos
        having = [a for a in AUTHORS if self.model.undo[a] or self.model.redo[a]]
        if latest and having:
            author = data.draw(st.sampled_from(having), label="author")
        for op in ops:
            self.run(op(room=ROOM, author=author, idempotency_key=self.key(),
                        **self.draw_lock(data, author)))

    @precondition(lambda self: bool(self.commands))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """Resend an earlier command with its idempotency key: an accepted one is
        answered from the record (nothing appended), a refused one is checked afresh."""
        self.run(data.draw(st.sampled_from(self.commands), label="command"))

    @rule(data=st.data(), author=AUTHOR, ttl=st.sampled_from([100, 500, 2000, 30_000]),
          what=st.sampled_from(["room", "frames", "frame_ids", "range"]))
    def lock(self, data: st.DataObject, author: str, ttl: int, what: str) -> None:
        target: Any = "room"
        if what == "frames":
            target = {"frames": data.draw(st.lists(st.integers(0, self.draw_top(data)),
                                                   min_size=1, max_size=3))}
        elif what == "frame_ids":
            target = {"frame_ids": self.draw_targets(data, 2, by_fid=True)["frame_ids"]}
        elif what == "range":
            start = data.draw(st.integers(0, self.draw_top(data)), label="start")
            target = {"start": start, "stop": start + data.draw(st.integers(1, 3))}
        req = LockAcquire(room=ROOM, author=author, target=target, ttl_ms=ttl)
        status, fids, indices, blocking = self.model.acquire(req)
        result = self.aw(self.control.acquire_lock(req))
        what_ = f"{req!r}\n-> {result!r}"
        assert result.status == status, what_
        if status != "ok":
            self.check_lock_list()
            assert result.reason and result.token is None, what_
            if status == "locked":
                assert blocking is not None and result.holder is not None
                if req.target.room:  # any live lock blocks a room lock
                    assert result.holder.author in {x.author for x in self.model.live_locks()}
                else:
                    assert result.holder.author == blocking.author, what_
            return
        self.model.fence += 1
        expires = self.model.now + ttl
        assert (result.fence, result.expires_at) == (self.model.fence, expires), what_
        assert result.target == ({"room": True} if req.target.room
                                 else {"frame_ids": fids, "indices": indices}), what_
        assert result.token is not None
        self.model.locks[result.token] = MLock(result.token, author, self.model.fence, expires,
                                               req.target.room, frozenset(fids))
        self.check_lock_list()

    def check_lock_list(self) -> None:
        # Only after an acquire (which purges expired locks itself): listing purges
        # them too, and the commits must also meet expired locks nobody purged yet.
        locks = self.aw(self.control.list_locks(ROOM)).locks
        assert sorted((h.author, h.fence, h.expires_at) for h in locks) == sorted(
            (x.author, x.fence, x.expires) for x in self.model.live_locks())

    @precondition(lambda self: bool(self.model.locks))
    @rule(data=st.data(), renew=st.booleans(), ttl=st.sampled_from([100, 1000, 30_000]))
    def unlock_or_renew(self, data: st.DataObject, renew: bool, ttl: int) -> None:
        """Release or renew one of the locks ever taken: only a live one is found."""
        lock = data.draw(st.sampled_from(list(self.model.locks.values())), label="lock")
        live = lock.live(self.model.now)
        if renew:
            result = self.aw(self.control.renew_lock(LockRenew(room=ROOM, token=lock.token,
                                                               ttl_ms=ttl)))
        else:
            result = self.aw(self.control.release_lock(LockRelease(room=ROOM,
                                                                   token=lock.token)))
        assert result.status == ("ok" if live else "not_found"), (lock, result)
        if not live:
            assert result.reason
            return
        assert result.fence == lock.fence
        if renew:
            lock.expires = self.model.now + ttl
            assert result.expires_at == lock.expires
        else:
            lock.released = True

    @rule(data=st.data(), to_expiry=st.booleans(), ms=st.integers(0, 3000),
          past=st.sampled_from([-1, 0, 0, 1, 700]))
    def time_passes(self, data: st.DataObject, to_expiry: bool, ms: int, past: int) -> None:
        """Move the fake clock: to a live lock's expiry (a lock is dead from its expiry
        on; ``past`` -1 is just before), else by ``ms``."""
        live = self.model.live_locks()
        if to_expiry and live:
            lock = data.draw(st.sampled_from(live), label="lock")
            self.model.now = max(self.model.now, lock.expires + past)
        else:
            self.model.now += ms

    # -- invariants ----------------------------------------------------------------------
    def read_room(self, after: int) -> tuple[list[tuple[bytes, dict[bytes, bytes]]],
                                             list[FrameEntry], list[Any], dict[bytes, bytes]]:
        """One atomic round trip: the log after seq ``after``, the live index (as
        control_testutil.index reads it), meta and the slot table."""

        async def read() -> list[Any]:
            async with self.r.pipeline(transaction=True) as pipe:
                pipe.xrange(keys.events(ROOM), min=f"{after + 1}-0")
                pipe.lrange(keys.order(ROOM), 0, -1)
                pipe.hgetall(keys.frames(ROOM))
                pipe.hmget(keys.meta(ROOM), ["seq", "next_fid", "next_slot"])
                pipe.hgetall(keys.slots(ROOM))
                return await pipe.execute()

        raw, order, packed, meta, slots = self.aw(read())
        live = [unpack_entry(int(fid), packed[fid]) for fid in order]
        return raw, live, meta, slots

    @invariant()
    def log_index_and_meta_match_the_model(self) -> None:
        if not self.ready:
            return
        m = self.model
        raw, live, meta, slots = self.read_room(self.log[-1].seq if self.log else 0)
        new = [Event.from_stream(fields) for _, fields in raw]
        assert [(i, f[b"seq"], f[b"kind"]) for i, f in raw] == [
            (f"{e.seq}-0".encode(), str(e.seq).encode(), e.kind.encode()) for e in new]
        # Exactly the commands accepted since the last step, once each, in order.
        assert [(e.seq, e.edit_id) for e in new] == self.expected_log
        self.expected_log.clear()
        self.log.extend(new)
        assert live == m.entries
        assert replay(self.log) == live
        assert [int(x or 0) for x in meta] == [m.seq, m.next_fid, m.next_slot]
        assert {h.decode(): int(v) for h, v in slots.items()} == m.slots
        for entry in live:
            before = self.seen.get(entry.frame_id)
            if before is not None and entry != before:
                assert entry.version > before.version, (before, entry)
            self.seen[entry.frame_id] = entry

    def teardown(self) -> None:
        if self.ready and sys.exc_info()[0] is None:
            raw = self.log_after(0)
            assert [Event.from_stream(fields) for _, fields in raw] == self.log
            assert replay(self.log) == self.aw(index(self.r, ROOM))


def test_collab_commands_match_the_reference_model(redis_url: str) -> None:
    loop = asyncio.new_event_loop()
    r = aioredis.Redis.from_url(redis_url)
    machines = 0
    stats: Counter[tuple[Any, ...]] = Counter()

    class OnThisRedis(CollabMachine):
        def __init__(self) -> None:
            nonlocal machines
            machines += 1
            super().__init__(loop, r, stats)

    try:
        run_state_machine_as_test(OnThisRedis, settings=settings(
            max_examples=EXAMPLES, stateful_step_count=30, deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture,
                                   HealthCheck.too_slow]))
    finally:
        loop.run_until_complete(r.aclose())
        loop.close()
    assert machines >= EXAMPLES
    # Not vacuous: every command was accepted somewhere, every refusal happened.
    for op in ("insert", "replace", "patch", "delete", "undo", "redo"):
        assert stats[(op, "ok", False)] > 0, op
    for status in ("conflict", "locked", "not_found", "invalid"):
        assert sum(v for k, v in stats.items() if k[1] == status) > 0, status
