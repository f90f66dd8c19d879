"""Uploads through a real gateway stage frame_to_bytes of each validated frame, whether
the client sent canonical frames (staged as received) or not (re-encoded)."""

from __future__ import annotations

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
    start_gateway,
)
from redis import Redis

from trajhub.shared import codec, keys
from trajhub.shared.frames import Frame, frames_equal, validate_frame
from trajhub.shared.hashing import frame_hash
from trajhub.shared.staging import StagingPacks, resolve
from trajhub.shared.zarr_store import open_zarr_store

ROOM = "ingest"
URL = f"/api/v1/rooms/{ROOM}/frames"


@pytest.fixture
def client(gateway: GatewayServer) -> Iterator[httpx.Client]:  # noqa: F811
    with httpx.Client(base_url=gateway.url, timeout=60) as c:
        yield c


def wire(frame: Frame, *, big_endian: bool = False, reverse: bool = False) -> dict[str, Any]:
    """A frame's wire map, optionally with big-endian data and keys in reverse order."""
    out = {}
    for key in sorted(frame, reverse=reverse):
        arr = np.asarray(frame[key])
        if big_endian and arr.dtype.byteorder in "<=":
            arr = arr.astype(arr.dtype.newbyteorder(">"))
        out[key] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    return out


def client_body(frames: list[Frame]) -> bytes:
    """What trajhub.client sends: each frame packed by frame_to_bytes, then the envelope."""
    return codec.packb({"frames": [codec.unpackb(codec.frame_to_bytes(f)) for f in frames]})


def assert_staged(gateway: GatewayServer, answer: dict[str, Any],  # noqa: F811
                  frames: list[Frame]) -> None:
    valid = [validate_frame(f) for f in frames]
    assert answer["hashes"] == [frame_hash(v) for v in valid]
    packs = StagingPacks(open_zarr_store(gateway.settings.storage_url))
    redis = Redis.from_url(gateway.settings.redis_url)
    try:
        values = redis.mget([keys.blob(ROOM, h) for h in answer["hashes"]])
        # A bulk request is staged in a pack: its keys hold markers to follow.
        assert resolve(packs, ROOM, values) == [codec.frame_to_bytes(v) for v in valid]
    finally:
        redis.close()


def test_canonical_and_other_frames_stage_the_same_bytes(
        gateway: GatewayServer, client: httpx.Client) -> None:  # noqa: F811
    frames = [make_frame(5, seed=i) for i in range(6)]
    body = codec.packb({"frames": [
        codec.unpackb(codec.frame_to_bytes(frames[0])),
        codec.unpackb(codec.frame_to_bytes(frames[1])),
        wire(frames[2], big_endian=True),
        wire(frames[3], reverse=True),
        {k: {**v, "dtype": v["dtype"].lstrip("<")} for k, v in wire(frames[4]).items()},
        codec.unpackb(codec.frame_to_bytes(frames[5])),
    ]})
    response = client.post(URL, content=body, headers=MSGPACK)
    assert response.status_code == 201, response.text
    assert_staged(gateway, response.json(), frames)
    got = get_frames(client, ROOM)["frames"]
    assert all(frames_equal(g, validate_frame(f)) for g, f in zip(got, frames, strict=True))


def test_a_large_upload_read_in_many_chunks(gateway: GatewayServer,  # noqa: F811
                                            client: httpx.Client) -> None:
    frames = [make_frame(3000, seed=i) for i in range(12)]
    body = client_body(frames)
    assert len(body) > 2**20
    response = client.post(URL, content=body, headers=MSGPACK)
    assert response.status_code == 201, response.text
    assert_staged(gateway, response.json(), frames)


def test_a_chunked_upload_without_content_length(gateway: GatewayServer,  # noqa: F811
                                                 client: httpx.Client) -> None:
    frames = [make_frame(400, seed=i) for i in range(5)]
    body = client_body(frames)

    def pieces() -> Iterator[bytes]:
        for at in range(0, len(body), 7000):
            yield body[at:at + 7000]

    response = client.post(URL, content=pieces(), headers=MSGPACK)
    assert "content-length" not in response.request.headers
    assert response.status_code == 201, response.text
    assert_staged(gateway, response.json(), frames)


def test_a_refused_frame_stages_nothing(gateway: GatewayServer,  # noqa: F811
                                        client: httpx.Client) -> None:
    frames = [make_frame(4, seed=i) for i in range(3)]
    bad = dict(frames[2], positions=np.zeros((4, 2)))
    response = client.post(URL, content=client_body([*frames[:2], bad]), headers=MSGPACK)
    assert response.status_code == 422 and "frame 2" in response.json()["detail"]
    redis = Redis.from_url(gateway.settings.redis_url)
    try:
        assert not list(redis.scan_iter(keys.blob_prefix(ROOM) + "*"))
    finally:
        redis.close()
