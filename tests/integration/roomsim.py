"""A stand-in for control in the storage/snapshotter tests.

``RoomSim`` keeps a Python list model of a room's frames and writes, for each edit,
exactly what control's commit scripts write: staged (persisted) blobs for new slots,
the ``{r}:meta`` seq, the event entry ``<seq>-0`` with fields seq/kind/data, the
consumer groups at the first commit, then ``SADD trajhub:rooms`` and ``XADD
trajhub:notify``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import numpy as np
import redis.asyncio as aioredis

from trajhub.shared import codec, keys
from trajhub.shared.events import Event, EventKind, FrameEntry, SlotWrite
from trajhub.shared.frames import Frame, frames_equal
from trajhub.shared.hashing import frame_hash


def make_frame(rng: np.random.Generator, n_atoms: int | None = None) -> Frame:
    n = int(rng.integers(1, 12)) if n_atoms is None else n_atoms
    frame: Frame = {
        "numbers": rng.integers(1, 90, size=n).astype(np.int64),
        "positions": rng.normal(size=(n, 3)),
        "cell": np.eye(3) * float(rng.uniform(5, 10)),
        "pbc": np.array([True, True, False]),
        "info.energy": np.array(float(rng.normal())),
    }
    if rng.random() < 0.5:
        frame["calc.forces"] = rng.normal(size=(n, 3)).astype(np.float32)
    return frame


class RoomSim:
    def __init__(self, redis: aioredis.Redis, room: str) -> None:
        self.redis = redis
        self.room = room
        self.seq = 0
        self.next_fid = 0
        self.next_slot = 0
        self.slots: dict[str, int] = {}
        self.entries: list[FrameEntry] = []
        self.frames: list[Frame] = []

    # -- edits ---------------------------------------------------------------------------

    async def insert(self, frames: Sequence[Frame], at: int | None = None, *,
                     publish: bool = True, notify: bool = True, stage: bool = True) -> Event:
        at = len(self.entries) if at is None else at
        new_slots, entries = self._assign(frames)
        entries = [FrameEntry(frame_id=self._fid(), version=1, hash=e.hash, slot=e.slot)
                   for e in entries]
        self.entries[at:at] = entries
        self.frames[at:at] = list(frames)
        event = self._event("frames_inserted", list(range(at, at + len(frames))), entries,
                            new_slots)
        await self._commit(event, frames, publish=publish, notify=notify, stage=stage)
        return event

    async def replace(self, indices: Sequence[int], frames: Sequence[Frame], *,
                      publish: bool = True, notify: bool = True) -> Event:
        new_slots, assigned = self._assign(frames)
        entries, base = [], []
        for i, e in zip(indices, assigned, strict=True):
            old = self.entries[i]
            base.append(old.version)
            entry = FrameEntry(frame_id=old.frame_id, version=old.version + 1, hash=e.hash,
                               slot=e.slot)
            self.entries[i] = entry
            entries.append(entry)
        for i, frame in zip(indices, frames, strict=True):
            self.frames[i] = frame
        event = self._event("frames_replaced", list(indices), entries, new_slots, base)
        await self._commit(event, frames, publish=publish, notify=notify)
        return event

    async def delete(self, indices: Sequence[int], *, publish: bool = True,
                     notify: bool = True) -> Event:
        indices = sorted(set(indices))
        removed = [self.entries[i] for i in indices]
        for i in reversed(indices):
            del self.entries[i], self.frames[i]
        event = self._event("frames_deleted", indices, removed, [],
                            [e.version for e in removed])
        await self._commit(event, [], publish=publish, notify=notify)
        return event

    # -- what control writes ------------------------------------------------------------------

    async def publish(self, event: Event, *, notify: bool = True) -> None:
        """XADD an event built earlier with ``publish=False`` (plus meta, groups, hints)."""
        r = self.redis
        await r.xadd(keys.events(self.room),
                     {"seq": event.seq, "kind": event.kind, "data": event.model_dump_json()},
                     id=f"{event.seq}-0")
        if event.seq == 1:
            for group in keys.CONSUMER_GROUPS:
                await r.xgroup_create(keys.events(self.room), group, id="0", mkstream=True)
        await r.hset(keys.meta(self.room), mapping={  # type: ignore[misc]
            "seq": event.seq, "next_fid": self.next_fid, "next_slot": self.next_slot})
        await r.sadd(keys.ROOMS, self.room)  # type: ignore[misc]
        if notify:
            await r.xadd(keys.NOTIFY, {"room": self.room}, maxlen=keys.NOTIFY_MAXLEN,
                         approximate=True)

    async def stage(self, frames: Sequence[Frame]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for frame in frames:
                pipe.set(keys.blob(self.room, frame_hash(frame)), codec.frame_to_bytes(frame))
            await pipe.execute()

    async def _commit(self, event: Event, frames: Sequence[Frame], *, publish: bool,
                      notify: bool, stage: bool = True) -> None:
        if stage:
            needed = {w.hash for w in event.new_slots}
            await self.stage([f for f in frames if frame_hash(f) in needed])
        if publish:
            await self.publish(event, notify=notify)

    def _assign(self, frames: Sequence[Frame]) -> tuple[list[SlotWrite], list[SlotWrite]]:
        """Slots for ``frames`` (dedup by content within the room): (new, per frame)."""
        new: list[SlotWrite] = []
        per_frame = []
        for frame in frames:
            h = frame_hash(frame)
            if h not in self.slots:
                self.slots[h] = self.next_slot
                new.append(SlotWrite(slot=self.next_slot, hash=h))
                self.next_slot += 1
            per_frame.append(SlotWrite(slot=self.slots[h], hash=h))
        return new, per_frame

    def _fid(self) -> int:
        self.next_fid += 1
        return self.next_fid - 1

    def _event(self, kind: EventKind, indices: list[int], entries: list[FrameEntry],
               new_slots: list[SlotWrite], base: list[int] | None = None) -> Event:
        self.seq += 1
        return Event(room=self.room, seq=self.seq, kind=kind, author="test",
                     edit_id=uuid.uuid4().hex, time=time.time(), indices=indices,
                     frames=entries, base_versions=base or [], new_slots=new_slots,
                     n_frames=len(self.entries))

    # -- checks ------------------------------------------------------------------------------

    def assert_store_matches(self, store: object) -> None:
        """The store's committed projection and frames equal the model."""
        seq, order, fids, versions = store.read_projection(self.room)  # type: ignore[attr-defined]
        assert seq == self.seq
        assert list(order) == [e.slot for e in self.entries]
        assert list(fids) == [e.frame_id for e in self.entries]
        assert list(versions) == [e.version for e in self.entries]
        assert store.n_slots(self.room) == self.next_slot  # type: ignore[attr-defined]
        got = store.read_slots(self.room, list(order)) if len(order) else []  # type: ignore[attr-defined]
        assert len(got) == len(self.frames)
        for i, (a, b) in enumerate(zip(got, self.frames, strict=True)):
            assert frames_equal(a, b), f"frame {i} differs"
