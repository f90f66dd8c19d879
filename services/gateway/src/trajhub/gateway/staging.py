"""Staging uploaded frames as content-addressed blobs in Redis, within a memory budget;
a bulk upload's frames as one pack in the frame store, with markers in Redis
(``trajhub.shared.staging``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import redis.asyncio as aioredis

from trajhub.gateway.cache import FrameCache
from trajhub.gateway.errors import ApiError
from trajhub.shared import keys
from trajhub.shared.redis_util import used_memory
from trajhub.shared.staging import STAGE_LUA, StagingPacks

MEMORY_CACHE_S = 1.0
RETRY_AFTER_S = 5
WRITE_THROUGH_SHARE = 0.25
"""An upload puts at most this share of the frame cache's budget in the cache (its last
frames): a large upload must not flush the frames viewers are reading. Only uploads
staged in Redis (edits, small appends) are written through: the frames of a pack are a
bulk upload's, where copying each request's tail into the cache (~10 ms per 16 MB
here) is work the next request waits for, and a reader finds them in the pack."""


class Stager:
    def __init__(self, redis: aioredis.Redis, *, ttl_s: int, budget_bytes: int,
                 cache: FrameCache | None = None, pack_min_bytes: int = 0) -> None:
        self._redis = redis
        self.packs: StagingPacks | None = None
        """Where bulk uploads are staged (set once the frame store is open)."""
        self.pack_min_bytes = pack_min_bytes
        """Uploads whose frames total at least this go to a pack (0: never)."""
        self._cache = cache
        self._ttl_s = ttl_s
        self._budget = budget_bytes
        self._used = 0
        self._used_at = float("-inf")

    async def used_memory(self) -> int:
        """Redis ``used_memory`` (a cluster's fullest primary), cached for about a second,
        plus what we staged since."""
        now = time.monotonic()
        if now - self._used_at > MEMORY_CACHE_S:
            self._used = await used_memory(self._redis)
            self._used_at = now
        return self._used

    @property
    def used_estimate(self) -> int:
        """The last ``used_memory`` reading plus what was staged since (no I/O)."""
        return self._used

    async def check_budget(self, incoming: int = 0) -> None:
        """503 + Retry-After when Redis is (or would be) over the staging budget."""
        used = await self.used_memory()
        if used + incoming > self._budget:
            raise ApiError(
                503,
                f"staging area is full (Redis uses {used // 2**20} MiB, budget "
                f"{self._budget // 2**20} MiB); retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)})

    async def staged(self, room: str, hashes: Sequence[str],
                     blobs: Sequence[bytes | memoryview]) -> dict[str, bytes | memoryview]:
        """What ``stage`` would SET (hash -> blob or pack marker), for an in-process
        commit that stages in its own round trip; writes the pack if there is one, counts
        Redis's share against the budget and fills the cache."""
        # Memoryviews into the request body go to redis-py as they are (no copy);
        # control only hands the values to its pipeline.
        out = await self._values(room, hashes, blobs)
        self._used += sum(len(b) for b in out.values())
        return out

    async def _values(self, room: str, hashes: Sequence[str],
                      blobs: Sequence[bytes | memoryview]) -> dict[str, bytes | memoryview]:
        """hash -> the value of its Redis key: a marker into a new pack, or the blob
        itself (then also written through to the cache)."""
        packs = self.packs
        if (packs is not None and self.pack_min_bytes > 0
                and sum(len(b) for b in blobs) >= self.pack_min_bytes):
            return dict(await asyncio.to_thread(packs.write, room, hashes, blobs))
        if self._cache is not None:
            self._cache.put_recent(hashes, blobs, WRITE_THROUGH_SHARE)
        return dict(zip(hashes, blobs, strict=True))

    @property
    def ttl_s(self) -> int:
        return self._ttl_s

    async def stage(self, room: str, hashes: Sequence[str],
                    blobs: Sequence[bytes | memoryview]) -> None:
        """SET each blob (or its marker) with a TTL, in one command (STAGE_LUA). NX:
        never touch a blob that a commit already PERSISTed (resetting its TTL could
        expire it before storage applies it)."""
        values = await self._values(room, hashes, blobs)
        # EVAL, not EVALSHA: nothing to reload after a Redis restart; the script is
        # tiny next to the blobs it carries.
        await self._redis.eval(STAGE_LUA, len(values),
                               *(keys.blob(room, h) for h in values), self._ttl_s,
                               *values.values())
        # Count our own uploads against the cached figure until the next INFO.
        self._used += sum(len(v) for v in values.values())
