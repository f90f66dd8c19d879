"""What a ``Room`` has seen: index -> (frame id, version), for edits that name their base.

An edit of a frame the Room has read goes by the frame's stable id with the version
read, so that it lands on that very frame however others' inserts and deletes moved it,
and is refused (409) if someone changed the frame since. Keys are indices as this Room
last saw them; its own inserts and deletes shift indices (list semantics), so they
forget the entries from the first shifted index on.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from itertools import islice, repeat

SEEN_LIMIT = 100_000


class SeenVersions:
    """A bounded (least recently recorded goes first), thread-safe index -> (frame_id,
    version) map.

    ``record`` only keeps what it is given; the map takes it in when next asked (edits
    are rare beside reads, and a read of thousands of frames would otherwise spend a
    few ms on it every time). What ``record`` is given must not change afterwards."""

    def __init__(self, limit: int = SEEN_LIMIT) -> None:
        self.limit = limit
        # A dict keeps insertion order: the least recently recorded entry comes first.
        self._entries: dict[int, tuple[int, int]] = {}
        self._pending: list[tuple[Sequence[int], Sequence[int], Sequence[int]]] = []
        self._pending_count = 0
        self._mutex = threading.Lock()

    def __len__(self) -> int:
        with self._mutex:
            self._settle()
            return len(self._entries)

    def record(self, indices: Sequence[int], frame_ids: Sequence[int],
               versions: Sequence[int]) -> None:
        if not (len(indices) == len(frame_ids) == len(versions)):
            return  # not an answer we understand: remember nothing rather than wrong ids
        with self._mutex:
            self._pending.append((indices, frame_ids, versions))
            self._pending_count += len(indices)
            if self._pending_count > self.limit:  # (memory stays bounded)
                self._settle()

    def _settle(self) -> None:
        """Take in what was recorded since, in order (caller holds ``_mutex``)."""
        entries = self._entries
        later: set[tuple[int, ...]] = set()
        keep = []
        for segment in reversed(self._pending):
            key = tuple(segment[0])
            if key not in later:  # (else recorded again later: that one counts)
                later.add(key)
                keep.append(segment)
        for indices, frame_ids, versions in reversed(keep):
            at = list(map(int, indices))
            seen = zip(map(int, frame_ids), map(int, versions), strict=True)
            # Out and in again, so that the recorded ones come last (half the cost of
            # an OrderedDict's update and move_to_end on a read of thousands).
            deque(map(entries.pop, at, repeat(None)), maxlen=0)
            entries.update(zip(at, seen, strict=True))
            excess = len(entries) - self.limit
            if excess > 0:  # the oldest, found in one pass
                deque(map(entries.pop, list(islice(entries, excess))), maxlen=0)
        self._pending.clear()
        self._pending_count = 0

    def get(self, index: int) -> tuple[int, int] | None:
        with self._mutex:
            self._settle()
            return self._entries.get(index)

    def lookup_all(self, indices: Sequence[int]) -> tuple[list[int], list[int]] | None:
        """(frame_ids, versions) of ``indices`` if every one was seen, else None."""
        with self._mutex:
            self._settle()
            found = [self._entries.get(i) for i in indices]
        if not found or any(entry is None for entry in found):
            return None
        return [e[0] for e in found if e], [e[1] for e in found if e]

    def forget_from(self, index: int) -> None:
        """Drop the entries at ``index`` and after (their indices are about to shift)."""
        with self._mutex:
            self._settle()
            for key in [k for k in self._entries if k >= index]:
                del self._entries[key]

    def clear(self) -> None:
        with self._mutex:
            self._pending.clear()
            self._pending_count = 0
            self._entries.clear()
