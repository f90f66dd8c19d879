"""``GET .../frames`` answered before FastAPI's routing (``routes.fast_frame_reads``)
gives what the declared FastAPI route gives, byte for byte, errors included."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from gateway_server import (  # noqa: F401  (fixtures)
    GatewayServer,
    gateway,
    make_frame,
    post_frames,
    start_gateway,
)

from trajhub.client.http import decode_frames_body
from trajhub.shared.frames import frames_equal


@pytest.fixture
def client(gateway: GatewayServer) -> Iterator[httpx.Client]:  # noqa: F811
    with httpx.Client(base_url=gateway.url, timeout=30) as c:
        yield c


QUERIES = ["", "indices=1", "indices=2,0,2", "start=1", "start=-2&stop=5", "step=-1",
           "start=0&stop=3&step=2", "indices=1&keys=positions,numbers", "keys=cell",
           # errors
           "indices=9", "indices=-1", "step=0", "indices=1&start=0", "keys=..bad",
           "start=x", "start=", "indices=", "start=1&start=2"]


def test_fast_path_answers_like_the_fastapi_route(client: httpx.Client) -> None:
    frames = [make_frame(5 + i, seed=i) for i in range(4)]
    post_frames(client, "fast", frames)
    for room in ("fast", "nope", "bad..name"):
        for query in QUERIES:
            fast = client.get(f"/api/v1/rooms/{room}/frames?{query}")
            # An unknown parameter: the fast path declines, FastAPI ignores it.
            slow = client.get(f"/api/v1/rooms/{room}/frames?{query}&other=1")
            assert (fast.status_code, fast.content) == (slow.status_code, slow.content), \
                (room, query)
            for header in ("content-type", "content-length"):
                assert fast.headers.get(header) == slow.headers.get(header)
    answer = decode_frames_body(client.get("/api/v1/rooms/fast/frames").content)
    assert all(frames_equal(a, b) for a, b in zip(answer["frames"], frames, strict=True))
    assert client.head("/api/v1/rooms/fast/frames").status_code == 405
