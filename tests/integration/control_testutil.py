"""Helpers for the control tests: stage real frames, read a room's keys back."""

from __future__ import annotations

import numpy as np
import redis.asyncio as aioredis

from trajhub.shared import codec, hashing, keys
from trajhub.shared.events import FrameEntry
from trajhub.shared.frames import Frame
from trajhub.shared.index import unpack_entry


def make_frame(i: int, n_atoms: int = 3) -> Frame:
    return {
        "numbers": np.array([8] + [1] * (n_atoms - 1), dtype=np.int64),
        "positions": np.arange(n_atoms * 3, dtype=np.float64).reshape(n_atoms, 3) + i,
        "info.step": np.array(i, dtype=np.int64),
    }


async def stage(r: aioredis.Redis, room: str, ids: list[int], ex: int = 60) -> list[str]:
    """Stage frames ``make_frame(i)`` for ``i`` in ids; return their hashes."""
    hashes = []
    async with r.pipeline(transaction=False) as pipe:
        for i in ids:
            frame = make_frame(i)
            h = hashing.frame_hash(frame)
            hashes.append(h)
            pipe.set(keys.blob(room, h), codec.frame_to_bytes(frame), ex=ex)
        await pipe.execute()
    return hashes


async def order(r: aioredis.Redis, room: str) -> list[int]:
    return [int(x) for x in await r.lrange(keys.order(room), 0, -1)]


async def index(r: aioredis.Redis, room: str) -> list[FrameEntry]:
    """The room's entries in logical order, read straight from the keys."""
    packed = await r.hgetall(keys.frames(room))
    return [unpack_entry(fid, packed[str(fid).encode()]) for fid in await order(r, room)]


async def snapshot(r: aioredis.Redis, room: str) -> dict[str, object]:
    """Everything a commit may write, to prove a refused command wrote nothing."""
    blob_keys = sorted([k async for k in r.scan_iter(match=keys.blob_prefix(room) + "*")])
    return {
        "meta": await r.hgetall(keys.meta(room)),
        "order": await order(r, room),
        "frames": await r.hgetall(keys.frames(room)),
        "slots": await r.hgetall(keys.slots(room)),
        "events": await r.xrange(keys.events(room)),
        "blob_persistent": [k for k in blob_keys if await r.ttl(k) == -1],
        "idem": sorted([k async for k in r.scan_iter(match="{" + room + "}:idem:*")]),
    }
