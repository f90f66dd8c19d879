"""The gateway's index watch (``index_watch.IndexWatch``) against a real Redis: a room is
current from its meta read until Redis pushes that the key changed, a commit through the
gateway forgets it at once, and every way of losing the connection forgets everything.
Then two gateways on one Redis: a read through one right after a write through the
other sees the write, and a repeated read is answered without a script."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from gateway_server import (  # noqa: F401  (fixtures)
    MSGPACK,
    GatewayServer,
    get_frames,
    make_frame,
    post_frames,
    start_gateway,
)

from trajhub.gateway import index_watch, reader
from trajhub.gateway.index_watch import CLIENT_NAME, IndexWatch
from trajhub.shared import codec, keys
from trajhub.shared.frames import frames_equal


async def eventually(check: Callable[[], Any], within: float = 5.0) -> Any:
    deadline = time.monotonic() + within
    while not (value := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
    return value


def hold_the_loop(seconds: float) -> None:
    """Block the event loop: the watch's reader callback cannot run meanwhile."""
    time.sleep(seconds)


@pytest.fixture
async def watch(redis_url: str) -> AsyncIterator[IndexWatch]:
    w = IndexWatch(redis_url)
    w.start()
    await eventually(lambda: w.connected)
    yield w
    await w.stop()


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def set_meta(client: redis.Redis, room: str, seq: int, created: str = "1.5") -> None:
    client.hset(keys.meta(room), mapping={"seq": seq, "created": created})


async def test_a_room_is_current_until_redis_says_it_moved(
        watch: IndexWatch, sync_redis: redis.Redis) -> None:
    set_meta(sync_redis, "a", 3)
    assert watch.current("a") is None
    watch.arm("a")
    assert await eventually(lambda: watch.current("a")) == (3, "1.5")
    set_meta(sync_redis, "b", 1)  # another room's change leaves it alone
    await asyncio.sleep(0.05)
    assert watch.current("a") == (3, "1.5")
    # The loop is blocked from the write on, so only current() itself can have read
    # the push off the socket.
    sync_redis.hset(keys.meta("a"), "seq", 4)
    hold_the_loop(0.05)
    assert watch.current("a") is None
    watch.arm("a")
    assert await eventually(lambda: watch.current("a")) == (4, "1.5")


async def test_a_room_that_does_not_exist_is_never_current(watch: IndexWatch) -> None:
    watch.arm("ghost")
    await asyncio.sleep(0.1)
    assert watch.current("ghost") is None


async def test_a_commit_here_forgets_the_room_and_voids_a_read_in_flight(
        watch: IndexWatch, sync_redis: redis.Redis) -> None:
    set_meta(sync_redis, "a", 1)
    watch.arm("a")
    await eventually(lambda: watch.current("a"))
    watch.moved("a")
    assert watch.current("a") is None
    watch.arm("a")
    watch.moved("a")  # before that read's answer came: it may predate the commit
    await asyncio.sleep(0.1)
    assert watch.current("a") is None
    watch.arm("a")
    assert await eventually(lambda: watch.current("a")) == (1, "1.5")


async def test_a_flush_forgets_every_room(watch: IndexWatch, sync_redis: redis.Redis) -> None:
    for room in ("a", "b"):
        set_meta(sync_redis, room, 1)
        watch.arm(room)
    await eventually(lambda: watch.current("a") and watch.current("b"))
    sync_redis.flushdb()
    hold_the_loop(0.05)
    assert watch.current("a") is None and watch.current("b") is None


async def test_a_lost_connection_forgets_every_room_and_comes_back(
        watch: IndexWatch, sync_redis: redis.Redis) -> None:
    set_meta(sync_redis, "a", 1)
    watch.arm("a")
    await eventually(lambda: watch.current("a"))
    ids = [c["id"] for c in sync_redis.client_list() if c["name"] == CLIENT_NAME]
    assert len(ids) == 1
    sync_redis.execute_command("CLIENT", "KILL", "ID", ids[0])
    hold_the_loop(0.05)
    assert watch.current("a") is None
    await eventually(lambda: watch.connected)
    names = [c["name"] for c in sync_redis.client_list()]
    assert CLIENT_NAME in names
    sync_redis.hset(keys.meta("a"), "seq", 2)  # while it was away: not missed
    watch.arm("a")
    assert await eventually(lambda: watch.current("a")) == (2, "1.5")


