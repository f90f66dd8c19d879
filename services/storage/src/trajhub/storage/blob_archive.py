"""``BlobArchive``: a content-addressed copy of every staged blob storage applied.

Storage deletes a room's staged blobs (``{room}:blob:<hash>``) once their slots are in
Zarr, so Zarr's data arrays are then the only copy of the frames. With
``TRAJHUB_ARCHIVE_BLOBS=1`` the storage worker first copies each blob it writes to
``<room>/_history/blob/<hash>`` in the same store as the history (snapshots and
segments), so that ``trajhub rebuild`` can restore a room whose data arrays are lost.

Objects are the canonical frame bytes (``codec.frame_to_bytes``), keyed by the frame's
content hash: writing one twice is harmless, and a reader checks the hash anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from trajhub.shared.hashing import is_hash
from trajhub.shared.history_store import HISTORY_DIR
from trajhub.shared.names import check_room_name

BLOB_DIR = "blob"


class BlobArchive:
    """Archived frame blobs of every room, in a zarr v3 store. Thread safe."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"BlobArchive({self.store!r})"

    @staticmethod
    def key(room: str, content_hash: str) -> str:
        check_room_name(room)
        if not is_hash(content_hash):
            raise ValueError(f"not a sha256 hex digest: {content_hash[:80]!r}")
        return f"{room}/{HISTORY_DIR}/{BLOB_DIR}/{content_hash}"

    def put_many(self, room: str, hashes: Sequence[str],
                 blobs: Sequence[bytes | memoryview]) -> None:
        """Store ``blobs[i]`` under ``hashes[i]`` (concurrently, one object each)."""
        if len(hashes) != len(blobs):
            raise ValueError(f"{len(hashes)} hashes but {len(blobs)} blobs")
        proto = default_buffer_prototype()

        async def run() -> None:
            await asyncio.gather(*(
                self.store.set(self.key(room, h), proto.buffer.from_bytes(b))
                for h, b in zip(hashes, blobs, strict=True)))

        sync(run())

    def get_many(self, room: str, hashes: Sequence[str]) -> list[bytes | None]:
        """The archived blob of each hash (None where there is none)."""
        proto = default_buffer_prototype()

        async def get(h: str) -> bytes | None:
            buf = await self.store.get(self.key(room, h), prototype=proto)
            return None if buf is None else buf.to_bytes()

        async def run() -> list[bytes | None]:
            return list(await asyncio.gather(*(get(h) for h in hashes)))

        return sync(run())
