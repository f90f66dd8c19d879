"""Collaboration over HTTP on a real gateway and Redis: locks (and commits refused or
accepted under them), frame-id addressing, PATCH, undo/redo, history, step and presenter."""

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
    post_frames,
    redis_snapshot,
    start_gateway,
)

from trajhub.shared import codec
from trajhub.shared.frames import Frame, validate_frame
from trajhub.shared.hashing import frame_hash

ROOM = "collab-http"
BASE = f"/api/v1/rooms/{ROOM}"
N_ATOMS = 3


@pytest.fixture
def http(gateway: GatewayServer) -> Iterator[httpx.Client]:  # noqa: F811
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        yield client


@pytest.fixture
def frames(http: httpx.Client) -> list[Frame]:
    """A room of 3 frames (ids 0..2, version 1)."""
    out = [validate_frame(make_frame(N_ATOMS, seed=i)) for i in range(3)]
    assert post_frames(http, ROOM, out).status_code == 201
    return out


def put_frames(http: httpx.Client, frames: list[Frame], headers: dict[str, str] | None = None,
               **fields: Any) -> httpx.Response:
    return http.put(f"{BASE}/frames", content=codec.frames_to_bytes(frames, **fields),
                    headers={**MSGPACK, **(headers or {})})


def as_alice(**extra: str) -> dict[str, str]:
    return {"X-Trajhub-Author": "alice", **extra}


def lock_headers(lock: dict[str, Any]) -> dict[str, str]:
    return {"X-Trajhub-Lock": lock["token"], "X-Trajhub-Fence": str(lock["fence"])}


