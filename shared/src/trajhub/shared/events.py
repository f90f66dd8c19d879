"""Events (the source of truth) and the commands that produce them.

A command goes from a gateway to control; control runs one Lua script that checks
it and, if accepted, appends one event to ``{room}:events`` with stream id
``<seq>-0`` and fields ``seq``, ``kind`` and ``data`` (the event as JSON).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trajhub.shared.hashing import is_hash
from trajhub.shared.names import check_room_name

EventKind = Literal["frames_inserted", "frames_replaced", "frames_deleted"]
MAX_FRAMES_PER_COMMAND = 100_000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _empty_table_as_list(value: Any) -> Any:
    # Lua's cjson encodes an empty table as {}; every list field accepts that as [].
    return [] if value == {} else value


class FrameEntry(_Model):
    """One entry of a room's trajectory index."""

    frame_id: int
    version: int
    hash: str
    slot: int


class SlotWrite(_Model):
    """A slot that storage must materialize from the staged blob ``hash``."""

    slot: int
    hash: str


class Event(_Model):
    room: str
    seq: int
    kind: EventKind
    author: str
    edit_id: str
    time: float
    indices: list[int] = Field(description=(
        "inserted: the new frames' indices; replaced: the replaced indices; "
        "deleted: the indices before deletion, ascending"))
    frames: list[FrameEntry] = Field(description=(
        "inserted/replaced: the new entries; deleted: the entries that were removed"))
    base_versions: list[int] = Field(default_factory=list)
    new_slots: list[SlotWrite] = Field(default_factory=list)
    n_frames: int

    _lists = field_validator("indices", "frames", "base_versions", "new_slots",
                             mode="before")(_empty_table_as_list)

    @classmethod
    def from_stream(cls, fields: dict[bytes, bytes] | dict[str, str]) -> Event:
        data = fields.get(b"data") if b"data" in fields else fields.get("data")  # type: ignore[call-overload]
        if data is None:
            raise ValueError("stream entry has no data field")
        return cls.model_validate(json.loads(data))

    @property
    def hashes(self) -> list[str]:
        return [f.hash for f in self.frames]


class _Command(_Model):
    room: str
    author: str = Field(default="anonymous", max_length=200)
    idempotency_key: str | None = Field(default=None, min_length=8, max_length=128,
                                        pattern=r"^[A-Za-z0-9_\-.:]+$")

    @field_validator("room")
    @classmethod
    def _room(cls, value: str) -> str:
        return check_room_name(value)


def _check_hashes(value: list[str]) -> list[str]:
    bad = [h for h in value if not is_hash(h)]
    if bad:
        raise ValueError(f"not a sha256 hex digest: {bad[0][:80]!r}")
    return value


class InsertFrames(_Command):
    op: Literal["insert"] = "insert"
    at: int | None = Field(default=None, ge=0, description="None appends")
    hashes: list[str] = Field(min_length=1, max_length=MAX_FRAMES_PER_COMMAND)

    _h = field_validator("hashes")(_check_hashes)


class ReplaceFrames(_Command):
    op: Literal["replace"] = "replace"
    indices: list[Annotated[int, Field(ge=0)]] = Field(min_length=1,
                                                       max_length=MAX_FRAMES_PER_COMMAND)
    hashes: list[str]
    base_versions: list[int] | None = None

    _h = field_validator("hashes")(_check_hashes)


class DeleteFrames(_Command):
    op: Literal["delete"] = "delete"
    indices: list[Annotated[int, Field(ge=0)]] = Field(min_length=1,
                                                       max_length=MAX_FRAMES_PER_COMMAND)
    base_versions: list[int] | None = None


Command = Annotated[InsertFrames | ReplaceFrames | DeleteFrames, Field(discriminator="op")]


class Conflict(_Model):
    index: int
    frame_id: int
    expected: int
    actual: int
    hash: str


CommitStatus = Literal["ok", "conflict", "invalid", "not_found"]
STATUS_HTTP = {"ok": 200, "conflict": 409, "invalid": 422, "not_found": 404}


class CommitResult(_Model):
    status: CommitStatus
    reason: str | None = None
    event: Event | None = None
    conflicts: list[Conflict] = Field(default_factory=list)
    replayed: bool = Field(default=False, description="answered from the idempotency record")

    _c = field_validator("conflicts", mode="before")(_empty_table_as_list)

    @property
    def http_status(self) -> int:
        return STATUS_HTTP[self.status]
