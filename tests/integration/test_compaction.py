"""Slot compaction (``POST /api/v1/rooms/{room}/compact``) on a real gateway, Redis, Zarr
store, storage worker and snapshotter: slots no retained state references lose their
data chunks, retained states and forks read as before, compacted states answer 410,
content that was dropped can be committed again, a relayout puts the live frames in
logical order without changing what anyone sees, and readers keep working meanwhile."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import zarr
from gateway_server import (
    MSGPACK,
    GatewayServer,
    apply_room,  # noqa: F401  (fixture)
    get_frames,
    make_frame,
    post_frames,
    start_gateway,  # noqa: F401  (fixture)
)

from trajhub.cli import main as cli_main
from trajhub.shared import codec, zarr_store
from trajhub.shared.events import FrameEntry
from trajhub.shared.frames import Frame, frames_equal
from trajhub.shared.hashing import frame_hash
from trajhub.shared.history_store import open_history_store
from trajhub.shared.zarr_store import open_store
from trajhub.snapshotter.compaction import in_logical_order
from trajhub.snapshotter.worker import SnapshotterWorker


@pytest.fixture
def server(start_gateway: Callable[..., GatewayServer],  # noqa: F811
           monkeypatch: pytest.MonkeyPatch) -> GatewayServer:
    # A few slots per chunk, so that small rooms have chunks whose every slot is dead.
    monkeypatch.setattr(zarr_store, "CHUNK_TARGET_BYTES", 4096)
    return start_gateway(cache_mb=0)


@pytest.fixture
def http(server: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture
def apply(apply_room: Callable[[str], int]) -> Callable[[str], int]:  # noqa: F811
    return apply_room


@pytest.fixture
def trim(redis_url: str, tmp_path: Path) -> Callable[[str], None]:
    """What the snapshotter does with keep_events=0: snapshot, archive, trim all."""
    def run(room: str) -> None:
        async def go() -> None:
            worker = SnapshotterWorker(redis_url, "s1",
                                       history=open_history_store(str(tmp_path / "zarr")),
                                       every_events=1, keep_events=0)
            try:
                await worker.process_room(room)
            finally:
                await worker.aclose()
        asyncio.run(go())
    return run


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def compact(http: httpx.Client, room: str, **params: Any) -> dict[str, Any]:
    result: dict[str, Any] = ok(http.post(f"/api/v1/rooms/{room}/compact", params=params))
    return result


def replace_all(http: httpx.Client, room: str, frames: list[Frame]) -> None:
    body = codec.frames_to_bytes(frames, indices=list(range(len(frames))))
    ok(http.put(f"/api/v1/rooms/{room}/frames", content=body, headers=MSGPACK))


def assert_frames(http: httpx.Client, room: str, frames: list[Frame], **params: Any) -> None:
    got = get_frames(http, room, **params)
    assert got["hashes"] == [frame_hash(f) for f in frames]
    assert len(got["frames"]) == len(frames)
    assert all(frames_equal(a, b) for a, b in zip(got["frames"], frames, strict=True))


def chunk_files(tmp_path: Path, room: str) -> int:
    root = tmp_path / "zarr" / room
    return sum(1 for p in root.rglob("*") if p.is_file() and "/c/" in p.as_posix()
               and not p.relative_to(root).parts[0].startswith("_"))


def test_dead_slots_are_dropped_and_retained_states_still_read(
        http: httpx.Client, apply: Callable[[str], int], trim: Callable[[str], None],
        tmp_path: Path) -> None:
    old = [make_frame(20, seed) for seed in range(12)]
    new = [make_frame(20, 100 + seed) for seed in range(12)]
    ok(post_frames(http, "r", old), 201)                 # seq 1: slots 0..11
    replace_all(http, "r", new)                         # seq 2: slots 12..23
    ok(post_frames(http, "r", [make_frame(20, 500)]), 201)  # seq 3
    apply("r")
    assert_frames(http, "r", old, at_seq=1)
    trim("r")
    files_before = chunk_files(tmp_path, "r")

    result = compact(http, "r", keep_events=0)

    # Every event is trimmed, so nothing can be undone: states from seq 3 on are kept.
    assert result["retained_from_seq"] == 3 and result["head_seq"] == 3
    assert result["own_slots"] == 25 and result["referenced_slots"] == 13
    assert result["dropped_slots"] == 12
    assert result["chunks_deleted"] > 0 and result["bytes_freed"] > 0
    assert chunk_files(tmp_path, "r") == files_before - result["chunks_deleted"]
    assert_frames(http, "r", [*new, make_frame(20, 500)])
    assert_frames(http, "r", [*new, make_frame(20, 500)], at_seq=3)
    # The state at seq 1 lost its frames (410 says so); its index stays readable.
    gone = http.get("/api/v1/rooms/r/frames", params={"at_seq": 1})
    assert gone.status_code == 410 and "compacted" in gone.json()["detail"]
    assert ok(http.get("/api/v1/rooms/r/index", params={"at_seq": 1}))["n_frames"] == 12
    refused = http.put("/api/v1/rooms/r-fork", json={"base_room": "r", "at_seq": 1})
    assert refused.status_code == 410, refused.text
    # Content whose slot was dropped gets a fresh slot when committed again.
    ok(post_frames(http, "r", [old[0]]), 201)
    apply("r")
    assert_frames(http, "r", [*new, make_frame(20, 500), old[0]])
    assert open_store(str(tmp_path / "zarr")).read_projection("r")[1][-1] == 25
    # Plain zarr still reads the live frames' positions.
    positions = zarr.open_group(str(tmp_path / "zarr" / "r"), mode="r")["positions"]
    assert np.array_equal(positions[12][:20], new[0]["positions"])
    # A second pass finds nothing more to drop.
    again = compact(http, "r", keep_events=0)
    assert again["dropped_slots"] == 12 and again["chunks_deleted"] == 0


def test_forked_state_is_pinned(http: httpx.Client, apply: Callable[[str], int],
                                trim: Callable[[str], None]) -> None:
    old = [make_frame(20, seed) for seed in range(12)]
    ok(post_frames(http, "base", old), 201)
    apply("base")
    ok(http.put("/api/v1/rooms/child", json={"base_room": "base"}), 201)
    apply("child")
    replace_all(http, "base", [make_frame(20, 100 + s) for s in range(12)])
    ok(post_frames(http, "base", [make_frame(20, 500)]), 201)
    apply("base")
    trim("base")
    result = compact(http, "base", keep_events=0)
    assert result["retained_from_seq"] == 3
    assert result["dropped_slots"] == 0 and result["chunks_deleted"] == 0
    assert_frames(http, "child", old)


def test_relayout_keeps_content_versions_and_undo(
        http: httpx.Client, apply: Callable[[str], int]) -> None:
    frames = [make_frame(20, seed) for seed in range(8)]
    headers = {**MSGPACK, "X-Trajhub-Author": "ada"}
    for frame in frames:  # each insert at 0: slots run against logical order
        ok(post_frames(http, "r", [frame], at=0, headers={"X-Trajhub-Author": "ada"}), 201)
    change = {"positions": np.full((20, 3), 3.0, dtype=np.float32)}
    body = codec.packb({"frame": codec.encode_frame(change), "base_version": 1})
    ok(http.patch("/api/v1/rooms/r/frames/2", content=body, headers=headers))
    apply("r")
    before = ok(http.get("/api/v1/rooms/r/index"))
    expected = list(reversed(frames))
    expected[2] = {**expected[2], **change}

    result = compact(http, "r", relayout="true", keep_events=0)

    assert result["relaid_frames"] == 8 and result["dropped_slots"] == 0
    apply("r")
    after = ok(http.get("/api/v1/rooms/r/index"))
    for key in ("frame_ids", "versions", "hashes", "n_frames"):
        assert after[key] == before[key]
    assert after["seq"] > before["seq"]
    assert_frames(http, "r", expected)
    history = ok(http.get("/api/v1/rooms/r/history"))["events"]
    relaid = [e for e in history if e["kind"] == "frames_relaid"]
    assert relaid and all(e["author"] == "trajhub-compactor" for e in relaid)
    # Already in order: a second relayout commits nothing.
    assert compact(http, "r", relayout="true")["relaid_frames"] == 0
    # Ada's undo still undoes her patch (the relayout is no one's edit).
    ok(http.post("/api/v1/rooms/r/undo", headers={"X-Trajhub-Author": "ada"}))
    apply("r")
    expected[2] = list(reversed(frames))[2]
    assert_frames(http, "r", expected)


def test_readers_keep_working_during_relayout(
        http: httpx.Client, apply: Callable[[str], int], server: GatewayServer) -> None:
    frames = [make_frame(20, seed) for seed in range(30)]
    for i in range(0, 30, 3):
        ok(post_frames(http, "r", frames[i:i + 3], at=0), 201)
    apply("r")
    expected = [f for i in range(27, -1, -3) for f in frames[i:i + 3]]
    stop = threading.Event()
    failures: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        with httpx.Client(base_url=server.url, timeout=60) as client:
            while not stop.is_set():
                got = get_frames(client, "r")
                if got["hashes"] != [frame_hash(f) for f in expected] or not all(
                        frames_equal(a, b) for a, b in zip(got["frames"], expected,
                                                           strict=True)):
                    failures.append(f"read at seq {got.get('seq')} differs")
                reads += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert compact(http, "r", relayout="true", keep_events=0)["relaid_frames"] == 30
        apply("r")
        compact(http, "r", keep_events=0)
    finally:
        stop.set()
        thread.join()
    assert reads > 0 and failures == []
    assert_frames(http, "r", expected)


def test_unknown_room_and_bad_parameters(http: httpx.Client) -> None:
    assert http.post("/api/v1/rooms/nope/compact").status_code == 404
    ok(post_frames(http, "r", [make_frame(3, 1)]), 201)
    bad = http.post("/api/v1/rooms/r/compact", params={"keep_events": -1})
    assert bad.status_code == 422


def entry(slot: int, h: str) -> FrameEntry:
    return FrameEntry(frame_id=slot, version=1, hash=h * 64, slot=slot)


def test_in_logical_order() -> None:
    assert in_logical_order([])
    assert in_logical_order([entry(4, "a"), entry(5, "b"), FrameEntry(
        frame_id=9, version=1, hash="a" * 64, slot=4), entry(6, "c")])
    assert not in_logical_order([entry(5, "b"), entry(4, "a")])
    assert not in_logical_order([entry(4, "a"), entry(6, "b")])


def test_cli(server: GatewayServer, http: httpx.Client, apply: Callable[[str], int],
             capsys: pytest.CaptureFixture[str]) -> None:
    for seed in range(4):
        ok(post_frames(http, "r", [make_frame(20, seed)], at=0), 201)
    apply("r")
    assert cli_main(["compact", "r", "--url", server.url, "--relayout",
                     "--keep-events", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["relaid_frames"] == 4
    assert cli_main(["compact", "nope", "--url", server.url]) == 1
    assert "404" in capsys.readouterr().err
