"""Control: commits commands to a room with one atomic Lua script per command, and
runs the room's locks and presenter token."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from trajhub.control.scripts import (
    CommitOp,
    commit_script,
    fork_script,
    lock_script,
    presenter_script,
)
from trajhub.shared import keys
from trajhub.shared.collab import (
    PRESENTER_TTL_MS,
    LockAcquire,
    LockList,
    LockRelease,
    LockRenew,
    LockResult,
    PresenterRelease,
    PresenterRequest,
    PresenterResult,
    SetStep,
    StepState,
)
from trajhub.shared.events import (
    Command,
    CommitResult,
    CreateRoom,
    DeleteFrames,
    Event,
    ForkRoom,
    Holder,
    InsertFrames,
    LaterEdit,
    PatchFrames,
    Redo,
    RelayoutFrames,
    ReplaceFrames,
    Undo,
)
from trajhub.shared.redis_util import is_cluster
from trajhub.shared.staging import STAGE_LUA

Clock = Callable[[], int]
"""Milliseconds since the epoch. None (the default) uses the Redis server's clock."""

DEFAULT_UNDO_RETENTION = 10_000
STAGE_SCRIPT_MIN = 8
"""Staging this many blobs or more in a commit's round trip is one script (STAGE_LUA)
rather than a SET each: redis-py spends ~25 us of Python per pipelined command, 23-27 ms
of a 1,000-frame upload in one request."""
_OPS: tuple[CommitOp, ...] = ("insert", "replace", "delete", "revert", "create")
_SCRIPT_OF: dict[str, CommitOp] = {"insert": "insert", "replace": "replace", "patch": "replace",
                                   "relayout": "replace", "delete": "delete", "undo": "revert",
                                   "redo": "revert", "create": "create"}
_LATER_SCAN_PAGE = 200


def _token() -> str:
    return secrets.token_urlsafe(24)


def _op_args(command: Command) -> tuple[list[str], list[str | int]]:
    """The command's blob hashes and its own script arguments."""
    if isinstance(command, InsertFrames):
        return command.hashes, ["" if command.at is None else command.at, *command.hashes]
    if isinstance(command, Undo | Redo):
        return [], [command.op]
    if isinstance(command, CreateRoom):
        return [], []
    base = command.base_versions
    head: list[str | int] = [len(command.targets), "1" if base is not None else "0",
                             "f" if command.by_frame_id else "i", *command.targets]
    if isinstance(command, DeleteFrames):
        return [], [*head, *(base or [])]
    assert isinstance(command, ReplaceFrames | PatchFrames | RelayoutFrames)
    tail: list[str | int] = []
    if isinstance(command, PatchFrames):
        tail = list(command.keys)
    elif isinstance(command, RelayoutFrames):
        tail = [command.keep_from]
    return command.hashes, [command.op, *head, *command.hashes, *(base or []), *tail]