async def test_a_silent_connection_is_trusted_for_nothing(
        watch: IndexWatch, sync_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    set_meta(sync_redis, "a", 1)
    watch.arm("a")
    await eventually(lambda: watch.current("a"))
    monkeypatch.setattr(index_watch, "STALE_S", 0.3)
    monkeypatch.setattr(index_watch, "HEARTBEAT_S", 0.05)
    await asyncio.sleep(0.1)  # the heartbeat loop picks up the shorter period
    sync_redis.execute_command("CLIENT", "PAUSE", "1500", "ALL")
    await asyncio.sleep(0.6)
    assert watch.current("a") is None  # no heartbeat answered for longer than STALE_S
    await asyncio.sleep(1.2)
    watch.arm("a")
    assert await eventually(lambda: watch.current("a")) == (1, "1.5")


async def test_an_unreachable_redis_leaves_the_watch_off(unused_tcp_port: int) -> None:
    w = IndexWatch(f"redis://127.0.0.1:{unused_tcp_port}/0")
    w.start()
    await asyncio.sleep(0.2)
    assert not w.connected
    w.arm("a")
    assert w.current("a") is None
    await w.stop()


async def test_a_refused_handshake_leaves_the_watch_off(redis_url: str) -> None:
    url = re.sub(r"(db=|/)\d+$", r"\g<1>99", redis_url)
    assert url != redis_url
    w = IndexWatch(url)  # SELECT 99: out of range
    w.start()
    await asyncio.sleep(0.3)
    assert not w.connected
    await w.stop()


# -- two gateways -----------------------------------------------------------------------------
def evalsha_calls(client: redis.Redis) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def replace(client: httpx.Client, room: str, index: int, frame: Any) -> None:
    body = codec.frames_to_bytes([frame], indices=[index])
    r = client.put(f"/api/v1/rooms/{room}/frames", content=body, headers=MSGPACK)
    assert r.status_code == 200, r.text


def test_a_read_right_after_a_write_through_another_gateway_sees_it(
        start_gateway: Callable[..., GatewayServer], sync_redis: redis.Redis) -> None:  # noqa: F811
    one, two = start_gateway(), start_gateway()
    with httpx.Client(base_url=one.url, timeout=30) as a, \
            httpx.Client(base_url=two.url, timeout=30) as b:
        assert post_frames(a, "w", [make_frame(4, seed=i) for i in range(3)]).status_code == 201
        for gw in (b, a):
            get_frames(gw, "w", indices="1")
        before = evalsha_calls(sync_redis)
        for gw in (b, a):
            get_frames(gw, "w", indices="1")
        assert evalsha_calls(sync_redis) == before, "a repeated read ran the index script"
        for i in range(40):
            frame = make_frame(4, seed=100 + i)
            writer, reader = (a, b) if i % 2 else (b, a)
            replace(writer, "w", 1, frame)
            got = get_frames(reader, "w", indices="1")
            assert got["versions"] == [i + 2]
            assert frames_equal(got["frames"][0], frame)
            got = get_frames(writer, "w", indices="1")
            assert frames_equal(got["frames"][0], frame)


def test_new_indices_are_cut_out_of_their_window_while_the_room_stays(
        start_gateway: Callable[..., GatewayServer], sync_redis: redis.Redis) -> None:  # noqa: F811
    """A read of an index not read before takes its entry from the read of its window
    (one script for INDEX_WINDOW indices), and never one from before the room moved."""
    window = reader.INDEX_WINDOW
    frames = [make_frame(2, seed=i, extras=False) for i in range(window + 10)]
    gw = start_gateway()
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        assert post_frames(c, "win", frames).status_code == 201
        get_frames(c, "win", indices="0")  # arms the watch: the room is now current
        before = evalsha_calls(sync_redis)
        for i in (5, 7, window - 1, 3, 5):
            got = get_frames(c, "win", indices=str(i))
            assert got["indices"] == [i] and frames_equal(got["frames"][0], frames[i])
        assert evalsha_calls(sync_redis) <= before + 1, "each new index ran the script"
        got = get_frames(c, "win", indices=f"{window},{window + 9}")  # the next window
        assert [frames_equal(f, frames[i]) for f, i in zip(
            got["frames"], (window, window + 9), strict=True)] == [True, True]
        assert evalsha_calls(sync_redis) <= before + 2
        r = c.get("/api/v1/rooms/win/frames", params={"indices": str(window + 10)})
        assert r.status_code == 404 and "out of range" in r.text  # as without the watch

        new = make_frame(2, seed=999, extras=False)
        replace(c, "win", 9, new)
        got = get_frames(c, "win", indices="9")  # not cut out of the window read before
        assert got["versions"] == [2] and frames_equal(got["frames"][0], new)
        got = get_frames(c, "win", indices="8")
        assert got["versions"] == [1] and frames_equal(got["frames"][0], frames[8])


def test_a_gateway_without_the_watch_asks_redis_every_time(
        start_gateway: Callable[..., GatewayServer], sync_redis: redis.Redis) -> None:  # noqa: F811
    gw = start_gateway(index_watch=False)
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        assert post_frames(c, "w", [make_frame(4, seed=1)]).status_code == 201
        get_frames(c, "w", indices="0")
        before = evalsha_calls(sync_redis)
        get_frames(c, "w", indices="0")
        assert evalsha_calls(sync_redis) == before + 1
    assert CLIENT_NAME not in [c["name"] for c in sync_redis.client_list()]
