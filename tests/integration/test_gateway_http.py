"""The gateway's HTTP API against real Redis, Zarr and in-process control."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from gateway_server import (  # noqa: F401  (fixtures)
    MSGPACK,
    GatewayServer,
    gateway,
    get_frames,
    make_frame,
    post_frames,
    room_state,
    start_gateway,
)
from redis import Redis

from trajhub.shared import codec, keys
from trajhub.shared.frames import Frame, frames_equal, validate_frame
from trajhub.shared.hashing import frame_hash
from trajhub.shared.zarr_store import open_store

ROOM = "water-1"


@pytest.fixture
def client(gateway: GatewayServer) -> Iterator[httpx.Client]:  # noqa: F811
    with httpx.Client(base_url=gateway.url, timeout=30) as c:
        yield c


def canon(frames: list[Frame]) -> list[Frame]:
    return [validate_frame(f) for f in frames]


def assert_room_is(client: httpx.Client, room: str, expected: list[Frame]) -> dict[str, Any]:
    got = get_frames(client, room)
    assert got["n_frames"] == len(expected) == len(got["frames"])
    assert got["indices"] == list(range(len(expected)))
    assert got["hashes"] == [frame_hash(f) for f in expected]
    for want, have in zip(expected, got["frames"], strict=True):
        assert frames_equal(want, have)
    return got


def test_health(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text


def test_edits_behave_like_a_list(client: httpx.Client) -> None:
    frames = canon([make_frame(4 + i % 3, seed=i) for i in range(12)])
    model: list[Frame] = []

    r = post_frames(client, ROOM, frames[:5])
    assert r.status_code == 201, r.text
    model += frames[:5]
    answer = r.json()
    assert answer["room"] == ROOM and answer["seq"] == 1 and answer["n_frames"] == 5
    assert answer["indices"] == [0, 1, 2, 3, 4]
    assert answer["hashes"] == [frame_hash(f) for f in frames[:5]]
    assert answer["versions"] == [1] * 5 and len(set(answer["frame_ids"])) == 5

    r = post_frames(client, ROOM, frames[5:7], at=0)
    assert r.status_code == 201, r.text
    model[0:0] = frames[5:7]
    assert r.json()["indices"] == [0, 1] and r.json()["n_frames"] == 7

    r = post_frames(client, ROOM, frames[7:8], at=3)
    assert r.status_code == 201, r.text
    model.insert(3, frames[7])

    body = codec.frames_to_bytes(frames[8:10], indices=[1, 6])
    r = client.put(f"/api/v1/rooms/{ROOM}/frames", content=body, headers=MSGPACK)
    assert r.status_code == 200, r.text
    model[1], model[6] = frames[8], frames[9]
    assert r.json()["indices"] == [1, 6] and r.json()["versions"] == [2, 2]

    r = client.delete(f"/api/v1/rooms/{ROOM}/frames", params={"indices": "7,0"})
    assert r.status_code == 200, r.text
    del model[7], model[0]
    assert r.json() == {"room": ROOM, "seq": 5, "n_frames": len(model), "indices": [0, 7]}

    r = client.delete(f"/api/v1/rooms/{ROOM}/frames", params={"start": -3, "step": 2})
    assert r.status_code == 200, r.text
    del model[-3::2]
    assert r.json()["n_frames"] == len(model)

    assert_room_is(client, ROOM, model)
    assert room_state(client, ROOM) == (6, len(model))


@pytest.mark.parametrize("params", [
    {}, {"start": 1}, {"stop": -1}, {"start": -4, "stop": -1}, {"step": 2},
    {"start": 8, "stop": 1, "step": -3}, {"step": -1}, {"start": 100}, {"stop": -100},
    {"start": -100, "stop": 100, "step": 3},
])
def test_slices_like_python(client: httpx.Client, params: dict[str, int]) -> None:
    frames = canon([make_frame(3, seed=i, extras=False) for i in range(10)])
    assert post_frames(client, ROOM, frames).status_code == 201
    got = get_frames(client, ROOM, **params)
    want = list(range(10))[slice(params.get("start"), params.get("stop"), params.get("step"))]
    assert got["indices"] == want
    assert got["hashes"] == [frame_hash(frames[i]) for i in want]
    assert all(frames_equal(frames[i], f) for i, f in zip(want, got["frames"], strict=True))


def test_indices_with_repeats(client: httpx.Client) -> None:
    frames = canon([make_frame(3, seed=i) for i in range(5)])
    assert post_frames(client, ROOM, frames).status_code == 201
    got = get_frames(client, ROOM, indices="3,1,3,0")
    assert got["indices"] == [3, 1, 3, 0]
    assert got["seq"] == 1 and got["n_frames"] == 5
    for i, f in zip([3, 1, 3, 0], got["frames"], strict=True):
        assert frames_equal(frames[i], f)


def test_keys_selection(client: httpx.Client) -> None:
    frames = canon([make_frame(4, seed=i) for i in range(3)])
    assert post_frames(client, ROOM, frames).status_code == 201
    got = get_frames(client, ROOM, keys="positions,calc.energy,info.missing")
    for want, have in zip(frames, got["frames"], strict=True):
        assert set(have) == {"positions", "calc.energy"}
        assert frames_equal({k: want[k] for k in have}, have)


def test_exact_dtype_round_trip(client: httpx.Client) -> None:
    frame = make_frame(5, seed=3)
    frame["arrays.c64"] = (np.arange(5) * (1 + 2j)).astype(np.complex64)
    frame["info.big_endian"] = np.arange(4, dtype=">i8")
    frame["info.half"] = np.array([1.5, -2.25], dtype=np.float16)
    assert post_frames(client, ROOM, [frame]).status_code == 201
    [got] = get_frames(client, ROOM)["frames"]
    assert got["positions"].dtype == np.float32 and got["numbers"].dtype == np.int32
    assert got["calc.energy"].shape == () and got["calc.energy"].dtype == np.float64
    assert got["info.name"].dtype.kind == "U" and str(got["info.name"]) == "frame-3"
    assert got["info.tags"].tolist() == ["a", "bb", "c3"]
    assert got["calc.forces"].shape == (5, 3)
    assert got["info.big_endian"].dtype == np.dtype("<i8")
    assert frames_equal(validate_frame(frame), got)


def test_room_list_and_info(client: httpx.Client) -> None:
    assert client.get("/api/v1/rooms").json() == {"rooms": []}
    for room, n in (("b-room", 2), ("a-room", 3)):
        assert post_frames(client, room, [make_frame(2, seed=i) for i in range(n)]
                           ).status_code == 201
    assert client.get("/api/v1/rooms").json() == {"rooms": [
        {"room": "a-room", "n_frames": 3, "seq": 1},
        {"room": "b-room", "n_frames": 2, "seq": 1}]}
    info = client.get("/api/v1/rooms/a-room").json()
    assert info == {"room": "a-room", "n_frames": 3, "seq": 1, "applied_seq": 0}
    missing = client.get("/api/v1/rooms/nowhere")
    assert missing.status_code == 404 and "nowhere" in missing.json()["detail"]


def test_unknown_and_empty_rooms(client: httpx.Client) -> None:
    for params in ({}, {"indices": "0"}, {"start": 0}):
        r = client.get("/api/v1/rooms/nowhere/frames", params=params)
        assert r.status_code == 404 and "does not exist" in r.json()["detail"]
    assert post_frames(client, ROOM, [make_frame(2, seed=1)]).status_code == 201
    assert client.delete(f"/api/v1/rooms/{ROOM}/frames", params={"start": 0}).status_code == 200
    got = get_frames(client, ROOM)
    assert got["frames"] == [] and got["n_frames"] == 0 and got["seq"] == 2
    r = client.delete(f"/api/v1/rooms/{ROOM}/frames", params={"start": 0})
    assert r.status_code == 200 and r.json()["indices"] == [] and r.json()["seq"] == 2


def test_idempotent_retry(client: httpx.Client) -> None:
    frames = [make_frame(3, seed=i) for i in range(4)]
    headers = {"Idempotency-Key": "upload-0001-abcdef", "X-Trajhub-Author": "alice"}
    first = post_frames(client, ROOM, frames, headers=headers)
    again = post_frames(client, ROOM, frames, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert room_state(client, ROOM) == (1, 4)
    other = post_frames(client, ROOM, frames, headers={"Idempotency-Key": "upload-0002-abcdef"})
    assert other.json()["indices"] == [4, 5, 6, 7]


def test_conflict_on_stale_base_version(client: httpx.Client) -> None:
    assert post_frames(client, ROOM, [make_frame(3, seed=i) for i in range(2)]
                       ).status_code == 201
    body = codec.frames_to_bytes([make_frame(3, seed=9)], indices=[1], base_versions=[1])
    url = f"/api/v1/rooms/{ROOM}/frames"
    assert client.put(url, content=body, headers=MSGPACK).status_code == 200
    stale = client.put(url, content=body, headers=MSGPACK)
    assert stale.status_code == 409
    [conflict] = stale.json()["conflicts"]
    assert conflict["index"] == 1 and conflict["expected"] == 1 and conflict["actual"] == 2
    r = client.request("DELETE", url, params={"indices": "1"}, json={"base_versions": [1]})
    assert r.status_code == 409
    assert room_state(client, ROOM) == (2, 2)
    r = client.request("DELETE", url, params={"indices": "1"},
                       content=codec.packb({"base_versions": [2]}), headers=MSGPACK)
    assert r.status_code == 200 and r.json()["n_frames"] == 1


def test_x_msgpack_content_type(client: httpx.Client) -> None:
    r = client.post(f"/api/v1/rooms/{ROOM}/frames",
                    content=codec.frames_to_bytes([make_frame(2, seed=1)], author="bob"),
                    headers={"content-type": "application/x-msgpack"})
    assert r.status_code == 201, r.text


async def apply_storage(redis_url: str, storage_url: str, room: str) -> None:
    from trajhub.storage.worker import StorageWorker

    worker = StorageWorker(redis_url, open_store(storage_url), "test-storage")
    try:
        assert await worker.apply_room(room) > 0
    finally:
        await worker.aclose()


def test_reads_from_zarr_after_storage_applies(gateway: GatewayServer,  # noqa: F811
                                               client: httpx.Client, redis_url: str) -> None:
    frames = canon([make_frame(3 + i % 4, seed=i) for i in range(10)])
    model = frames[:6]
    assert post_frames(client, ROOM, frames[:6]).status_code == 201
    body = codec.frames_to_bytes([frames[6]], indices=[2])
    assert client.put(f"/api/v1/rooms/{ROOM}/frames", content=body,
                      headers=MSGPACK).status_code == 200
    model[2] = frames[6]

    asyncio.run(apply_storage(redis_url, gateway.settings.storage_url, ROOM))
    redis = Redis.from_url(redis_url)
    try:
        # No blobs left, so every frame below comes from Zarr.
        assert list(redis.scan_iter(match=keys.blob_prefix(ROOM) + "*")) == []
        assert client.get(f"/api/v1/rooms/{ROOM}").json()["applied_seq"] == 2
        assert_room_is(client, ROOM, model)
        got = get_frames(client, ROOM, indices="5,2,5", keys="positions,info.name")
        for i, have in zip([5, 2, 5], got["frames"], strict=True):
            assert set(have) == {"positions", "info.name"}
            assert frames_equal({k: model[i][k] for k in have}, have)

        # New frames are blobs again: one read mixes Zarr and blobs.
        assert post_frames(client, ROOM, frames[7:10], at=1).status_code == 201
        model[1:1] = frames[7:10]
        assert_room_is(client, ROOM, model)

        # A reader that saw `applied` before storage moved it finds the blobs gone
        # and reads those slots from Zarr.
        redis.hset(keys.applied(ROOM), "slots", 0)
        assert_room_is(client, ROOM, model)
    finally:
        redis.close()


def test_home_page_lists_rooms(gateway: GatewayServer) -> None:  # noqa: F811
    client = httpx.Client(base_url=gateway.url)
    empty = client.get("/")
    assert empty.status_code == 200 and "No rooms yet" in empty.text
    frame = {"numbers": np.array([1]), "positions": np.zeros((1, 3))}
    posted = client.post("/api/v1/rooms/home-room/frames", content=codec.frames_to_bytes([frame]),
                         headers={"Content-Type": "application/msgpack"})
    assert posted.status_code == 201
    page = client.get("/")
    assert "home-room" in page.text and "trajhub is running" in page.text
