"""Rebuild a room's live index from its events (pure: no I/O).

Every event is one of three index changes (``Event.change``):

- insert: ``frames[i]`` lands at final position ``indices[i]`` (ascending, applied in
  order, so each position is at most the length at that point);
- replace: the entry at ``indices[i]`` (which must hold ``frames[i].frame_id``, and
  equal ``prev[i]`` when the event records it) becomes ``frames[i]``;
- delete: the entries at the ascending pre-delete positions ``indices`` (equal to
  ``frames``) are removed.

An event that does not fit the index it is applied to raises ``ReplayError``: a seq
gap, a position out of range, a frame id that is not where the event says, a version
that does not increase, or a frame count that differs from ``n_frames``.
"""

from __future__ import annotations

from collections.abc import Iterable

from trajhub.shared.events import Event, FrameEntry


class ReplayError(ValueError):
    """An event does not fit the index it is applied to."""


class RoomIndex:
    """A room's live index: the entries in logical order as of ``seq``.

    Start empty (seq 0) or from a snapshot (``entries`` as of ``seq``); ``apply``
    each following event in seq order.
    """

    def __init__(self, entries: Iterable[FrameEntry] = (), seq: int = 0,
                 room: str | None = None) -> None:
        self.entries: list[FrameEntry] = list(entries)
        self.seq = seq
        self.room = room
        self._present = {e.frame_id for e in self.entries}
        if len(self._present) != len(self.entries):
            raise ReplayError("the starting entries repeat a frame id")
        # Highest version seen per frame id, also after it was deleted, so a frame
        # that comes back (undo of a delete) must come back with a newer version.
        self._last_version = {e.frame_id: e.version for e in self.entries}

    def __len__(self) -> int:
        return len(self.entries)

    def apply(self, event: Event) -> None:
        """Apply the next event, or raise ReplayError (leaving the index as it was)."""
        self._check_header(event)
        if len(event.indices) != len(event.frames):
            raise self._error(event, f"{len(event.indices)} indices for "
                                     f"{len(event.frames)} frames")
        change = event.change
        entries = list(self.entries)
        if change == "insert":
            self._insert(event, entries)
        elif change == "replace":
            self._replace(event, entries)
        else:
            self._delete(event, entries)
        if len(entries) != event.n_frames:
            raise self._error(event, f"{len(entries)} frames after it, the event says "
                                     f"{event.n_frames}")
        self._commit(event, entries)

    def _check_header(self, event: Event) -> None:
        if self.room is not None and event.room != self.room:
            raise self._error(event, f"belongs to room {event.room!r}, not {self.room!r}")
        if event.seq != self.seq + 1:
            raise ReplayError(f"seq gap: expected seq {self.seq + 1}, got {event.seq} "
                              f"({event.kind})")

    def _error(self, event: Event, message: str) -> ReplayError:
        return ReplayError(f"event seq {event.seq} ({event.kind}, {event.change}): {message}")

    def _check_ascending(self, event: Event) -> None:
        if any(b <= a for a, b in zip(event.indices, event.indices[1:], strict=False)):
            raise self._error(event, f"indices must be strictly ascending, got "
                                     f"{event.indices[:20]}")

    def _check_newer(self, event: Event, entry: FrameEntry) -> None:
        last = self._last_version.get(entry.frame_id)
        if last is not None and entry.version <= last:
            raise self._error(event, f"frame id {entry.frame_id} version {entry.version} does "
                                     f"not exceed its earlier version {last}")

    def _insert(self, event: Event, entries: list[FrameEntry]) -> None:
        self._check_ascending(event)
        added: set[int] = set()
        for at, entry in zip(event.indices, event.frames, strict=True):
            if not 0 <= at <= len(entries):
                raise self._error(event, f"insert position {at} out of range for "
                                         f"{len(entries)} frames")
            if entry.frame_id in self._present or entry.frame_id in added:
                raise self._error(event, f"frame id {entry.frame_id} is already present")
            self._check_newer(event, entry)
            added.add(entry.frame_id)
            entries.insert(at, entry)

    def _replace(self, event: Event, entries: list[FrameEntry]) -> None:
        if event.prev and len(event.prev) != len(event.frames):
            raise self._error(event, f"{len(event.prev)} prev entries for "
                                     f"{len(event.frames)} frames")
        if len(set(event.indices)) != len(event.indices):
            raise self._error(event, "indices repeat a position")
        for i, (at, entry) in enumerate(zip(event.indices, event.frames, strict=True)):
            current = self._at(event, entries, at, entry.frame_id)
            if event.prev and current != event.prev[i]:
                raise self._error(event, f"entry at index {at} is {current}, the event's "
                                         f"prev says {event.prev[i]}")
            if entry.version <= current.version:
                raise self._error(event, f"frame id {entry.frame_id} version {entry.version} "
                                         f"does not exceed {current.version}")
            entries[at] = entry

    def _delete(self, event: Event, entries: list[FrameEntry]) -> None:
        self._check_ascending(event)
        for at, entry in zip(event.indices, event.frames, strict=True):
            current = self._at(event, entries, at, entry.frame_id)
            if current != entry:
                raise self._error(event, f"entry at index {at} is {current}, the event "
                                         f"deletes {entry}")
        for at in reversed(event.indices):
            del entries[at]

    def _at(self, event: Event, entries: list[FrameEntry], at: int,
            frame_id: int) -> FrameEntry:
        if not 0 <= at < len(entries):
            raise self._error(event, f"index {at} out of range for {len(entries)} frames")
        current = entries[at]
        if current.frame_id != frame_id:
            raise self._error(event, f"frame id mismatch at index {at}: the index holds "
                                     f"{current.frame_id}, the event names {frame_id}")
        return current

    def _commit(self, event: Event, entries: list[FrameEntry]) -> None:
        self.entries = entries
        self.seq = event.seq
        self.room = event.room
        if event.change == "insert":
            self._present.update(e.frame_id for e in event.frames)
        elif event.change == "delete":
            self._present.difference_update(e.frame_id for e in event.frames)
        for entry in event.frames:
            last = self._last_version.get(entry.frame_id, 0)
            self._last_version[entry.frame_id] = max(last, entry.version)


def replay(events: Iterable[Event]) -> list[FrameEntry]:
    """The live index (entries in logical order) after ``events``, which must be a
    room's events from seq 1 on, in order."""
    index = RoomIndex()
    for event in events:
        index.apply(event)
    return list(index.entries)
