"""Events (the source of truth) and the commands that produce them.

A command goes from a gateway to control; control runs one Lua script that checks
it and, if accepted, appends one event to ``{room}:events`` with stream id
``<seq>-0`` and fields ``seq``, ``kind`` and ``data`` (the event as JSON).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar

import pydantic.dataclasses
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    field_validator,
    model_validator,
)
from pydantic_core import CoreSchema, core_schema

from trajhub.shared.hashing import is_hash
from trajhub.shared.names import check_key_name, check_room_name

EventKind = Literal["frames_inserted", "frames_replaced", "frames_patched",
                    "frames_deleted", "undo", "redo", "room_forked", "frames_relaid",
                    "room_created"]
Effect = Literal["insert", "replace", "delete"]
"""What an event does to the index: every kind is one of these three changes."""
EFFECT_OF_KIND: dict[str, Effect] = {"frames_inserted": "insert", "frames_replaced": "replace",
                                     "frames_patched": "replace", "frames_deleted": "delete",
                                     "room_forked": "insert", "frames_relaid": "replace",
                                     "room_created": "insert"}
MAX_FRAMES_PER_COMMAND = 100_000
MAX_LOCK_TTL_MS = 600_000
MIN_LOCK_TTL_MS = 100


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _EmptyTableAsList:
    """A list field's annotation: Lua's cjson encodes an empty table as ``{}``, which the
    field takes as []. Built into the field's core schema, a list tried first, rather
    than a "before" validator, which makes pydantic turn the JSON into Python objects
    before validating them: a third of validating a 1,000-frame commit's answer."""

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> CoreSchema:
        empty = core_schema.typed_dict_schema({}, extra_behavior="forbid")
        return core_schema.union_schema(
            [handler(source), core_schema.no_info_after_validator_function(_no_items, empty)],
            mode="left_to_right")


def _no_items(_: object) -> list[Any]:
    return []


T = TypeVar("T")
LuaList = Annotated[list[T], _EmptyTableAsList()]
"""A list that Lua may have encoded as ``{}`` when empty."""


@pydantic.dataclasses.dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class FrameEntry:
    """One entry of a room's trajectory index."""

    frame_id: int
    version: int
    hash: str
    slot: int

    @classmethod
    def known(cls, frame_id: int, version: int, content_hash: str, slot: int) -> FrameEntry:
        """An entry of values already of their types (read back from the index or a
        snapshot), made without validation: 0.8 us instead of 2.1, for every entry of
        a room's index that a join or a snapshot reads."""
        entry = object.__new__(cls)
        for name, value in (("frame_id", frame_id), ("version", version),
                            ("hash", content_hash), ("slot", slot)):
            object.__setattr__(entry, name, value)
        return entry


@pydantic.dataclasses.dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class SlotWrite:
    """A slot that storage must materialize from the staged blob ``hash``.

    A patch slot (``base`` set) stores only ``keys`` of the (whole, merged) staged
    frame; its other keys are read from slot ``base``.
    """

    slot: int
    hash: str
    base: int | None = None
    keys: list[str] | None = None


class Event(_Model):
    room: str
    seq: int
    kind: EventKind
    author: str
    edit_id: str
    time: float
    indices: LuaList[int] = Field(description=(
        "inserted: the new frames' indices; replaced: the replaced indices; "
        "deleted: the indices before deletion, ascending"))
    frames: LuaList[FrameEntry] = Field(description=(
        "inserted/replaced: the new entries; deleted: the entries that were removed"))
    base_versions: LuaList[int] = Field(default_factory=list)
    new_slots: LuaList[SlotWrite] = Field(default_factory=list)
    n_frames: int
    prev: LuaList[FrameEntry] = Field(default_factory=list, description=(
        "replaced/patched (and undo/redo with effect replace): the entries before"))
    keys: LuaList[str] = Field(default_factory=list, description="patched: the keys that changed")
    effect: Effect | None = Field(default=None, description="undo/redo: the index change")
    reverts: int | None = Field(default=None, description="undo/redo: the seq reverted")
    fence: int | None = Field(default=None, description="the lock fence the commit presented")
    base_room: str | None = Field(default=None, description="room_forked: the room forked")
    base_seq: int | None = Field(default=None, description="room_forked: its seq forked at")
    parent_slots: int | None = Field(default=None, description=(
        "room_forked: the room's first own slot; slots below it are the base room's"))

    @property
    def change(self) -> Effect:
        """The index change: insert, replace or delete."""
        if self.effect is not None:
            return self.effect
        return EFFECT_OF_KIND[self.kind]

    @classmethod
    def from_stream(cls, fields: dict[bytes, bytes] | dict[str, str]) -> Event:
        return cls.model_validate_json(stream_data(fields))

    @property
    def hashes(self) -> list[str]:
        return [f.hash for f in self.frames]

    @property
    def frame_count(self) -> int:
        """How many entries the event carries (what a consumer's batch is bounded by)."""
        return len(self.frames)


