"""Socket.IO ``join_room`` with ``"index": true``: the room's index in the ack, as
``GET .../index`` answers it and consistent with the ack's seq, so that applying every
later ``frames_changed`` gives the room's index (no gap), also while others write and
for a room whose stream was snapshotted and trimmed. Real gateway, Redis and Zarr, and
python-socketio clients."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis.asyncio as aioredis
import socketio
from gateway_server import (  # noqa: F401  (fixtures)
    MSGPACK,
    GatewayServer,
    gateway,
    make_frame,
    start_gateway,
)

from trajhub.shared import codec, keys
from trajhub.shared.frames import Frame
from trajhub.shared.history_reader import HistoryReader
from trajhub.shared.history_store import ZarrHistoryStore
from trajhub.snapshotter.history import SnapshotResult, take_snapshot

ROOM = "joiner"
WAIT_S = 10.0
T = TypeVar("T")
INDEX_KEYS = {"room", "seq", "n_frames", "frame_ids", "versions", "hashes"}

pytestmark = pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")


class Socket:
    """A Socket.IO client that keeps every frames_changed it receives (python-socketio's
    AsyncClient needs aiohttp, which the workspace does not install)."""

    def __init__(self, url: str) -> None:
        self.sio = socketio.Client(reconnection=False)
        self.changes: list[dict[str, Any]] = []
        self.sio.on("frames_changed", self.changes.append)
        self.sio.connect(url, transports=["websocket"], wait_timeout=WAIT_S)

    def call(self, event: str, data: Any) -> Any:
        return self.sio.call(event, data, timeout=WAIT_S)

    def wait_for_seq(self, seq: int, joined_at: int = 0) -> None:
        """Until a frames_changed of ``seq`` or later came (none comes when the socket
        joined at ``seq`` or later: its ack holds it)."""
        if joined_at >= seq:
            return
        deadline = time.monotonic() + WAIT_S
        while not any(c["seq"] >= seq for c in list(self.changes)):
            assert time.monotonic() < deadline, f"no frames_changed up to seq {seq}"
            time.sleep(0.01)


@pytest.fixture
def http(gateway: GatewayServer) -> Iterator[httpx.Client]:  # noqa: F811
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        yield client


@pytest.fixture
def sockets(gateway: GatewayServer) -> Iterator[Callable[[], Socket]]:  # noqa: F811
    made: list[Socket] = []

    def new() -> Socket:
        made.append(Socket(gateway.url))
        return made[-1]

    yield new
    for s in made:
        s.sio.disconnect()


def index(http: httpx.Client, room: str = ROOM) -> dict[str, Any]:
    got = http.get(f"/api/v1/rooms/{room}/index")
    assert got.status_code == 200, got.text
    body: dict[str, Any] = got.json()
    return body


def insert(http: httpx.Client, frames: list[Frame], at: int | None = None,
           room: str = ROOM) -> None:
    params = {} if at is None else {"at": at}
    got = http.post(f"/api/v1/rooms/{room}/frames", params=params, headers=MSGPACK,
                    content=codec.frames_to_bytes(frames))
    assert got.status_code == 201, got.text


def edit(http: httpx.Client, step: int) -> None:
    """Insert (at the end or at 0), replace or delete, by ``step``."""
    n = index(http)["n_frames"]
    kind = step % 4 if n >= 2 else 0
    frame = make_frame(2, seed=1000 + step, extras=False)
    if kind in (0, 1):
        insert(http, [frame], at=0 if kind else None)
    elif kind == 2:
        body = codec.frames_to_bytes([frame], indices=[step % n])
        got = http.put(f"/api/v1/rooms/{ROOM}/frames", content=body, headers=MSGPACK)
        assert got.status_code == 200, got.text
    else:
        got = http.delete(f"/api/v1/rooms/{ROOM}/frames", params={"indices": str(step % n)})
        assert got.status_code == 200, got.text


def apply_changes(ack: dict[str, Any], changes: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """The ack's index hashes with every change after the ack's seq applied, in seq
    order; asserts that those seqs follow each other without a gap."""
    hashes = list(ack["index"]["hashes"])
    seq = ack["seq"]
    for change in sorted((c for c in changes if c["seq"] > ack["seq"]), key=lambda c: c["seq"]):
        assert change["seq"] == seq + 1, f"gap after seq {seq}"
        seq = change["seq"]
        if change["change"] == "insert":
            for i, h in zip(change["indices"], change["hashes"], strict=True):
                hashes.insert(i, h)
        elif change["change"] == "replace":
            for i, h in zip(change["indices"], change["hashes"], strict=True):
                hashes[i] = h
        else:
            for i in reversed(change["indices"]):
                del hashes[i]
        assert len(hashes) == change["n_frames"]
    return seq, hashes


def test_old_ack_unchanged_and_index_on_request(
        http: httpx.Client, sockets: Callable[[], Socket]) -> None:
    s = sockets()
    empty = s.call("join_room", {"room": ROOM, "index": True})
    assert empty["index"] == {"room": ROOM, "seq": 0, "n_frames": 0, "frame_ids": [],
                              "versions": [], "hashes": []}
    assert (empty["seq"], empty["n_frames"]) == (0, 0)

    insert(http, [make_frame(3, seed=i) for i in range(3)])
    insert(http, [make_frame(3, seed=9)], at=1)
    plain = s.call("join_room", {"room": ROOM})
    assert "index" not in plain and (plain["seq"], plain["n_frames"]) == (2, 4)
    assert "index" not in s.call("join_room", {"room": ROOM, "index": False})

    ack = s.call("join_room", {"room": ROOM, "index": True})
    assert ack["index"] == index(http)
    assert set(ack["index"]) == INDEX_KEYS
    assert {k: v for k, v in ack.items() if k != "index"} == plain
    assert (ack["seq"], ack["n_frames"]) == (ack["index"]["seq"], ack["index"]["n_frames"])
    assert "error" in s.call("join_room", {"room": "a..b", "index": True})


def test_join_index_then_changes_rebuild_the_room_while_others_write(
        http: httpx.Client, sockets: Callable[[], Socket]) -> None:
    insert(http, [make_frame(2, seed=i, extras=False) for i in range(3)])
    joined: list[tuple[Socket, dict[str, Any]]] = []
    stop = threading.Event()

    def writer() -> None:
        try:
            for step in range(40):
                edit(http, step)
        finally:
            stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while not stop.is_set() and len(joined) < 12:
            s = sockets()
            joined.append((s, s.call("join_room", {"room": ROOM, "index": True})))
    finally:
        thread.join()
    final = index(http)
    assert len({ack["seq"] for _, ack in joined}) > 1  # joins landed between writes
    for s, ack in joined:
        assert ack["seq"] == ack["index"]["seq"]
        s.wait_for_seq(final["seq"], joined_at=ack["seq"])
        assert apply_changes(ack, s.changes) == (final["seq"], final["hashes"])


def test_join_index_of_a_trimmed_room_is_snapshot_plus_tail(
        redis_url: str, tmp_path: Path, http: httpx.Client,
        sockets: Callable[[], Socket]) -> None:
    history = ZarrHistoryStore(tmp_path / "zarr")  # the gateway's storage_url
    insert(http, [make_frame(2, seed=i, extras=False) for i in range(4)])
    for step in range(12):
        edit(http, step)
    done = with_redis(redis_url, lambda r: snapshot_and_trim(r, history))
    assert done.trimmed_seq == done.snapshot_seq == 13
    for step in range(12, 17):  # the tail: in the stream after the snapshot
        edit(http, step)
    assert with_redis(redis_url, stream_seqs) == list(range(14, 19))

    s = sockets()
    ack = s.call("join_room", {"room": ROOM, "index": True})
    assert ack["seq"] == ack["index"]["seq"] == 18
    assert ack["index"] == index(http)
    replayed = with_redis(redis_url, lambda r: HistoryReader(r, history).index_at(ROOM, 18))
    assert ack["index"]["hashes"] == [e.hash for e in replayed]
    assert ack["index"]["frame_ids"] == [e.frame_id for e in replayed]
    assert ack["index"]["versions"] == [e.version for e in replayed]

    edit(http, 17)
    s.wait_for_seq(19)
    assert apply_changes(ack, s.changes) == (19, index(http)["hashes"])


def with_redis(redis_url: str, run: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    """``run(client)`` on its own event loop (the tests talk to the gateway's thread)."""
    async def main() -> T:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await run(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


async def snapshot_and_trim(r: aioredis.Redis, history: ZarrHistoryStore) -> SnapshotResult:
    """Snapshot, archive and trim everything: every consumer group is first moved past
    every event (no storage or snapshotter runs here), so only the snapshot bounds it."""
    stream = keys.events(ROOM)
    for group in await r.xinfo_groups(stream):
        await r.xgroup_setid(stream, group["name"], "$")
    done = await take_snapshot(r, history, ROOM, keep_events=0)
    assert await r.xlen(stream) == 0
    return done


async def stream_seqs(r: aioredis.Redis) -> list[int]:
    entries: Any = await r.xrange(keys.events(ROOM))
    return [int(entry_id.split(b"-")[0]) for entry_id, _ in entries]
