"""Scale-out under failure: 2 gateways, 2 control, 3 storage, 1 snapshotter as separate
processes on one redis-server; 20 rooms written through both gateways (extend, patch,
set, delete, locks) and followed over Socket.IO on both; one storage and one gateway are
killed with SIGKILL midway, then a new storage replica joins."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import socketio
from ase import Atoms

from tests.helpers import http_ok, wait_until
from tests.system.conftest import Services
from trajhub import Room
from trajhub.client.convert import atoms_to_frame
from trajhub.client.errors import TrajhubError
from trajhub.shared import keys
from trajhub.shared.frames import Frame
from trajhub.shared.hashing import frame_hash
from trajhub.shared.zarr_store import open_store

pytestmark = pytest.mark.system

ROOMS = [f"scale-{i:02d}" for i in range(20)]
SHARED = "scale-shared"  # appended to concurrently through both gateways (both controls)
WRITERS = 4
ROUNDS, ROUNDS_BEFORE_KILL = 5, 2
GATEWAYS = ("gateway-1", "gateway-2")
SNAPSHOTTER_ENV = {"TRAJHUB_SNAPSHOT_EVERY_EVENTS": "8", "TRAJHUB_STREAM_KEEP_EVENTS": "2"}


@pytest.fixture
def scale_services(redis_url: str, tmp_path: Path) -> Iterator[Services]:
    svc = Services(redis_url=redis_url, data_dir=tmp_path)
    try:
        # Started together: on a loaded machine each takes seconds to import.
        for key in ("storage-1", "storage-2", "storage-3"):
            svc.start("storage", key)
        svc.start("snapshotter", env=SNAPSHOTTER_ENV)
        for i in ("1", "2"):
            svc.start("control", f"control-{i}", wait=False)
            svc.start("gateway", f"gateway-{i}", control=f"control-{i}", wait=False)
        for key in ("control-1", "control-2", "gateway-1", "gateway-2"):
            svc.wait_ready(key)
        yield svc
    finally:
        svc.stop_all()


# -- the model of every room ------------------------------------------------------------

class Frames:
    """Every frame the test wrote, by content hash, and fresh random ones."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.by_hash: dict[str, Frame] = {}
        self.lock = threading.Lock()

    def new(self) -> tuple[Atoms, str]:
        with self.lock:
            pos = self.rng.uniform(0, 5, size=(6, 3))
        atoms = Atoms("H2O2C2", positions=pos, cell=np.eye(3) * 5, pbc=True)
        return atoms, self.remember(atoms_to_frame(atoms))

    def remember(self, frame: Frame) -> str:
        h = frame_hash(frame)
        with self.lock:
            self.by_hash[h] = frame
        return h

    def patched(self, h: str, positions: np.ndarray) -> str:
        with self.lock:
            frame = dict(self.by_hash[h])
        frame["positions"] = positions
        return self.remember(frame)