class EventHead(BaseModel):
    """An event's room and seq, and the size of its JSON in the stream: all that a
    consumer which does not look at the frames needs (the snapshotter, which reads
    the index from Redis when it takes a snapshot). Parsing a 1,000-frame insert's
    218 KB as an ``Event`` takes ~3.4 ms, as this ~0.4 ms."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    room: str
    seq: int
    json_bytes: int = 0

    frame_count: ClassVar[int] = 0
    """Not read: a head is small whatever its event holds."""

    @classmethod
    def from_stream(cls, fields: dict[bytes, bytes] | dict[str, str]) -> EventHead:
        data = stream_data(fields)
        head = cls.model_validate_json(data)
        return head.model_copy(update={"json_bytes": len(data)})


def stream_data(fields: dict[bytes, bytes] | dict[str, str]) -> bytes | str:
    """The event JSON of a stream entry's fields (bytes or str keys)."""
    data = fields.get(b"data") if b"data" in fields else fields.get("data")  # type: ignore[call-overload]
    if data is None:
        raise ValueError("stream entry has no data field")
    return data


class _Command(_Model):
    room: str
    author: str = Field(default="anonymous", min_length=1, max_length=200)
    idempotency_key: str | None = Field(default=None, min_length=8, max_length=128,
                                        pattern=r"^[A-Za-z0-9_\-.:]+$")
    lock_token: str | None = Field(default=None, min_length=8, max_length=64,
                                   pattern=r"^[A-Za-z0-9_\-]+$", description=(
                                       "a lock the committer holds; needs its fence"))
    fence: int | None = Field(default=None, ge=1)

    @field_validator("room")
    @classmethod
    def _room(cls, value: str) -> str:
        return check_room_name(value)

    @model_validator(mode="after")
    def _fence_with_token(self) -> Self:
        if (self.lock_token is None) != (self.fence is None):
            raise ValueError("lock_token and fence go together: a commit that presents a "
                             "lock must present its current fence")
        return self


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


Targets = list[Annotated[int, Field(ge=0)]]


class _Targeted(_Command):
    """Frames addressed by position (``indices``) or by stable ``frame_ids``.

    Frame ids are what an edit should carry: an insert before a frame never moves them,
    so the edit lands on the frame its author saw (a deleted one is a conflict).
    """

    indices: Targets | None = Field(default=None, min_length=1,
                                    max_length=MAX_FRAMES_PER_COMMAND)
    frame_ids: Targets | None = Field(default=None, min_length=1,
                                      max_length=MAX_FRAMES_PER_COMMAND)
    base_versions: list[Annotated[int, Field(ge=0)]] | None = None

    @model_validator(mode="after")
    def _one_addressing(self) -> Self:
        if (self.indices is None) == (self.frame_ids is None):
            raise ValueError("give exactly one of indices or frame_ids")
        n = len(self.targets)
        if len(set(self.targets)) != n:
            what = "indices" if self.frame_ids is None else "frame_ids"
            raise ValueError(f"{what} must not repeat a frame")
        if self.base_versions is not None and len(self.base_versions) != n:
            raise ValueError(f"{len(self.base_versions)} base versions for {n} frames")
        return self

    @property
    def targets(self) -> list[int]:
        return self.frame_ids if self.frame_ids is not None else self.indices or []

    @property
    def by_frame_id(self) -> bool:
        return self.frame_ids is not None


class ReplaceFrames(_Targeted):
    op: Literal["replace"] = "replace"
    hashes: list[str]

    _h = field_validator("hashes")(_check_hashes)

    @model_validator(mode="after")
    def _hash_per_frame(self) -> Self:
        if len(self.hashes) != len(self.targets):
            raise ValueError(f"{len(self.hashes)} hashes for {len(self.targets)} frames")
        return self


class PatchFrames(_Targeted):
    """Change only ``keys`` of frames. ``hashes`` are of the whole merged frames (staged
    whole); storage keeps only ``keys`` in the new slot, the rest stays in the old one.
    Base versions are required: a patch is computed from the frame its author saw."""

    op: Literal["patch"] = "patch"
    hashes: list[str]
    keys: list[str] = Field(min_length=1, max_length=1000)

    _h = field_validator("hashes")(_check_hashes)

    @model_validator(mode="after")
    def _patch_rules(self) -> Self:
        if len(self.hashes) != len(self.targets):
            raise ValueError(f"{len(self.hashes)} hashes for {len(self.targets)} frames")
        if self.base_versions is None:
            raise ValueError("a patch needs the base version of every frame it touches")
        for key in self.keys:
            check_key_name(key)
        if len(set(self.keys)) != len(self.keys):
            raise ValueError("keys must not repeat")
        return self


