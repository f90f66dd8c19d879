"""Making a room a fork of another: the parts the fork route and the default-room path
share (no HTTP here)."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from trajhub.control import IndexReader
from trajhub.gateway.errors import ApiError
from trajhub.gateway.reader import applied_slots
from trajhub.gateway.writes import build_command, checked
from trajhub.shared import keys
from trajhub.shared.events import Event, ForkRoom, FrameEntry
from trajhub.shared.ports import ControlPort

APPLIED_WAIT_S = 10.0
"""How long a fork waits for the base room's storage to apply the slots it references."""
APPLIED_POLL_S = 0.02
RETRY_AFTER_S = "2"


async def counters(redis: aioredis.Redis, base: str) -> tuple[int, int]:
    """The base's ``next_fid``/``next_slot``, read after its index: they only grow, so
    they are at least those of the forked seq and the fork's own ids never collide."""
    next_fid, next_slot = await redis.hmget(keys.meta(base), ["next_fid", "next_slot"])
    return int(next_fid or 0), int(next_slot or 0)


async def wait_applied(redis: aioredis.Redis, base: str, entries: list[FrameEntry]) -> None:
    """Until the base's storage has applied every slot in ``entries`` (503 if it lags)."""
    if not entries:
        return
    need = max(e.slot for e in entries) + 1
    deadline = time.monotonic() + APPLIED_WAIT_S
    while (have := await applied_slots(redis, base)) < need:
        if time.monotonic() >= deadline:
            raise ApiError(503, f"base room {base!r}: storage has applied {have} of the "
                                f"{need} slots the fork reads; retry later",
                           headers={"Retry-After": RETRY_AFTER_S})
        await asyncio.sleep(APPLIED_POLL_S)


async def pin_for_fork(redis: aioredis.Redis, base: str, room: str, base_seq: int) -> None:
    """Register the fork with its base room (slot compaction keeps the slots of forked
    states), then refuse with 410 if compaction has already dropped that state's data.
    Compaction sets its bound before it reads the forks, so one of the two sees the
    other."""
    await redis.hset(keys.forks(base), room, base_seq)
    below = await redis.hget(keys.compaction(base), "below")
    if below is not None and base_seq < int(below):
        await unpin_failed_fork(redis, base, room)
        raise ApiError(410, f"room {base!r} was compacted below seq {int(below)}: the frames "
                            f"of seq {base_seq} are gone, so it cannot be forked there")


async def fork(redis: aioredis.Redis, control: ControlPort, room: str, base: str,
               base_seq: int, entries: list[FrameEntry], author: str | None,
               idempotency_key: str | None = None) -> Event:
    """Commit ``room`` as a fork of ``base`` at ``base_seq`` (whose index is
    ``entries``); raises ApiError with control's reason if refused."""
    await pin_for_fork(redis, base, room, base_seq)
    try:
        next_fid, next_slot = await counters(redis, base)
        await wait_applied(redis, base, entries)
        command = build_command(
            ForkRoom, room=room, author=author, idempotency_key=idempotency_key,
            base_room=base, base_seq=base_seq, next_fid=next_fid, next_slot=next_slot,
            frames=entries)
        event = checked(await control.fork(command)).event
    except BaseException:
        await unpin_failed_fork(redis, base, room)
        raise
    assert event is not None
    return event


async def unpin_failed_fork(redis: aioredis.Redis, base: str, room: str) -> None:
    """Forget the registration unless ``room`` is (already) a fork of ``base``."""
    parent = await redis.hget(keys.meta(room), "parent")
    if parent is None or (parent.decode() if isinstance(parent, bytes) else parent) != base:
        await redis.hdel(keys.forks(base), room)


async def start_from(redis: aioredis.Redis, index: IndexReader, control: ControlPort,
                     room: str, base: str) -> bool:
    """Fork ``base`` (as it is now) into ``room`` if ``room`` has no events and ``base``
    has; True if this call created it. A concurrent creator wins quietly."""
    if room == base or (await index.read(room, indices=[])).exists:
        return False
    view = await index.read(base)
    if not view.exists:
        return False
    try:
        await fork(redis, control, room, base, view.seq, view.entries, "trajhub")
    except ApiError as exc:
        if exc.status == 409:  # someone else created the room meanwhile
            return False
        raise
    return True
