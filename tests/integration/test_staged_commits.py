"""Staging frames ahead of their commit (``POST .../blobs``, then ``{"hashes": [...]}``),
and the client's pipelined upload built on it. Real Redis, Zarr, HTTP, in-process control.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_server import (  # noqa: F401  (fixtures)
    MSGPACK,
    GatewayServer,
    frames_body,
    gateway,
    get_frames,
    make_frame,
    room_state,
    start_gateway,
)
from redis import Redis

from trajhub import Room
from trajhub.client import BadRequest, ServerError
from trajhub.client.http import Transport
from trajhub.shared import keys
from trajhub.shared.codec import packb
from trajhub.shared.frames import Frame, frames_equal, validate_frame
from trajhub.shared.hashing import frame_hash

ROOM = "staged"
BIG_ATOMS = 25_000  # ~1 MB per frame with the extras: two frames pass the 1 MiB pack size


@pytest.fixture
def client(gateway: GatewayServer) -> Iterator[httpx.Client]:  # noqa: F811
    with httpx.Client(base_url=gateway.url, timeout=30) as c:
        yield c


def frames_of(n: int, atoms: int = 6, seed: int = 0) -> list[Frame]:
    return [validate_frame(make_frame(atoms, seed=seed + i)) for i in range(n)]


def stage(client: httpx.Client, frames: list[Frame], room: str = ROOM) -> httpx.Response:
    return client.post(f"/api/v1/rooms/{room}/blobs", content=frames_body(frames),
                       headers=MSGPACK)


def commit(client: httpx.Client, method: str, body: dict[str, Any],
           room: str = ROOM) -> httpx.Response:
    return client.request(method, f"/api/v1/rooms/{room}/frames", content=packb(body),
                          headers=MSGPACK)


def assert_room(client: httpx.Client, expected: list[Frame], room: str = ROOM) -> None:
    got = get_frames(client, room)
    assert got["hashes"] == [frame_hash(f) for f in expected]
    for want, have in zip(expected, got["frames"], strict=True):
        assert frames_equal(want, have)


def test_staged_frames_are_committed_by_their_hashes(client: httpx.Client) -> None:
    frames = frames_of(4)
    r = stage(client, frames)
    assert r.status_code == 201, r.text
    answer = r.json()
    assert answer["hashes"] == [frame_hash(f) for f in frames]
    assert answer["n_frames"] == 4 and answer["expires_in_s"] > 0
    assert room_state(client, ROOM) is None, "staging commits nothing"

    r = commit(client, "POST", {"hashes": answer["hashes"][:3]})
    assert r.status_code == 201, r.text
    assert r.json()["indices"] == [0, 1, 2] and r.json()["seq"] == 1
    assert_room(client, frames[:3])

    # A replace by hash, addressed like any replace.
    r = commit(client, "PUT", {"indices": [1], "hashes": [answer["hashes"][3]]})
    assert r.status_code == 200, r.text
    assert r.json()["versions"] == [2]
    assert_room(client, [frames[0], frames[3], frames[2]])


def test_content_the_room_holds_needs_no_staging(client: httpx.Client, redis_url: str) -> None:
    frames = frames_of(2)
    assert stage(client, frames).status_code == 201
    assert commit(client, "POST", {"hashes": [frame_hash(f) for f in frames]}).status_code == 201
    with Redis.from_url(redis_url) as r:  # as if storage had applied and released them
        r.delete(*(keys.blob(ROOM, frame_hash(f)) for f in frames))
    r2 = commit(client, "POST", {"hashes": [frame_hash(frames[1])]})
    assert r2.status_code == 201, r2.text
    assert_room(client, [frames[0], frames[1], frames[1]])


def test_a_commit_of_hashes_never_staged_is_refused_and_stores_nothing(
        client: httpx.Client) -> None:
    staged, never = frames_of(2), frames_of(1, seed=50)
    assert stage(client, staged).status_code == 201
    r = commit(client, "POST", {"hashes": [frame_hash(staged[0]), frame_hash(never[0])]})
    assert r.status_code == 422
    assert frame_hash(never[0]) in r.json()["detail"]
    assert "was not staged or has expired" in r.json()["detail"]
    assert room_state(client, ROOM) is None


@pytest.mark.parametrize(("path", "body", "reason"), [
    ("frames", {"hashes": "abc"}, "'frames' must be a list"),
    ("frames", {"hashes": []}, "'frames' is empty"),
    ("frames", {"hashes": ["0" * 63]}, "hashes[0] is not a content hash"),
    ("frames", {"hashes": ["A" * 64]}, "hashes[0] is not a content hash"),
    ("frames", {"hashes": [7]}, "hashes[0] is not a content hash"),
    ("frames", {"author": "x"}, "no 'frames' list"),
    ("blobs", {"hashes": ["0" * 64]}, "stages frames"),
    ("blobs", {"frames": []}, "'frames' is empty"),
])
def test_bad_staged_commits_are_refused(client: httpx.Client, redis_url: str, path: str,
                                        body: dict[str, Any], reason: str) -> None:
    r = client.post(f"/api/v1/rooms/{ROOM}/{path}", content=packb(body), headers=MSGPACK)
    assert r.status_code == 422, r.text
    assert reason in r.json()["detail"]
    assert room_state(client, ROOM) is None
    with Redis.from_url(redis_url) as redis:
        assert redis.keys(f"{{{ROOM}}}:blob:*") == []


def test_frames_and_hashes_together_are_refused(client: httpx.Client) -> None:
    frames = frames_of(2)
    bodies = (frames_body(frames, hashes=["0" * 64]),  # the scanner's path
              packb({"hashes": ["0" * 64], "frames": [1, 2]}))  # the general one
    for content in bodies:
        r = client.post(f"/api/v1/rooms/{ROOM}/frames", content=content, headers=MSGPACK)
        assert r.status_code == 422 and "not both" in r.json()["detail"]
    assert room_state(client, ROOM) is None


def test_staging_refuses_fields_it_does_not_take(client: httpx.Client, redis_url: str) -> None:
    body = frames_body(frames_of(1), indices=[0])
    r = client.post(f"/api/v1/rooms/{ROOM}/blobs", content=body, headers=MSGPACK)
    assert r.status_code == 422 and "indices" in r.json()["detail"]
    with Redis.from_url(redis_url) as redis:
        assert redis.keys(f"{{{ROOM}}}:blob:*") == []


def test_a_bulk_staging_is_a_pack_and_is_not_written_through(
        client: httpx.Client, tmp_path: Path) -> None:
    frames = frames_of(2, atoms=BIG_ATOMS)
    r = stage(client, frames)
    assert r.status_code == 201, r.text
    assert len(list((tmp_path / "zarr" / ROOM / "_staging").iterdir())) == 1
    stats = client.get("/api/v1/stats").json()["frame_cache"]
    assert stats["write_through"] == 0, "a bulk request's frames stay out of the cache"
    assert commit(client, "POST", {"hashes": r.json()["hashes"]}).status_code == 201
    assert_room(client, frames)  # read from the pack


def test_small_uploads_are_still_written_through(client: httpx.Client) -> None:
    assert stage(client, frames_of(3)).status_code == 201
    assert client.get("/api/v1/stats").json()["frame_cache"]["write_through"] == 3


# -- the client ----------------------------------------------------------------------------
class Recording(Transport):
    """A transport that logs when each stage and commit starts and ends."""

    def __init__(self, url: str, **kw: Any) -> None:
        super().__init__(url, **kw)
        self.log: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()

    def note(self, what: str, when: str, n: int) -> None:
        with self._lock:
            self.log.append((what, when, n))

    def stage_frames(self, room: str, body: Any) -> list[str]:
        self.note("stage", "start", 0)
        hashes = super().stage_frames(room, body)
        time.sleep(0.02)  # so that an overlap would show
        self.note("stage", "end", len(hashes))
        return hashes

    def post_frames(self, room: str, body: Any, **kw: Any) -> dict[str, Any]:
        self.note("commit", "start", 0)
        answer = super().post_frames(room, body, **kw)
        self.note("commit", "end", len(answer["indices"]))
        return answer


def new_room() -> str:
    return f"p-{uuid.uuid4().hex[:10]}"


def test_a_long_extend_stages_ahead_and_commits_in_order(gateway: GatewayServer,  # noqa: F811
                                                         client: httpx.Client) -> None:
    transport = Recording(gateway.url)
    frames = frames_of(20)
    name = new_room()
    with Room(gateway.url, name, transport=transport, chunk_frames=3) as vis:
        vis.extend(frames)
    assert_room(client, frames, name)
    commits = [e for e in transport.log if e[0] == "commit"]
    assert [n for _, when, n in commits if when == "end"] == [3] * 6 + [2]
    # Every chunk was staged, and a later one while an earlier one was not yet
    # committed: the stages ran ahead of the commits.
    assert sum(1 for e in transport.log if e[:2] == ("stage", "end")) == 7
    first_commit_end = transport.log.index(("commit", "end", 3))
    assert sum(1 for e in transport.log[:first_commit_end] if e[:2] == ("stage", "start")) >= 2
    history = Room(gateway.url, name).history()
    assert [e["indices"][0] for e in history] == list(range(0, 20, 3))


def test_a_single_chunk_is_one_request(gateway: GatewayServer) -> None:  # noqa: F811
    transport = Recording(gateway.url)
    with Room(gateway.url, new_room(), transport=transport, chunk_frames=5) as vis:
        vis.extend(frames_of(5))
        vis.append(frames_of(1, seed=9)[0])
    assert [e[0] for e in transport.log] == ["commit", "commit"] * 2


class FailingCommit(Recording):
    def __init__(self, url: str, fail_at: int) -> None:
        super().__init__(url)
        self.fail_at = fail_at
        self.commits = 0

    def post_frames(self, room: str, body: Any, **kw: Any) -> dict[str, Any]:
        self.commits += 1
        if self.commits == self.fail_at:
            raise ServerError("injected")
        return super().post_frames(room, body, **kw)


def test_a_failed_chunk_fails_the_upload_and_nothing_after_it_commits(
        gateway: GatewayServer, client: httpx.Client) -> None:  # noqa: F811
    frames = frames_of(12)
    name = new_room()
    transport = FailingCommit(gateway.url, fail_at=2)
    with Room(gateway.url, name, transport=transport, chunk_frames=3) as vis, \
            pytest.raises(ServerError, match="injected"):
        vis.extend(frames)
    time.sleep(0.2)  # anything still in flight would have committed by now
    assert_room(client, frames[:3], name)


def test_a_staging_that_expired_before_its_commit_is_staged_again(
        gateway: GatewayServer, client: httpx.Client, redis_url: str) -> None:  # noqa: F811
    name = new_room()
    frames = frames_of(6)

    class Expiring(Recording):
        expired = False

        def stage_frames(self, room: str, body: Any) -> list[str]:
            hashes = super().stage_frames(room, body)
            if not self.expired:  # the first chunk's blobs expire before its commit
                Expiring.expired = True
                with Redis.from_url(redis_url) as r:
                    r.delete(*(keys.blob(room, h) for h in hashes))
            return hashes

    transport = Expiring(gateway.url)
    with Room(gateway.url, name, transport=transport, chunk_frames=3) as vis:
        vis.extend(frames)
    assert_room(client, frames, name)
    assert sum(1 for e in transport.log if e[:2] == ("stage", "end")) == 3


def test_an_expired_staging_that_stays_missing_raises(
        gateway: GatewayServer, client: httpx.Client, redis_url: str) -> None:  # noqa: F811
    class Vanishing(Recording):
        def stage_frames(self, room: str, body: Any) -> list[str]:
            hashes = super().stage_frames(room, body)
            with Redis.from_url(redis_url) as r:
                r.delete(*(keys.blob(room, h) for h in hashes))
            return hashes

    name = new_room()
    with Room(gateway.url, name, transport=Vanishing(gateway.url), chunk_frames=3) as vis, \
            pytest.raises(BadRequest, match="was not staged"):
        vis.extend(frames_of(6))
    assert room_state(client, name) is None


def test_a_long_replace_is_pipelined_too(gateway: GatewayServer,  # noqa: F811
                                         client: httpx.Client) -> None:
    name = new_room()
    old, new = frames_of(10), frames_of(10, seed=100)
    with Room(gateway.url, name, chunk_frames=3) as vis:
        vis.extend(old)
        vis.get()  # seen: the replace goes by frame id with base versions
        vis[0:10] = new
    assert_room(client, new, name)


