"""Control: commits commands to a room with one atomic Lua script per command."""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from trajhub.control.scripts import CommitOp, commit_script
from trajhub.shared import keys
from trajhub.shared.events import (
    Command,
    CommitResult,
    DeleteFrames,
    InsertFrames,
    ReplaceFrames,
)

_OPS: tuple[CommitOp, ...] = ("insert", "replace", "delete")


def _invalid(reason: str) -> CommitResult:
    return CommitResult(status="invalid", reason=reason)


def _precheck(command: Command) -> CommitResult | None:
    """Shape errors the command model does not catch (list lengths)."""
    if isinstance(command, ReplaceFrames) and len(command.hashes) != len(command.indices):
        return _invalid(f"{len(command.hashes)} hashes for {len(command.indices)} indices")
    if (isinstance(command, ReplaceFrames | DeleteFrames)
            and command.base_versions is not None
            and len(command.base_versions) != len(command.indices)):
        return _invalid(f"{len(command.base_versions)} base versions for "
                        f"{len(command.indices)} indices")
    return None


def _keys_and_args(command: Command) -> tuple[list[str], list[str | int]]:
    room = command.room
    idem = command.idempotency_key
    hashes = [] if isinstance(command, DeleteFrames) else command.hashes
    script_keys = [*keys.room_keys(room), keys.idempotency(room, idem or ""),
                   *(keys.blob(room, h) for h in dict.fromkeys(hashes))]
    args: list[str | int] = [
        "1" if idem else "",
        idem or uuid.uuid4().hex,
        repr(time.time()),
        command.author,
        room,
    ]
    if isinstance(command, InsertFrames):
        args.append("" if command.at is None else command.at)
        args.extend(command.hashes)
        return script_keys, args
    base = command.base_versions
    args += [len(command.indices), "1" if base is not None else "0", *command.indices]
    if isinstance(command, ReplaceFrames):
        args.extend(command.hashes)
    args.extend(base or [])
    return script_keys, args


class Control:
    """The in-process ControlPort: runs the commit scripts against a room's keys."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._scripts = {op: redis.register_script(commit_script(op)) for op in _OPS}

    async def commit(self, command: Command) -> CommitResult:
        if command.idempotency_key is None:
            # Every commit is idempotent in the script, so the Redis client may safely
            # resend it after a dropped connection (trajhub.shared.redis_util).
            command = command.model_copy(update={"idempotency_key": f"auto-{uuid.uuid4().hex}"})
        refused = _precheck(command)
        if refused is not None:
            return refused
        script_keys, args = _keys_and_args(command)
        replayed, payload = await self._scripts[command.op](keys=script_keys, args=args)
        result = CommitResult.model_validate_json(payload)
        if replayed:
            result = result.model_copy(update={"replayed": True})
        if result.status == "ok":
            # Also on a replay: the first call may have died before announcing.
            await self._announce(command.room)
        return result

    async def _announce(self, room: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(keys.ROOMS, room)
            pipe.xadd(keys.NOTIFY, {"room": room}, maxlen=keys.NOTIFY_MAXLEN,
                      approximate=True)
            await pipe.execute()

    async def room_info(self, room: str) -> dict[str, Any] | None:
        """``{room, n_frames, seq, next_fid, next_slot, created}``, or None if the
        room has never been committed to."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hmget(keys.meta(room), ["seq", "next_fid", "next_slot", "created"])
            pipe.llen(keys.order(room))
            (seq, next_fid, next_slot, created), n_frames = await pipe.execute()
        if seq is None:
            return None
        return {"room": room, "n_frames": int(n_frames), "seq": int(seq),
                "next_fid": int(next_fid or 0), "next_slot": int(next_slot or 0),
                "created": float(created) if created is not None else None}
