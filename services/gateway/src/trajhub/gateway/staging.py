"""Staging uploaded frames as content-addressed blobs in Redis, within a memory budget."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import cast

import redis.asyncio as aioredis

from trajhub.gateway.cache import FrameCache
from trajhub.gateway.errors import ApiError
from trajhub.shared import keys
from trajhub.shared.redis_util import used_memory

MEMORY_CACHE_S = 1.0
RETRY_AFTER_S = 5
WRITE_THROUGH_SHARE = 0.25
"""An upload puts at most this share of the frame cache's budget in the cache (its last
frames): a large upload must not flush the frames viewers are reading."""


class Stager:
    def __init__(self, redis: aioredis.Redis, *, ttl_s: int, budget_bytes: int,
                 cache: FrameCache | None = None) -> None:
        self._redis = redis
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

    def staged(self, hashes: Sequence[str],
               blobs: Sequence[bytes | memoryview]) -> dict[str, bytes]:
        """What ``stage`` would SET (hash -> blob), for an in-process commit that stages
        in its own round trip; counts it against the budget and fills the cache."""
        # Memoryviews into the request body go to redis-py as they are (no copy);
        # control only hands the values to its pipeline.
        out = cast(dict[str, bytes], dict(zip(hashes, blobs, strict=True)))
        if self._cache is not None:
            self._cache.put_recent(hashes, blobs, WRITE_THROUGH_SHARE)
        self._used += sum(len(b) for b in out.values())
        return out

    @property
    def ttl_s(self) -> int:
        return self._ttl_s

    async def stage(self, room: str, hashes: Sequence[str],
                    blobs: Sequence[bytes | memoryview]) -> None:
        """SET each blob with a TTL, pipelined. NX: never touch a blob that a commit
        already PERSISTed (resetting its TTL could expire it before storage applies it)."""
        pipe = self._redis.pipeline(transaction=False)
        seen: set[str] = set()
        staged = 0
        for h, blob in zip(hashes, blobs, strict=True):
            if h in seen:
                continue
            seen.add(h)
            pipe.set(keys.blob(room, h), blob, ex=self._ttl_s, nx=True)
            staged += len(blob)
        await pipe.execute()
        if self._cache is not None:
            self._cache.put_recent(hashes, blobs, WRITE_THROUGH_SHARE)
        # Count our own uploads against the cached figure until the next INFO.
        self._used += staged
