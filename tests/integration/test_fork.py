"""Forks (``PUT /api/v1/rooms/{new}`` with ``{"base_room", "at_seq"?}``, ``Room.fork``) on a
real gateway, Redis, Zarr store and storage worker: the fork holds the base's frames at
a seq without copying frame data, each room then has its own history, a fork of a fork
reads through both parents, refusals store nothing, retries are idempotent."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import socketio
import zarr
from control_server import serve
from gateway_server import (
    MSGPACK,
    GatewayServer,
    apply_room,  # noqa: F401  (fixture)
    get_frames,
    make_frame,
    post_frames,
    redis_snapshot,
    start_gateway,  # noqa: F401  (fixture)
)

from trajhub.client import ConflictError, Room
from trajhub.gateway import forking
from trajhub.shared import codec, keys
from trajhub.shared.frames import Frame, frames_equal
from trajhub.shared.hashing import frame_hash
from trajhub.shared.zarr_store import open_store

PROJECTION = {"_order", "_frame_id", "_version"}


@pytest.fixture
def server(start_gateway: Callable[..., GatewayServer]) -> GatewayServer:  # noqa: F811
    # No frame cache: every read goes to Zarr (or blobs), through the fork's parents.
    return start_gateway(cache_mb=0)


@pytest.fixture
def http(server: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
def apply(apply_room: Callable[[str], int]) -> Callable[[str], int]:  # noqa: F811
    return apply_room


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def fork(http: httpx.Client, new: str, base: str, at_seq: int | None = None,
         headers: dict[str, str] | None = None) -> httpx.Response:
    body: dict[str, Any] = {"base_room": base}
    if at_seq is not None:
        body["at_seq"] = at_seq
    return http.put(f"/api/v1/rooms/{new}", json=body, headers=headers)


def frames_of(http: httpx.Client, room: str, **params: Any) -> tuple[list[str], list[Frame]]:
    got = get_frames(http, room, **params)
    return got["hashes"], got["frames"]


def assert_frames(http: httpx.Client, room: str, hashes: list[str], frames: list[Frame]
                  ) -> None:
    got_hashes, got = frames_of(http, room)
    assert got_hashes == hashes
    assert [frame_hash(f) for f in got] == hashes
    assert len(got) == len(frames)
    assert all(frames_equal(a, b) for a, b in zip(got, frames, strict=True))


def group(tmp_path: Path, room: str) -> Any:
    return zarr.open_group(str(tmp_path / "zarr" / room), mode="r")


def data_arrays(tmp_path: Path, room: str) -> set[str]:
    return {name for name, _ in group(tmp_path, room).arrays()} - PROJECTION


def test_fork_at_current_seq_copies_nothing(http: httpx.Client, apply: Callable[[str], int],
                                            tmp_path: Path) -> None:
    frames = [make_frame(5, seed) for seed in range(4)]
    ok(post_frames(http, "base", frames), 201)
    apply("base")
    answer = ok(fork(http, "copy", "base"), 201)
    assert (answer["room"], answer["seq"], answer["n_frames"]) == ("copy", 1, 4)
    assert (answer["base_room"], answer["base_seq"]) == ("base", 1)
    base_index = ok(http.get("/api/v1/rooms/base/index"))
    assert answer["hashes"] == base_index["hashes"]
    assert answer["frame_ids"] == base_index["frame_ids"]
    # Before storage applied the fork, its frames are read from the base's group.
    assert_frames(http, "copy", base_index["hashes"], frames)
    assert apply("copy") == 1
    assert_frames(http, "copy", base_index["hashes"], frames)
    g = group(tmp_path, "copy")
    assert g.attrs["parent"] == "base" and g.attrs["parent_slots"] == 4
    assert g.attrs["n_slots"] == 4
    assert data_arrays(tmp_path, "copy") == set()  # no frame data was copied
    history = ok(http.get("/api/v1/rooms/copy/history"))["events"]
    assert [e["kind"] for e in history] == ["room_forked"]


def test_fork_at_past_seq_then_independent_histories(
        http: httpx.Client, apply: Callable[[str], int], tmp_path: Path) -> None:
    frames = [make_frame(3, seed, extras=False) for seed in range(10)]
    ok(post_frames(http, "base", frames[:3]), 201)                       # seq 1
    body = codec.frames_to_bytes([frames[3]], indices=[1])
    ok(http.put("/api/v1/rooms/base/frames", content=body, headers=MSGPACK))  # seq 2
    ok(http.delete("/api/v1/rooms/base/frames", params={"indices": "0"}))    # seq 3
    ok(post_frames(http, "base", [frames[4]], at=0), 201)                # seq 4
    apply("base")
    at2 = ok(http.get("/api/v1/rooms/base/index", params={"at_seq": 2}))
    base_now = ok(http.get("/api/v1/rooms/base/index"))
    answer = ok(fork(http, "past", "base", at_seq=2), 201)
    assert answer["base_seq"] == 2 and answer["hashes"] == at2["hashes"]
    assert answer["frame_ids"] == at2["frame_ids"]
    assert_frames(http, "past", at2["hashes"], [frames[0], frames[3], frames[2]])
    apply("past")

    # Edits in the fork do not touch the base ...
    ok(post_frames(http, "past", [frames[5]]), 201)
    body = codec.frames_to_bytes([frames[6]], indices=[0])
    ok(http.put("/api/v1/rooms/past/frames", content=body, headers=MSGPACK))
    apply("past")
    assert ok(http.get("/api/v1/rooms/base/index")) == base_now
    fork_hashes = [frame_hash(f) for f in (frames[6], frames[3], frames[2], frames[5])]
    assert_frames(http, "past", fork_hashes, [frames[6], frames[3], frames[2], frames[5]])
    # ... and the fork's own slots start after every slot of the base.
    g = group(tmp_path, "past")
    parent_slots = g.attrs["parent_slots"]
    assert parent_slots == open_store(str(tmp_path / "zarr")).n_slots("base")
    assert g.attrs["n_slots"] == parent_slots + 2
    order = g["_order"][:g.attrs["n_frames"]]
    assert min(int(s) for s in order if s >= parent_slots) == parent_slots

    # ... nor edits in the base the fork.
    ok(http.delete("/api/v1/rooms/base/frames", params={"indices": "0,1"}))
    ok(post_frames(http, "base", [frames[7]]), 201)
    apply("base")
    assert_frames(http, "past", fork_hashes, [frames[6], frames[3], frames[2], frames[5]])
    # The same content in the fork reuses its inherited slot (dedup), no new slot.
    ok(post_frames(http, "past", [frames[2]]), 201)
    apply("past")
    assert group(tmp_path, "past").attrs["n_slots"] == parent_slots + 2


def test_fork_of_a_fork_reads_through_two_parents(
        http: httpx.Client, apply: Callable[[str], int], tmp_path: Path) -> None:
    frames = [make_frame(4, seed) for seed in range(6)]
    ok(post_frames(http, "gen0", frames[:2]), 201)
    apply("gen0")
    ok(fork(http, "gen1", "gen0"), 201)
    ok(post_frames(http, "gen1", [frames[2]]), 201)
    apply("gen1")
    ok(fork(http, "gen2", "gen1"), 201)
    gen1 = ok(http.get("/api/v1/rooms/gen1/index"))
    # Unapplied gen2 reads via gen1, which reads slots 0..1 via gen0.
    assert_frames(http, "gen2", gen1["hashes"], frames[:3])
    apply("gen2")
    assert_frames(http, "gen2", gen1["hashes"], frames[:3])
    assert data_arrays(tmp_path, "gen2") == set()
    store = open_store(str(tmp_path / "zarr"))
    slots = [e for e in ok(http.get("/api/v1/rooms/gen2/index"))["hashes"]]
    assert store.read_hashes("gen2", [0, 1, 2]) == slots

    # A patch in gen2 of a frame whose slot lives in gen0 layers over it.
    change = {"positions": np.full((4, 3), 7.0)}
    body = codec.packb({"frame": codec.encode_frame(change), "base_version": 1})
    ok(http.patch("/api/v1/rooms/gen2/frames/0", content=body, headers=MSGPACK))
    ok(post_frames(http, "gen2", [frames[3]]), 201)
    apply("gen2")
    expected = [{**frames[0], **change}, frames[1], frames[2], frames[3]]
    got = get_frames(http, "gen2")["frames"]
    assert all(frames_equal(a, b) for a, b in zip(got, expected, strict=True))
    assert len(got) == 4
    assert_frames(http, "gen0", ok(http.get("/api/v1/rooms/gen0/index"))["hashes"],
                  frames[:2])


def test_refusals_store_nothing(http: httpx.Client, apply: Callable[[str], int],
                                redis_url: str) -> None:
    ok(post_frames(http, "base", [make_frame(2, 1)]), 201)
    ok(post_frames(http, "other", [make_frame(2, 2)]), 201)
    apply("base")
    before = redis_snapshot(redis_url)
    refusals: list[tuple[httpx.Response, int]] = [
        (fork(http, "other", "base"), 409),
        (fork(http, "base", "base"), 409),
        (fork(http, "new", "nope"), 404),
        (fork(http, "new", "nope", at_seq=0), 404),
        (fork(http, "new", "base", at_seq=5), 422),
        (fork(http, "new", "base", at_seq=-1), 422),
        (http.put("/api/v1/rooms/new", json={"base_room": "base", "at_seq": "1"}), 422),
        (http.put("/api/v1/rooms/new", json={"base_room": "base", "at": 1}), 422),
        (http.put("/api/v1/rooms/new", json={"at_seq": 1}), 422),
        (http.put("/api/v1/rooms/new", json={"base_room": 7}), 422),
        (http.put("/api/v1/rooms/new", json=["base"]), 422),
        (http.put("/api/v1/rooms/base", json={}), 409),
        (http.put("/api/v1/rooms/new", content=b"{", headers={"content-type":
                                                               "application/json"}), 400),
        (fork(http, "bad..name", "base"), 422),
        (fork(http, "-bad", "base"), 422),
        (fork(http, "new", "bad name"), 422),
    ]
    for response, status in refusals:
        assert response.status_code == status, (status, response.text)
        assert "detail" in response.json()
    assert "already exists" in refusals[0][0].json()["detail"]
    assert refusals[4][0].json()["head"] == 1
    assert redis_snapshot(redis_url) == before


def test_waits_for_base_storage_else_503(http: httpx.Client, apply: Callable[[str], int],
                                         redis_url: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ok(post_frames(http, "base", [make_frame(2, 1)]), 201)
    monkeypatch.setattr(forking, "APPLIED_WAIT_S", 0.05)
    before = redis_snapshot(redis_url)
    response = fork(http, "new", "base")
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"]
    assert redis_snapshot(redis_url) == before
    apply("base")
    ok(fork(http, "new", "base"), 201)


def test_idempotent_retry_and_undo(http: httpx.Client, apply: Callable[[str], int],
                                   redis_url: str) -> None:
    ok(post_frames(http, "base", [make_frame(2, seed) for seed in range(3)]), 201)
    apply("base")
    key = {"Idempotency-Key": "fork-key-0001", "X-Trajhub-Author": "ann"}
    first = ok(fork(http, "new", "base", headers=key), 201)
    ok(post_frames(http, "base", [make_frame(2, 9)]), 201)  # the base moves on
    apply("base")
    assert ok(fork(http, "new", "base", headers=key), 201) == first
    assert fork(http, "new", "base",
                headers={**key, "Idempotency-Key": "fork-key-0002"}).status_code == 409
    r = redis.Redis.from_url(redis_url)
    try:
        assert r.xlen(keys.events("new")) == 1
        assert b"new" in r.smembers(keys.ROOMS)
    finally:
        r.close()
    # Undo by the fork's author deletes the forked frames, like any insert.
    ann = {"X-Trajhub-Author": "ann"}
    undone = ok(http.post("/api/v1/rooms/new/undo", json={}, headers=ann))
    assert (undone["kind"], undone["reverts"], undone["n_frames"]) == ("undo", 1, 0)
    ok(http.post("/api/v1/rooms/new/redo", json={}, headers=ann))
    assert ok(http.get("/api/v1/rooms/new/index"))["hashes"] == first["hashes"]
    apply("new")
    assert len(get_frames(http, "new")["frames"]) == 3


def test_room_fork_round_trip(server: GatewayServer, apply: Callable[[str], int]) -> None:
    base = Room(server.url, "client-base", author="pytest")
    frames = [make_frame(3, seed, extras=False) for seed in range(3)]
    base.extend(frames)
    base.append(make_frame(3, 10, extras=False))
    apply("client-base")
    now = base.fork("client-now")
    past = base.fork("client-past", at_seq=1)
    assert now.room == "client-now"
    assert [frame_hash(f) for f in now.get()] == [frame_hash(f) for f in base.get()]
    assert len(past) == 3
    assert all(frames_equal(a, b) for a, b in zip(past.get(), frames, strict=True))
    del past[0]
    assert len(past) == 2 and len(base) == 4
    with pytest.raises(ConflictError):
        base.fork("client-now")
    base.close()


def test_fork_through_control_over_http(redis_url: str, apply: Callable[[str], int],
                                        start_gateway: Callable[..., GatewayServer]  # noqa: F811
                                        ) -> None:
    with serve(redis_url) as control_url:
        server = start_gateway(control_url=control_url, cache_mb=0)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            frames = [make_frame(2, seed) for seed in range(2)]
            ok(post_frames(http, "base", frames), 201)
            apply("base")
            answer = ok(fork(http, "new", "base", headers={"Idempotency-Key": "http-fork-01"}),
                        201)
            assert ok(fork(http, "new", "base", headers={"Idempotency-Key": "http-fork-01"}),
                      201) == answer
            assert fork(http, "new", "base").status_code == 409
            assert_frames(http, "new", answer["hashes"], frames)
            server.stop()


def test_a_new_room_joined_by_a_viewer_starts_from_the_default_room(
        start_gateway: Callable[..., GatewayServer],  # noqa: F811
        apply: Callable[[str], int], tmp_path: Path) -> None:
    server = start_gateway(cache_mb=0, default_room="default")
    frames = [make_frame(4, seed) for seed in range(3)]
    with httpx.Client(base_url=server.url, timeout=30) as http:
        ok(post_frames(http, "default", frames), 201)
        apply("default")
        viewer = socketio.Client()
        viewer.connect(server.url, transports=["websocket"], wait_timeout=10)
        try:
            fresh = viewer.call("join_room", {"room": "fresh"}, timeout=10)
            again = viewer.call("join_room", {"room": "fresh"}, timeout=10)
            itself = viewer.call("join_room", {"room": "default"}, timeout=10)
        finally:
            viewer.disconnect()
        assert (fresh["n_frames"], fresh["seq"]) == (3, 1)
        assert (again["n_frames"], again["seq"]) == (3, 1)  # started once
        assert itself["seq"] == 1
        assert_frames(http, "fresh", ok(http.get("/api/v1/rooms/default/index"))["hashes"],
                      frames)
        history = ok(http.get("/api/v1/rooms/fresh/history"))["events"]
        assert [(e["kind"], e["author"]) for e in history] == [("room_forked", "trajhub")]
    assert data_arrays(tmp_path, "default")  # the default room's data, not a copy


def test_an_empty_room_is_created_listed_and_then_written(
        http: httpx.Client, apply: Callable[[str], int]) -> None:
    created = ok(http.put("/api/v1/rooms/fresh", headers={"X-Trajhub-Author": "ann"}), 201)
    assert created == {"room": "fresh", "seq": 1, "n_frames": 0}
    listed = ok(http.get("/api/v1/rooms"))["rooms"]
    assert {"room": "fresh", "n_frames": 0, "seq": 1} in listed
    assert ok(http.get("/api/v1/rooms/fresh"))["n_frames"] == 0
    again = http.put("/api/v1/rooms/fresh", json={})
    assert again.status_code == 409 and "already exists" in again.json()["detail"]
    # creating is no one's edit to undo
    assert http.post("/api/v1/rooms/fresh/undo", json={},
                     headers={"X-Trajhub-Author": "ann"}).status_code == 404

    ok(post_frames(http, "fresh", [make_frame(2, 1)]), 201)
    assert apply("fresh") == 2
    assert len(get_frames(http, "fresh")["frames"]) == 1
    history = ok(http.get("/api/v1/rooms/fresh/history"))["events"]
    assert [(e["seq"], e["kind"], e["author"]) for e in history][:1] == [
        (1, "room_created", "ann")]
    past = ok(http.get("/api/v1/rooms/fresh/index", params={"at_seq": 1}))
    assert (past["seq"], past["n_frames"]) == (1, 0)
