"""Trajectory-file upload (``POST .../upload``) on a real gateway and Redis: the frames
ASE reads from the file, progress over Socket.IO, refusals that store nothing, and a
lock refusal between two chunks that answers how many frames were stored."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ase.io
import httpx
import numpy as np
import pytest
import socketio
from gateway_server import (  # noqa: F401  (fixtures)
    GatewayServer,
    gateway,
    get_frames,
    make_frame,
    post_frames,
    redis_snapshot,
    room_state,
    start_gateway,
)

from trajhub.gateway import upload_routes

ROOM = "upload-room"
BASE = f"/api/v1/rooms/{ROOM}"
WAIT_S = 10.0
OCTETS = {"content-type": "application/octet-stream"}


class Listener:
    """A Socket.IO client in the room, queueing its ``upload_progress`` messages."""

    def __init__(self, url: str) -> None:
        self.sio = socketio.Client(reconnection=False)
        self.progress: queue.Queue[dict[str, Any]] = queue.Queue()
        self.sio.on("upload_progress", self.progress.put)
        self.sio.connect(url, transports=["websocket"], wait_timeout=WAIT_S)
        ack = self.sio.call("join_room", {"room": ROOM}, timeout=WAIT_S)
        assert "error" not in ack, ack

    def until_finished(self, upload_id: str) -> list[dict[str, Any]]:
        """This upload's messages up to its "done" or "error"."""
        out: list[dict[str, Any]] = []
        while not out or out[-1]["phase"] not in ("done", "error"):
            message = self.progress.get(timeout=WAIT_S)
            if message["upload_id"] == upload_id:
                out.append(message)
        return out


@pytest.fixture
def http(gateway: GatewayServer) -> Iterator[httpx.Client]:  # noqa: F811
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        yield client


@pytest.fixture
def listener(gateway: GatewayServer) -> Iterator[Listener]:  # noqa: F811
    peer = Listener(gateway.url)
    yield peer
    peer.sio.disconnect()


def upload(http: httpx.Client, content: bytes, headers: dict[str, str] | None = None,
           **params: Any) -> httpx.Response:
    return http.post(f"{BASE}/upload", content=content, params=params,
                     headers={**OCTETS, **(headers or {})})


