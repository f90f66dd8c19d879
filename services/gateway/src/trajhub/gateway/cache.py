"""A content-addressed LRU of encoded frames, within a byte budget.

Keys are content hashes and values the frame's canonical bytes (``frame_to_bytes``, the
staged-blob format), so an entry can never be stale: a replaced frame has a new hash.
The same content in two rooms is the same entry. Used from the event loop and from
worker threads, hence the lock; every operation under it is a few dict operations.

Frames encoded together (a run read from Zarr) can be kept as one buffer, a slab,
each entry a view of its part: a later read of them in their order is then answered
with views of the slab (``get_run``) instead of copying each frame into an answer. A
slab's frames share one layout (the same bytes around their arrays), which ``get_run``
says of each view of several of them (``Ordered.runs``), so that a reader need not
compare every frame's bytes to find that out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from itertools import repeat
from operator import is_
from typing import Any


def _as_bytes(blob: bytes | bytearray | memoryview) -> bytes:
    # A memoryview into a request body would pin the whole body: keep a copy instead.
    return blob if isinstance(blob, bytes) else bytes(blob)


Blob = bytes | memoryview
"""A cached frame: its own bytes, or a read-only view of its part of a slab."""


class Ordered(list[Blob]):
    """``get_run``'s parts, and in ``runs`` the ``(first, count, stride)`` of each part
    that is ``count`` frames of one slab: the frames at positions ``first..first +
    count`` of the run, ``stride`` bytes each, all encoded with one layout."""

    __slots__ = ("runs",)

    def __init__(self, parts: Iterable[Blob] = ()) -> None:
        super().__init__(parts)
        self.runs: list[tuple[int, int, int]] = []


class FrameCache:
    """LRU of ``content hash -> encoded frame``; ``budget_bytes <= 0`` disables it.

    ``bytes`` counts the encoded frames (not the few hundred bytes of bookkeeping per
    entry), a slab whole for as long as any of its entries is kept, and never exceeds
    the budget; a frame (or slab) larger than the budget is not kept.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = max(0, int(budget_bytes))
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Blob] = OrderedDict()
        self._in_slab: dict[str, tuple[Blob, int, int]] = {}  # hash -> slab, start, end
        self._slab_entries: dict[int, int] = {}  # id(slab) -> its entries kept
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._read_ahead = 0
        self._write_through = 0

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, content_hash: object) -> bool:
        """Presence only: no hit/miss counted, recency unchanged."""
        return content_hash in self._items

    def get_many(self, hashes: Iterable[str]) -> dict[str, Blob]:
        """The cached bytes of those ``hashes`` present, marked as recently used in their
        order (the last one most recently).

        Counts one hit or miss per distinct hash.
        """
        if not self.enabled:
            return {}
        wanted = dict.fromkeys(hashes)
        with self._lock:  # (map: each call made from C, not a loop of bytecode)
            found = {h: blob for h, blob in zip(wanted, map(self._items.get, wanted),
                                                strict=True) if blob is not None}
            deque(map(self._items.move_to_end, found), maxlen=0)
            self._hits += len(found)
            self._misses += len(wanted) - len(found)
        return found

    def get_run(self, hashes: Sequence[str], *, count: bool = True) -> Ordered | None:
        """Every one of ``hashes`` (repeats too), as parts whose concatenation is their
        frames one after the other: a frame's bytes, or one view of the frames that
        follow each other in a slab (in ``Ordered.runs``). Marked as recently used in
        their order; None, with nothing counted or marked, when any is missing (the
        caller then takes ``get_many``'s way).

        Counts one hit per distinct hash (as ``get_many`` does) unless not ``count``
        (a second look at frames just counted). One lookup per hash, without get_many's
        dicts: a read of thousands of cached frames spent more time building those than
        anywhere else in the gateway."""
        if not self.enabled or not hashes:
            return None
        with self._lock:
            found = list(map(self._items.get, hashes))
            # Identity, not ``None in found``: comparing a memoryview with None by ==
            # asks None for a buffer and clears the TypeError, ~0.1 us a frame.
            if any(map(is_, found, repeat(None))):
                return None
            where = list(map(self._in_slab.get, hashes))
            deque(map(self._items.move_to_end, hashes), maxlen=0)
            if count:
                self._hits += len(set(hashes))
        if not any(where):
            return Ordered(found)  # type: ignore[arg-type]  # (no None in it)
        return _joined(found, where)  # type: ignore[arg-type]

    def put(self, content_hash: str, blob: bytes | bytearray | memoryview) -> bool:
        """Keep ``blob`` as the most recently used entry; False if it does not fit."""
        return self.put_many([(content_hash, blob)]) == 1

    def put_many(self, items: Iterable[tuple[str, bytes | bytearray | memoryview]], *,
                 read_ahead: bool = False, write_through: bool = False) -> int:
        """Keep each ``(hash, blob)`` (later ones more recent); returns how many were kept.

        One call adds at most the budget: the items after that are skipped rather than
        added and evicted again (a read larger than the cache would otherwise flush it
        and keep only its own tail). ``read_ahead``/``write_through`` only say which
        counter the new entries go to.
        """
        if not self.enabled:
            return 0
        added = kept = new_bytes = 0
        with self._lock:
            for h, blob in items:
                if h in self._items:
                    self._items.move_to_end(h)
                    kept += 1
                    continue
                if new_bytes + len(blob) > self.budget_bytes:
                    continue
                value = _as_bytes(blob)
                self._items[h] = value
                self._bytes += len(value)
                new_bytes += len(value)
                added += 1
                kept += 1
            self._evict()
            if read_ahead:
                self._read_ahead += added
            if write_through:
                self._write_through += added
        return kept

    def put_slab(self, hashes: Sequence[str], slab: Blob, stride: int) -> int:
        """Keep the frames of ``slab`` (frame i at ``i * stride``, its hash
        ``hashes[i]``) as views of it (later ones more recent); returns how many of
        ``hashes`` are cached now. Hashes already cached keep their entry (now more
        recent). The slab counts whole against the budget while any of its entries is
        kept; nothing is kept if it is larger than the budget."""
        if not self.enabled or len(slab) > self.budget_bytes or not hashes \
                or len(slab) != stride * len(hashes):
            return 0
        view = memoryview(slab)
        added = 0
        with self._lock:
            for i, h in enumerate(hashes):
                if h in self._items:
                    self._items.move_to_end(h)
                    continue
                start = i * stride
                self._items[h] = view[start:start + stride]
                self._in_slab[h] = (slab, start, start + stride)
                added += 1
            if added:
                held = self._slab_entries.get(id(slab), 0)
                self._slab_entries[id(slab)] = held + added
                if not held:
                    self._bytes += len(slab)
            self._evict()
            return sum(map(self._items.__contains__, hashes))

    def put_recent(self, hashes: Sequence[str], blobs: Sequence[bytes | bytearray | memoryview],
                   share: float) -> int:
        """Write-through of an upload: only its last frames, up to ``share`` of the budget,
        so that a large upload does not flush the frames viewers are reading."""
        limit = self.budget_bytes * share
        start, total = len(blobs), 0
        while start > 0 and total + len(blobs[start - 1]) <= limit:
            start -= 1
            total += len(blobs[start])
        return self.put_many(zip(hashes[start:], blobs[start:], strict=True),
                             write_through=True)

    def _evict(self) -> None:
        while self._bytes > self.budget_bytes:
            h, blob = self._items.popitem(last=False)
            self._evictions += 1
            at = self._in_slab.pop(h, None)
            if at is None:
                self._bytes -= len(blob)
                continue
            slab = at[0]
            left = self._slab_entries.pop(id(slab)) - 1
            if left:
                self._slab_entries[id(slab)] = left
            else:  # its last entry: the slab's memory goes
                self._bytes -= len(slab)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._in_slab.clear()
            self._slab_entries.clear()
            self._bytes = 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"hits": self._hits, "misses": self._misses, "entries": len(self._items),
                    "bytes": self._bytes, "budget_bytes": self.budget_bytes,
                    "evictions": self._evictions, "read_ahead": self._read_ahead,
                    "write_through": self._write_through}


def _joined(found: list[Blob], where: list[tuple[Blob, int, int] | None]) -> Ordered:
    """``found`` with each run of views that follow each other in one slab as one view
    (and, if it is of several frames, in ``runs``)."""
    out = Ordered()
    slab: Blob | None = None
    start = end = first = 0
    for i, (blob, at) in enumerate(zip(found, where, strict=True)):
        if at is not None and at[0] is slab and at[1] == end:
            end = at[2]
            continue
        if slab is not None:
            _close(out, slab, start, end, first, i)
        if at is None:
            slab = None
            out.append(blob)
        else:
            slab, start, end = at
            first = i
    if slab is not None:
        _close(out, slab, start, end, first, len(found))
    return out


def _close(out: Ordered, slab: Blob, start: int, end: int, first: int, stop: int) -> None:
    """Append the view of frames ``first..stop`` of the run, ``slab[start:end]``."""
    out.append(memoryview(slab)[start:end])
    if stop - first > 1:
        out.runs.append((first, stop - first, (end - start) // (stop - first)))
