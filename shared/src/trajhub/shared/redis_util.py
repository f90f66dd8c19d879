"""Redis connections with timeouts that suit each use."""

from __future__ import annotations

import redis.asyncio as aioredis


def async_client(url: str, *, blocking: bool = False) -> aioredis.Redis:
    """An asyncio client. ``blocking=True`` gives one without a socket timeout,
    for consumers that sit in XREAD/XREADGROUP BLOCK (whose BLOCK must stay the
    only timeout in play)."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=None if blocking else 10.0,
        socket_connect_timeout=5.0,
        health_check_interval=30,
        decode_responses=False,
    )
