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

import msgpack
import numpy as np
import pytest

from trajhub.client import (
    BadRequest,
    ConflictError,
    FrameIndexError,
    PayloadTooLarge,
    RoomNotFound,
    ServerError,
    ServerUnavailable,
    TrajhubConnectionError,
    TrajhubError,
    http,
)
from trajhub.client.http import Transport, decode_frames_body
from trajhub.shared.codec import CodecError, encode_frame, frame_to_bytes, packb
from trajhub.shared.frames import Frame, frames_equal

DROP = "drop"  # close the connection without answering
HANG = "hang"  # answer nothing until the test ends


@dataclass
class Script:
    # (status, body, headers), DROP or HANG; a bytes body is sent as msgpack, else JSON
    answers: list[Any] = field(default_factory=list)
    seen: list[dict[str, Any]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)


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
        if answer == HANG:
            self.script.done.wait(30)
            self.close_connection = True
            return
        status, payload, headers = answer
        binary = isinstance(payload, bytes)
        data = payload if binary else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/msgpack" if binary else "application/json")
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
        script.done.set()
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


def test_a_body_in_parts_is_sent_whole_and_again_whole_on_a_retry(
        scripted: tuple[Script, str]) -> None:
    script, url = scripted
    script.answers = [DROP, (201, WRITE, {})]
    parts = [b"\x81\xa6frames\x92", b"\x01" * 300_000, b"\x02"]
    assert transport(url).post_frames("r", parts) == WRITE
    for seen in script.seen:
        assert seen["body"] == b"".join(parts)
        assert seen["headers"]["Content-Length"] == str(300_010)
        assert "Transfer-Encoding" not in seen["headers"]


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


def test_timeouts_are_retried_then_a_connection_error(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    script.answers = [HANG, HANG]
    with pytest.raises(TrajhubConnectionError, match=r"timed out") as info:
        transport(url, timeout=0.05, connect_retries=1).room_info("r")
    assert "GET http://127.0.0.1" in str(info.value) and "after 2 attempts" in str(info.value)
    assert len(script.seen) == 2


# -- the frames answer ----------------------------------------------------------------------

def answer_body(frames: list[Frame], **head: Any) -> bytes:
    """A GET frames answer as the gateway writes it: fields, then the frames last."""
    n = len(frames)
    fields = {"room": "r", "seq": 3, "n_frames": n, "indices": list(range(n)),
              "frame_ids": list(range(n)), "versions": [1] * n, "hashes": ["ab" * 32] * n,
              **head}
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack_map_header(len(fields) + 1)]
    for key, value in fields.items():
        parts += [packer.pack(key), packer.pack(value)]
    parts += [packer.pack("frames"), packer.pack_array_header(n)]
    return b"".join(parts + [frame_to_bytes(f) for f in frames])


def sample_frames(n: int, atoms: int) -> list[Frame]:
    rng = np.random.default_rng(7)
    return [{"numbers": rng.integers(1, 90, atoms, dtype=np.int32),
             "positions": rng.normal(size=(atoms, 3)),
             "cell": np.eye(3), "pbc": np.array([True, False, True]),
             "arrays.f16": rng.normal(size=(atoms, 2)).astype(np.float16),
             "arrays.empty": np.zeros((atoms, 0)),
             "info.label": np.array(f"frame {i} \u00e9"), "info.step": np.array(i),
             "calc.energy": np.array(float(i)), "calc.ok": np.array(i % 2 == 0)}
            for i in range(n)]


@pytest.fixture(params=["in place", "msgpack"])
def decode_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    threshold = 0 if request.param == "in place" else 2**62
    monkeypatch.setattr(http, "IN_PLACE_MIN_FRAME_BYTES", threshold)
    return str(request.param)


@pytest.mark.parametrize("atoms", [0, 1, 40, 70_000])
def test_frames_answer_decodes_the_same_both_ways(decode_path: str, atoms: int) -> None:
    frames = sample_frames(3, atoms)
    body = answer_body(frames)
    answer = decode_frames_body(body)
    assert answer["n_frames"] == 3 and answer["hashes"] == ["ab" * 32] * 3
    assert len(answer["frames"]) == 3
    assert all(frames_equal(a, b) for a, b in zip(answer["frames"], frames, strict=True))
    positions = answer["frames"][-1]["positions"]
    in_body = np.shares_memory(positions, np.frombuffer(body, np.uint8))
    assert in_body == (decode_path == "in place" and atoms > 0)


