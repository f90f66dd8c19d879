"""A room's head (seq, frame count, applied seq), read atomically without the index."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from trajhub.shared import keys


@dataclass(frozen=True)
class RoomHead:
    room: str
    seq: int
    n_frames: int
    applied_seq: int

    @property
    def exists(self) -> bool:
        return self.seq > 0


async def room_head(redis: aioredis.Redis, room: str) -> RoomHead:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hget(keys.meta(room), "seq")
        pipe.llen(keys.order(room))
        pipe.hget(keys.applied(room), "seq")
        seq, n_frames, applied = await pipe.execute()
    return RoomHead(room=room, seq=int(seq or 0), n_frames=int(n_frames),
                    applied_seq=int(applied or 0))
