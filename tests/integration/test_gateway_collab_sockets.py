"""Collaboration over Socket.IO on real gateways and Redis: locks, the presenter token
and the room's step, broadcast to sockets on every gateway through the Redis bus.

The clients are python-socketio's threaded ``Client`` (its asyncio client would need
aiohttp, which the workspace does not install)."""

from __future__ import annotations

import queue
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import socketio
from gateway_server import (  # noqa: F401  (fixtures)
    MSGPACK,
    GatewayServer,
    frames_body,
    gateway,
    make_frame,
    redis_snapshot,
    start_gateway,
)

from trajhub.shared import codec

ROOM = "collab-live"
WAIT_S = 10.0
BROADCASTS = ("lock_changed", "room_frame", "presenter_changed", "frames_changed")


class Peer:
    """A Socket.IO client that queues every broadcast it receives, by event."""

    def __init__(self, url: str, author: str | None) -> None:
        self.url = url
        self.author = author
        self.sio = socketio.Client(reconnection=False)
        self.queues: defaultdict[str, queue.Queue[dict[str, Any]]] = defaultdict(queue.Queue)
        for event in BROADCASTS:
            self.sio.on(event, self.queues[event].put)

    def connect(self) -> Peer:
        auth = {"author": self.author} if self.author is not None else None
        self.sio.connect(self.url, transports=["websocket"], auth=auth, wait_timeout=WAIT_S)
        return self

    def call(self, event: str, data: Any = None) -> Any:
        return self.sio.call(event, data, timeout=WAIT_S)

    def join(self, room: str = ROOM) -> dict[str, Any]:
        ack: dict[str, Any] = self.call("join_room", {"room": room})
        assert "error" not in ack, ack
        return ack

    def next(self, event: str) -> dict[str, Any]:
        return self.queues[event].get(timeout=WAIT_S)

    def until(self, event: str, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first ``event`` that matches (earlier ones are skipped)."""
        while True:
            message = self.next(event)
            if match(message):
                return message

    def close(self) -> None:
        if self.sio.connected:
            self.sio.disconnect()


PeerFactory = Callable[..., Peer]


@pytest.fixture
def peers(gateway: GatewayServer) -> Iterator[PeerFactory]:  # noqa: F811
    made: list[Peer] = []

    def make(author: str | None = None, server: GatewayServer = gateway) -> Peer:
        peer = Peer(server.url, author).connect()
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


def new_room(server: GatewayServer, n: int = 4) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        frames = [make_frame(2, seed=i, extras=False) for i in range(n)]
        response = http.post(f"/api/v1/rooms/{ROOM}/frames", content=frames_body(frames),
                                   headers=MSGPACK)
        assert response.status_code == 201, response.text


def action(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda message: bool(message["action"] == name)


def test_lock_lifecycle(gateway: GatewayServer, peers: PeerFactory) -> None:  # noqa: F811
    new_room(gateway)
    alice, bob = peers("alice"), peers("bob")
    alice.join()
    assert (bob.join())["locks"] == []

    lock = alice.call("lock_acquire", {"room": ROOM, "target": {"frames": [1, 2]},
                                             "message": "editing"})
    assert lock["fence"] == 1 and lock["target"] == {"frame_ids": [1, 2], "indices": [1, 2]}
    for peer in (alice, bob):
        changed = peer.next("lock_changed")
        assert (changed["room"], changed["action"]) == (ROOM, "acquired")
        [holder] = changed["locks"]
        assert holder["author"] == "alice" and holder["message"] == "editing"
        assert "token" not in holder

    refused = bob.call("lock_acquire", {"room": ROOM, "target": "room"})
    assert refused["status"] == 423 and refused["holder"]["author"] == "alice"
    assert "alice" in refused["error"]
    for event in ("lock_renew", "lock_release"):
        stolen = bob.call(event, {"room": ROOM, "token": lock["token"]})
        assert stolen["status"] == 404 and "error" in stolen

    renewed = alice.call("lock_renew", {"room": ROOM, "token": lock["token"],
                                              "ttl_ms": 60_000})
    assert renewed["fence"] == 1 and renewed["expires_at"] > lock["expires_at"]
    assert (bob.next("lock_changed"))["action"] == "renewed"
    assert alice.call("lock_release", {"room": ROOM, "token": lock["token"]}) == {
        "ok": True, "fence": 1}
    released = bob.next("lock_changed")
    assert (released["action"], released["locks"]) == ("released", [])
    again = alice.call("lock_release", {"room": ROOM, "token": lock["token"]})
    assert again["status"] == 404
    mine = bob.call("lock_acquire", {"room": ROOM, "target": "room"})
    assert mine["fence"] == 2 and mine["target"] == {"room": True}
    joined = (peers("carol")).join()
    assert [h["author"] for h in joined["locks"]] == ["bob"]


def test_disconnect_releases_locks_and_presenter(
        gateway: GatewayServer, peers: PeerFactory) -> None:  # noqa: F811
    new_room(gateway)
    alice, bob = peers("alice"), peers("bob")
    bob.join()
    assert "token" in alice.call("lock_acquire", {"room": ROOM,
                                                         "target": {"start": 0, "stop": 2}})
    assert "token" in alice.call("presenter_request", {"room": ROOM})
    bob.until("presenter_changed", lambda m: m["presenter"] is not None)
    alice.close()
    released = bob.until("lock_changed", action("released"))
    assert released["locks"] == []
    assert (bob.until("presenter_changed", lambda m: True))["presenter"] is None
    assert "token" in bob.call("lock_acquire", {"room": ROOM, "target": "room"})
    assert "token" in bob.call("presenter_request", {"room": ROOM})


def test_lock_expiry_is_broadcast(gateway: GatewayServer,  # noqa: F811
                                        peers: PeerFactory) -> None:
    new_room(gateway)
    alice, bob = peers("alice"), peers("bob")
    bob.join()
    lock = alice.call("lock_acquire", {"room": ROOM, "target": {"frames": [0]},
                                             "ttl_ms": 200})
    assert lock["fence"] == 1
    assert (bob.next("lock_changed"))["action"] == "acquired"
    expired = bob.next("lock_changed")
    assert (expired["action"], expired["locks"]) == ("expired", [])
    gone = alice.call("lock_renew", {"room": ROOM, "token": lock["token"]})
    assert gone["status"] == 404


def test_broadcasts_reach_sockets_on_another_gateway(
        gateway: GatewayServer, start_gateway: Any,  # noqa: F811
        peers: PeerFactory) -> None:
    other = start_gateway()
    new_room(gateway)
    alice = peers("alice", server=gateway)
    bob = peers("bob", server=other)
    bob.join()

    lock = alice.call("lock_acquire", {"room": ROOM, "target": {"frames": [3]}})
    changed = bob.next("lock_changed")
    assert changed["action"] == "acquired" and changed["locks"][0]["author"] == "alice"
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        taken = http.post(f"/api/v1/rooms/{ROOM}/locks", json={"target": {"frames": [0]}},
                                headers={"X-Trajhub-Author": "dave"})
        assert taken.status_code == 201, taken.text
        changed = bob.next("lock_changed")
        assert sorted(h["author"] for h in changed["locks"]) == ["alice", "dave"]
        assert (http.delete(f"/api/v1/rooms/{ROOM}/locks/{taken.json()['token']}")
                ).status_code == 200
        assert [h["author"] for h in (bob.next("lock_changed"))["locks"]] == ["alice"]
    assert (alice.call("lock_release", {"room": ROOM, "token": lock["token"]}))["ok"]
    assert (bob.next("lock_changed"))["locks"] == []

    assert "token" in alice.call("presenter_request", {"room": ROOM})
    assert (bob.next("presenter_changed"))["presenter"]["author"] == "alice"
    step = alice.call("set_room_frame", {"room": ROOM, "frame": 2})
    assert step == {"ok": True, "frame": 2, "step_seq": 1}
    assert bob.next("room_frame") == {"room": ROOM, "frame": 2, "by": "alice",
                                            "step_seq": 1}
    # A step set over HTTP on the other gateway is relayed too (nobody presents).
    assert alice.call("presenter_release", {"room": ROOM}) == {"ok": True}
    assert (bob.next("presenter_changed"))["presenter"] is None
    with httpx.Client(base_url=other.url, timeout=30) as http:
        assert (http.put(f"/api/v1/rooms/{ROOM}/step", json={"frame": 0})
                ).status_code == 200
    assert (bob.next("room_frame"))["step_seq"] == 2


def test_only_the_presenter_steps_in_order(gateway: GatewayServer,  # noqa: F811
                                                 peers: PeerFactory) -> None:
    new_room(gateway, n=10)
    alice, bob, carol = peers("alice"), peers("bob"), peers("carol")
    carol.join()
    granted = alice.call("presenter_request", {"room": ROOM})
    assert set(granted) == {"token", "expires_at"}
    refused = bob.call("presenter_request", {"room": ROOM})
    assert refused["status"] == 423 and refused["holder"]["author"] == "alice"
    step = bob.call("set_room_frame", {"room": ROOM, "frame": 1})
    assert step["status"] == 423 and step["holder"]["author"] == "alice"
    far = alice.call("set_room_frame", {"room": ROOM, "frame": 10})
    assert far["status"] == 404 and "out of range" in far["error"]

    # Emitted back to back without waiting for the acks: handled concurrently.
    replies: queue.Queue[dict[str, Any]] = queue.Queue()
    for f in range(10):
        alice.sio.emit("set_room_frame", {"room": ROOM, "frame": f}, callback=replies.put)
    acks = [replies.get(timeout=WAIT_S) for _ in range(10)]
    assert sorted(a["step_seq"] for a in acks) == list(range(1, 11))
    last = max(acks, key=lambda a: a["step_seq"])
    seen = [carol.next("room_frame")]
    while seen[-1]["step_seq"] != last["step_seq"]:
        seen.append(carol.next("room_frame"))
    seqs = [m["step_seq"] for m in seen]
    assert seqs == sorted(set(seqs))  # strictly increasing
    assert all(m["by"] == "alice" for m in seen) and seen[-1]["frame"] == last["frame"]
    joined = (peers("dave")).join()
    assert joined["step"]["frame"] == last["frame"]
    assert joined["step"]["presenter"]["author"] == "alice"

    renewed = alice.call("presenter_renew", {"room": ROOM})
    assert renewed["expires_at"] >= granted["expires_at"]
    assert (bob.call("presenter_renew", {"room": ROOM}))["status"] == 404
    assert (bob.call("presenter_release", {"room": ROOM}))["status"] == 404
    assert alice.call("presenter_release", {"room": ROOM}) == {"ok": True}
    free = bob.call("set_room_frame", {"room": ROOM, "frame": 3})
    assert free["ok"] and free["step_seq"] == 11


def test_presenter_taken_over_after_expiry(gateway: GatewayServer,  # noqa: F811
                                                 peers: PeerFactory) -> None:
    new_room(gateway)
    alice, bob = peers("alice"), peers("bob")
    bob.join()
    assert "token" in alice.call("presenter_request", {"room": ROOM, "ttl_ms": 200})
    assert (bob.next("presenter_changed"))["presenter"]["author"] == "alice"
    assert (bob.next("presenter_changed"))["presenter"] is None  # alice's TTL ended
    assert "token" in bob.call("presenter_request", {"room": ROOM})
    assert (bob.next("presenter_changed"))["presenter"]["author"] == "bob"
    stale = alice.call("set_room_frame", {"room": ROOM, "frame": 1})
    assert stale["status"] == 423 and stale["holder"]["author"] == "bob"
    assert (alice.call("presenter_renew", {"room": ROOM}))["status"] == 404
    assert (bob.call("set_room_frame", {"room": ROOM, "frame": 1}))["ok"]


def test_frames_changed_names_the_change(gateway: GatewayServer,  # noqa: F811
                                         peers: PeerFactory) -> None:
    new_room(gateway, n=2)
    watcher = peers("watcher")
    assert watcher.join()["seq"] == 1
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        body = codec.packb({"frame": codec.encode_frame({"positions": np.ones((2, 3))}),
                            "base_version": 1})
        patched = http.patch(f"/api/v1/rooms/{ROOM}/frames/1", content=body,
                             headers={**MSGPACK, "X-Trajhub-Author": "ann"})
        assert patched.status_code == 200, patched.text
        undone = http.post(f"/api/v1/rooms/{ROOM}/undo", headers={"X-Trajhub-Author": "ann"})
        assert undone.status_code == 200, undone.text
    first, second = watcher.next("frames_changed"), watcher.next("frames_changed")
    assert (first["seq"], first["kind"], first["change"], first["indices"]) == (
        2, "frames_patched", "replace", [1])
    assert (second["seq"], second["kind"], second["change"], second["indices"]) == (
        3, "undo", "replace", [1])


BAD_EVENTS: list[tuple[str, Any, int]] = [
    ("lock_acquire", None, 422),
    ("lock_acquire", "collab-live", 422),
    ("lock_acquire", {"target": "room"}, 422),
    ("lock_acquire", {"room": "a..b"}, 422),
    ("lock_acquire", {"room": ROOM, "ttl_ms": 99}, 422),
    ("lock_acquire", {"room": ROOM, "ttl_ms": -5}, 422),
    ("lock_acquire", {"room": ROOM, "ttl_ms": 600_001}, 422),
    ("lock_acquire", {"room": ROOM, "ttl_ms": "1000"}, 422),
    ("lock_acquire", {"room": ROOM, "target": {"frames": [True]}}, 422),
    ("lock_acquire", {"room": ROOM, "target": {"frames": "1"}}, 422),
    ("lock_acquire", {"room": ROOM, "target": "frames"}, 422),
    ("lock_acquire", {"room": ROOM, "target": {"start": 3, "stop": 3}}, 422),
    ("lock_acquire", {"room": ROOM, "target": {"frames": [4]}}, 404),
    ("lock_acquire", {"room": ROOM, "author": "mallory"}, 422),
    ("lock_acquire", {"room": ROOM, "message": ["no"]}, 422),
    ("lock_renew", {"room": ROOM}, 422),
    ("lock_renew", {"room": ROOM, "token": 5}, 422),
    ("lock_renew", {"room": ROOM, "token": "x" * 20}, 404),
    ("lock_renew", {"room": ROOM, "token": "x" * 20, "ttl_ms": 0}, 404),
    ("lock_release", {"room": 5, "token": "x" * 20}, 422),
    ("lock_release", {"room": ROOM, "token": "x" * 20, "fence": 1}, 422),
    ("presenter_release", {"room": "no room"}, 422),
    ("presenter_request", {"room": ROOM, "ttl_ms": 60_001}, 422),
    ("presenter_request", {"room": ROOM, "token": "x" * 20}, 422),
    ("presenter_request", [ROOM], 422),
    ("presenter_renew", {"room": ROOM}, 404),
    ("presenter_release", {"room": ROOM}, 404),
    ("set_room_frame", {"room": ROOM}, 422),
    ("set_room_frame", {"room": ROOM, "frame": -1}, 422),
    ("set_room_frame", {"room": ROOM, "frame": "2"}, 422),
    ("set_room_frame", {"room": ROOM, "frame": 2.0}, 422),
    ("set_room_frame", {"room": ROOM, "frame": 99}, 404),
    ("set_room_frame", {"room": "", "frame": 1}, 422),
]


def test_bad_input_changes_nothing(gateway: GatewayServer, peers: PeerFactory,  # noqa: F811
                                         redis_url: str) -> None:
    new_room(gateway)
    mallory = peers("mallory")
    mallory.join()
    before = redis_snapshot(redis_url)
    for event, data, status in BAD_EVENTS:
        ack = mallory.call(event, data)
        assert ack.get("status") == status, (event, data, ack)
        assert isinstance(ack["error"], str) and ack["error"], (event, data, ack)
    for bad in ({"author": 5}, {"author": ""}, "alice"):
        refused = socketio.Client(reconnection=False)
        reasons: queue.Queue[Any] = queue.Queue()
        refused.on("connect_error", reasons.put)
        with pytest.raises(socketio.exceptions.ConnectionError):
            refused.connect(gateway.url, transports=["websocket"], auth=bad,
                            wait_timeout=WAIT_S)
        assert "author" in str(reasons.get(timeout=WAIT_S))
    assert redis_snapshot(redis_url) == before
    assert mallory.queues["lock_changed"].empty()
    assert mallory.queues["room_frame"].empty()
