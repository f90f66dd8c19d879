"""The client's collaboration plumbing over real loopback HTTP, against the scripted
server of test_client_http (canned answers, records what it received): error mapping
of 423/409, lock-wait retries with one Idempotency-Key, lock headers, a lost lock, the
request shapes of base versions, patch and history; and ``SeenVersions``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import ase
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import wait_until
from tests.unit.test_client_http import WRITE, Handler, Script, transport
from trajhub.client import (
    ConflictError,
    LockedError,
    NothingToUndo,
    Room,
)
from trajhub.client.versions import SeenVersions
from trajhub.shared.codec import decode_frame, unpackb

HOLDER = {"author": "zoe", "fence": 3, "expires_at": 1, "message": "relaxing",
          "target": {"room": True}}
Answer = tuple[int, dict[str, Any], dict[str, str]]
LOCKED: Answer = (423, {"detail": "the room is locked until 1 ms", "holder": HOLDER}, {})
TOKEN = "tok_" + "a" * 20
ACQUIRED: Answer = (201, {"status": "ok", "token": TOKEN, "fence": 7, "expires_at": 10**13,
                  "target": {"room": True}}, {})


class PatchingHandler(Handler):
    do_PATCH = Handler._handle


@pytest.fixture
def scripted() -> Iterator[tuple[Script, str]]:
    script = Script()
    handler = type("ScriptedHandler", (PatchingHandler,), {"script": script})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield script, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        script.done.set()
        server.shutdown()
        server.server_close()


def room(url: str, **kw: Any) -> Room:
    return Room(url, "r", transport=transport(url), overlap=False, **kw)


def tiny(ident: int) -> ase.Atoms:
    return ase.Atoms("H", positions=[[float(ident), 0.0, 0.0]])


# -- error mapping ------------------------------------------------------------------------------

def test_locked_names_the_holder(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    script.answers = [LOCKED]
    with pytest.raises(LockedError, match=r"held by zoe \(relaxing\)") as info:
        transport(url).put_frames("r", b"\x80")
    assert info.value.status == 423 and info.value.holder == HOLDER
    assert info.value.detail == "the room is locked until 1 ms"


def test_conflict_carries_the_conflicts_and_the_later_edit(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    conflicts = [{"index": 1, "frame_id": 4, "expected": 1, "actual": 2, "hash": "0" * 64}]
    later = {"seq": 9, "kind": "frames_replaced", "author": "bob", "frame_id": 4}
    script.answers = [(409, {"detail": "frames changed", "conflicts": conflicts,
                             "later": later}, {})]
    with pytest.raises(ConflictError, match=r"seq 9 .* by bob on frame id 4") as info:
        transport(url).undo("r")
    assert info.value.conflicts == conflicts and info.value.later == later
    assert info.value.detail == "frames changed"


def test_nothing_to_undo_is_a_lookup_error(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    script.answers = [(404, {"detail": "nothing to undo"}, {})]
    with pytest.raises(LookupError, match="nothing to undo") as info:
        room(url).undo()
    assert isinstance(info.value, NothingToUndo)
    assert script.seen[0]["path"] == "/api/v1/rooms/r/undo"


# -- waiting for locks --------------------------------------------------------------------------

def test_a_refused_insert_is_retried_with_the_same_key(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    script.answers = [LOCKED, LOCKED, (201, WRITE, {})]
    room(url, lock_wait=30).append(tiny(1))
    assert len(script.seen) == 3
    assert len({s["headers"]["Idempotency-Key"] for s in script.seen}) == 1
    assert len({s["body"] for s in script.seen}) == 1


def test_lock_wait_runs_out(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    script.answers = [LOCKED]
    with pytest.raises(LockedError, match="zoe") as info:
        room(url, lock_wait=0).extend([tiny(1)])
    assert info.value.holder == HOLDER and len(script.seen) == 1


def test_writes_inside_a_lock_present_it(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    expired: Answer = (423, {"detail": "the presented lock (fence 7) has expired",
                             "holder": None}, {})
    script.answers = [ACQUIRED, (200, WRITE, {}), expired, (200, {"status": "ok"}, {})]
    vis = room(url, lock_wait=30)
    with vis.lock(ttl=600, message="mine") as lock:  # renews only after 200 s
        assert (lock.token, lock.fence, lock.expires_at) == (TOKEN, 7, 10**13)
        vis[0] = tiny(1)
        with pytest.raises(LockedError, match="has expired"):  # ours: not retried
            vis[0] = tiny(2)
    acquire, put, refused, release = script.seen
    assert acquire["path"] == "/api/v1/rooms/r/locks"
    assert acquire["headers"]["Content-Type"] == "application/json"
    assert json.loads(acquire["body"]) == {"target": "room", "ttl_ms": 600_000,
                                           "message": "mine"}
    for write in (put, refused):
        assert write["headers"]["X-Trajhub-Lock"] == TOKEN
        assert write["headers"]["X-Trajhub-Fence"] == "7"
    assert (release["method"], release["path"]) == ("DELETE", f"/api/v1/rooms/r/locks/{TOKEN}")
    assert "X-Trajhub-Lock" not in release["headers"]


def test_a_lost_lock_fails_the_next_write(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    gone: Answer = (404, {"detail": "no live lock with this token"}, {})
    script.answers = [ACQUIRED, gone, gone]
    vis = room(url)
    with vis.lock(ttl=0.3) as lock:
        wait_until(lambda: not lock.held, timeout=10, what="the renewal to fail")
        with pytest.raises(LockedError, match="lost: no live lock"):
            vis.append(tiny(1))
    methods = [s["method"] for s in script.seen]
    assert methods == ["POST", "PUT", "DELETE"]  # the write was never sent
    assert not any(t.name.startswith("trajhub-lock") for t in threading.enumerate())


# -- request shapes -----------------------------------------------------------------------------

def test_edits_of_seen_frames_go_by_id_with_base_versions(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    script.answers = [(200, {**WRITE, "indices": [2, 3], "frame_ids": [7, 8],
                             "versions": [5, 6]}, {}),
                      (200, {**WRITE, "indices": [4], "frame_ids": [20], "versions": [1]}, {}),
                      (200, {"room": "r", "seq": 9, "n_frames": 3, "indices": [2]}, {})]
    vis = room(url)
    vis.seen.record([2, 3], [7, 8], [4, 5])
    vis[[2, 3]] = [tiny(1), tiny(2)]
    vis[4] = tiny(3)  # not seen
    del vis[2]
    put_seen, put_unseen, delete = (unpackb(s["body"]) for s in script.seen)
    assert (put_seen["frame_ids"], put_seen["base_versions"]) == ([7, 8], [4, 5])
    assert "indices" not in put_seen
    assert put_unseen["indices"] == [4] and "base_versions" not in put_unseen
    assert delete == {"frame_ids": [7], "base_versions": [5]}  # the version it wrote
    assert script.seen[2]["path"] == "/api/v1/rooms/r/frames"
    assert vis.seen.get(2) is None and vis.seen.get(4) is None  # forgotten: shifted


def test_patch_request(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    script.answers = [(200, {**WRITE, "indices": [1], "frame_ids": [5], "versions": [3],
                             "keys": ["positions"]}, {})]
    vis = room(url)
    vis.seen.record([1], [5], [2])
    assert vis.patch(1, {"info.e": -1.5}, positions=np.zeros((2, 3))) == 3
    (sent,) = script.seen
    assert (sent["method"], sent["path"]) == ("PATCH", "/api/v1/rooms/r/frames/1")
    body = unpackb(sent["body"])
    assert (body["frame_id"], body["base_version"]) == (5, 2)
    frame = decode_frame(body["frame"])
    assert sorted(frame) == ["info.e", "positions"] and float(frame["info.e"]) == -1.5
    assert vis.seen.get(1) == (5, 3)


def test_history_pages_until_next_is_null(scripted: tuple[Script, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from trajhub.client import room as room_module

    script, url = scripted
    monkeypatch.setattr(room_module, "HISTORY_PAGE", 2)
    page = [{"seq": 4}, {"seq": 6}]
    script.answers = [(200, {"room": "r", "events": page, "next": 6}, {}),
                      (200, {"room": "r", "events": [{"seq": 7}], "next": None}, {})]
    assert room(url).history(since=3) == [{"seq": 4}, {"seq": 6}, {"seq": 7}]
    assert [s["path"] for s in script.seen] == ["/api/v1/rooms/r/history?since=3&limit=2",
                                                "/api/v1/rooms/r/history?since=6&limit=2"]


# -- SeenVersions --------------------------------------------------------------------------------

def test_seen_versions_are_bounded_and_forget_shifted_indices() -> None:
    seen = SeenVersions(limit=3)
    seen.record([0, 1, 2], [10, 11, 12], [1, 1, 1])
    seen.record([3], [13], [1])  # evicts the oldest, index 0
    assert seen.get(0) is None and len(seen) == 3
    assert seen.lookup_all([1, 3]) == ([11, 13], [1, 1])
    assert seen.lookup_all([0, 1]) is None and seen.lookup_all([]) is None
    seen.forget_from(2)
    assert seen.lookup_all([1]) == ([11], [1]) and seen.get(2) is None
    seen.record([1], [11], [2, 3])  # lengths differ: ignored
    assert seen.get(1) == (11, 1)


def test_seen_versions_evict_the_least_recently_recorded() -> None:
    seen = SeenVersions(limit=4)
    seen.record([0, 1, 2, 3], [10, 11, 12, 13], [1, 1, 1, 1])
    seen.record([1, 0], [11, 10], [2, 2])  # recorded again: now the most recent
    seen.record([4, 5, 5], [14, 15, 16], [1, 1, 1])  # evicts 2 and 3; the last 5 wins
    assert [seen.get(i) for i in range(6)] == [(10, 2), (11, 2), None, None, (14, 1), (16, 1)]
    seen.record(range(100, 110), range(10), [1] * 10)  # more than the limit at once
    assert len(seen) == 4 and seen.lookup_all([106, 107, 108, 109]) == ([6, 7, 8, 9], [1] * 4)


class Counted(list[int]):
    """A list that counts how often it is read through."""

    reads = 0

    def __iter__(self) -> Iterator[int]:
        Counted.reads += 1
        return super().__iter__()


def test_seen_versions_take_in_a_recording_only_when_asked() -> None:
    seen = SeenVersions(limit=10)
    Counted.reads = 0
    seen.record(Counted([0, 1, 2]), Counted([10, 11, 12]), Counted([1, 1, 1]))
    assert Counted.reads == 0, "a read of many frames does not pay for it"
    assert seen.get(1) == (11, 1) and Counted.reads > 0
    for _ in range(4):  # more than the limit recorded: taken in without being asked
        seen.record(list(range(3)), [20, 21, 22], [2, 2, 2])
    assert len(seen._pending) == 0 and seen.get(0) == (20, 2)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.lists(st.one_of(
    st.lists(st.integers(0, 8), max_size=5),
    st.sampled_from([[0, 1, 2], [3, 4, 5], [0, 1, 2, 3, 4, 5]])), max_size=12),
    st.lists(st.integers(0, 12), max_size=12))
def test_seen_versions_recorded_lazily_are_those_recorded_at_once(
        limit: int, recordings: list[list[int]], asks: list[int]) -> None:
    """Whatever is recorded (repeats, a range recorded again, more than the limit) and
    whenever it is asked for, the map is the eager least-recently-recorded one."""
    seen, eager = SeenVersions(limit), dict[int, tuple[int, int]]()
    for n, indices in enumerate(recordings):
        seen.record(indices, [100 * n + i for i in indices], [n] * len(indices))
        for index in indices:  # (what record did at once before)
            eager.pop(index, None)
        eager.update((index, (100 * n + index, n)) for index in indices)
        while len(eager) > limit:
            del eager[next(iter(eager))]
        if n in asks:
            assert [seen.get(i) for i in range(10)] == [eager.get(i) for i in range(10)]
    assert len(seen) == len(eager)
    assert [seen.get(i) for i in range(10)] == [eager.get(i) for i in range(10)]
