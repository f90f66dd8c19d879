"""End to end: the four services as separate processes, real Redis, real Zarr, real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import ase.io
import numpy as np
import pytest
import redis
import socketio
from ase import Atoms

from tests.helpers import emt_md, free_port, http_ok, wait_until
from tests.system.conftest import BIN, Services
from trajhub import Room
from trajhub.client.convert import atoms_to_frame
from trajhub.shared import keys
from trajhub.shared.frames import frames_equal
from trajhub.shared.hashing import frame_hash
from trajhub.shared.zarr_store import open_store

pytestmark = pytest.mark.system


def assert_same(expected: list[Atoms], got: list[Atoms]) -> None:
    assert len(got) == len(expected)
    for i, (x, y) in enumerate(zip(expected, got, strict=True)):
        assert frames_equal(atoms_to_frame(x), atoms_to_frame(y)), f"frame {i} differs"


def wait_applied(redis_url: str, room: str, timeout: float = 60.0) -> int:
    r = redis.Redis.from_url(redis_url)

    def done() -> bool:
        seq = r.hget(keys.meta(room), "seq")
        applied = r.hget(keys.applied(room), "seq")
        return seq is not None and applied is not None and int(applied) >= int(seq)

    wait_until(done, timeout, f"storage to apply room {room}")
    return int(r.hget(keys.meta(room), "seq") or 0)


def assert_zarr_matches(services: Services, room: str, expected: list[Atoms]) -> None:
    """The storage projection in Zarr holds every frame exactly once, in order."""
    store = open_store(services.storage_url)
    _seq, order, frame_ids, _versions = store.read_projection(room)
    assert len(order) == len(expected)
    assert len(set(int(f) for f in frame_ids)) == len(frame_ids), "a frame id appears twice"
    frames = store.read_slots(room, [int(s) for s in order])
    want_hashes = [frame_hash(atoms_to_frame(a)) for a in expected]
    assert [frame_hash(f) for f in frames] == want_hashes
    assert store.n_slots(room) == len(set(want_hashes)), "a frame was written to two slots"


def test_s22_and_emt_md_round_trip(services: Services, s22_path: Path) -> None:
    s22 = ase.io.read(s22_path, ":")
    md = emt_md(1000)
    writer = Room(services.url, room="s22-md")
    writer.extend(s22)
    writer.extend(md)
    everything = s22 + md

    reader = Room(services.url, room="s22-md")
    assert len(reader) == 1022
    assert_same(everything, reader[:])  # possibly before storage applied: served from blobs

    wait_applied(services.redis_url, "s22-md")
    assert_same(everything, Room(services.url, room="s22-md")[:])  # now from Zarr
    assert_zarr_matches(services, "s22-md", everything)


def test_list_semantics_across_clients(services: Services, s22_path: Path) -> None:
    s22 = ase.io.read(s22_path, ":")
    model = list(s22[:10])
    vis = Room(services.url, room="listy")
    vis.extend(model)
    other = Room(services.url, room="listy")

    vis.insert(0, s22[20])
    model.insert(0, s22[20])
    vis[3] = s22[21]
    model[3] = s22[21]
    del vis[5]
    del model[5]
    del vis[1:7:2]
    del model[1:7:2]
    vis.insert(-1, s22[12])
    model.insert(-1, s22[12])

    assert len(other) == len(model)
    assert_same(model, other[:])
    assert_same(model[::-2], other[::-2])
    assert_same(model[2:5], other[2:5])
    assert_same([model[-1], model[0]], other[[len(model) - 1, 0]])
    with pytest.raises(IndexError):
        other[len(model)]
    wait_applied(services.redis_url, "listy")
    assert_same(model, Room(services.url, room="listy")[:])


def test_kill_storage_mid_upload_loses_and_doubles_nothing(services: Services) -> None:
    md = emt_md(600, seed=3)
    vis = Room(services.url, room="crashy")
    uploaded = threading.Event()

    def upload() -> None:
        for start in range(0, len(md), 25):
            vis.extend(md[start:start + 25])
        uploaded.set()

    worker = threading.Thread(target=upload)
    worker.start()
    r = redis.Redis.from_url(services.redis_url)
    wait_until(lambda: int(r.hget(keys.applied("crashy"), "seq") or 0) > 3, 60,
               "storage to apply a few commits")
    services.kill("storage")
    worker.join(120)
    assert uploaded.is_set()
    before = set(r.zrange(keys.STORAGE_REPLICAS, 0, -1))
    services.start("storage")
    # Running (its SIGTERM handler in place) before the teardown stops it: the killed
    # storage may have applied everything already, and a SIGTERM during the new one's
    # imports would end it by the signal.
    wait_until(lambda: set(r.zrange(keys.STORAGE_REPLICAS, 0, -1)) - before, 60,
               "the new storage replica to register")
    wait_applied(services.redis_url, "crashy")
    assert len(Room(services.url, room="crashy")) == len(md)
    assert_zarr_matches(services, "crashy", md)


def test_socketio_client_sees_frames_changed_with_seq(services: Services) -> None:
    received: list[dict[str, object]] = []
    got = threading.Event()
    sio = socketio.Client()

    @sio.on("frames_changed")
    def on_change(data: dict[str, object]) -> None:
        received.append(data)
        got.set()

    sio.connect(services.url, transports=["websocket"])
    try:
        ack = sio.call("join_room", {"room": "live"}, timeout=10)
        assert ack["room"] == "live"
        vis = Room(services.url, room="live")
        vis.append(emt_md(1)[0])
        seq = int(redis.Redis.from_url(services.redis_url).hget(keys.meta("live"), "seq") or 0)
        assert got.wait(10), "no frames_changed broadcast arrived"
        event = received[-1]
        assert event["room"] == "live" and event["seq"] == seq
        assert event["kind"] == "frames_inserted" and event["indices"] == [0]
        assert "frames" not in event  # metadata only, never array data
    finally:
        sio.disconnect()


def _serve(data_dir: Path, port: int,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [str(BIN / "trajhub"), "serve", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=open(data_dir.parent / "serve.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
        env={**os.environ, **(env or {})})
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), 60, "trajhub serve")
    return proc


def test_serve_keeps_everything_across_restart(tmp_path: Path, s22_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    s22 = ase.io.read(s22_path, ":")
    proc = _serve(data_dir, port)
    try:
        vis = Room(url, room="keep")
        vis.extend(s22)
        vis[0] = s22[5]
        expected = [s22[5], *s22[1:]]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    proc = _serve(data_dir, port)
    try:
        assert_same(expected, Room(url, room="keep")[:])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_serve_logs_each_request_only_when_asked(tmp_path: Path) -> None:
    for asked in ("false", "true"):
        data_dir = tmp_path / asked / "data"
        data_dir.parent.mkdir()
        port = free_port()
        proc = _serve(data_dir, port, {"TRAJHUB_ACCESS_LOG": asked})
        try:
            http_ok(f"http://127.0.0.1:{port}/api/v1/rooms/logged/frames?indices=7")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        log = (data_dir.parent / "serve.log").read_text()
        assert "trajhub serving" in log
        assert "objects of the start frozen out of GC" in log  # (the entry point's)
        logged = '"GET /api/v1/rooms/logged/frames?indices=7 HTTP/1.1" 404' in log
        assert logged == (asked == "true"), log[-2000:]


def test_positions_readable_with_plain_zarr(services: Services) -> None:
    import zarr

    md = emt_md(5, seed=7)
    Room(services.url, room="plain").extend(md)
    wait_applied(services.redis_url, "plain")
    group = zarr.open_group(str(Path(services.storage_url) / "plain"), mode="r")
    order = group["_order"][:]
    n = len(md[2])
    np.testing.assert_array_equal(group["positions"][int(order[2]), :n], md[2].positions)
