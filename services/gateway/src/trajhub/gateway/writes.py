"""The write path: commands from validated uploads, commit through control, answers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from trajhub.control import Control
from trajhub.gateway.errors import ApiError
from trajhub.gateway.staging import Stager
from trajhub.shared.events import Command, CommitResult
from trajhub.shared.names import InvalidName, check_room_name
from trajhub.shared.ports import ControlPort

M = TypeVar("M", bound=BaseModel)


def check_room(room: str) -> str:
    try:
        return check_room_name(room)
    except InvalidName as exc:
        raise ApiError(422, str(exc)) from None


def describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" if err["loc"] else err["msg"]
        for err in exc.errors())


def build_command(model: type[M], **fields: Any) -> M:
    """The command, or 422 naming the offending field."""
    try:
        return model(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise ApiError(422, describe(exc)) from None


def pick_author(body_author: Any, header_author: str | None) -> str | None:
    if body_author is not None and not isinstance(body_author, str):
        raise ApiError(422, "author must be a string")
    return body_author or header_author or None


def int_list(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ApiError(422, f"{name} must be a list of integers")
    return value


def optional_int_list(value: Any, name: str, length: int) -> list[int] | None:
    if value is None:
        return None
    out = int_list(value, name)
    if len(out) != length:
        raise ApiError(422, f"{name} has {len(out)} entries, but {length} frames are targeted")
    return out


def lock_fields(token: str | None, fence: str | None) -> dict[str, Any]:
    """``lock_token``/``fence`` for a command from the X-Trajhub-Lock and X-Trajhub-Fence
    headers (both or neither; 422 otherwise)."""
    if token is None and fence is None:
        return {}
    if token is None or fence is None:
        raise ApiError(422, "X-Trajhub-Lock and X-Trajhub-Fence go together: a write that "
                            "presents a lock sends its token and its fence")
    try:
        number = int(fence.strip())
    except ValueError:
        raise ApiError(422, f"X-Trajhub-Fence must be an integer, got {fence[:40]!r}") from None
    return {"lock_token": token.strip(), "fence": number}


def targets_field(message: dict[str, Any]) -> tuple[str, list[int]]:
    """``("indices", [...])`` or ``("frame_ids", [...])`` of a body (exactly one)."""
    given = [name for name in ("indices", "frame_ids") if name in message]
    if len(given) != 1:
        raise ApiError(422, "request body needs exactly one of 'indices' or 'frame_ids'"
                       if given else "request body has no 'indices' (or 'frame_ids') list")
    name = given[0]
    return name, int_list(message[name], name)


async def commit(control: ControlPort, command: Command) -> CommitResult:
    """Commit through control; any refusal becomes an ApiError with control's reason
    (and, next to ``detail``, the ``conflicts``, the lock ``holder`` or the ``later``
    edit that explain it)."""
    return checked(await control.commit(command))


async def stage_and_commit(stager: Stager, control: ControlPort, command: Command,
                           hashes: Sequence[str],
                           blobs: Sequence[bytes | memoryview] | None) -> CommitResult:
    """Stage the uploaded frames, then commit (as ``commit``). An in-process control
    stages in the commit's own round trip (~0.5 ms less per edit); over HTTP the
    gateway stages first. ``blobs`` None: the frames were staged before (``POST
    .../blobs``); the commit script refuses any that are not (or no longer) staged."""
    if blobs is None:
        return await commit(control, command)
    if isinstance(control, Control):
        staged = await stager.staged(command.room, hashes, blobs)
        return checked(await control.commit(command, stage=staged,
                                            stage_ttl_s=stager.ttl_s))
    await stager.stage(command.room, hashes, blobs)
    return await commit(control, command)


def checked(result: CommitResult) -> CommitResult:
    """``result`` if accepted, else the ApiError that explains the refusal."""
    if result.status == "ok":
        if result.event is None:
            # A retry of a command whose event has since been archived (trimmed).
            raise ApiError(409, result.reason or "this request was already applied")
        return result
    detail = result.reason or f"commit refused ({result.status})"
    extra: dict[str, Any] = {}
    if result.status == "conflict":
        extra["conflicts"] = [c.model_dump() for c in result.conflicts]
    if result.holder is not None:
        extra["holder"] = result.holder.model_dump()
    if result.later is not None:
        extra["later"] = result.later.model_dump()
    raise ApiError(result.http_status, detail, extra=extra)


def write_answer(result: CommitResult) -> dict[str, Any]:
    event = result.event
    assert event is not None
    return {"room": event.room, "seq": event.seq, "n_frames": event.n_frames,
            "indices": event.indices, "frame_ids": [f.frame_id for f in event.frames],
            "versions": [f.version for f in event.frames], "hashes": event.hashes}


def delete_answer(result: CommitResult) -> dict[str, Any]:
    event = result.event
    assert event is not None
    return {"room": event.room, "seq": event.seq, "n_frames": event.n_frames,
            "indices": event.indices}
