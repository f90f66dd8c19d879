"""Reading frames: the index from Redis, data from Zarr (applied slots) or staged blobs.

Storage sets ``{r}:applied slots`` only after the slots are readable in Zarr, and
deletes blobs only after that, so a slot below the applied count is read from Zarr and
a slot above it from its blob, falling back to Zarr when the blob was applied meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import msgpack
import redis.asyncio as aioredis

from trajhub.shared import keys as rkeys
from trajhub.shared.codec import encode_frame, packb
from trajhub.shared.events import FrameEntry
from trajhub.shared.ports import FrameStore


async def applied_slots(redis: aioredis.Redis, room: str) -> int:
    value = await redis.hget(rkeys.applied(room), "slots")
    return int(value) if value is not None else 0


def select_keys(blob: bytes, keys: Sequence[str]) -> bytes:
    """A staged blob (canonical frame bytes) cut down to ``keys``, re-packed."""
    frame = msgpack.unpackb(blob, raw=False)
    return packb({k: frame[k] for k in sorted(keys) if k in frame})


def encode_frames(frames: Sequence[dict[str, Any]]) -> list[bytes]:
    return [packb(encode_frame(f)) for f in frames]


class FrameLoader:
    """Loads the encoded bytes of a room's frames by slot (one entry per distinct slot)."""

    def __init__(self, redis: aioredis.Redis, store: FrameStore) -> None:
        self._redis = redis
        self._store = store

    async def load(self, room: str, entries: Sequence[FrameEntry],
                   keys: Sequence[str] | None) -> dict[int, bytes]:
        hash_of = {e.slot: e.hash for e in entries}
        if not hash_of:
            return {}
        applied = await applied_slots(self._redis, room)
        zarr_slots = [s for s in hash_of if s < applied]
        blob_slots = [s for s in hash_of if s >= applied]
        blobs: dict[int, bytes] = {}
        if blob_slots:
            blob_keys = [rkeys.blob(room, hash_of[s]) for s in blob_slots]
            values: list[Any] = await self._redis.mget(blob_keys)
            for slot, value in zip(blob_slots, values, strict=True):
                if value is None:  # applied (and deleted) since we read `applied`
                    zarr_slots.append(slot)
                else:
                    blobs[slot] = value
        return await asyncio.to_thread(self._finish, room, blobs, sorted(zarr_slots), keys)

    def _finish(self, room: str, blobs: dict[int, bytes], zarr_slots: list[int],
                keys: Sequence[str] | None) -> dict[int, bytes]:
        out = blobs if keys is None else {s: select_keys(b, keys) for s, b in blobs.items()}
        if zarr_slots:
            frames = self._store.read_slots(room, zarr_slots, keys)
            out.update(zip(zarr_slots, encode_frames(frames), strict=True))
        return out


def pack_frames_response(room: str, seq: int, n_frames: int, indices: Sequence[int],
                         entries: Sequence[FrameEntry], by_slot: dict[int, bytes]) -> bytes:
    """The GET response, with the frames' encoded bytes spliced in (never re-encoded)."""
    packer = msgpack.Packer(use_bin_type=True)
    header: list[tuple[str, Any]] = [
        ("room", room), ("seq", seq), ("n_frames", n_frames), ("indices", list(indices)),
        ("frame_ids", [e.frame_id for e in entries]),
        ("versions", [e.version for e in entries]),
        ("hashes", [e.hash for e in entries]),
    ]
    parts = [packer.pack_map_header(len(header) + 1)]
    for key, value in header:
        parts += (packer.pack(key), packer.pack(value))
    parts += (packer.pack("frames"), packer.pack_array_header(len(entries)))
    parts += (by_slot[e.slot] for e in entries)
    return b"".join(parts)