def expect(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    for word in words:
        assert word in body["detail"], body["detail"]
    return body


def test_upload_s22_stores_what_ase_reads(http: httpx.Client, listener: Listener,
                                          s22_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upload_routes, "CHUNK_FRAMES", 5)  # 22 frames: 5 chunks
    images = ase.io.read(s22_path, ":")
    answer = expect(upload(http, s22_path.read_bytes(), filename="s22.xyz",
                           upload_id="s22-up", headers={"Idempotency-Key": "s22-upload-1"}),
                    201)
    assert answer["room"] == ROOM and answer["upload_id"] == "s22-up"
    assert (answer["n_frames"], answer["first_index"], answer["room_frames"]) == (22, 0, 22)
    assert answer["seq"] == 5 and answer["format"] == "extxyz"

    got = get_frames(http, ROOM)
    assert got["n_frames"] == len(images) == 22
    for atoms, frame in zip(images, got["frames"], strict=True):
        np.testing.assert_array_equal(frame["numbers"], atoms.numbers)
        np.testing.assert_array_equal(frame["positions"], atoms.positions)
        assert str(frame["info.name"]) == atoms.info["name"]

    messages = listener.until_finished("s22-up")
    assert messages[0]["phase"] == "parsing"
    assert messages[0]["total"] == s22_path.stat().st_size
    storing = [(m["done"], m["total"]) for m in messages if m["phase"] == "storing"]
    assert storing == [(0, 22), (5, 22), (10, 22), (15, 22), (20, 22), (22, 22)]
    assert messages[-1] == {"room": ROOM, "upload_id": "s22-up", "phase": "done",
                            "done": 22, "total": 22}

    # A retry with the same Idempotency-Key changes nothing and answers the same.
    again = expect(upload(http, s22_path.read_bytes(), filename="s22.xyz",
                          upload_id="s22-up", headers={"Idempotency-Key": "s22-upload-1"}),
                   201)
    assert again == answer
    assert room_state(http, ROOM) == (5, 22)


def test_insert_at_and_generated_upload_id(http: httpx.Client, s22_path: Path) -> None:
    assert post_frames(http, ROOM, [make_frame(2, seed=i) for i in range(2)]).status_code == 201
    answer = expect(upload(http, s22_path.read_bytes(), filename="dimers.extxyz", at=1), 201)
    assert answer["first_index"] == 1 and answer["room_frames"] == 24
    assert len(answer["upload_id"]) == 32
    got = get_frames(http, ROOM, start=1, stop=2)
    np.testing.assert_array_equal(got["frames"][0]["numbers"],
                                  ase.io.read(s22_path, 0).numbers)


@pytest.mark.parametrize(("content", "params", "words"), [
    (b"not a trajectory\n", {"filename": "md.xyz"}, ("cannot read", "extxyz")),
    (b"8\n", {"filename": "md.xyz"}, ("cannot read",)),
    (b"", {"filename": "md.xyz"}, ("empty",)),
    (b"1\n\nH 0 0 0\n", {"filename": "md.nosuchformat"}, ("unknown file format",)),
    (b"1\n\nH 0 0 0\n", {"filename": "README"}, ("format",)),
    (b"1\n\nH 0 0 0\n", {}, ("filename",)),
    (b"1\n\nH 0 0 0\n", {"filename": "md.xyz", "format": "nope"}, ("unknown file format",)),
])
def test_unreadable_files_store_nothing(http: httpx.Client, listener: Listener,
                                        redis_url: str, content: bytes,
                                        params: dict[str, str], words: tuple[str, ...]) -> None:
    before = redis_snapshot(redis_url)
    expect(upload(http, content, **params), 422, *words)
    assert redis_snapshot(redis_url) == before
    assert room_state(http, ROOM) is None


def test_parse_error_reports_progress_error(http: httpx.Client, listener: Listener) -> None:
    body = expect(upload(http, b"garbage", filename="md.xyz", upload_id="bad-1"), 422)
    assert body["upload_id"] == "bad-1"
    messages = listener.until_finished("bad-1")
    assert [m["phase"] for m in messages] == ["parsing", "error"]
    assert "cannot read" in messages[-1]["message"]


def test_multipart_is_refused(http: httpx.Client, s22_path: Path) -> None:
    response = http.post(f"{BASE}/upload", files={"file": ("s22.xyz", s22_path.read_bytes())})
    expect(response, 415, "multipart")


def test_file_over_the_upload_limit(start_gateway: Any, redis_url: str,  # noqa: F811
                                    s22_path: Path) -> None:
    server = start_gateway(max_upload_mb=0.001)
    before = redis_snapshot(redis_url)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        expect(upload(client, s22_path.read_bytes(), filename="s22.xyz"), 413, "limit")
    assert redis_snapshot(redis_url) == before


def test_room_locked_by_someone_else(http: httpx.Client, listener: Listener,
                                     redis_url: str, s22_path: Path) -> None:
    assert post_frames(http, ROOM, [make_frame(2, seed=0)]).status_code == 201
    lock = expect(http.post(f"{BASE}/locks", json={"target": "room"},
                            headers={"X-Trajhub-Author": "alice"}), 201)
    before = redis_snapshot(redis_url)
    refused = expect(upload(http, s22_path.read_bytes(), filename="s22.xyz", upload_id="u-423",
                            headers={"X-Trajhub-Author": "bob"}), 423)
    assert refused["stored"] == 0 and refused["holder"]["author"] == "alice"
    assert redis_snapshot(redis_url) == before
    assert listener.until_finished("u-423")[-1]["phase"] == "error"

    mine = {"X-Trajhub-Author": "alice", "X-Trajhub-Lock": lock["token"],
            "X-Trajhub-Fence": str(lock["fence"])}
    answer = expect(upload(http, s22_path.read_bytes(), mine, filename="s22.xyz"), 201)
    assert answer["room_frames"] == 23


def test_lock_taken_between_chunks(gateway: GatewayServer,  # noqa: F811
                                   http: httpx.Client, listener: Listener, s22_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone locks the room while chunk 3 is on its way: chunks 1-2 stay stored and the
    answer says so."""
    monkeypatch.setattr(upload_routes, "CHUNK_FRAMES", 5)
    real = upload_routes.stage_and_commit
    calls = 0

    async def lock_before_third(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as other:
                taken = await other.post(f"{BASE}/locks", json={"target": "room"},
                                         headers={"X-Trajhub-Author": "carol"})
                assert taken.status_code == 201, taken.text
        return await real(*args, **kwargs)

    monkeypatch.setattr(upload_routes, "stage_and_commit", lock_before_third)
    refused = expect(upload(http, s22_path.read_bytes(), filename="s22.xyz",
                            upload_id="u-mid"), 423)
    assert refused["stored"] == 10 and refused["upload_id"] == "u-mid"
    assert room_state(http, ROOM) == (2, 10)
    messages = listener.until_finished("u-mid")
    assert (messages[-1]["phase"], messages[-1]["done"], messages[-1]["total"]) == (
        "error", 10, 22)