class Control:
    """The in-process ControlPort: runs the scripts against a room's keys."""

    def __init__(self, redis: aioredis.Redis, *, clock: Clock | None = None,
                 undo_retention: int = DEFAULT_UNDO_RETENTION) -> None:
        self.redis = redis
        self.clock = clock
        self.undo_retention = undo_retention
        self._scripts = {op: redis.register_script(commit_script(op)) for op in _OPS}
        self._locks = redis.register_script(lock_script())
        self._presenter = redis.register_script(presenter_script())
        self._fork = redis.register_script(fork_script())
        self._loaded: set[str] = set()
        self._listed: set[str] = set()
        self.moved: Callable[[str], None] | None = None
        """Told a room's name after each commit or fork of it returns (or fails), before
        its caller hears of it: a gateway forgets what it knew of the room's index."""

    def _now(self) -> str:
        return "" if self.clock is None else str(int(self.clock()))

    # -- commits ---------------------------------------------------------------------
    async def commit(self, command: Command, *,
                     stage: Mapping[str, bytes | memoryview] | None = None,
                     stage_ttl_s: int = 3600) -> CommitResult:
        """Commit ``command``. ``stage`` (hash -> canonical frame bytes, or a
        marker into a staging pack: ``trajhub.shared.staging``) is staged
        (SET NX EX) in the same round trip, just before the script runs."""
        if command.idempotency_key is None:
            # Every commit is idempotent in the script, so the Redis client may safely
            # resend it after a dropped connection (trajhub.shared.redis_util).
            command = command.model_copy(update={"idempotency_key": f"auto-{uuid.uuid4().hex}"})
        room, idem = command.room, command.idempotency_key
        hashes, op_args = _op_args(command)
        script_keys = [*keys.room_keys(room), keys.undo_stack(room, command.author),
                       keys.redo_stack(room, command.author), keys.idempotency(room, idem or ""),
                       *(keys.blob(room, h) for h in dict.fromkeys(hashes))]
        args: list[str | int] = [
            "1" if idem else "", idem or uuid.uuid4().hex, repr(time.time()), command.author,
            room, self._now(), command.lock_token or "", command.fence or 0,
            self.undo_retention, *op_args]
        staged = [(keys.blob(room, h), blob) for h, blob in (stage or {}).items()]
        try:
            replayed, payload = await self._run_and_announce(
                self._scripts[_SCRIPT_OF[command.op]], room, script_keys, args, staged,
                stage_ttl_s)
        finally:
            if self.moved is not None:
                self.moved(room)
        result = CommitResult.model_validate_json(payload)
        if replayed:
            result = result.model_copy(update={"replayed": True})
        if result.status == "conflict" and isinstance(command, Undo | Redo):
            stack = (keys.undo_stack if isinstance(command, Undo) else keys.redo_stack)(
                room, command.author)
            result = await self._name_later_edit(room, stack, result)
        return result

    async def fork(self, request: ForkRoom) -> CommitResult:
        """Create ``request.room`` as a fork (event ``room_forked``, seq 1): "conflict"
        if it already has events. Idempotent like every commit."""
        idem = request.idempotency_key or f"auto-{uuid.uuid4().hex}"
        room = request.room
        script_keys = [*keys.room_keys(room), keys.undo_stack(room, request.author),
                       keys.redo_stack(room, request.author), keys.idempotency(room, idem)]
        entries = request.frames
        args: list[str | int] = [
            "1", idem, repr(time.time()), request.author, room, self._now(),
            request.lock_token or "", request.fence or 0, self.undo_retention,
            request.base_room, request.base_seq, request.next_fid, request.next_slot,
            len(entries), *(e.frame_id for e in entries),
            *(f"{e.version}:{e.hash}:{e.slot}" for e in entries)]
        try:
            replayed, payload = await self._run_and_announce(self._fork, room, script_keys,
                                                             args, [], 0)
        finally:
            if self.moved is not None:
                self.moved(room)
        result = CommitResult.model_validate_json(payload)
        return result.model_copy(update={"replayed": True}) if replayed else result

    async def _run_and_announce(self, script: AsyncScript, room: str, script_keys: list[str],
                                args: list[str | int],
                                staged: list[tuple[str, bytes | memoryview]],
                                stage_ttl_s: int) -> Any:
        """Stage, run the commit script and announce the room.

        Nothing cross-room is in the script (a cluster runs a script on one slot):
        the room joins ``trajhub:rooms`` (walked by the consumers' reconciliation)
        before this process first runs a script for it, so no commit can exist while
        its room is unlisted; a refused first commit leaves a listed room without
        events, which nothing counts. The notify entry is a hint that follows the
        script whatever it answers (a refused commit costs storage one empty look). On
        one server it rides in the same pipeline right behind the script, so a crash
        cannot separate them. On a cluster it lives on another node and a cluster
        pipeline sends to each node in parallel, so it is sent after the script
        replies (never ahead of the commit); a crash in between leaves the commit to
        the reconciliation.
        """
        if script.sha not in self._loaded:
            await self.redis.script_load(script.script)
            self._loaded.add(script.sha)
        cluster = is_cluster(self.redis)
        if cluster and room not in self._listed:
            await self.redis.sadd(keys.ROOMS, room)
            self._listed.add(room)
        scripted = len(staged) >= STAGE_SCRIPT_MIN
        for attempt in range(2):
            listing = room not in self._listed
            async with self.redis.pipeline(transaction=False) as pipe:
                if listing:
                    pipe.sadd(keys.ROOMS, room)
                # NX: never reset the TTL of a blob a commit already PERSISTed.
                if scripted:
                    pipe.execute_command("EVAL", STAGE_LUA, len(staged),
                                         *(key for key, _ in staged), stage_ttl_s,
                                         *(blob for _, blob in staged))
                else:
                    for key, blob in staged:
                        pipe.set(key, blob, ex=stage_ttl_s, nx=True)
                # Not pipe.evalsha: a cluster pipeline refuses it (it cannot know that
                # the keys share a slot; ours do, and it routes by them).
                pipe.execute_command("EVALSHA", script.sha, len(script_keys), *script_keys,
                                     *args)
                if not cluster:
                    pipe.xadd(keys.NOTIFY, {"room": room}, maxlen=keys.NOTIFY_MAXLEN,
                              approximate=True)
                replies = await pipe.execute(raise_on_error=False)
            if listing and not isinstance(replies[0], Exception):
                self._listed.add(room)
            answer = replies[int(listing) + (1 if scripted else len(staged))]
            if not (isinstance(answer, NoScriptError) and attempt == 0):
                break
            await self.redis.script_load(script.script)  # Redis restarted or flushed
        if cluster:
            await self.redis.xadd(keys.NOTIFY, {"room": room}, maxlen=keys.NOTIFY_MAXLEN,
                                  approximate=True)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def _name_later_edit(self, room: str, stack: str,
                               result: CommitResult) -> CommitResult:
        """Find the edit that changed the first conflicting frame (informational, so
        read after the refusal, outside the script)."""
        top = await self.redis.lindex(stack, 0)
        if not result.conflicts or top is None:
            return result
        since = int(top)
        later = await find_later_edit(self.redis, room, since, result.conflicts[0].frame_id)
        if later is None:
            return result
        reason = (f"{result.reason}: frame {later.frame_id} was changed by {later.author} "
                  f"at seq {later.seq} ({later.kind})")
        return result.model_copy(update={"later": later, "reason": reason})

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

    # -- locks -----------------------------------------------------------------------
    def _lock_keys(self, room: str, idempotency_key: str | None = None) -> list[str]:
        return [keys.order(room), keys.frames(room), keys.locks(room),
                keys.lock_frames(room), keys.lock_expiry(room), keys.fence(room),
                keys.idempotency(room, idempotency_key or "")]

    async def acquire_lock(self, request: LockAcquire) -> LockResult:
        target = request.target
        if target.room:
            kind, targets = "room", []
        elif target.frame_ids is not None:
            kind, targets = "f", list(target.frame_ids)
        else:
            kind, targets = "i", target.indices() or []
        idem = request.idempotency_key
        payload = await self._locks(keys=self._lock_keys(request.room, idem), args=[
            "acquire", self._now(), "1" if idem else "", _token(), request.author,
            request.session or "",
            request.ttl_ms, request.message or "", kind, *targets])
        return LockResult.model_validate_json(payload)

    async def renew_lock(self, request: LockRenew) -> LockResult:
        payload = await self._locks(keys=self._lock_keys(request.room), args=[
            "renew", self._now(), request.token, request.ttl_ms])
        return LockResult.model_validate_json(payload)

    async def release_lock(self, request: LockRelease) -> LockResult:
        payload = await self._locks(keys=self._lock_keys(request.room), args=[
            "release", self._now(), request.token])
        return LockResult.model_validate_json(payload)

    async def list_locks(self, room: str) -> LockList:
        payload = await self._locks(keys=self._lock_keys(room), args=["list", self._now()])
        holders = json.loads(payload)
        return LockList(room=room, locks=[Holder.model_validate(h) for h in holders or []])

    # -- presenter -------------------------------------------------------------------
    def _presenter_keys(self, room: str, idempotency_key: str | None = None) -> list[str]:
        return [keys.presenter(room), keys.step(room), keys.order(room),
                keys.idempotency(room, idempotency_key or "")]

    async def request_presenter(self, request: PresenterRequest) -> PresenterResult:
        idem = request.idempotency_key
        payload = await self._presenter(keys=self._presenter_keys(request.room, idem), args=[
            "request", self._now(), request.token or "", _token(), request.author,
            request.session or "", request.ttl_ms, "1" if idem else ""])
        return PresenterResult.model_validate_json(payload)

    async def renew_presenter(self, request: PresenterRequest) -> PresenterResult:
        if request.token is None:
            return PresenterResult(status="invalid", reason="renew needs the token")
        payload = await self._presenter(keys=self._presenter_keys(request.room), args=[
            "renew", self._now(), request.token, request.ttl_ms])
        return PresenterResult.model_validate_json(payload)

    async def release_presenter(self, request: PresenterRelease) -> PresenterResult:
        payload = await self._presenter(keys=self._presenter_keys(request.room), args=[
            "release", self._now(), request.token])
        return PresenterResult.model_validate_json(payload)

    async def set_step(self, request: SetStep) -> PresenterResult:
        payload = await self._presenter(keys=self._presenter_keys(request.room), args=[
            "set", self._now(), request.token or "", request.frame, request.author,
            PRESENTER_TTL_MS])
        return PresenterResult.model_validate_json(payload)

    async def get_step(self, room: str) -> StepState:
        payload = await self._presenter(keys=self._presenter_keys(room),
                                        args=["get", self._now()])
        return StepState.model_validate({"room": room, **json.loads(payload)})


async def find_later_edit(redis: aioredis.Redis, room: str, since: int,
                          frame_id: int) -> LaterEdit | None:
    """The first event after seq ``since`` whose frames include ``frame_id``."""
    start = f"{since + 1}-0"
    while True:
        page = await redis.xrange(keys.events(room), min=start, count=_LATER_SCAN_PAGE)
        if not page:
            return None
        for _, fields in page:
            event = Event.from_stream(fields)  # type: ignore[arg-type]
            if any(f.frame_id == frame_id for f in event.frames):
                return LaterEdit(seq=event.seq, kind=event.kind, author=event.author,
                                 frame_id=frame_id)
        start = f"{event.seq + 1}-0"
