"""Bad input gets a clear 4xx with a reason, and leaves the room as it was."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from gateway_server import (  # noqa: F401  (fixtures)
    MSGPACK,
    GatewayServer,
    gateway,
    make_frame,
    post_frames,
    room_state,
    start_gateway,
)

from trajhub.shared import codec

ROOM = "bad-input"
URL = f"/api/v1/rooms/{ROOM}/frames"


@pytest.fixture
def client(gateway: GatewayServer) -> Iterator[httpx.Client]:  # noqa: F811
    with httpx.Client(base_url=gateway.url, timeout=30) as c:
        assert post_frames(c, ROOM, [make_frame(3, seed=i) for i in range(2)]).status_code == 201
        yield c
        assert room_state(c, ROOM) == (1, 2)  # every refusal left the room alone


def expect(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    for word in words:
        assert word in detail, detail


def raw_array(dtype: str, shape: list[int], data: bytes) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data": data}


def post_raw(client: httpx.Client, message: Any, url: str = URL) -> httpx.Response:
    return client.post(url, content=codec.packb(message), headers=MSGPACK)


def good_frame() -> dict[str, Any]:
    return codec.encode_frame(make_frame(2, seed=7, extras=False))


def test_malformed_msgpack(client: httpx.Client) -> None:
    expect(client.post(URL, content=b"\xc1\x00garbage", headers=MSGPACK), 400,
           "malformed msgpack")
    expect(client.post(URL, content=b"\x92\x01", headers=MSGPACK), 400, "malformed msgpack")
    expect(client.post(URL, content=b"", headers=MSGPACK), 400, "empty")


def test_wrong_structure(client: httpx.Client) -> None:
    expect(post_raw(client, [good_frame()]), 422, "map")
    expect(post_raw(client, {"frame": [good_frame()]}), 422, "frames")
    expect(post_raw(client, {"frames": good_frame()}), 422, "list")
    expect(post_raw(client, {"frames": []}), 422, "empty")
    expect(post_raw(client, {"frames": [good_frame()], "author": 5}), 422, "author")
    expect(post_raw(client, {"frames": [good_frame(), "nope"]}), 422, "frame 1")
    expect(client.post(URL, content=b"{}", headers={"content-type": "application/json"}),
           415, "msgpack")


def test_positions_of_wrong_shape(client: httpx.Client) -> None:
    frame = make_frame(4, seed=1, extras=False)
    frame["positions"] = np.zeros((4, 2))
    expect(post_raw(client, {"frames": [good_frame(), codec.encode_frame(frame)]}), 422,
           "frame 1", "positions", "(N, 3)")


def test_length_mismatch(client: httpx.Client) -> None:
    frame = make_frame(4, seed=1, extras=False)
    frame["numbers"] = frame["numbers"][:3]
    expect(post_raw(client, {"frames": [codec.encode_frame(frame)]}), 422, "frame 0",
           "positions", "3 atoms")
    frame = make_frame(4, seed=1)
    frame["calc.forces"] = np.zeros((5, 3))
    expect(post_raw(client, {"frames": [codec.encode_frame(frame)]}), 422, "calc.forces")


@pytest.mark.parametrize("dtype", ["V8", "O", "<M8[s]", "S4", "f4,f4", "nonsense"])
def test_unsupported_dtype(client: httpx.Client, dtype: str) -> None:
    frame = good_frame()
    frame["arrays.x"] = raw_array(dtype, [2], b"\0" * 16)
    expect(post_raw(client, {"frames": [frame]}), 422, "frame 0", "arrays.x")


def test_array_data_does_not_match_shape(client: httpx.Client) -> None:
    frame = good_frame()
    frame["positions"] = raw_array("<f8", [2, 3], b"\0" * 40)
    expect(post_raw(client, {"frames": [frame]}), 422, "frame 0", "positions")


def test_bad_frame_keys(client: httpx.Client) -> None:
    frame = good_frame()
    frame["energy"] = raw_array("<f8", [], b"\0" * 8)
    expect(post_raw(client, {"frames": [frame]}), 422, "frame 0", "energy")


def test_body_over_the_limit(start_gateway: Callable[..., GatewayServer]) -> None:  # noqa: F811
    server = start_gateway(max_upload_mb=0.05)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert post_frames(client, ROOM, [make_frame(3, seed=1)]).status_code == 201
        big = [make_frame(1000, seed=i) for i in range(2)]  # about 150 kB
        expect(post_frames(client, ROOM, big), 413, "limit")

        def chunks() -> Iterator[bytes]:  # no Content-Length: cut off while streaming
            body = codec.frames_to_bytes(big)
            for i in range(0, len(body), 16384):
                yield body[i:i + 16384]

        expect(client.post(URL, content=chunks(), headers=MSGPACK), 413, "limit")
        assert room_state(client, ROOM) == (1, 1)


def test_staging_budget(start_gateway: Callable[..., GatewayServer]) -> None:  # noqa: F811
    server = start_gateway(staging_budget_mb=0.01)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        r = post_frames(client, ROOM, [make_frame(3, seed=1)])
        expect(r, 503, "staging")
        assert int(r.headers["retry-after"]) > 0
        assert room_state(client, ROOM) is None


@pytest.mark.parametrize("room", ["a..b", "a{b}", "a b", "x" * 300, "-lead", "caf\u00e9"])
def test_bad_room_names(client: httpx.Client, room: str) -> None:
    url = f"/api/v1/rooms/{room}/frames"
    body = codec.frames_to_bytes([make_frame(2, seed=1)], indices=[0])
    for response in (client.post(url, content=body, headers=MSGPACK),
                     client.put(url, content=body, headers=MSGPACK),
                     client.get(url), client.delete(url, params={"indices": "0"}),
                     client.get(f"/api/v1/rooms/{room}")):
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["detail"]
    assert client.get("/api/v1/rooms").json()["rooms"] == [
        {"room": ROOM, "n_frames": 2, "seq": 1}]


@pytest.mark.parametrize("room", ["a/b", "a%2Fb", "..", "%2E%2E"])
def test_slash_in_room_name(client: httpx.Client, room: str) -> None:
    r = post_frames(client, room, [make_frame(2, seed=1)])
    assert 400 <= r.status_code < 500
    assert client.get("/api/v1/rooms").json()["rooms"] == [
        {"room": ROOM, "n_frames": 2, "seq": 1}]


def test_index_out_of_range(client: httpx.Client) -> None:
    expect(client.get(URL, params={"indices": "0,5"}), 404, "5", "2 frames")
    body = codec.frames_to_bytes([make_frame(2, seed=1)], indices=[2])
    expect(client.put(URL, content=body, headers=MSGPACK), 404, "2", "2 frames")
    expect(client.delete(URL, params={"indices": "1,7"}), 404, "7", "2 frames")
    expect(post_frames(client, ROOM, [make_frame(2, seed=1)], at=3), 404, "3")


def test_bad_selections(client: httpx.Client) -> None:
    expect(client.get(URL, params={"step": 0}), 422, "step")
    expect(client.delete(URL, params={"step": 0}), 422, "step")
    expect(client.get(URL, params={"indices": "1,-1"}), 422, "indices")
    expect(client.get(URL, params={"indices": "a"}), 422, "indices")
    expect(client.get(URL, params={"indices": "1", "start": 0}), 422, "not both")
    expect(client.get(URL, params={"start": "x"}), 422, "start")
    expect(client.delete(URL), 422, "indices")
    expect(client.delete(URL, params={"indices": "1,1"}), 422, "must not repeat")
    expect(post_frames(client, ROOM, [make_frame(2, seed=1)], at=-1), 422, "at")


@pytest.mark.parametrize("keys", ["positions,bogus", "", "info.", "arrays.a b", "calc.x/y"])
def test_bad_keys(client: httpx.Client, keys: str) -> None:
    expect(client.get(URL, params={"keys": keys}), 422, "frame key")


def test_bad_replace_bodies(client: httpx.Client) -> None:
    frames = [make_frame(2, seed=1), make_frame(2, seed=2)]
    for extra, word in (({}, "indices"), ({"indices": [0]}, "2 frames"),
                        ({"indices": [0, "1"]}, "indices"),
                        ({"indices": [0, 1], "base_versions": [1]}, "base_versions")):
        body = codec.frames_to_bytes(frames, **extra)
        expect(client.put(URL, content=body, headers=MSGPACK), 422, word)


def test_bad_headers(client: httpx.Client) -> None:
    expect(post_frames(client, ROOM, [make_frame(2, seed=1)],
                       headers={"Idempotency-Key": "bad key!"}), 422, "idempotency_key")
    expect(post_frames(client, ROOM, [make_frame(2, seed=1)],
                       headers={"X-Trajhub-Author": "x" * 300}), 422, "author")


def test_redis_down_gives_503(start_gateway: Callable[..., GatewayServer]) -> None:  # noqa: F811
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    server = start_gateway(redis_url=dead)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        expect(client.get("/readyz"), 503, "Redis")
        expect(client.get("/api/v1/rooms"), 503, "unavailable")
        r = post_frames(client, ROOM, [make_frame(2, seed=1)])
        expect(r, 503, "unavailable")
        assert "retry-after" in r.headers


def test_one_read_is_capped_and_says_how_to_page(gateway: GatewayServer,  # noqa: F811
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from trajhub.gateway import routes

    monkeypatch.setattr(routes, "MAX_FRAMES_PER_READ", 3)
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        assert post_frames(http, "paged", [make_frame(2, seed=i) for i in range(5)]
                           ).status_code == 201
        too_many = http.get("/api/v1/rooms/paged/frames")
        assert too_many.status_code == 422 and "page with start/stop" in too_many.json()["detail"]
        assert http.get("/api/v1/rooms/paged/frames", params={"start": 0, "stop": 3}
                        ).status_code == 200
