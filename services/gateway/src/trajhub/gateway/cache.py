"""A content-addressed LRU of encoded frames, within a byte budget.

Keys are content hashes and values the frame's canonical bytes (``frame_to_bytes``, the
staged-blob format), so an entry can never be stale: a replaced frame has a new hash.
The same content in two rooms is the same entry. Used from the event loop and from
worker threads, hence the lock; every operation under it is a few dict operations.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from typing import Any


def _as_bytes(blob: bytes | bytearray | memoryview) -> bytes:
    # A memoryview into a request body would pin the whole body: keep a copy instead.
    return blob if isinstance(blob, bytes) else bytes(blob)


class FrameCache:
    """LRU of ``content hash -> encoded frame``; ``budget_bytes <= 0`` disables it.

    ``bytes`` counts the encoded frames only (not the few hundred bytes of bookkeeping
    per entry) and never exceeds the budget; a frame larger than the budget is not kept.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = max(0, int(budget_bytes))
        self._lock = threading.Lock()
        self._items: OrderedDict[str, bytes] = OrderedDict()
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

    def get_many(self, hashes: Iterable[str]) -> dict[str, bytes]:
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

    def get_all(self, hashes: Sequence[str]) -> list[bytes] | None:
        """The cached bytes of every one of ``hashes``, in their order (repeats too),
        marked as recently used in that order; None, with nothing counted or marked,
        when any is missing (the caller then takes ``get_many``'s way).

        Counts one hit per distinct hash, as ``get_many`` does. One lookup per hash,
        without get_many's dicts: a read of thousands of cached frames spent more time
        building those than anywhere else in the gateway."""
        if not self.enabled or not hashes:
            return None
        with self._lock:
            found = list(map(self._items.get, hashes))
            if None in found:
                return None
            deque(map(self._items.move_to_end, hashes), maxlen=0)
            self._hits += len(set(hashes))
        return found  # type: ignore[return-value]  # (no None in it)

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
            _, blob = self._items.popitem(last=False)
            self._bytes -= len(blob)
            self._evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"hits": self._hits, "misses": self._misses, "entries": len(self._items),
                    "bytes": self._bytes, "budget_bytes": self.budget_bytes,
                    "evictions": self._evictions, "read_ahead": self._read_ahead,
                    "write_through": self._write_through}
