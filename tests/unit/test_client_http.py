"""The client transport's retries and error mapping, over real loopback HTTP.

The real gateway cannot be told to answer 503 or drop a connection on cue, so these
tests talk to a small scripted HTTP server (stdlib, in a thread) that answers from a
list of canned responses and records what it received.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from trajhub.client import (
    BadRequest,
    ConflictError,
    FrameIndexError,
    PayloadTooLarge,
    RoomNotFound,
    ServerError,
    ServerUnavailable,
)
from trajhub.client.http import Transport

DROP = "drop"  # close the connection without answering


@dataclass
class Script:
    answers: list[Any] = field(default_factory=list)  # (status, body, headers) or DROP
    seen: list[dict[str, Any]] = field(default_factory=list)


class Handler(BaseHTTPRequestHandler):
    script: Script

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.script.seen.append({"method": self.command, "path": self.path,
                                 "headers": dict(self.headers), "body": body})
        answer = self.script.answers.pop(0)
        if answer == DROP:
            self.close_connection = True
            return
        status, payload, headers = answer
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _handle

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[tuple[Script, str]]:
    script = Script()
    handler = type("ScriptedHandler", (Handler,), {"script": script})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield script, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def transport(url: str, **kw: Any) -> Transport:
    return Transport(url, author="ada", backoff_s=0.001, **kw)


ROOM = {"room": "r", "n_frames": 2, "seq": 5, "applied_seq": 5}
WRITE = {"room": "r", "seq": 6, "n_frames": 3, "indices": [2], "frame_ids": [9],
         "versions": [1], "hashes": ["0" * 64]}


def test_busy_is_retried_honouring_retry_after(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    busy = (503, {"detail": "staging budget exceeded"}, {"Retry-After": "0"})
    script.answers = [busy, busy, (200, ROOM, {})]
    assert transport(url).room_info("r") == ROOM
    assert len(script.seen) == 3


def test_busy_for_too_long_raises(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    script.answers = [(503, {"detail": "busy"}, {"Retry-After": "0"})] * 3
    with pytest.raises(ServerUnavailable, match="busy"):
        transport(url, busy_retries=2).room_info("r")
    assert len(script.seen) == 3


def test_dropped_post_is_retried_with_the_same_idempotency_key(
        scripted: tuple[Script, str]) -> None:
    script, url = scripted
    script.answers = [DROP, (201, WRITE, {})]
    assert transport(url).post_frames("r", b"\x81\xa6frames\x90", at=2) == WRITE
    first, second = script.seen
    assert first["body"] == second["body"] == b"\x81\xa6frames\x90"
    assert first["path"] == second["path"] == "/api/v1/rooms/r/frames?at=2"
    key = first["headers"]["Idempotency-Key"]
    assert len(key) == 32 and second["headers"]["Idempotency-Key"] == key
    assert first["headers"]["Content-Type"] == "application/msgpack"
    assert first["headers"]["X-Trajhub-Author"] == "ada"


def test_each_write_gets_its_own_key(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    script.answers = [(200, WRITE, {}), (200, WRITE, {})]
    t = transport(url)
    t.put_frames("r", b"\x80")
    t.delete_frames("r", [3, 1])
    put, delete = script.seen
    assert put["headers"]["Idempotency-Key"] != delete["headers"]["Idempotency-Key"]
    assert delete["path"] == "/api/v1/rooms/r/frames?indices=3%2C1"


@pytest.mark.parametrize(("status", "exc"), [
    (400, BadRequest), (404, FrameIndexError), (409, ConflictError), (413, PayloadTooLarge),
    (415, BadRequest), (422, BadRequest), (500, ServerError),
])
def test_error_statuses_map_to_exceptions(scripted: tuple[Script, str], status: int,
                                          exc: type[Exception]) -> None:
    script, url = scripted
    script.answers = [(status, {"detail": f"reason {status}"}, {})]
    with pytest.raises(exc, match=f"reason {status}") as info:
        transport(url).put_frames("r", b"\x80")
    assert info.value.status == status  # type: ignore[attr-defined]
    assert f"HTTP {status}" in str(info.value)


def test_conflict_keeps_the_server_detail(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    script.answers = [(409, {"detail": "frames changed", "conflicts": [{"index": 1}]}, {})]
    with pytest.raises(ConflictError) as info:
        transport(url).put_frames("r", b"\x80")
    assert info.value.detail == "frames changed"


def test_missing_room(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    script.answers = [(404, {"detail": "room 'r' does not exist"}, {})] * 2
    t = transport(url)
    assert t.room_info("r") is None
    with pytest.raises(RoomNotFound, match="does not exist") as info:
        t.request("GET", "/api/v1/rooms/r", not_found=RoomNotFound)
    assert isinstance(info.value, KeyError)
    assert str(info.value).startswith("room 'r' does not exist")
