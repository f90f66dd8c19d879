"""``ZarrHistoryStore``: a room's snapshots and archived segments in its zarr v3 store.

Objects live beside the room's Zarr group, as plain store keys (not Zarr nodes):

- ``<room>/_history/snapshot/<seq:020d>``: ``trajhub.shared.history.encode_snapshot``
- ``<room>/_history/segment/<first:020d>-<last:020d>``: ``encode_segment``

Seqs are zero padded so that a listing sorts. Every put is a whole-object write
(LocalStore writes a temporary file and renames it; a memory store swaps a dict entry),
so a reader sees a whole object or none, and rewriting the same object is harmless.
"""

from __future__ import annotations

from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore

from trajhub.shared.names import check_room_name
from trajhub.shared.zarr_store import open_zarr_store

T = TypeVar("T")

HISTORY_DIR = "_history"
SEQ_WIDTH = 20


def _seq(seq: int) -> str:
    if seq < 0:
        raise ValueError(f"seq must be >= 0, not {seq}")
    return f"{seq:0{SEQ_WIDTH}d}"


class ZarrHistoryStore:
    """HistoryStore (``trajhub.shared.ports``) on any zarr v3 store. Thread safe."""

    def __init__(self, store: Store | str | Path) -> None:
        self.store: Store = store if isinstance(store, Store) else LocalStore(store)

    def __repr__(self) -> str:
        return f"ZarrHistoryStore({self.store!r})"

    # -- keys -----------------------------------------------------------------------------

    @staticmethod
    def _dir(room: str, kind: str) -> str:
        check_room_name(room)
        return f"{room}/{HISTORY_DIR}/{kind}"

    def snapshot_key(self, room: str, seq: int) -> str:
        return f"{self._dir(room, 'snapshot')}/{_seq(seq)}"

    def segment_key(self, room: str, first: int, last: int) -> str:
        if last < first:
            raise ValueError(f"segment {first}..{last} is empty")
        return f"{self._dir(room, 'segment')}/{_seq(first)}-{_seq(last)}"

    # -- snapshots ------------------------------------------------------------------------

    def put_snapshot(self, room: str, seq: int, data: bytes) -> None:
        _run(self._put(self.snapshot_key(room, seq), data))

    def snapshot_seqs(self, room: str) -> list[int]:
        names = _run(self._list(self._dir(room, "snapshot")))
        return sorted(int(n) for n in names if n.isdigit())

    def get_snapshot(self, room: str, seq: int) -> bytes:
        return _run(self._get(self.snapshot_key(room, seq)))

    # -- segments -------------------------------------------------------------------------

    def put_segment(self, room: str, first: int, last: int, data: bytes) -> None:
        _run(self._put(self.segment_key(room, first, last), data))

    def segment_ranges(self, room: str) -> list[tuple[int, int]]:
        ranges = []
        for name in _run(self._list(self._dir(room, "segment"))):
            first, sep, last = name.partition("-")
            if sep and first.isdigit() and last.isdigit():
                ranges.append((int(first), int(last)))
        return sorted(ranges)

    def get_segment(self, room: str, first: int, last: int) -> bytes:
        return _run(self._get(self.segment_key(room, first, last)))

    # -- store I/O ------------------------------------------------------------------------

    async def _put(self, key: str, data: bytes) -> None:
        await self.store.set(key, default_buffer_prototype().buffer.from_bytes(data))

    async def _get(self, key: str) -> bytes:
        buf = await self.store.get(key, prototype=default_buffer_prototype())
        if buf is None:
            raise KeyError(key)
        return buf.to_bytes()

    async def _list(self, prefix: str) -> list[str]:
        try:
            return [name async for name in self.store.list_dir(prefix)]
        except FileNotFoundError:
            return []


def open_history_store(url: str) -> ZarrHistoryStore:
    """The history store at ``url``, with ``open_store``'s rules (a ``memory://`` URL
    shares its data with the frame store of the same URL)."""
    return ZarrHistoryStore(open_zarr_store(url))


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on zarr's I/O loop (callers are plain or worker threads)."""
    return sync(coro)
