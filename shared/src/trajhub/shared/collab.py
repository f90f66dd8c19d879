"""Locks and the presenter token: the commands and answers control exchanges.

A lock covers the whole room or a set of frames (named by index or range when taken,
held by frame id so inserts never move it). Its owner gets a secret ``token`` and a
``fence`` from the room's counter; a commit that presents the lock must present both.
The presenter token lets one client drive the room's current step (playback).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trajhub.shared.events import (
    MAX_FRAMES_PER_COMMAND,
    MAX_LOCK_TTL_MS,
    MIN_LOCK_TTL_MS,
    STATUS_HTTP,
    Holder,
)
from trajhub.shared.names import check_room_name

PRESENTER_TTL_MS = 5000
TOKEN_PATTERN = r"^[A-Za-z0-9_\-]{8,64}$"
MAX_MESSAGE = 500

Status = Literal["ok", "conflict", "invalid", "not_found", "locked"]
Token = Annotated[str, Field(pattern=TOKEN_PATTERN)]
TtlMs = Annotated[int, Field(ge=MIN_LOCK_TTL_MS, le=MAX_LOCK_TTL_MS, description=(
    f"lock life in ms, {MIN_LOCK_TTL_MS}..{MAX_LOCK_TTL_MS}"))]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _RoomCommand(_Model):
    room: str
    author: str = Field(default="anonymous", min_length=1, max_length=200)
    session: str | None = Field(default=None, max_length=128, description=(
        "the socket or client session the lock belongs to (released with it)"))

    @field_validator("room")
    @classmethod
    def _room(cls, value: str) -> str:
        return check_room_name(value)


Index = Annotated[int, Field(ge=0)]


class LockTarget(_Model):
    """Exactly one of: the whole ``room``, ``frames`` (indices), ``frame_ids``, or the
    index range ``start <= i < stop``."""

    room: bool = False
    frames: list[Index] | None = Field(default=None, min_length=1,
                                       max_length=MAX_FRAMES_PER_COMMAND)
    frame_ids: list[Index] | None = Field(default=None, min_length=1,
                                          max_length=MAX_FRAMES_PER_COMMAND)
    start: Index | None = None
    stop: Index | None = None

    @field_validator("frames", "frame_ids")
    @classmethod
    def _unique(cls, value: list[int] | None) -> list[int] | None:
        return None if value is None else list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        kinds = [self.room, self.frames is not None, self.frame_ids is not None,
                 self.start is not None or self.stop is not None]
        if sum(kinds) != 1:
            raise ValueError("a lock target is 'room', {'frames': [indices]}, "
                             "{'frame_ids': [ids]} or {'start': i, 'stop': j}")
        if kinds[3]:
            if self.start is None or self.stop is None:
                raise ValueError("a range target needs both start and stop")
            if not self.start < self.stop:
                raise ValueError(f"empty range: start {self.start} >= stop {self.stop}")
            if self.stop - self.start > MAX_FRAMES_PER_COMMAND:
                raise ValueError(f"a range target covers at most {MAX_FRAMES_PER_COMMAND} "
                                 "frames")
        return self

    @classmethod
    def parse(cls, value: Any) -> LockTarget:
        """Also accepts the string ``"room"`` (and None, meaning the room)."""
        if value is None or value == "room":
            return cls(room=True)
        if isinstance(value, str):
            raise ValueError(f"unknown lock target {value[:40]!r}: use 'room' or a dict")
        return cls.model_validate(value)

    def indices(self) -> list[int] | None:
        """The targeted indices (None for the room or for frame ids)."""
        if self.frames is not None:
            return self.frames
        if self.start is not None and self.stop is not None:
            return list(range(self.start, self.stop))
        return None


IdempotencyKey = Annotated[str, Field(min_length=8, max_length=128,
                                      pattern=r"^[A-Za-z0-9_\-.:]+$")]


class LockAcquire(_RoomCommand):
    target: LockTarget = Field(default_factory=lambda: LockTarget(room=True))
    idempotency_key: IdempotencyKey | None = Field(default=None, description=(
        "a retry with the same key gets the first answer (the same token)"))
    ttl_ms: TtlMs = 30_000
    message: str | None = Field(default=None, max_length=MAX_MESSAGE)

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, value: Any) -> Any:
        return LockTarget.parse(value) if not isinstance(value, LockTarget) else value


class LockRenew(_Model):
    room: str
    token: Token
    ttl_ms: TtlMs = 30_000

    _r = field_validator("room")(check_room_name)


class LockRelease(_Model):
    room: str
    token: Token

    _r = field_validator("room")(check_room_name)


class _Answer(_Model):
    status: Status
    reason: str | None = None
    holder: Holder | None = Field(default=None, description="refused: who holds it")

    @property
    def http_status(self) -> int:
        return STATUS_HTTP[self.status]

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class LockResult(_Answer):
    """Answer to acquire/renew/release. On acquire: the secret ``token``, the
    ``fence`` and the resolved ``target`` (``{"room": true}`` or ``{"frame_ids",
    "indices"}``)."""

    token: str | None = None
    fence: int | None = None
    expires_at: int | None = Field(default=None, description="ms since the epoch")
    target: dict[str, Any] | None = None


class PresenterRequest(_RoomCommand):
    token: Token | None = Field(default=None, description="renew: the token held")
    idempotency_key: IdempotencyKey | None = None
    ttl_ms: Annotated[int, Field(ge=MIN_LOCK_TTL_MS, le=60_000)] = PRESENTER_TTL_MS


class PresenterRelease(_Model):
    room: str
    token: Token

    _r = field_validator("room")(check_room_name)


class SetStep(_RoomCommand):
    """Set the room's current step. With ``token`` the caller must hold the presenter
    token; without, the step is set only if nobody holds it (taken and released in one
    atomic step)."""

    frame: Index
    token: Token | None = None


class PresenterResult(_Answer):
    token: str | None = None
    expires_at: int | None = None
    frame: int | None = None
    step_seq: int | None = None


class StepState(_Model):
    """The room's current step and presenter (None when nobody presents)."""

    room: str
    frame: int | None = None
    by: str | None = None
    step_seq: int = 0
    presenter: Holder | None = None


class LockList(_Model):
    room: str
    locks: list[Holder] = Field(default_factory=list)
