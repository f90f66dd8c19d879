"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio Redis client on the test's clean database."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()
