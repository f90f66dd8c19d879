"""Control's HTTP API served by uvicorn, and HttpControl against it."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from control_server import serve
from control_testutil import order, stage

from trajhub.control import Control, ControlUnavailable, HttpControl
from trajhub.control.__main__ import port_for
from trajhub.shared.collab import LockAcquire
from trajhub.shared.events import (
    Command,
    CommitResult,
    DeleteFrames,
    Event,
    InsertFrames,
    ReplaceFrames,
)
from trajhub.shared.names import InvalidName
from trajhub.shared.settings import Settings


@pytest.fixture(scope="module")
def control_url(redis_server: str) -> Iterator[str]:
    with serve(redis_server) as url:
        yield url


@pytest.fixture
async def http_control(control_url: str, redis_url: str) -> AsyncIterator[HttpControl]:
    async with HttpControl(Settings(control_url=control_url)) as control:
        yield control


def comparable(result: CommitResult) -> dict[str, Any]:
    """A result without what differs between two rooms (room, time, edit id)."""
    data = result.model_dump()
    if data["event"]:
        for field in ("room", "time", "edit_id"):
            data["event"].pop(field)
    return data


async def test_http_gives_the_same_results_as_in_process(
        r: aioredis.Redis, http_control: HttpControl) -> None:
    local = Control(r)
    results: dict[str, list[CommitResult]] = {}
    for room, control in (("local", local), ("remote", http_control)):
        hashes = await stage(r, room, [0, 1, 2, 3])
        commands: list[Command] = [
            InsertFrames(room=room, hashes=hashes[:3], author="ann"),
            InsertFrames(room=room, at=1, hashes=[hashes[0]], idempotency_key="key-00001"),
            InsertFrames(room=room, at=1, hashes=[hashes[0]], idempotency_key="key-00001"),
            ReplaceFrames(room=room, indices=[2], hashes=[hashes[3]], base_versions=[1]),
            ReplaceFrames(room=room, indices=[2], hashes=[hashes[3]], base_versions=[1]),
            DeleteFrames(room=room, indices=[0, 3]),
            DeleteFrames(room=room, indices=[7]),
            InsertFrames(room=room, hashes=["0" * 64]),
        ]
        results[room] = [await control.commit(c) for c in commands]
    remote = results["remote"]
    assert [comparable(x) for x in remote] == [comparable(x) for x in results["local"]]
    assert [x.status for x in remote] == ["ok", "ok", "ok", "ok", "conflict", "ok",
                                          "not_found", "invalid"]
    assert [x.replayed for x in remote] == [False, False, True, False, False, False, False,
                                            False]
    assert await order(r, "remote") == await order(r, "local")
    [(_, fields)] = await r.xrange("{remote}:events", "1-0", "1-0")
    assert Event.from_stream(fields) == remote[0].event


async def test_status_codes(r: aioredis.Redis, control_url: str) -> None:
    [h] = await stage(r, "codes", [0])
    async with httpx.AsyncClient(base_url=control_url) as client:
        insert = {"op": "insert", "room": "codes", "hashes": [h]}
        assert (await client.post("/v1/commit", json=insert)).status_code == 200
        stale = {"op": "delete", "room": "codes", "indices": [0], "base_versions": [7]}
        answer = await client.post("/v1/commit", json=stale)
        assert answer.status_code == 409
        assert answer.json()["conflicts"][0]["actual"] == 1
        missing = {"op": "delete", "room": "codes", "indices": [3]}
        assert (await client.post("/v1/commit", json=missing)).status_code == 404


@pytest.mark.parametrize(("body", "reason"), [
    (b"{not json", "Invalid JSON"),
    (b'{"op": "insert", "room": "x", "hashes": ["abc"]}', "not a sha256 hex digest"),
    (b'{"op": "move", "room": "x"}', "does not match any of the expected tags"),
    (b'{"op": "delete", "room": "../x", "indices": [0]}', "room"),
    (b'{"op": "delete", "room": "x", "indices": [-1]}', "indices.0"),
    (b"[]", "should be an object"),
])
async def test_malformed_commands_get_422(control_url: str, redis_url: str, body: bytes,
                                          reason: str) -> None:
    async with httpx.AsyncClient(base_url=control_url) as client:
        answer = await client.post("/v1/commit", content=body)
    assert answer.status_code == 422
    result = CommitResult.model_validate_json(answer.content)
    assert result.status == "invalid"
    assert result.reason is not None and reason in result.reason


async def test_collab_routes_answer_with_the_result_status(r: aioredis.Redis,
                                                           control_url: str) -> None:
    await stage(r, "routes", [0])
    async with httpx.AsyncClient(base_url=control_url) as client:
        async def post(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            answer = await client.post(path, json=body)
            return answer.status_code, answer.json()

        room = {"room": "routes"}
        code, lock = await post("/v1/locks/acquire", {**room, "author": "ann", "ttl_ms": 5000})
        assert code == 200 and lock["status"] == "ok" and lock["target"] == {"room": True}
        code, refused = await post("/v1/locks/acquire", {**room, "author": "bob"})
        assert code == 423 and refused["holder"]["author"] == "ann"
        assert (await post("/v1/locks/renew", {**room, "token": lock["token"]}))[0] == 200
        assert (await post("/v1/locks/renew", {**room, "token": "x" * 32}))[0] == 404
        code, locks = await post("/v1/locks/list", room)
        assert code == 200 and [h["author"] for h in locks["locks"]] == ["ann"]
        assert "token" not in locks["locks"][0]
        assert (await post("/v1/locks/release", {**room, "token": lock["token"]}))[0] == 200
        assert (await post("/v1/locks/list", room))[1] == {**room, "locks": []}

        code, presenter = await post("/v1/presenter/request", {**room, "author": "ann"})
        assert code == 200 and presenter["token"]
        assert (await post("/v1/presenter/request", {**room, "author": "bob"}))[0] == 423
        renew = {**room, "token": presenter["token"]}
        assert (await post("/v1/presenter/renew", renew))[0] == 200
        assert (await post("/v1/presenter/renew", room))[0] == 422
        assert (await post("/v1/step/set", {**room, "frame": 0, "author": "bob"}))[0] == 423
        assert (await post("/v1/presenter/release", renew))[0] == 200
        assert (await post("/v1/presenter/release", renew))[0] == 404
        code, step = await post("/v1/step/get", room)
        assert code == 200 and step["presenter"] is None and step["step_seq"] == 0


@pytest.mark.parametrize(("path", "body", "reason"), [
    ("/v1/locks/acquire", b"{not json", "Invalid JSON"),
    ("/v1/locks/acquire", b'{"room": "x", "target": "all"}', "unknown lock target"),
    ("/v1/locks/acquire", b'{"room": "x", "ttl_ms": 5}', "ttl_ms"),
    ("/v1/locks/acquire", b'{"room": "x", "target": {"start": 3, "stop": 3}}', "empty range"),
    ("/v1/locks/renew", b'{"room": "x", "token": "short"}', "token"),
    ("/v1/locks/release", b'{"room": "x"}', "token: Field required"),
    ("/v1/locks/list", b'{"room": "../x"}', "room"),
    ("/v1/locks/list", b"[]", "should be an object"),
    ("/v1/presenter/request", b'{"room": "x", "extra": 1}', "extra: Extra inputs"),
    ("/v1/presenter/renew", b'{"room": "x", "ttl_ms": 60001}', "ttl_ms"),
    ("/v1/presenter/release", b"", "Invalid JSON"),
    ("/v1/step/set", b'{"room": "x", "frame": -1}', "frame"),
    ("/v1/step/get", b'{"room": ""}', "room name is empty"),
])
async def test_malformed_collab_requests_get_422(control_url: str, redis_url: str, path: str,
                                                 body: bytes, reason: str) -> None:
    async with httpx.AsyncClient(base_url=control_url) as client:
        answer = await client.post(path, content=body)
    assert answer.status_code == 422
    result = answer.json()
    assert result["status"] == "invalid"
    assert reason in result["reason"], result["reason"]


async def test_http_control_refuses_a_bad_room_name_before_sending(
        http_control: HttpControl) -> None:
    with pytest.raises(InvalidName, match="may not contain"):
        await http_control.list_locks("../x")
    with pytest.raises(InvalidName, match="empty"):
        await http_control.get_step("")


async def test_health_and_readiness(control_url: str, redis_url: str) -> None:
    async with httpx.AsyncClient(base_url=control_url) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
        assert (await client.get("/v1/commit")).status_code == 405


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_control_raises_a_clear_error() -> None:
    port = free_port()
    async with HttpControl(f"http://127.0.0.1:{port}") as control:
        with pytest.raises(ControlUnavailable, match=f"127.0.0.1:{port} is unreachable"):
            await control.commit(DeleteFrames(room="x", indices=[0]))
        with pytest.raises(ControlUnavailable, match="is unreachable"):
            await control.acquire_lock(LockAcquire(room="x"))


async def test_non_control_answer_raises(control_url: str) -> None:
    async with HttpControl(control_url + "/elsewhere") as control:
        with pytest.raises(ControlUnavailable, match="answered 404"):
            await control.commit(DeleteFrames(room="x", indices=[0]))


def test_http_control_needs_a_url() -> None:
    with pytest.raises(ValueError, match="TRAJHUB_CONTROL_URL"):
        HttpControl(Settings())


def test_default_port() -> None:
    assert port_for(Settings(port=6000), {"TRAJHUB_PORT": "6000"}) == 6000
    assert port_for(Settings(), {}) == 5001


async def test_redis_down_gives_503(redis_url: str) -> None:
    port = free_port()
    with serve(f"redis://127.0.0.1:{port}/0") as url:
        async with httpx.AsyncClient(base_url=url) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
            assert (await client.get("/healthz")).status_code == 200
        async with HttpControl(url) as control:
            with pytest.raises(ControlUnavailable, match=r"answered 503.*redis unavailable"):
                await control.commit(DeleteFrames(room="x", indices=[0]))
            with pytest.raises(ControlUnavailable, match=r"answered 503.*redis unavailable"):
                await control.get_step("x")


async def test_both_controls_tell_which_room_each_commit_touched(
        r: aioredis.Redis, http_control: HttpControl) -> None:
    """``moved`` hears of every commit, accepted or refused, before its caller does (the
    gateway's index watch forgets the room there)."""
    for room, control in (("near", Control(r)), ("far", http_control)):
        told: list[str] = []
        control.moved = told.append
        hashes = await stage(r, room, [0])
        assert (await control.commit(InsertFrames(room=room, hashes=hashes))).status == "ok"
        refused = await control.commit(DeleteFrames(room=room, indices=[5]))
        assert refused.status == "not_found"
        assert told == [room, room]