@dataclass
class Cluster:
    svc: Services
    r: redis.Redis
    frames: Frames
    alive: list[str] = field(default_factory=lambda: list(GATEWAYS))
    model: dict[str, list[str]] = field(default_factory=dict)  # room -> frame hashes
    edits: list[tuple[str, str, int]] = field(default_factory=list)  # (gateway, room, seq)
    locked: list[tuple[str, str]] = field(default_factory=list)  # (gateway, room)
    failovers: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def room(self, gateway: str, name: str) -> Room:
        return Room(self.svc.url_of(gateway), room=name, author=f"writer-{name}",
                    lock_wait=30.0)

    def gateway_for(self, turn: int) -> str:
        with self.lock:
            return self.alive[turn % len(self.alive)]

    def seq(self, room: str) -> int:
        return int(self.r.hget(keys.meta(room), "seq") or 0)

    def index_hashes(self, room: str, gateway: str) -> list[str]:
        return list(self.room(gateway, room).transport.get_index(room)["hashes"])

    def edit(self, name: str, turn: int, op: Callable[[Room, str], None]) -> None:
        """Run one acknowledged edit; if its gateway died under it, the outcome is
        unknown: take the room's state from a live gateway and go on there."""
        gateway = self.gateway_for(turn)
        try:
            op(self.room(gateway, name), gateway)
        except (TrajhubError, httpx.HTTPError, OSError):
            if http_ok(f"{self.svc.url_of(gateway)}/readyz"):
                raise
            with self.lock:
                if gateway in self.alive:
                    self.alive.remove(gateway)
                self.failovers += 1
            self.model[name][:] = self.index_hashes(name, self.gateway_for(turn))
            return
        with self.lock:
            self.edits.append((gateway, name, self.seq(name)))

    def write_round(self, name: str, turn: int) -> None:
        model = self.model.setdefault(name, [])

        def extend(vis: Room, _gw: str) -> None:
            new = [self.frames.new() for _ in range(2)]
            vis.extend([a for a, _ in new])
            model.extend(h for _, h in new)

        def patch(vis: Room, _gw: str) -> None:
            with self.frames.lock:
                pos = self.frames.rng.uniform(0, 5, size=(6, 3))
            vis.patch(0, positions=pos)
            model[0] = self.frames.patched(model[0], pos)

        def replace_last(vis: Room, _gw: str) -> None:
            atoms, h = self.frames.new()
            vis[len(model) - 1] = atoms
            model[-1] = h

        def delete_first(vis: Room, _gw: str) -> None:
            if len(model) > 3:
                del vis[0]
                del model[0]

        def locked_replace(vis: Room, gw: str) -> None:
            atoms, h = self.frames.new()
            with vis.lock(frames=[1], ttl=3.0, message="scale test"):
                vis[1] = atoms
            model[1] = h
            with self.lock:
                self.locked.append((gw, name))

        for k, op in enumerate([extend, patch, replace_last, delete_first]):
            self.edit(name, turn + k, op)
        if turn % 2 == 0:
            self.edit(name, turn // 2, locked_replace)  # through either gateway


# -- Socket.IO followers ------------------------------------------------------------------

class Follower:
    """Joins every room on one gateway and keeps, per room, the last seq it is at: from
    broadcasts in order, by asking over HTTP when it sees a gap, and by joining again on
    the other gateway when its own dies."""

    def __init__(self, svc: Services, gateway: str, rooms: list[str]) -> None:
        self.svc, self.rooms, self.gateway = svc, rooms, gateway
        self.seqs: dict[str, int] = {}
        self.live: set[tuple[str, int]] = set()
        self.lock_changes: set[str] = set()
        self.reconnects = 0
        self.gaps = 0
        self.closing = False
        self.mutex = threading.Lock()
        self.sio = self._connect(gateway)

    def _connect(self, gateway: str) -> socketio.Client:
        sio = socketio.Client(reconnection=False)
        sio.on("frames_changed", self._on_change)
        sio.on("lock_changed", lambda data: self._on_lock(data))
        sio.on("disconnect", self._on_disconnect)
        sio.connect(self.svc.url_of(gateway), transports=["websocket"])
        for room in self.rooms:
            ack = sio.call("join_room", {"room": room}, timeout=10)
            with self.mutex:
                self.seqs[room] = max(self.seqs.get(room, 0), int(ack["seq"]))
        return sio

    def _on_change(self, data: dict[str, Any]) -> None:
        room, seq = str(data["room"]), int(data["seq"])
        with self.mutex:
            self.live.add((room, seq))
            last = self.seqs.get(room, 0)
            if seq <= last:
                return
            if seq == last + 1:
                self.seqs[room] = seq
                return
            self.gaps += 1
        head = httpx.get(f"{self.svc.url_of(self.gateway)}/api/v1/rooms/{room}", timeout=10)
        with self.mutex:
            self.seqs[room] = max(self.seqs[room], seq, int(head.json()["seq"]))

    def _on_lock(self, data: dict[str, Any]) -> None:
        with self.mutex:
            self.lock_changes.add(str(data.get("room")))

    def _on_disconnect(self, *_: Any) -> None:
        if not self.closing:
            threading.Thread(target=self._failover, daemon=True).start()

    def _failover(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for gateway in GATEWAYS:
                if gateway != self.gateway and http_ok(f"{self.svc.url_of(gateway)}/readyz"):
                    self.gateway = gateway
                    self.sio = self._connect(gateway)
                    self.reconnects += 1
                    return
            time.sleep(0.1)

    def caught_up(self, r: redis.Redis) -> bool:
        with self.mutex:
            return all(self.seqs.get(room, 0) >= int(r.hget(keys.meta(room), "seq") or 0)
                       for room in self.rooms)

    def close(self) -> None:
        self.closing = True
        self.sio.disconnect()


# -- checks ----------------------------------------------------------------------------------

def instance(consumer: Any) -> str:
    """The instance key (``storage-2``) of a consumer name (``storage-2-<n>-<pid>``)."""
    return str(consumer.decode()).rsplit("-", 2)[0]


def live_replicas(r: redis.Redis) -> set[str]:
    now = int(r.time()[0]) * 1000
    return {instance(m) for m in r.zrangebyscore(keys.STORAGE_REPLICAS, now, "+inf")}


def lease_owners(r: redis.Redis, rooms: list[str]) -> dict[str, str | None]:
    values: list[Any] = [r.get(keys.storage_lease(room)) for room in rooms]
    return {room: None if v is None else instance(v)
            for room, v in zip(rooms, values, strict=True)}


def nothing_pending(r: redis.Redis, rooms: list[str]) -> bool:
    """No storage-group entry is left unacknowledged (the dead replica's were claimed)."""
    return all(int(r.xpending(keys.events(room), keys.STORAGE_GROUP)["pending"]) == 0
               for room in rooms)


def all_applied(r: redis.Redis, rooms: list[str]) -> bool:
    for room in rooms:
        seq = int(r.hget(keys.meta(room), "seq") or 0)
        if int(r.hget(keys.applied(room), "seq") or 0) < seq:
            return False
    return True


def append_everywhere(c: Cluster, gateway: str) -> None:
    for room in ROOMS:
        atoms, h = c.frames.new()
        c.room(gateway, room).append(atoms)
        c.model[room].append(h)


def assert_room_exactly(c: Cluster, room: str, gateway: str) -> None:
    want = c.model[room]
    seq = c.seq(room)
    assert int(c.r.hget(keys.applied(room), "seq") or 0) == seq
    assert c.index_hashes(room, gateway) == want, f"{room}: index differs from the model"
    got = [frame_hash(atoms_to_frame(a)) for a in c.room(gateway, room)[:]]
    assert got == want, f"{room}: frames read through {gateway} differ"
    store = open_store(c.svc.storage_url)
    applied_seq, order, frame_ids, _ = store.read_projection(room)
    assert applied_seq == seq
    assert len(set(int(f) for f in frame_ids)) == len(frame_ids) == len(want)
    frames = store.read_slots(room, [int(s) for s in order])
    assert [frame_hash(f) for f in frames] == want, f"{room}: Zarr differs from the model"


def test_scale_out_survives_kills_and_rebalances(scale_services: Services) -> None:
    svc = scale_services
    r = redis.Redis.from_url(svc.redis_url)
    c = Cluster(svc, r, Frames(seed=5))
    wait_until(lambda: len(live_replicas(r)) == 3, 30, "3 storage replicas registered")
    followers = [Follower(svc, gw, [*ROOMS, SHARED]) for gw in GATEWAYS for _ in range(2)]
    try:
        run_scenario(svc, r, c, followers)
    finally:
        for f in followers:
            f.close()


def run_scenario(svc: Services, r: redis.Redis, c: Cluster, followers: list[Follower]
                 ) -> None:
    phase1 = [threading.Event() for _ in range(WRITERS)]
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            mine = ROOMS[i::WRITERS]
            for turn in range(ROUNDS):
                for k, room in enumerate(mine):
                    c.write_round(room, turn + k)
                if turn == ROUNDS_BEFORE_KILL - 1:
                    phase1[i].set()
        except BaseException as exc:
            errors.append(exc)
            raise
        finally:
            phase1[i].set()

    shared_writes: dict[str, list[str]] = {gw: [] for gw in GATEWAYS}

    def shared_writer(gateway: str) -> None:
        vis = c.room(gateway, SHARED)
        for _ in range(10):
            atoms, h = c.frames.new()
            vis.append(atoms)
            shared_writes[gateway].append(h)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    shared = [threading.Thread(target=shared_writer, args=(gw,)) for gw in GATEWAYS]
    for t in [*threads, *shared]:
        t.start()
    for t in shared:
        t.join(60)
    for ev in phase1:
        assert ev.wait(90), "writers did not reach the kill point"
    assert not errors, errors
    with c.lock:
        edits, locked = list(c.edits), list(c.locked)

    # Cross-gateway delivery: the followers of gateway-1 heard every edit and lock
    # made through gateway-2 (frames_changed from the room streams, lock_changed
    # relayed from the bus), and vice versa.
    def heard_other_gateway() -> bool:
        for f in followers:
            other = [(room, seq) for gw, room, seq in edits if gw != f.gateway]
            other_locks = {room for gw, room in locked if gw != f.gateway}
            if not set(other) <= f.live or not other_locks <= f.lock_changes:
                return False
        return True

    wait_until(heard_other_gateway, 30, "broadcasts across gateways")
    assert any(gw == "gateway-2" for gw, _ in locked)

    # Several control replicas appended to one room concurrently: nothing lost or
    # doubled, each writer's order kept.
    shared_hashes = c.index_hashes(SHARED, "gateway-2")
    assert sorted(shared_hashes) == sorted(h for ws in shared_writes.values() for h in ws)
    for writes in shared_writes.values():
        assert [h for h in shared_hashes if h in set(writes)] == writes
    c.model[SHARED] = shared_hashes

    # Midway, under load: SIGKILL one storage replica (which owns rooms) and a gateway.
    assert "storage-1" in lease_owners(r, ROOMS).values()
    svc.kill("storage-1")
    svc.kill("gateway-1")
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)

    # The dead replica drops out of the registry; the survivors own every room.
    wait_until(lambda: live_replicas(r) == {"storage-2", "storage-3"}, 30,
               "storage-1 to leave the registry")
    append_everywhere(c, "gateway-2")
    wait_until(lambda: all_applied(r, [*ROOMS, SHARED]), 60, "survivors to apply everything")
    owners = lease_owners(r, ROOMS)
    assert set(owners.values()) <= {"storage-2", "storage-3", None}
    assert {"storage-2", "storage-3"} <= set(owners.values())

    # A new replica joins: it takes some rooms over.
    svc.start("storage", "storage-4")
    wait_until(lambda: "storage-4" in live_replicas(r), 30, "storage-4 to register")

    def storage4_owns_rooms() -> bool:
        append_everywhere(c, "gateway-2")
        wait_until(lambda: all_applied(r, ROOMS), 60, "rooms applied")
        return "storage-4" in lease_owners(r, ROOMS).values()

    wait_until(storage4_owns_rooms, 40, "storage-4 to take rooms over")

    # Every acknowledged edit is in Zarr exactly once, and readable through gateway-2.
    wait_until(lambda: all_applied(r, [*ROOMS, SHARED]), 60, "everything applied")
    for room in [*ROOMS, SHARED]:
        assert_room_exactly(c, room, "gateway-2")
    wait_until(lambda: nothing_pending(r, [*ROOMS, SHARED]), 30, "no pending entries")
    assert c.failovers >= 1 or "gateway-1" not in c.alive
    # The snapshotter trimmed streams during the run.
    first: list[Any] = [r.xrange(keys.events(room), count=1) for room in ROOMS]
    assert any(entries and int(entries[0][0].split(b"-")[0]) > 1 for entries in first)

    # Every follower caught up; those of the killed gateway moved to the other one.
    for f in followers:
        wait_until(lambda f=f: f.caught_up(r), 30, "followers to catch up")  # type: ignore[misc]
        assert f.gateway == "gateway-2"
    assert sum(f.reconnects for f in followers) == 2
