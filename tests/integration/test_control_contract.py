"""The ControlPort contract, run against every backend: the in-process Control and
HttpControl talking to control's app under uvicorn. Both run on the same fake clock and
the same Redis, so each scenario must give the same answers through either.

Scenarios: locks with fencing, the presenter token, frame-id addressing, patches, undo
and redo.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
from control_server import serve
from control_testutil import index, snapshot, stage

from trajhub.control import Control, HttpControl
from trajhub.shared import keys
from trajhub.shared.collab import (
    LockAcquire,
    LockRelease,
    LockRenew,
    PresenterRelease,
    PresenterRequest,
    SetStep,
)
from trajhub.shared.events import (
    CommitResult,
    DeleteFrames,
    Event,
    InsertFrames,
    PatchFrames,
    Redo,
    ReplaceFrames,
    Undo,
)
from trajhub.shared.ports import ControlPort
from trajhub.shared.settings import Settings

ROOM = "collab"
START_MS = 1_000_000


class FakeClock:
    def __init__(self) -> None:
        self.ms = START_MS

    def __call__(self) -> int:
        return self.ms


@dataclass
class Backend:
    control: ControlPort
    clock: FakeClock


@pytest.fixture(scope="module")
def served_clock() -> FakeClock:
    """The clock of the served app (one server per module; reset for each test)."""
    return FakeClock()


@pytest.fixture(scope="module")
def control_url(redis_server: str, served_clock: FakeClock) -> Iterator[str]:
    with serve(redis_server, clock=served_clock) as url:
        yield url


@pytest.fixture(params=["in-process", "http"])
async def backend(request: pytest.FixtureRequest, r: aioredis.Redis) -> AsyncIterator[Backend]:
    if request.param == "in-process":
        clock = FakeClock()
        yield Backend(Control(r, clock=clock), clock)
        return
    clock = request.getfixturevalue("served_clock")
    clock.ms = START_MS
    url = request.getfixturevalue("control_url")
    async with HttpControl(Settings(control_url=url)) as control:
        yield Backend(control, clock)


def ok(result: CommitResult) -> Event:
    assert result.status == "ok", result
    assert result.event is not None
    return result.event


async def room_with(r: aioredis.Redis, control: ControlPort, n: int) -> list[str]:
    hashes = await stage(r, ROOM, list(range(n)))
    ok(await control.commit(InsertFrames(room=ROOM, hashes=hashes, author="setup")))
    return hashes


async def test_frame_lock_refuses_other_writers_and_names_the_holder(
        r: aioredis.Redis, backend: Backend) -> None:
    control = backend.control
    await room_with(r, control, 4)
    lock = await control.acquire_lock(LockAcquire(room=ROOM, author="alice",
                                                  target={"frames": [1, 2]}, ttl_ms=5000,
                                                  message="fixing bonds"))
    assert lock.status == "ok" and lock.token and lock.fence == 1
    assert lock.target == {"frame_ids": [1, 2], "indices": [1, 2]}
    assert lock.expires_at == START_MS + 5000
    [h] = await stage(r, ROOM, [9])
    before = await snapshot(r, ROOM)

    refused = await control.commit(ReplaceFrames(room=ROOM, indices=[2], hashes=[h],
                                                 author="bob"))
    assert refused.status == "locked" and refused.http_status == 423
    assert refused.holder is not None and refused.holder.author == "alice"
    assert refused.holder.message == "fixing bonds" and "alice" in (refused.reason or "")
    assert await snapshot(r, ROOM) == before
    # An unlocked frame is free; the holder may write its own frames.
    ok(await control.commit(ReplaceFrames(room=ROOM, indices=[0], hashes=[h], author="bob")))
    ok(await control.commit(ReplaceFrames(room=ROOM, indices=[1], hashes=[h], author="alice",
                                          lock_token=lock.token, fence=lock.fence)))
    other = await control.acquire_lock(LockAcquire(room=ROOM, author="bob", target="room"))
    assert other.status == "locked" and other.holder and other.holder.author == "alice"
    [holder] = (await control.list_locks(ROOM)).locks
    assert (holder.author, holder.fence, holder.message) == ("alice", 1, "fixing bonds")


async def test_stalled_holder_is_fenced_out(r: aioredis.Redis, backend: Backend) -> None:
    control, clock = backend.control, backend.clock
    await room_with(r, control, 3)
    a = await control.acquire_lock(LockAcquire(room=ROOM, author="A", target="room",
                                               ttl_ms=1000))
    clock.ms += 1500  # A stalls past its TTL
    b = await control.acquire_lock(LockAcquire(room=ROOM, author="B", target="room",
                                               ttl_ms=1000))
    assert b.status == "ok" and b.fence == (a.fence or 0) + 1
    [hb, ha] = await stage(r, ROOM, [20, 21])
    ok(await control.commit(ReplaceFrames(room=ROOM, indices=[0], hashes=[hb], author="B",
                                          lock_token=b.token, fence=b.fence)))
    late = await control.commit(ReplaceFrames(room=ROOM, indices=[0], hashes=[ha], author="A",
                                              lock_token=a.token, fence=a.fence))
    assert late.status == "locked" and "expired" in (late.reason or "")
    assert late.holder is not None and late.holder.author == "B"
    assert (await index(r, ROOM))[0].hash == hb
    # After B releases, A's stale token is still refused.
    released = await control.release_lock(LockRelease(room=ROOM, token=b.token or ""))
    assert released.ok
    again = await control.commit(ReplaceFrames(room=ROOM, indices=[0], hashes=[ha], author="A",
                                               lock_token=a.token, fence=a.fence))
    assert again.status == "locked"


async def test_renew_and_release_only_for_the_owner(r: aioredis.Redis,
                                                    backend: Backend) -> None:
    control, clock = backend.control, backend.clock
    await room_with(r, control, 2)
    lock = await control.acquire_lock(LockAcquire(room=ROOM, target={"start": 0, "stop": 2},
                                                  ttl_ms=1000))
    assert lock.token is not None
    wrong = "x" * 32
    assert (await control.renew_lock(LockRenew(room=ROOM, token=wrong))).status == "not_found"
    assert (await control.release_lock(LockRelease(room=ROOM, token=wrong))).status == "not_found"
    clock.ms += 900
    renewed = await control.renew_lock(LockRenew(room=ROOM, token=lock.token, ttl_ms=1000))
    assert renewed.ok and renewed.expires_at == clock.ms + 1000
    clock.ms += 900  # past the first TTL, inside the renewed one
    assert len((await control.list_locks(ROOM)).locks) == 1
    clock.ms += 200
    assert (await control.list_locks(ROOM)).locks == []
    assert (await control.renew_lock(LockRenew(room=ROOM, token=lock.token))).status == "not_found"
    assert await r.hlen(keys.lock_frames(ROOM)) == 0


async def test_edits_by_frame_id_follow_the_frame(r: aioredis.Redis, backend: Backend) -> None:
    control = backend.control
    await room_with(r, control, 3)
    [h, x] = await stage(r, ROOM, [30, 31])
    ok(await control.commit(InsertFrames(room=ROOM, at=0, hashes=[x])))  # shifts every index
    event = ok(await control.commit(ReplaceFrames(room=ROOM, frame_ids=[1], hashes=[h],
                                                  base_versions=[1])))
    assert event.indices == [2] and event.frames[0].frame_id == 1
    ok(await control.commit(DeleteFrames(room=ROOM, frame_ids=[1], base_versions=[2])))
    gone = await control.commit(ReplaceFrames(room=ROOM, frame_ids=[1], hashes=[h],
                                              base_versions=[2]))
    assert gone.status == "conflict" and gone.conflicts[0].frame_id == 1


async def test_patch_records_keys_and_layers_on_the_old_slot(r: aioredis.Redis,
                                                             backend: Backend) -> None:
    control = backend.control
    await room_with(r, control, 2)
    [merged] = await stage(r, ROOM, [40])
    before = (await index(r, ROOM))[1]
    event = ok(await control.commit(PatchFrames(room=ROOM, indices=[1], hashes=[merged],
                                                keys=["positions"], base_versions=[1])))
    assert event.kind == "frames_patched" and event.keys == ["positions"]
    assert event.prev[0].hash == before.hash
    [write] = event.new_slots
    assert write.base == before.slot and write.keys == ["positions"]
    stale = await control.commit(PatchFrames(room=ROOM, indices=[1], hashes=[merged],
                                             keys=["positions"], base_versions=[1]))
    assert stale.status == "conflict"


async def test_undo_redo_per_author_including_structural_edits(r: aioredis.Redis,
                                                               backend: Backend) -> None:
    control = backend.control
    await room_with(r, control, 3)
    start = await index(r, ROOM)
    [h] = await stage(r, ROOM, [50])
    ok(await control.commit(ReplaceFrames(room=ROOM, indices=[1], hashes=[h], author="ann")))
    ok(await control.commit(DeleteFrames(room=ROOM, indices=[0], author="ann")))
    ok(await control.commit(InsertFrames(room=ROOM, hashes=[h], author="ann")))

    undo = ok(await control.commit(Undo(room=ROOM, author="ann")))
    assert (undo.kind, undo.change, undo.reverts) == ("undo", "delete", 4)
    ok(await control.commit(Undo(room=ROOM, author="ann")))  # brings frame 0 back
    ok(await control.commit(Undo(room=ROOM, author="ann")))  # the replace
    now = await index(r, ROOM)
    assert [(e.frame_id, e.hash) for e in now] == [(e.frame_id, e.hash) for e in start]
    assert all(a.version > b.version for a, b in zip(now[:2], start[:2], strict=True))
    nothing = await control.commit(Undo(room=ROOM, author="ann"))
    assert nothing.status == "not_found"
    # setup's insert touched frames ann has changed since: refused, naming ann's edit.
    setup = await control.commit(Undo(room=ROOM, author="setup"))
    assert setup.status == "conflict" and setup.later and setup.later.author == "ann"
    redo = ok(await control.commit(Redo(room=ROOM, author="ann")))
    assert redo.kind == "redo" and redo.change == "replace"
    assert (await index(r, ROOM))[1].hash == h


async def test_undo_refused_when_someone_changed_the_frames_since(
        r: aioredis.Redis, backend: Backend) -> None:
    control = backend.control
    await room_with(r, control, 2)
    [a, b] = await stage(r, ROOM, [60, 61])
    ok(await control.commit(ReplaceFrames(room=ROOM, indices=[0], hashes=[a], author="ann")))
    later = ok(await control.commit(ReplaceFrames(room=ROOM, indices=[0], hashes=[b],
                                                  author="bob")))
    before = await snapshot(r, ROOM)
    refused = await control.commit(Undo(room=ROOM, author="ann"))
    assert refused.status == "conflict" and refused.later is not None
    assert (refused.later.seq, refused.later.author) == (later.seq, "bob")
    assert "bob" in (refused.reason or "")
    assert await snapshot(r, ROOM) == before


async def test_presenter_token_and_step(r: aioredis.Redis, backend: Backend) -> None:
    control, clock = backend.control, backend.clock
    await room_with(r, control, 5)
    alice = await control.request_presenter(PresenterRequest(room=ROOM, author="alice"))
    assert alice.ok and alice.token
    bob = await control.request_presenter(PresenterRequest(room=ROOM, author="bob"))
    assert bob.status == "locked" and bob.holder and bob.holder.author == "alice"
    assert (await control.set_step(SetStep(room=ROOM, frame=2, author="bob"))).status == "locked"
    step = await control.set_step(SetStep(room=ROOM, frame=3, author="alice", token=alice.token))
    assert step.ok and (step.frame, step.step_seq) == (3, 1)
    far = await control.set_step(SetStep(room=ROOM, frame=9, author="alice", token=alice.token))
    assert far.status == "not_found"
    state = await control.get_step(ROOM)
    assert (state.frame, state.by, state.presenter and state.presenter.author) == (
        3, "alice", "alice")
    clock.ms += 4000
    renewed = await control.renew_presenter(PresenterRequest(room=ROOM, author="alice",
                                                             token=alice.token))
    assert renewed.ok and renewed.expires_at == clock.ms + 5000
    clock.ms += 6000  # alice's token expired: bob takes over
    bob = await control.request_presenter(PresenterRequest(room=ROOM, author="bob"))
    assert bob.ok and bob.token != alice.token
    stale = await control.set_step(SetStep(room=ROOM, frame=1, author="alice",
                                           token=alice.token))
    assert stale.status == "locked"
    assert (await control.release_presenter(PresenterRelease(room=ROOM,
                                                             token=bob.token or ""))).ok
    assert (await control.get_step(ROOM)).presenter is None
    free = await control.set_step(SetStep(room=ROOM, frame=4, author="carol"))
    assert free.ok and free.step_seq == 2


async def test_renewing_the_presenter_needs_the_token(backend: Backend) -> None:
    refused = await backend.control.renew_presenter(PresenterRequest(room=ROOM))
    assert refused.status == "invalid" and refused.http_status == 422


async def test_a_retried_lock_or_presenter_request_gets_the_first_answer(
        backend: Backend) -> None:
    control = backend.control
    first = await control.acquire_lock(LockAcquire(room=ROOM, author="ann", target="room",
                                                   idempotency_key="lock-retry-1"))
    again = await control.acquire_lock(LockAcquire(room=ROOM, author="ann", target="room",
                                                   idempotency_key="lock-retry-1"))
    assert first.ok and again == first
    other = await control.acquire_lock(LockAcquire(room=ROOM, author="ann", target="room",
                                                   idempotency_key="lock-retry-2"))
    assert other.status == "locked"
    p1 = await control.request_presenter(PresenterRequest(room=ROOM, author="ann",
                                                          idempotency_key="pres-retry-1"))
    p2 = await control.request_presenter(PresenterRequest(room=ROOM, author="ann",
                                                          idempotency_key="pres-retry-1"))
    assert p1.ok and p2 == p1