@pytest.mark.parametrize(("n", "atoms", "copied"), [
    (40, 100, True),  # a run of small frames: copied out of the answer
    (3, 70_000, False),  # large frames: views of the answer
    (1, 1, False),  # a small answer: msgpack's own decoding (read-only arrays)
])
@pytest.mark.parametrize("as_bytearray", [True, False])
def test_frames_say_when_every_array_is_writable(n: int, atoms: int, copied: bool,
                                                 as_bytearray: bool) -> None:
    body = answer_body(sample_frames(n, atoms))
    answer = decode_frames_body(bytearray(body) if as_bytearray else body)
    writable = all(a.flags.writeable for f in answer["frames"] for a in f.values())
    said = isinstance(answer["frames"], http.WritableFrames)
    assert said == (copied or (as_bytearray and atoms > 1))
    assert writable or not said


def test_frames_need_not_be_the_last_field(decode_path: str) -> None:
    frames = sample_frames(2, 3)
    body = packb({"frames": [encode_frame(f) for f in frames], "room": "r"})
    answer = decode_frames_body(body)
    assert answer["room"] == "r"
    assert all(frames_equal(a, b) for a, b in zip(answer["frames"], frames, strict=True))
    in_body = np.shares_memory(answer["frames"][0]["positions"], np.frombuffer(body, np.uint8))
    assert in_body == (decode_path == "in place")


def test_unusual_answers_take_the_general_path(decode_path: str) -> None:
    frames = sample_frames(2, 3)
    # Valid msgpack that the in-place scan hands over to msgpack: a shape as a
    # 16-bit-length array, a shape with a 64-bit integer (both not as packb writes them).
    body = answer_body(frames)
    fix_shape = b"\xa5shape\x92\x03\x03"  # the positions of the last frame, (3, 3)
    at = body.rindex(fix_shape) + len(b"\xa5shape")
    unusual = [
        body[:at] + b"\xdc\x00\x02\x03\x03" + body[at + 3:],
        body[:at] + b"\x92\xcf" + (3).to_bytes(8, "big") + b"\x03" + body[at + 3:],
    ]
    for body in unusual:
        answer = decode_frames_body(body)
        assert answer["room"] == "r"
        assert all(frames_equal(a, b) for a, b in zip(answer["frames"], frames, strict=True))
        assert not np.shares_memory(answer["frames"][0]["positions"],
                                    np.frombuffer(body, np.uint8))


def test_array_fields_in_any_order(decode_path: str) -> None:
    frames = sample_frames(2, 3)
    body = packb({"room": "r", "frames": [
        {k: dict(reversed(encode_frame(f)[k].items())) for k in f} for f in frames]})
    answer = decode_frames_body(body)
    assert all(frames_equal(a, b) for a, b in zip(answer["frames"], frames, strict=True))


def test_malformed_answers_are_codec_errors(decode_path: str) -> None:
    body = answer_body(sample_frames(2, 5))
    bad_dtype = packb({"frames": [{"x": {"dtype": "<q9", "shape": [1], "data": b"1" * 8}}]})
    bad_size = packb({"frames": [{"x": {"dtype": "<f8", "shape": [2], "data": b"1" * 8}}]})
    for bad in (body[:-1], body + b"\x00", b"\x93\x01", packb({"frames": 3}), b"",
                bad_dtype, bad_size):
        with pytest.raises(CodecError):
            decode_frames_body(bad)


def test_unreadable_answer_names_the_url(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    script.answers = [(200, answer_body(sample_frames(1, 2))[:-3], {})]
    with pytest.raises(TrajhubError, match=r"unreadable answer from http://.*indices=0"):
        transport(url).get_frames("r", indices=[0])


def test_get_frames_over_http(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    frames = sample_frames(2, 4)
    script.answers = [(200, answer_body(frames), {})]
    answer = transport(url).get_frames("r", start=0, stop=2, keys=["positions", "cell"])
    assert all(frames_equal(a, b) for a, b in zip(answer["frames"], frames, strict=True))
    assert script.seen[0]["path"] == ("/api/v1/rooms/r/frames?start=0&stop=2"
                                      "&keys=positions%2Ccell")


def test_environment_proxy_is_used(scripted: tuple[Script, str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    script, url = scripted
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", url.removeprefix("http://"))  # scheme optional
    script.answers = [(200, ROOM, {})]
    assert transport("http://trajhub.invalid:8000").room_info("r") == ROOM
    assert script.seen[0]["path"] == "http://trajhub.invalid:8000/api/v1/rooms/r"
