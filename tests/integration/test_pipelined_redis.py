"""The gateway's pipelined index reads: the same answers as redis-py, concurrent calls
matched to their replies, and a fall back to redis-py whenever the connection fails."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from test_index_reader import ROOM, build_room

from trajhub.control import IndexOutOfRange
from trajhub.gateway import pipelined
from trajhub.gateway.pipelined import PipelinedRedis
from trajhub.gateway.reader import IndexScript
from trajhub.shared.redis_util import async_client


@pytest.fixture
async def fast(r: aioredis.Redis) -> AsyncIterator[PipelinedRedis]:
    client = PipelinedRedis.for_client(r)
    assert client is not None
    yield client
    await client.aclose()


async def test_answers_as_redis_py(r: aioredis.Redis, fast: PipelinedRedis) -> None:
    await build_room(r, 40)
    plain, piped = IndexScript(r), IndexScript(r, fast)
    reads: list[dict[str, object]] = [
        {"indices": [0]}, {"indices": [39, -1, 5, 5, -40]}, {"indices": []},
        {"start": 0, "stop": None, "step": 1}, {"start": -5, "stop": None, "step": 1},
        {"start": None, "stop": None, "step": -3}, {"start": 30, "stop": 10, "step": 1}]
    for kwargs in reads:
        assert await piped.read(ROOM, **kwargs) == await plain.read(ROOM, **kwargs), kwargs  # type: ignore[arg-type]
    assert fast._proto is not None and fast._proto.lost is None  # it did go over fast


async def test_errors_as_redis_py(r: aioredis.Redis, fast: PipelinedRedis) -> None:
    await build_room(r, 10)
    piped = IndexScript(r, fast)
    with pytest.raises(IndexOutOfRange) as info:
        await piped.read(ROOM, indices=[3, 10])
    assert (info.value.index, info.value.n_frames, info.value.exists) == (10, 10, True)
    with pytest.raises(IndexOutOfRange) as info:
        await piped.read("nobody", indices=[0])
    assert info.value.exists is False
    assert (await piped.read("nobody")).exists is False
    with pytest.raises(ResponseError, match="unknown command"):
        await fast.call("NO-SUCH-COMMAND")


async def test_concurrent_calls_get_their_own_replies(r: aioredis.Redis,
                                                      fast: PipelinedRedis) -> None:
    await build_room(r, 200)
    piped = IndexScript(r, fast)
    full = (await IndexScript(r).read(ROOM)).entries
    picks = [random.Random(3).randrange(200) for _ in range(300)]
    views = await asyncio.gather(*(piped.read(ROOM, indices=[i]) for i in picks))
    assert [v.entries[0] for v in views] == [full[i] for i in picks]


async def test_reloads_a_flushed_script(r: aioredis.Redis, fast: PipelinedRedis) -> None:
    await build_room(r, 5)
    piped = IndexScript(r, fast)
    before = await piped.read(ROOM, indices=[2])
    await r.script_flush()
    assert await piped.read(ROOM, indices=[2]) == before


async def test_reconnects_after_a_dropped_connection(r: aioredis.Redis,
                                                     fast: PipelinedRedis) -> None:
    await build_room(r, 5)
    piped = IndexScript(r, fast)
    before = await piped.read(ROOM, indices=[1])
    first = fast._proto
    assert first is not None and first.transport is not None
    first.transport.abort()
    await asyncio.sleep(0.05)
    assert first.lost is not None
    assert await piped.read(ROOM, indices=[1]) == before
    assert fast._proto is not first and fast._proto is not None


async def test_unreachable_redis_falls_back_to_redis_py(r: aioredis.Redis) -> None:
    await build_room(r, 5)
    dead = PipelinedRedis({"host": "127.0.0.1", "port": 1, "db": 0, "username": None,
                           "password": None})
    try:
        with pytest.raises(RedisConnectionError):
            await dead.call("PING")
        with pytest.raises(RedisConnectionError, match="a moment ago"):
            await dead.call("PING")  # no new connect attempt per call
        view = await IndexScript(r, dead).read(ROOM, indices=[4])
        assert view.entries == (await IndexScript(r).read(ROOM, indices=[4])).entries
    finally:
        await dead.aclose()


async def test_a_silent_server_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipelined, "TIMEOUT_S", 0.2)

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)  # read the command, never answer
        await asyncio.sleep(30)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = PipelinedRedis({"host": "127.0.0.1", "port": port, "db": 0, "username": None,
                             "password": None})
    try:
        with pytest.raises(RedisConnectionError, match="did not answer"):
            await asyncio.wait_for(client.call("PING"), 5)
    finally:
        await client.aclose()
        server.close()


async def test_a_silent_handshake_is_a_connection_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipelined, "TIMEOUT_S", 0.2)
    dropped: list[bool] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)  # SELECT, never answered
        dropped.append(await reader.read(1 << 16) == b"")  # b"": the client hung up

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = PipelinedRedis({"host": "127.0.0.1", "port": port, "db": 2, "username": None,
                             "password": None})
    try:
        with pytest.raises(RedisConnectionError, match="did not answer SELECT"):
            await asyncio.wait_for(client.call("PING"), 5)
        assert client._proto is None
        await asyncio.sleep(0.1)
        assert dropped == [True]  # the half-open connection was not left behind
    finally:
        await client.aclose()
        server.close()


def test_applies_only_to_plain_connections() -> None:
    assert PipelinedRedis.for_client(aioredis.Redis.from_url("rediss://localhost:6390")) is None
    unix = PipelinedRedis.for_client(
        aioredis.Redis.from_url("unix:///tmp/r.sock?db=3", password="pw"))
    assert unix is not None and unix._connect == {"path": "/tmp/r.sock", "db": 3,
                                                  "username": None, "password": "pw"}
    tcp = PipelinedRedis.for_client(aioredis.Redis.from_url("redis://u:p@h:6400/2"))
    assert tcp is not None and tcp._connect == {"host": "h", "port": 6400, "db": 2,
                                                "username": "u", "password": "p"}
    # trajhub's own clients (their connections pack large commands with hiredis)
    assert PipelinedRedis.for_client(async_client("rediss://localhost:6390")) is None
    ours = PipelinedRedis.for_client(async_client("redis://h:6400/2"))
    assert ours is not None and ours._connect["port"] == 6400
    ours_unix = PipelinedRedis.for_client(async_client("unix:///tmp/r.sock"))
    assert ours_unix is not None and ours_unix._connect["path"] == "/tmp/r.sock"
