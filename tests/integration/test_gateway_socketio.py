"""Socket.IO: joining rooms and receiving frames_changed after other clients' writes."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
import socketio
from gateway_server import (  # noqa: F401  (fixtures)
    MSGPACK,
    GatewayServer,
    gateway,
    make_frame,
    post_frames,
    start_gateway,
)

from trajhub.shared import codec
from trajhub.shared.frames import validate_frame
from trajhub.shared.hashing import frame_hash

ROOM = "live-room"
WAIT_S = 10.0


class Listener:
    """A sync Socket.IO client that queues every frames_changed it receives."""

    def __init__(self, url: str) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.sio = socketio.Client(reconnection=False)
        self.sio.on("frames_changed", self.events.put)
        self.sio.connect(url, transports=["websocket"], wait_timeout=WAIT_S)

    def call(self, event: str, data: Any) -> Any:
        return self.sio.call(event, data, timeout=WAIT_S)

    def next(self) -> dict[str, Any]:
        return self.events.get(timeout=WAIT_S)

    def close(self) -> None:
        self.sio.disconnect()


@pytest.fixture
def http(gateway: GatewayServer) -> Iterator[httpx.Client]:  # noqa: F811
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        yield client


@pytest.fixture
def listener(gateway: GatewayServer) -> Iterator[Listener]:  # noqa: F811
    client = Listener(gateway.url)
    yield client
    client.close()


NO_STEP = {"frame": None, "by": None, "step_seq": 0, "presenter": None}


def test_join_ack_and_bad_names(http: httpx.Client, listener: Listener) -> None:
    assert listener.call("join_room", {"room": ROOM}) == {
        "room": ROOM, "seq": 0, "n_frames": 0, "step": {"room": ROOM, **NO_STEP}, "locks": []}
    assert post_frames(http, "other", [make_frame(2, seed=1)] * 3).status_code == 201
    assert listener.call("join_room", {"room": "other"}) == {
        "room": "other", "seq": 1, "n_frames": 3, "step": {"room": "other", **NO_STEP},
        "locks": []}
    for bad in ({"room": "a..b"}, {"room": "x" * 100}, {"room": 5}, {}, "a{b}", None):
        assert "error" in listener.call("join_room", bad)
    assert listener.call("leave_room", {"room": ROOM}) == {"ok": True}
    assert "error" in listener.call("leave_room", {"room": "a b"})


def test_frames_changed_after_writes(http: httpx.Client, listener: Listener) -> None:
    frames = [validate_frame(make_frame(3, seed=i)) for i in range(4)]
    assert post_frames(http, ROOM, frames[:2]).status_code == 201
    assert listener.call("join_room", {"room": ROOM})["seq"] == 1

    assert post_frames(http, ROOM, frames[2:3], at=0).status_code == 201
    put_body = codec.frames_to_bytes(frames[3:4], indices=[2])
    assert http.put(f"/api/v1/rooms/{ROOM}/frames", content=put_body,
                    headers=MSGPACK).status_code == 200
    assert http.delete(f"/api/v1/rooms/{ROOM}/frames",
                       params={"indices": "1"}).status_code == 200

    inserted, replaced, deleted = listener.next(), listener.next(), listener.next()
    assert inserted == {"room": ROOM, "seq": 2, "kind": "frames_inserted", "change": "insert",
                        "indices": [0], "hashes": [frame_hash(frames[2])], "n_frames": 3}
    assert replaced == {"room": ROOM, "seq": 3, "kind": "frames_replaced", "change": "replace",
                        "indices": [2], "hashes": [frame_hash(frames[3])], "n_frames": 3}
    assert deleted == {"room": ROOM, "seq": 4, "kind": "frames_deleted", "change": "delete",
                       "indices": [1], "hashes": [frame_hash(frames[0])], "n_frames": 2}


def test_only_joined_rooms_are_broadcast(gateway: GatewayServer,  # noqa: F811
                                         http: httpx.Client) -> None:
    a, b = Listener(gateway.url), Listener(gateway.url)
    try:
        a.call("join_room", {"room": "room-a"})
        a.call("join_room", {"room": "room-b"})
        b.call("join_room", {"room": "room-b"})
        assert a.call("leave_room", {"room": "room-a"}) == {"ok": True}
        # room-a is written first, so its event would have come before room-b's.
        assert post_frames(http, "room-a", [make_frame(2, seed=1)]).status_code == 201
        assert post_frames(http, "room-b", [make_frame(2, seed=2)]).status_code == 201
        for client in (a, b):
            event = client.next()
            assert (event["room"], event["seq"]) == ("room-b", 1)
            assert client.events.empty()
    finally:
        a.close()
        b.close()


def test_two_gateways_broadcast_each_others_writes(
        start_gateway: Any, http: httpx.Client, listener: Listener) -> None:  # noqa: F811
    other = start_gateway()
    listener.call("join_room", {"room": ROOM})
    with httpx.Client(base_url=other.url, timeout=30) as writer:
        assert post_frames(writer, ROOM, [make_frame(2, seed=1)]).status_code == 201
    assert listener.next()["seq"] == 1


def test_broadcaster_survives_dropped_redis_connections(
        redis_url: str, http: httpx.Client, listener: Listener) -> None:
    assert listener.call("join_room", {"room": ROOM})["seq"] == 0
    admin = redis.Redis.from_url(redis_url)
    try:
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
    finally:
        admin.close()
    assert post_frames(http, ROOM, [make_frame(2, seed=1)]).status_code == 201
    event = listener.next()
    assert (event["room"], event["seq"], event["n_frames"]) == (ROOM, 1, 1)