class RelayoutFrames(_Targeted):
    """Give frames fresh slots, one per distinct content, allocated in the order given
    (logical order), holding the same content: frame ids, versions and hashes stay, so
    nobody's edit conflicts with it and it is no one's to undo (``frames_relaid``).
    Compaction uses it so that sequential reads touch contiguous slots and the old
    slots can be dropped once no retained state references them. ``hashes`` are the
    frames' current ones (a changed frame is a conflict), each staged as a blob."""

    op: Literal["relayout"] = "relayout"
    hashes: list[str]
    keep_from: int = Field(ge=0, description=(
        "content already at a slot >= keep_from keeps it (relaid earlier in the same "
        "pass, or new since it began); older slots are not reused"))

    _h = field_validator("hashes")(_check_hashes)

    @model_validator(mode="after")
    def _relayout_rules(self) -> Self:
        if len(self.hashes) != len(self.targets):
            raise ValueError(f"{len(self.hashes)} hashes for {len(self.targets)} frames")
        if self.frame_ids is None or self.base_versions is None:
            raise ValueError("a relayout names frame ids and their current versions")
        return self


class DeleteFrames(_Targeted):
    op: Literal["delete"] = "delete"


class Undo(_Command):
    """Revert the author's latest edit not yet undone (a compensating event)."""

    op: Literal["undo"] = "undo"


class Redo(_Command):
    """Revert the author's latest undo not yet redone."""

    op: Literal["redo"] = "redo"


class CreateRoom(_Command):
    """Create ``room`` empty (event ``room_created``, seq 1), so that it is listed before
    any frame is written; "conflict" if it already has events. Nothing to undo."""

    op: Literal["create"] = "create"


class ForkRoom(_Command):
    """Create ``room`` (which must have no events) holding ``frames``, the index of
    ``base_room`` at ``base_seq``, without copying frame data: the entries keep their
    frame ids, versions, hashes and slots, and the new room's own slots and frame ids
    start at the base's ``next_slot``/``next_fid`` (as of the fork), so slots below
    ``next_slot`` are read from the base room's storage."""

    op: Literal["fork"] = "fork"
    base_room: str
    base_seq: int = Field(ge=0)
    next_fid: int = Field(ge=0)
    next_slot: int = Field(ge=0)
    frames: list[FrameEntry] = Field(max_length=10 * MAX_FRAMES_PER_COMMAND)

    @field_validator("base_room")
    @classmethod
    def _base_room(cls, value: str) -> str:
        return check_room_name(value)

    @model_validator(mode="after")
    def _fork_rules(self) -> Self:
        if self.base_room == self.room:
            raise ValueError("a room cannot be forked onto itself")
        if any(f.slot >= self.next_slot or f.frame_id >= self.next_fid for f in self.frames):
            raise ValueError("every forked entry's slot and frame id must lie below "
                             "next_slot and next_fid")
        if len({f.frame_id for f in self.frames}) != len(self.frames):
            raise ValueError("forked entries repeat a frame id")
        _check_hashes([f.hash for f in self.frames])
        return self


Command = Annotated[InsertFrames | ReplaceFrames | PatchFrames | RelayoutFrames | DeleteFrames
                    | Undo | Redo | CreateRoom, Field(discriminator="op")]


class Conflict(_Model):
    index: int
    frame_id: int
    expected: int
    actual: int
    hash: str


class Holder(_Model):
    """Who holds a lock or the presenter token (never the secret token itself)."""

    author: str
    fence: int | None = None
    expires_at: int = Field(description="ms since the epoch (Redis clock)")
    message: str | None = None
    target: dict[str, Any] | None = None


class LaterEdit(_Model):
    """The edit that changed a frame after the one an undo/redo wanted to revert."""

    seq: int
    kind: str
    author: str
    frame_id: int


CommitStatus = Literal["ok", "conflict", "invalid", "not_found", "locked"]
STATUS_HTTP = {"ok": 200, "conflict": 409, "invalid": 422, "not_found": 404, "locked": 423}


class CommitResult(_Model):
    status: CommitStatus
    reason: str | None = None
    event: Event | None = None
    conflicts: LuaList[Conflict] = Field(default_factory=list)
    holder: Holder | None = Field(default=None, description="locked: who holds the lock")
    later: LaterEdit | None = Field(default=None, description=(
        "undo/redo conflict: the later edit that changed the frames"))
    replayed: bool = Field(default=False, description="answered from the idempotency record")

    @property
    def http_status(self) -> int:
        return STATUS_HTTP[self.status]
