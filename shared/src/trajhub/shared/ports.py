"""Ports: the interfaces between the pure core and its adapters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from trajhub.shared.collab import (
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
from trajhub.shared.events import Command, CommitResult, ForkRoom
from trajhub.shared.frames import Array, Frame, SlotColumns

Into = Callable[[dict[str, tuple[np.dtype[Any], tuple[int, ...]]]], dict[str, Array] | None]
"""Given each key's (dtype, shape) in a run of slots, arrays to read the run's blocks
into, or None (see ``FrameStore.read_columns``)."""


class ProjectionCommit(NamedTuple):
    """A room's logical order as of ``seq`` (slot, frame id and version per index), to
    be recorded by ``FrameStore.commit_projection`` or with the slots it refers to."""

    seq: int
    order: Sequence[int]
    frame_ids: Sequence[int]
    versions: Sequence[int]


class FrameStore(Protocol):
    """Frame data of every room, in write-once slots (the storage projection).

    Only storage writes, and only one storage replica writes a given room at a time.
    Methods are synchronous (Zarr's own I/O loop runs underneath); async callers
    wrap them in ``asyncio.to_thread``.
    """

    def write_slots(self, room: str, start: int, frames: Sequence[Frame],
                    hashes: Sequence[str],
                    layers: Sequence[tuple[int, Sequence[str]] | None] | None = None,
                    commit: ProjectionCommit | None = None) -> None:
        """Write ``frames`` to slots ``start .. start+len-1``, one call per key.

        Slots below ``n_slots(room)`` are already written and are skipped (write-once),
        so repeating a write is harmless. ``start`` must not exceed ``n_slots(room)``.
        ``layers[i]`` (patches): None stores ``frames[i]`` whole; ``(base, keys)`` stores
        only ``keys`` of it (``frames[i]`` is still the whole merged frame and
        ``hashes[i]`` its hash), the other keys being read from slot ``base`` (< the
        slot). ``commit``: also commit this projection, which may refer to the slots
        being written, as ``commit_projection`` would after this call, but in the
        same commit point (one fewer round of metadata writes).
        """
        ...

    def read_slots(self, room: str, slots: Sequence[int],
                   keys: Sequence[str] | None = None) -> list[Frame]:
        """Whole frames at ``slots`` (patch slots merged over their base; any order,
        repeats allowed), restricted to ``keys``."""
        ...

    def read_columns(self, room: str, slots: Sequence[int], keys: Sequence[str] | None = None,
                     into: Into | None = None) -> tuple[list[SlotColumns], dict[int, Frame]]:
        """``read_slots`` of the distinct ``slots``: runs of consecutive slots whose
        frames share their keys, dtypes and shapes may come as columns (a bulk read then
        handles each run at once), the other slots as frames by slot. ``into`` may give
        the arrays a single run is read into (told each key's dtype and shape first)."""
        ...

    def n_slots(self, room: str) -> int:
        """How many slots of the room are fully written (readable)."""
        ...

    def commit_projection(self, room: str, seq: int, order: Sequence[int],
                          frame_ids: Sequence[int], versions: Sequence[int]) -> None:
        """Record the room's logical order (slot per index) as of ``seq``; the commit point."""
        ...

    def applied_seq(self, room: str) -> int:
        """The last seq whose projection was committed (0 for a new room)."""
        ...

    def rooms(self) -> list[str]:
        ...


class ControlPort(Protocol):
    """How a gateway reaches control: in-process, or over HTTP to control replicas."""

    async def commit(self, command: Command) -> CommitResult:
        ...

    async def fork(self, request: ForkRoom) -> CommitResult:
        """Create a room as a fork of another (event ``room_forked``); "conflict" if
        the room already has events."""
        ...

    async def acquire_lock(self, request: LockAcquire) -> LockResult:
        ...

    async def renew_lock(self, request: LockRenew) -> LockResult:
        ...

    async def release_lock(self, request: LockRelease) -> LockResult:
        ...

    async def list_locks(self, room: str) -> LockList:
        ...

    async def request_presenter(self, request: PresenterRequest) -> PresenterResult:
        """Take the presenter token, or renew it when ``request.token`` is held."""
        ...

    async def renew_presenter(self, request: PresenterRequest) -> PresenterResult:
        ...

    async def release_presenter(self, request: PresenterRelease) -> PresenterResult:
        ...

    async def set_step(self, request: SetStep) -> PresenterResult:
        ...

    async def get_step(self, room: str) -> StepState:
        ...


class HistoryStore(Protocol):
    """A room's snapshots and archived event segments (``trajhub.shared.history``
    encodings), kept beside its frames in the store. Writes are atomic (a reader sees a
    whole object or none) and idempotent (rewriting the same object is harmless)."""

    def put_snapshot(self, room: str, seq: int, data: bytes) -> None:
        ...

    def snapshot_seqs(self, room: str) -> list[int]:
        """Seqs of the room's snapshots, ascending."""
        ...

    def get_snapshot(self, room: str, seq: int) -> bytes:
        """Raises KeyError if there is none at ``seq``."""
        ...

    def put_segment(self, room: str, first: int, last: int, data: bytes) -> None:
        ...

    def segment_ranges(self, room: str) -> list[tuple[int, int]]:
        """``(first, last)`` seqs of the room's archived segments, ascending."""
        ...

    def get_segment(self, room: str, first: int, last: int) -> bytes:
        """Raises KeyError if there is no such segment."""
        ...