def expect(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    for word in words:
        assert word in body["detail"], body["detail"]
    return body


def test_locks_refuse_other_writers_and_admit_the_holder(
        http: httpx.Client, frames: list[Frame], redis_url: str) -> None:
    lock = expect(http.post(f"{BASE}/locks", headers=as_alice(), json={
        "target": {"frames": [0, 1]}, "ttl_ms": 60_000, "message": "fixing bonds"}), 201)
    assert lock["status"] == "ok" and lock["fence"] == 1
    assert lock["target"] == {"frame_ids": [0, 1], "indices": [0, 1]}
    [holder] = http.get(f"{BASE}/locks").json()["locks"]
    assert holder["author"] == "alice" and holder["message"] == "fixing bonds"
    assert "token" not in holder and holder["target"]["frame_ids"] == [0, 1]

    new = validate_frame(make_frame(N_ATOMS, seed=9))
    before = redis_snapshot(redis_url)
    refused = expect(put_frames(http, [new], {"X-Trajhub-Author": "bob"}, indices=[1]), 423,
                     "alice")
    assert refused["holder"]["author"] == "alice" and "token" not in refused["holder"]
    expect(http.delete(f"{BASE}/frames", params={"indices": "0"}), 423, "alice")
    wrong_fence = {**lock_headers(lock), "X-Trajhub-Fence": "7"}
    expect(put_frames(http, [new], wrong_fence, indices=[1]), 423)
    expect(put_frames(http, [new], {"X-Trajhub-Lock": lock["token"]}, indices=[1]), 422,
           "X-Trajhub-Fence")
    expect(put_frames(http, [new], {**lock_headers(lock), "X-Trajhub-Fence": "x"},
                      indices=[1]), 422, "integer")
    assert redis_snapshot(redis_url) == before

    patch_body = {"frame": codec.encode_frame({"positions": np.zeros((N_ATOMS, 3))}),
                  "base_version": 1}
    expect(patch(http, 0, patch_body), 423, "alice")
    assert redis_snapshot(redis_url) == before

    # A frame lock does not block inserts; the holder writes with the lock's headers.
    assert post_frames(http, ROOM, [new]).status_code == 201
    done = put_frames(http, [new], as_alice(**lock_headers(lock)), indices=[1])
    assert done.status_code == 200, done.text
    assert get_frames(http, ROOM, indices="1")["hashes"] == [frame_hash(new)]

    expect(patch(http, 0, patch_body, lock_headers(lock)), 200)
    renewed = expect(http.put(f"{BASE}/locks/{lock['token']}", json={"ttl_ms": 120_000}), 200)
    assert renewed["fence"] == 1 and renewed["expires_at"] > lock["expires_at"]
    assert expect(http.delete(f"{BASE}/locks/{lock['token']}"), 200) == {
        "status": "ok", "fence": 1}
    expect(http.delete(f"{BASE}/locks/{lock['token']}"), 404)
    expect(http.put(f"{BASE}/locks/{lock['token']}", json={}), 404)
    assert http.get(f"{BASE}/locks").json() == {"room": ROOM, "locks": []}


def test_room_lock_blocks_inserts(http: httpx.Client, frames: list[Frame]) -> None:
    lock = expect(http.post(f"{BASE}/locks", json={"target": "room"}), 201)
    assert lock["target"] == {"room": True}
    other = expect(http.post(f"{BASE}/locks", json={"target": {"frames": [2]}}), 423)
    assert other["holder"]["author"] == "anonymous"
    new = make_frame(N_ATOMS, seed=5)
    expect(post_frames(http, ROOM, [new]), 423)
    assert post_frames(http, ROOM, [new], headers=lock_headers(lock)).status_code == 201
    undo = http.post(f"{BASE}/undo", headers=lock_headers(lock))
    assert undo.status_code == 200, undo.text


def test_edits_by_frame_id(http: httpx.Client, frames: list[Frame]) -> None:
    assert post_frames(http, ROOM, [make_frame(N_ATOMS, seed=7)], at=0).status_code == 201
    new = validate_frame(make_frame(N_ATOMS, seed=8))
    answer = put_frames(http, [new], frame_ids=[1], base_versions=[1])
    assert answer.status_code == 200, answer.text
    assert answer.json()["indices"] == [2] and answer.json()["frame_ids"] == [1]
    expect(put_frames(http, [new], frame_ids=[1], indices=[1]), 422, "exactly one")
    expect(http.request("DELETE", f"{BASE}/frames", params={"indices": "0"},
                        json={"frame_ids": [1]}), 422, "not both")
    deleted = http.request("DELETE", f"{BASE}/frames", json={"frame_ids": [1, 0]})
    assert deleted.status_code == 200, deleted.text
    assert sorted(deleted.json()["indices"]) == [1, 2]
    assert get_frames(http, ROOM)["frame_ids"] == [3, 2]


def patch(http: httpx.Client, index: int, message: dict[str, Any],
          headers: dict[str, str] | None = None) -> httpx.Response:
    return http.patch(f"{BASE}/frames/{index}", content=codec.packb(message),
                      headers={**MSGPACK, **(headers or {})})


def test_patch_merges_keys_and_checks_the_base_version(
        http: httpx.Client, frames: list[Frame], redis_url: str) -> None:
    moved = np.full((N_ATOMS, 3), 2.5, dtype=np.float32)
    body = {"frame": codec.encode_frame({"positions": moved})}
    answer = expect(patch(http, 1, body, {"If-Match": '"1"', "X-Trajhub-Author": "ann"}), 200)
    assert answer["indices"] == [1] and answer["frame_ids"] == [1]
    assert answer["versions"] == [2] and answer["keys"] == ["positions"]
    [got] = get_frames(http, ROOM, indices="1")["frames"]
    assert np.array_equal(got["positions"], moved)
    for key in ("numbers", "info.name", "calc.forces", "cell"):
        assert np.array_equal(got[key], frames[1][key]), key
    assert answer["hashes"] == [frame_hash({**frames[1], "positions": moved})]

    before = redis_snapshot(redis_url)
    stale = expect(patch(http, 1, body, {"If-Match": '"1"'}), 409, "version 2")
    assert stale["conflicts"] == [{"index": 1, "frame_id": 1, "expected": 1, "actual": 2,
                                   "hash": answer["hashes"][0]}]
    expect(patch(http, 1, body), 428, "If-Match")
    bad_key = {"frame": codec.encode_frame({"positions": moved}) | {
        "extra.thing": codec.encode_array(np.zeros(3))}, "base_version": 2}
    expect(patch(http, 1, bad_key), 422, "extra.thing")
    wrong_shape = {"frame": codec.encode_frame({"calc.forces": np.zeros((N_ATOMS + 1, 3))}),
                   "base_version": 2}
    expect(patch(http, 1, wrong_shape), 422, "calc.forces")
    expect(patch(http, 1, {"frame": {}, "base_version": 2}), 422, "non-empty")
    expect(patch(http, 1, body, {"If-Match": "2"}), 422, "If-Match")
    expect(patch(http, 1, {**body, "base_version": 1}, {"If-Match": '"2"'}), 422, "disagree")
    expect(patch(http, 9, {**body, "base_version": 1}), 404, "out of range")
    expect(patch(http, 0, {**body, "base_version": 1, "frame_id": 42}), 404, "42")
    expect(patch(http, 0, {**body, "base_version": 1, "colour": 1}), 422, "colour")
    assert redis_snapshot(redis_url) == before

    # By frame id, with the base version in the body: the frame moved to index 2.
    assert post_frames(http, ROOM, [make_frame(N_ATOMS, seed=4)], at=0).status_code == 201
    energy = {"frame": codec.encode_frame({"calc.energy": np.array(-7.0)}), "frame_id": 1,
              "base_version": 2}
    by_id = expect(patch(http, 0, energy), 200)
    assert by_id["indices"] == [2] and by_id["versions"] == [3]
    [got] = get_frames(http, ROOM, indices="2")["frames"]
    assert float(got["calc.energy"]) == -7.0 and np.array_equal(got["positions"], moved)


def test_undo_redo_and_history(http: httpx.Client, frames: list[Frame],
                               redis_url: str) -> None:
    new = validate_frame(make_frame(N_ATOMS, seed=11))
    assert put_frames(http, [new], as_alice(), indices=[0]).status_code == 200
    undo = expect(http.post(f"{BASE}/undo", headers=as_alice()), 200)
    assert (undo["kind"], undo["change"], undo["reverts"]) == ("undo", "replace", 2)
    assert undo["indices"] == [0] and undo["frame_ids"] == [0] and undo["n_frames"] == 3
    assert get_frames(http, ROOM, indices="0")["hashes"] == [frame_hash(frames[0])]
    redo = expect(http.post(f"{BASE}/redo", json={"author": "alice"}), 200)
    assert (redo["kind"], redo["reverts"]) == ("redo", 3)
    assert get_frames(http, ROOM, indices="0")["hashes"] == [frame_hash(new)]

    before = redis_snapshot(redis_url)
    expect(http.post(f"{BASE}/undo", headers={"X-Trajhub-Author": "bob"}), 404)
    expect(http.post(f"{BASE}/redo", headers=as_alice()), 404)
    assert redis_snapshot(redis_url) == before

    other = validate_frame(make_frame(N_ATOMS, seed=12))
    assert put_frames(http, [other], {"X-Trajhub-Author": "bob"}, indices=[0]).status_code == 200
    refused = expect(http.post(f"{BASE}/undo", headers=as_alice()), 409, "bob")
    assert refused["later"] == {"seq": 5, "kind": "frames_replaced", "author": "bob",
                                "frame_id": 0}
    assert refused["conflicts"][0]["frame_id"] == 0

    page = expect(http.get(f"{BASE}/history", params={"limit": 2}), 200)
    assert [e["seq"] for e in page["events"]] == [1, 2] and page["next"] == 2
    first = page["events"][0]
    assert (first["kind"], first["change"], first["indices"]) == (
        "frames_inserted", "insert", [0, 1, 2])
    rest = expect(http.get(f"{BASE}/history", params={"since": 2}), 200)
    assert [(e["seq"], e["kind"], e["author"]) for e in rest["events"]] == [
        (3, "undo", "alice"), (4, "redo", "alice"), (5, "frames_replaced", "bob")]
    assert rest["events"][0]["reverts"] == 2 and rest["next"] is None
    assert set(first) == {"seq", "kind", "change", "author", "time", "edit_id", "indices",
                          "frame_ids", "versions", "base_versions", "keys", "reverts"}
    expect(http.get("/api/v1/rooms/nowhere/history"), 404)


def test_step_and_presenter(http: httpx.Client, frames: list[Frame]) -> None:
    assert http.get(f"{BASE}/step").json() == {
        "room": ROOM, "frame": None, "by": None, "step_seq": 0, "presenter": None}
    free = expect(http.put(f"{BASE}/step", json={"frame": 1}, headers=as_alice()), 200)
    assert free == {"status": "ok", "frame": 1, "step_seq": 1}
    token = expect(http.post(f"{BASE}/presenter", headers=as_alice()), 200)["token"]
    refused = expect(http.put(f"{BASE}/step", json={"frame": 2, "author": "bob"}), 423)
    assert refused["holder"]["author"] == "alice"
    expect(http.post(f"{BASE}/presenter", json={"author": "bob"}), 423, "alice")
    step = expect(http.put(f"{BASE}/step", json={"frame": 2, "token": token},
                           headers=as_alice()), 200)
    assert step["step_seq"] == 2
    expect(http.put(f"{BASE}/step", json={"frame": 3, "token": token}), 404, "out of range")
    state = http.get(f"{BASE}/step").json()
    assert (state["frame"], state["by"], state["presenter"]["author"]) == (2, "alice", "alice")
    renewed = expect(http.post(f"{BASE}/presenter", json={"token": token}, headers=as_alice()),
                     200)
    assert renewed["token"] == token
    assert expect(http.delete(f"{BASE}/presenter/{token}"), 200) == {"status": "ok"}
    expect(http.delete(f"{BASE}/presenter/{token}"), 404)
    assert http.get(f"{BASE}/step").json()["presenter"] is None


BAD_LOCKS: list[tuple[Any, int, str]] = [
    ({"ttl_ms": 5}, 422, "ttl_ms"),
    ({"ttl_ms": -1}, 422, "ttl_ms"),
    ({"ttl_ms": 10**9}, 422, "ttl_ms"),
    ({"ttl_ms": "1000"}, 422, "ttl_ms"),
    ({"ttl_ms": True}, 422, "ttl_ms"),
    ({"target": {"frames": []}}, 422, "frames"),
    ({"target": {"frames": [True]}}, 422, "frames"),
    ({"target": {"frames": [-1]}}, 422, "frames"),
    ({"target": {"start": 2, "stop": 1}}, 422, "empty range"),
    ({"target": {"start": 1}}, 422, "stop"),
    ({"target": {"room": True, "frames": [1]}}, 422, "target"),
    ({"target": "everything"}, 422, "everything"),
    ({"target": 5}, 422, "target"),
    ({"target": {"frames": [7]}}, 404, "out of range"),
    ({"target": {"frame_ids": [99]}}, 404, "99"),
    ({"message": "x" * 501}, 422, "message"),
    ({"author": 5}, 422, "author"),
    ({"owner": "me"}, 422, "owner"),
    ([1, 2], 422, "object"),
]


def test_bad_input_changes_nothing(http: httpx.Client, frames: list[Frame],
                                   redis_url: str) -> None:
    token = expect(http.post(f"{BASE}/presenter", json={"ttl_ms": 60_000}), 200)["token"]
    before = redis_snapshot(redis_url)
    for body, status, word in BAD_LOCKS:
        expect(http.post(f"{BASE}/locks", json=body), status, word)
    expect(http.post(f"{BASE}/locks", content=b"{nope", headers={
        "content-type": "application/json"}), 400, "JSON")
    expect(http.post(f"{BASE}/locks", content=b"\x80", headers=MSGPACK), 415, "json")
    expect(http.post("/api/v1/rooms/a..b/locks", json={}), 422, "..")
    expect(http.get("/api/v1/rooms/a..b/locks"), 422)
    expect(http.put(f"{BASE}/locks/short", json={}), 422, "token")
    expect(http.put(f"{BASE}/locks/{'x' * 20}", json={"ttl_ms": 0}), 422, "ttl_ms")
    expect(http.put(f"{BASE}/locks/{'x' * 20}", json={}), 404, "no live lock")
    expect(http.delete(f"{BASE}/locks/{'x' * 20}"), 404)
    for params in ({"limit": 0}, {"limit": 5000}, {"since": -1}, {"since": "a"}):
        expect(http.get(f"{BASE}/history", params=params), 422)
    for body in ({}, {"frame": -1}, {"frame": "1"}, {"frame": 1.5}, {"frame": 1, "x": 1},
                 {"frame": 1, "token": "!"}):
        expect(http.put(f"{BASE}/step", json=body, headers={"X-Trajhub-Author": "bob"}), 422)
    expect(http.put(f"{BASE}/step", content=b""), 400, "empty")
    expect(http.post(f"{BASE}/presenter", json={"ttl_ms": 10}), 422, "ttl_ms")
    expect(http.post(f"{BASE}/presenter", json={"token": 5}), 422, "token")
    expect(http.delete(f"{BASE}/presenter/{'y' * 20}"), 404)
    expect(http.post(f"{BASE}/undo", json={"everything": True}), 422, "everything")
    expect(http.post(f"{BASE}/undo", headers={"X-Trajhub-Fence": "1"}), 422, "X-Trajhub-Lock")
    expect(http.post(f"{BASE}/undo", headers={"X-Trajhub-Lock": "bad token!",
                                              "X-Trajhub-Fence": "1"}), 422, "lock_token")
    expect(http.patch(f"{BASE}/frames/0", content=b"\xc1", headers=MSGPACK), 400)
    expect(http.patch(f"{BASE}/frames/0", json={"frame": {}}), 415)
    expect(http.patch(f"{BASE}/frames/0", content=codec.packb({"frame": {
        "positions": {"dtype": "<f8", "shape": [3, 3], "data": b"123"}}, "base_version": 1}),
        headers=MSGPACK), 422, "positions")
    assert redis_snapshot(redis_url) == before
    assert http.delete(f"{BASE}/presenter/{token}").status_code == 200


def test_a_retried_lock_request_gets_the_same_lock(http: httpx.Client,
                                                   frames: list[Frame]) -> None:
    headers = as_alice(**{"Idempotency-Key": "lock-once-123"})
    first = expect(http.post(f"{BASE}/locks", headers=headers, json={"target": "room"}), 201)
    again = expect(http.post(f"{BASE}/locks", headers=headers, json={"target": "room"}), 201)
    assert again["token"] == first["token"] and again["fence"] == first["fence"]
    other = http.post(f"{BASE}/locks", headers=as_alice(**{"Idempotency-Key": "lock-two-123"}),
                      json={"target": "room"})
    assert expect(other, 423, "alice")["holder"]["fence"] == first["fence"]
