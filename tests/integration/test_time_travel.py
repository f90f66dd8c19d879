"""Time travel on a real gateway, Redis and Zarr: the index and the frames at every past
seq, also after the stream was archived into the history store and trimmed; the history
route across the trim; 410 beyond retention; ``Room.at``; the ``history``/``replay`` CLI."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from gateway_server import MSGPACK, GatewayServer, gateway_settings, get_frames, post_frames

from trajhub.cli import main as cli_main
from trajhub.client import BadRequest, Room, RoomNotFound
from trajhub.client import HistoryGone as ClientHistoryGone
from trajhub.gateway.app import create_app
from trajhub.shared import codec, keys
from trajhub.shared.events import Event
from trajhub.shared.frames import Frame, validate_frame
from trajhub.shared.hashing import frame_hash
from trajhub.shared.history import encode_segment, encode_snapshot
from trajhub.shared.history_reader import HistoryGone, HistoryReader, SeqBeyondHead, UnknownRoom
from trajhub.shared.history_store import ZarrHistoryStore, open_history_store
from trajhub.shared.replay import replay
from trajhub.shared.zarr_store import open_store
from trajhub.storage.worker import StorageWorker

ROOM = "travel"
BASE = f"/api/v1/rooms/{ROOM}"
N_EDITS = 30


@dataclass
class State:
    """What the room looked like right after one seq."""

    frame_ids: list[int]
    versions: list[int]
    hashes: list[str]


@dataclass
class Recorded:
    states: dict[int, State] = field(default_factory=dict)


def tiny(seed: int, n_atoms: int = 3) -> Frame:
    rng = np.random.default_rng(seed)
    return validate_frame({"numbers": rng.integers(1, 20, n_atoms).astype(np.int32),
                           "positions": rng.normal(size=(n_atoms, 3)),
                           "info.seed": np.array(seed)})


@pytest.fixture
def server(redis_url: str, tmp_path: Path) -> Iterator[GatewayServer]:
    settings = gateway_settings(redis_url, tmp_path / "zarr")
    app = create_app(settings)
    running = GatewayServer(app, settings).start()
    yield running
    running.stop()


@pytest.fixture
def http(server: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
def history_store(tmp_path: Path) -> ZarrHistoryStore:
    return open_history_store(str(tmp_path / "zarr"))


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def with_reader(redis_url: str, store: ZarrHistoryStore,
                check: Callable[[HistoryReader], Awaitable[None]]) -> None:
    """Run ``check`` with a HistoryReader on its own event loop (the tests are sync:
    they talk HTTP to the gateway's thread)."""
    async def run() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await check(HistoryReader(client, store))
        finally:
            await client.aclose()

    asyncio.run(run())


def apply_storage(redis_url: str, tmp_path: Path) -> int:
    async def run() -> int:
        worker = StorageWorker(redis_url, open_store(str(tmp_path / "zarr")), "w1")
        try:
            return await worker.apply_room(ROOM)
        finally:
            await worker.aclose()

    return asyncio.run(run())


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def current(http: httpx.Client) -> tuple[int, State]:
    """The room's seq and state now, with every frame's content hash checked."""
    index = ok(http.get(f"{BASE}/index"))
    state = State(index["frame_ids"], index["versions"], index["hashes"])
    if state.frame_ids:
        got = get_frames(http, ROOM)
        assert [frame_hash(f) for f in got["frames"]] == state.hashes
        assert got["seq"] == index["seq"]
    return index["seq"], state


def edit(http: httpx.Client, step: int, rng: np.random.Generator) -> None:
    """One edit of a mixed sequence (insert, replace, patch, delete, undo, redo)."""
    index = http.get(f"{BASE}/index")
    n = 0 if index.status_code == 404 else len(ok(index)["frame_ids"])
    who = {"X-Trajhub-Author": "alice" if step % 3 else "bob"}
    kind = ["insert", "insert_at", "replace", "patch", "delete", "undo", "redo"][step % 7]
    if n < 2 or kind == "insert":
        assert post_frames(http, ROOM, [tiny(100 + step), tiny(200 + step)],
                           headers=who).status_code == 201
    elif kind == "insert_at":
        assert post_frames(http, ROOM, [tiny(300 + step)], at=int(rng.integers(0, n)),
                           headers=who).status_code == 201
    elif kind == "replace":
        body = codec.frames_to_bytes([tiny(400 + step)], indices=[int(rng.integers(0, n))])
        ok(http.put(f"{BASE}/frames", content=body, headers={**MSGPACK, **who}))
    elif kind == "patch":
        i = int(rng.integers(0, n))
        version = ok(http.get(f"{BASE}/index"))["versions"][i]
        moved = {"positions": rng.normal(size=(3, 3))}
        body = codec.packb({"frame": codec.encode_frame(moved), "base_version": version})
        ok(http.patch(f"{BASE}/frames/{i}", content=body, headers={**MSGPACK, **who}))
    elif kind == "delete":
        ok(http.delete(f"{BASE}/frames", params={"indices": str(int(rng.integers(0, n)))},
                       headers=who))
    else:
        answer = http.post(f"{BASE}/{kind}", headers=who)
        assert answer.status_code in (200, 404, 409), answer.text
        if answer.status_code != 200:  # nothing to revert: make an edit anyway
            assert post_frames(http, ROOM, [tiny(500 + step)], headers=who).status_code == 201


@pytest.fixture
def recorded(http: httpx.Client, redis_url: str, tmp_path: Path) -> Recorded:
    """~30 edits, the state after each; storage applies half of them to Zarr (so past
    frames come from Zarr and from blobs)."""
    rng = np.random.default_rng(7)
    out = Recorded({0: State([], [], [])})
    for step in range(N_EDITS):
        edit(http, step, rng)
        seq, state = current(http)
        out.states[seq] = state
        if step == N_EDITS // 2:
            assert apply_storage(redis_url, tmp_path) == seq
    assert sorted(out.states) == list(range(max(out.states) + 1))  # one event per edit
    return out


def stream_events(r: redis.Redis, room: str = ROOM) -> list[Event]:
    entries: Any = r.xrange(keys.events(room))
    return [Event.from_stream(f) for _, f in entries]


def archive_and_trim(r: redis.Redis, store: ZarrHistoryStore, *,
                           segments: list[tuple[int, int]], snapshots: list[int],
                           trim_below: int) -> None:
    """What the snapshotter does: snapshots and segments into the store, then XTRIM."""
    events = stream_events(r)
    for first, last in segments:
        store.put_segment(ROOM, first, last, encode_segment(ROOM, events[first - 1:last]))
    for seq in snapshots:
        store.put_snapshot(ROOM, seq, encode_snapshot(ROOM, seq, replay(events[:seq])))
    r.xtrim(keys.events(ROOM), minid=f"{trim_below}-0", approximate=False)
    assert stream_events(r)[0].seq == trim_below


def assert_at_every_seq(http: httpx.Client, rec: Recorded) -> None:
    for seq, state in rec.states.items():
        index = ok(http.get(f"{BASE}/index", params={"at_seq": seq}))
        assert (index["seq"], index["n_frames"]) == (seq, len(state.frame_ids))
        assert State(index["frame_ids"], index["versions"], index["hashes"]) == state, seq
        got = get_frames(http, ROOM, at_seq=seq)
        assert (got["seq"], got["n_frames"]) == (seq, len(state.frame_ids))
        assert got["frame_ids"] == state.frame_ids and got["versions"] == state.versions
        assert [frame_hash(f) for f in got["frames"]] == state.hashes, seq


def test_every_past_seq_before_and_after_trim(
        http: httpx.Client, r: redis.Redis, redis_url: str, history_store: ZarrHistoryStore,
        recorded: Recorded) -> None:
    head = max(recorded.states)
    assert_at_every_seq(http, recorded)
    archive_and_trim(r, history_store, segments=[(1, 9), (10, 20)], snapshots=[12],
                           trim_below=21)
    assert_at_every_seq(http, recorded)

    async def check(reader: HistoryReader) -> None:
        assert [e.seq async for e in reader.events(ROOM, 0)] == list(range(1, head + 1))
        assert [e.seq async for e in reader.events(ROOM, 5, 25)] == list(range(6, 26))
        for seq, state in recorded.states.items():
            entries = await reader.index_at(ROOM, seq)
            assert [e.hash for e in entries] == state.hashes

    with_reader(redis_url, history_store, check)


def test_selection_and_refusals_at_a_past_seq(
        http: httpx.Client, r: redis.Redis, history_store: ZarrHistoryStore,
        recorded: Recorded) -> None:
    archive_and_trim(r, history_store, segments=[(1, 20)], snapshots=[],
                           trim_below=18)
    seq = next(s for s, st in recorded.states.items() if s > 3 and len(st.frame_ids) >= 3)
    state = recorded.states[seq]
    got = get_frames(http, ROOM, at_seq=seq, indices="2,0", keys="positions")
    assert got["indices"] == [2, 0] and got["hashes"] == [state.hashes[2], state.hashes[0]]
    assert all(set(f) == {"positions"} for f in got["frames"])
    got = get_frames(http, ROOM, at_seq=seq, start=-2)
    assert got["hashes"] == state.hashes[-2:]
    n = len(state.frame_ids)
    response = http.get(f"{BASE}/frames", params={"at_seq": seq, "indices": str(n)})
    assert response.status_code == 404 and f"seq {seq}" in response.json()["detail"]
    head = max(recorded.states)
    for bad in (head + 1, -1, "x"):
        for path in ("index", "frames"):
            response = http.get(f"{BASE}/{path}", params={"at_seq": bad})
            assert response.status_code == 422, (path, bad, response.text)
    assert http.get("/api/v1/rooms/nosuch/index", params={"at_seq": 0}).status_code == 404
    assert http.get("/api/v1/rooms/nosuch/index").status_code == 404


def test_beyond_retention_is_410(http: httpx.Client, r: redis.Redis, redis_url: str,
                                       history_store: ZarrHistoryStore,
                                       recorded: Recorded, server: GatewayServer) -> None:
    head = max(recorded.states)
    # Seqs 1..10 are trimmed and not archived; a snapshot at 12 covers what follows.
    archive_and_trim(r, history_store, segments=[(11, 15)], snapshots=[12],
                           trim_below=16)
    for seq in (1, 5, 11):
        response = http.get(f"{BASE}/index", params={"at_seq": seq})
        assert response.status_code == 410, response.text
        assert "beyond retention" in response.json()["detail"]
        assert http.get(f"{BASE}/frames", params={"at_seq": seq}).status_code == 410
    for seq in (0, 12, 13, 15, 16, head):
        index = ok(http.get(f"{BASE}/index", params={"at_seq": seq}))
        assert index["hashes"] == recorded.states[seq].hashes
    assert http.get(f"{BASE}/history", params={"since": 0}).status_code == 410
    listed = ok(http.get(f"{BASE}/history", params={"since": 10, "limit": 1000}))
    assert [e["seq"] for e in listed["events"]] == list(range(11, head + 1))

    async def check(reader: HistoryReader) -> None:
        with pytest.raises(HistoryGone, match="seq 1 is beyond retention"):
            await reader.index_at(ROOM, 3)
        with pytest.raises(HistoryGone):
            [e async for e in reader.events(ROOM, 0)]
        with pytest.raises(SeqBeyondHead):
            await reader.index_at(ROOM, head + 1)
        with pytest.raises(UnknownRoom):
            await reader.index_at("nosuch", 0)

    with_reader(redis_url, history_store, check)
    with Room(server.url, ROOM) as vis:
        with pytest.raises(ClientHistoryGone, match="beyond retention"):
            vis.at(5)
        with pytest.raises(BadRequest):
            vis.at(head + 1)


def test_history_route_lists_trimmed_events(
        http: httpx.Client, r: redis.Redis, history_store: ZarrHistoryStore,
        recorded: Recorded) -> None:
    head = max(recorded.states)
    before = ok(http.get(f"{BASE}/history", params={"limit": 1000}))["events"]
    archive_and_trim(r, history_store, segments=[(1, 7), (8, 20)], snapshots=[20],
                           trim_below=21)
    assert ok(http.get(f"{BASE}/history", params={"limit": 1000}))["events"] == before
    assert [e["seq"] for e in before] == list(range(1, head + 1))
    paged: list[dict[str, Any]] = []
    since: int | None = 0
    while since is not None:
        page = ok(http.get(f"{BASE}/history", params={"since": since, "limit": 6}))
        paged += page["events"]
        since = page["next"]
    assert paged == before


def test_room_at_and_cli(server: GatewayServer, http: httpx.Client, r: redis.Redis,
                               history_store: ZarrHistoryStore, recorded: Recorded,
                               capsys: pytest.CaptureFixture[str]) -> None:
    archive_and_trim(r, history_store, segments=[(1, 10), (11, 20)], snapshots=[10],
                           trim_below=21)
    head = max(recorded.states)
    with Room(server.url, ROOM) as vis:
        for seq, state in recorded.states.items():
            past = vis.at(seq)
            assert len(past) == len(state.frame_ids)
            frames = past.get()
            assert [frame_hash(validate_frame(f)) for f in frames] == state.hashes
            assert [a.positions.tolist() for a in past] == \
                [f["positions"].tolist() for f in frames]
        past = vis.at(head // 2)
        state = recorded.states[head // 2]
        assert len(past[1:]) == len(state.frame_ids) - 1
        np.testing.assert_array_equal(past[-1].positions,
                                      past.get([len(past) - 1])[0]["positions"])
        assert [set(f) for f in past.get(keys=["numbers"])] == [{"numbers"}] * len(past)
        with pytest.raises(TypeError, match="read-only"):
            past[0] = past[0]
        with pytest.raises(TypeError, match="read-only"):
            past.append(past[0])
        with pytest.raises(IndexError):
            past[len(past)]
        assert len(vis) == len(recorded.states[head].frame_ids)  # the room is untouched
    with pytest.raises(RoomNotFound):
        Room(server.url, "nosuch").at(0)

    assert cli_main(["history", ROOM, "--url", server.url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == head
    assert lines[0].split()[0] == "1" and "bob" in lines[0] and "frames_inserted" in lines[0]
    assert any("undo" in line and "reverts=" in line for line in lines)
    assert cli_main(["history", ROOM, "--url", server.url, "--since", "25",
                     "--limit", "2"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["26", "27"]
    seq = 5
    assert cli_main(["replay", ROOM, "--to", str(seq), "--url", server.url]) == 0
    out = capsys.readouterr().out.splitlines()
    state = recorded.states[seq]
    assert out[0] == f"room {ROOM} at seq {seq}: {len(state.frame_ids)} frames"
    assert [int(line.split()[1]) for line in out[2:]] == state.frame_ids
    assert cli_main(["replay", ROOM, "--to", str(head + 5), "--url", server.url]) == 1
    assert "seq" in capsys.readouterr().err


def test_stream_trimmed_empty(http: httpx.Client, r: redis.Redis,
                              history_store: ZarrHistoryStore, recorded: Recorded) -> None:
    """Everything archived and the whole stream trimmed: the past is all in the store."""
    head = max(recorded.states)
    events = stream_events(r)
    history_store.put_segment(ROOM, 1, head, encode_segment(ROOM, events))
    history_store.put_snapshot(ROOM, 15, encode_snapshot(ROOM, 15, replay(events[:15])))
    r.xtrim(keys.events(ROOM), minid=f"{head + 1}-0", approximate=False)
    assert stream_events(r) == []
    assert_at_every_seq(http, recorded)
    listed = ok(http.get(f"{BASE}/history", params={"since": 3, "limit": 1000}))
    assert [e["seq"] for e in listed["events"]] == list(range(4, head + 1))
