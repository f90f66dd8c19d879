"""async_client's connections pack large commands with hiredis: the very bytes redis-py
would send, and redis-py's own packing for anything it treats specially."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from trajhub.shared.redis_util import FAST_PACK_MIN_ARGS, _FastConnection, async_client

MANY = [f"{{r}}:blob:{i:064x}" for i in range(1000)]


def packed(connection: Any, *args: Any) -> bytes:
    return b"".join(bytes(part) for part in connection.pack_command(*args))


@pytest.mark.parametrize("args", [
    ("EVALSHA", "a" * 40, len(MANY), *MANY, "", "ü ∑ 𝄞", -1, 0, 2**63 - 1, b"\x00\xc1raw"),
    (b"EVAL", b"return 1", 0, *range(FAST_PACK_MIN_ARGS)),
    ("EVAL", "return #KEYS", 2, "k1", "k2", 1.5, *MANY[:20]),  # a float: redis-py's repr
    ("EVAL", "return 1", 0, 2**70, *MANY[:20]),  # beyond 64 bits
    ("SCRIPT LOAD", "return 1", *MANY[:20]),  # a command name redis-py splits
    ("MGET", *MANY[:3]),  # few arguments
])
def test_the_same_bytes_as_redis_py(args: tuple[Any, ...]) -> None:
    assert packed(_FastConnection(), *args) == packed(aioredis.Connection(), *args)


def test_memoryviews_are_sent_without_a_copy() -> None:
    blob = memoryview(bytearray(b"x" * 100_000))
    parts = _FastConnection().pack_command("EVAL", "s", 1, "k", *MANY[:20], blob)
    assert any(part is blob for part in parts)
    assert b"".join(map(bytes, parts)) == packed(aioredis.Connection(), "EVAL", "s", 1, "k",
                                                 *MANY[:20], blob)


def test_bad_arguments_are_refused_as_redis_py_refuses_them() -> None:
    with pytest.raises(Exception, match="bool") as ours:
        _FastConnection().pack_command("EVAL", "s", 0, True, *MANY[:20])
    with pytest.raises(Exception, match="bool") as theirs:
        aioredis.Connection().pack_command("EVAL", "s", 0, True, *MANY[:20])
    assert type(ours.value) is type(theirs.value)


def test_trajhub_clients_use_it() -> None:
    for url in ("redis://h:6400/0", "unix:///tmp/r.sock"):
        connection_class = async_client(url).connection_pool.connection_class
        assert connection_class.pack_command is _FastConnection.pack_command


def test_a_large_command_is_packed_once() -> None:
    args = ("EVALSHA", "a" * 40, len(MANY), *MANY)
    assert len(_FastConnection().pack_command(*args)) == 1  # hiredis: one buffer
    assert len(aioredis.Connection().pack_command(*args)) > 1


def test_a_script_call_of_thousands_of_arguments_round_trips(redis_url: str) -> None:
    async def run() -> Any:
        client = async_client(redis_url)
        try:
            return await client.eval("return {#KEYS, ARGV[#ARGV], KEYS[#KEYS]}",
                                     len(MANY), *MANY, *range(1000), "last ü")
        finally:
            await client.aclose()

    assert asyncio.run(run()) == [1000, "last ü".encode(), MANY[-1].encode()]
