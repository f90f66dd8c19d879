"""trajhub on a real 3-primary Redis Cluster (tests/cluster_fixture.py).

Rooms are picked so that their keys live on different nodes. Control, the index reader,
storage, the snapshotter (trim) and the consumers' reconciliation run on the cluster
client of ``trajhub.shared.redis_util``; every script call is recorded and must name
keys of one slot, its room's.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
import redis.asyncio as aioredis
from control_testutil import make_frame
from redis.asyncio.cluster import RedisCluster
from redis.cluster import key_slot

from tests.cluster_fixture import SLOTS, RedisClusterProcs, cluster_url, redis_cluster
from trajhub.control import Control, IndexReader
from trajhub.control import scripts as control_scripts
from trajhub.gateway.bus import Bus
from trajhub.shared import codec, consumer, hashing, keys, staging
from trajhub.shared.collab import LockAcquire, LockRelease, PresenterRequest, SetStep
from trajhub.shared.events import CommitResult, Event, InsertFrames, Redo, ReplaceFrames, Undo
from trajhub.shared.history_store import ZarrHistoryStore
from trajhub.shared.redis_util import (
    async_client,
    is_cluster,
    node_urls,
    parse_cluster_url,
    sync_client,
    used_memory,
)
from trajhub.shared.staging import locate_staged, pointing_markers
from trajhub.shared.zarr_store import ZarrFrameStore
from trajhub.snapshotter import compaction, history
from trajhub.snapshotter.history import read_progress
from trajhub.snapshotter.worker import SnapshotterWorker
from trajhub.storage import worker as storage_worker
from trajhub.storage.worker import StorageWorker

__all__ = ["cluster_url", "redis_cluster"]


def node_of(cluster: RedisClusterProcs, key: str) -> int:
    """Which node owns ``key`` (slots are split evenly, in node order)."""
    return key_slot(key.encode()) * cluster.n // SLOTS


@pytest.fixture(scope="module")
def rooms(redis_cluster: RedisClusterProcs) -> list[str]:
    """One room per node."""
    found: dict[int, str] = {}
    for i in itertools.count():
        name = f"room-{i}"
        found.setdefault(node_of(redis_cluster, keys.meta(name)), name)
        if len(found) == redis_cluster.n:
            return [found[n] for n in range(redis_cluster.n)]
    raise AssertionError("unreachable")


@pytest.fixture
async def rc(cluster_url: str) -> AsyncIterator[aioredis.Redis]:
    client = async_client(cluster_url)
    assert is_cluster(client)
    yield client
    await client.aclose()


@pytest.fixture
def script_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, list[Any]]]]:
    """Every EVAL/EVALSHA the cluster clients route: (command, keys); checked when the
    test ends: the keys of one call are one room's (or one cross-room key), one slot."""
    calls: list[tuple[str, list[Any]]] = []
    original = RedisCluster._determine_slot

    async def recording(self: RedisCluster, command: str, *args: Any) -> int:
        if command.upper() in ("EVAL", "EVALSHA"):
            calls.append((command.upper(), list(args[2:2 + int(args[1])])))
        return await original(self, command, *args)

    monkeypatch.setattr(RedisCluster, "_determine_slot", recording)
    yield calls
    for command, names in calls:
        assert names, f"{command} without keys (would run on a random node)"
        tags = {m.group(1) if (m := re.match(rb"\{([^}]+)\}", _b(name))) else None
                for name in names}
        # One room's keys, or a single cross-room key (e.g. the storage replica set).
        assert len(tags) == 1 and (None not in tags or len(names) == 1), (command, names)
        slots = {key_slot(_b(name)) for name in names}
        assert len(slots) == 1, f"{command} spans slots {slots}: {names}"
    assert calls


def _b(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


async def stage(rc: aioredis.Redis, plan: dict[str, list[int]]) -> dict[str, list[str]]:
    """Stage frames of several rooms in one pipeline (it spans the nodes)."""
    hashes: dict[str, list[str]] = {}
    async with rc.pipeline(transaction=False) as pipe:
        for room, ids in plan.items():
            for i in ids:
                frame = make_frame(i)
                hashes.setdefault(room, []).append(hashing.frame_hash(frame))
                pipe.set(keys.blob(room, hashes[room][-1]), codec.frame_to_bytes(frame), ex=60)
        assert all(await pipe.execute())
    return hashes


def ok(result: CommitResult) -> Event:
    assert result.status == "ok", result.reason
    assert result.event is not None
    return result.event


def test_rooms_land_on_every_node(redis_cluster: RedisClusterProcs, rooms: list[str]) -> None:
    assert sorted(node_of(redis_cluster, keys.meta(r)) for r in rooms) == [0, 1, 2]
    for room in rooms:  # the node that answers for the room's keys is the one computed
        node = redis_cluster.node(node_of(redis_cluster, keys.meta(room)))
        node.hset(keys.meta(room), "probe", 1)
        assert node.hget(keys.meta(room), "probe") == b"1"
        node.close()


async def test_commits_locks_undo_and_presenter_on_every_node(
        rc: aioredis.Redis, rooms: list[str],
        script_calls: list[tuple[str, list[Any]]]) -> None:
    control = Control(rc)
    staged = await stage(rc, {room: [0, 1, 2, 3] for room in rooms})
    for room in rooms:
        h = staged[room]
        ok(await control.commit(InsertFrames(room=room, author="alice", hashes=h[:3])))
        lock = await control.acquire_lock(LockAcquire(room=room, author="alice",
                                                      target={"frame_ids": [1]}))
        assert lock.status == "ok" and lock.token and lock.fence
        refused = await control.commit(ReplaceFrames(room=room, author="bob", frame_ids=[1],
                                                     hashes=[h[3]]))
        assert refused.status == "locked"
        ok(await control.commit(ReplaceFrames(room=room, author="alice", frame_ids=[1],
                                              hashes=[h[3]], lock_token=lock.token,
                                              fence=lock.fence)))
        assert (await control.release_lock(LockRelease(room=room, token=lock.token))).status == "ok"
        assert [e.hash for e in (await IndexReader(rc).read(room)).entries] == [h[0], h[3], h[2]]
        undone = ok(await control.commit(Undo(room=room, author="alice")))
        assert undone.kind == "undo"
        assert [e.hash for e in (await IndexReader(rc).read(room)).entries] == h[:3]
        ok(await control.commit(Redo(room=room, author="alice")))
        presenter = await control.request_presenter(PresenterRequest(room=room, author="alice"))
        assert presenter.status == "ok" and presenter.token
        step = await control.set_step(SetStep(room=room, author="alice", frame=2,
                                              token=presenter.token))
        assert step.status == "ok"
        assert (await control.get_step(room)).frame == 2
        info = await control.room_info(room)  # a MULTI on the room's slot
        assert info is not None and info["seq"] == 4 and info["n_frames"] == 3
    listed = await IndexReader(rc).list_rooms()  # SMEMBERS + a pipeline over the nodes
    assert [(name, n, seq) for name, n, seq in listed] == [(r, 3, 4) for r in sorted(rooms)]
    assert await rc.smembers(keys.ROOMS) == {r.encode() for r in rooms}
    notes: Any = await rc.xrange(keys.NOTIFY)
    assert {f[b"room"].decode() for _, f in notes} == set(rooms)
    assert len(notes) == 5 * len(rooms)  # one per commit, refused or not


async def test_a_flushed_script_cache_is_reloaded_on_every_node(
        rc: aioredis.Redis, redis_cluster: RedisClusterProcs, rooms: list[str]) -> None:
    control = Control(rc)
    staged = await stage(rc, {room: [0, 1] for room in rooms})
    ok(await control.commit(InsertFrames(room=rooms[0], hashes=staged[rooms[0]][:1])))
    redis_cluster.flush_scripts()
    for room in rooms:
        ok(await control.commit(InsertFrames(room=room, hashes=staged[room][1:])))


async def test_storage_and_snapshotter_find_rooms_by_reconciliation(
        cluster_url: str, rc: aioredis.Redis, rooms: list[str], tmp_path: Path,
        script_calls: list[tuple[str, list[Any]]]) -> None:
    control = Control(rc)
    staged = await stage(rc, {room: list(range(6)) for room in rooms})
    for room in rooms:
        for h in staged[room]:
            ok(await control.commit(InsertFrames(room=room, hashes=[h])))
    await rc.delete(keys.NOTIFY)  # lost hints: only the reconciliation can find the rooms
    store = ZarrFrameStore(tmp_path / "zarr")
    hist = ZarrHistoryStore(tmp_path / "zarr")
    storage = StorageWorker(cluster_url, store, "w1")
    snap = SnapshotterWorker(cluster_url, "snap-1", history=hist, every_events=3,
                             every_bytes=0, segment_events=4)
    try:
        assert await storage.rooms_behind() == set(rooms)
        assert await snap.rooms_behind() == set(rooms)
        for room in rooms:
            assert await storage.process_room(room) == 6
            assert await snap.process_room(room) == 6
        assert await storage.rooms_behind() == set()
        assert await snap.rooms_behind() == set()
    finally:
        await storage.aclose()
        await snap.aclose()
    for room in rooms:
        assert await rc.hget(keys.applied(room), "seq") == b"6"
        assert await rc.exists(*(keys.blob(room, h) for h in staged[room])) == 0
        frames = store.read_slots(room, list(range(6)))
        assert [hashing.frame_hash(f) for f in frames] == staged[room]
        assert (await read_progress(rc, room)).snapshot_seq == 6
        assert await rc.xlen(keys.events(room)) == 0  # archived, acknowledged, trimmed
        assert await history.trim(rc, room) == 6


async def test_storage_run_loop_follows_rooms_on_every_node(
        cluster_url: str, rc: aioredis.Redis, rooms: list[str], tmp_path: Path) -> None:
    control = Control(rc)
    storage = StorageWorker(cluster_url, ZarrFrameStore(tmp_path / "zarr"), "w1",
                            reconcile_s=3600)  # only the notify hints (XREAD BLOCK)
    stop = asyncio.Event()
    task = asyncio.create_task(storage.run(stop))
    try:
        staged = await stage(rc, {room: [0, 1] for room in rooms})
        for room in rooms:
            ok(await control.commit(InsertFrames(room=room, hashes=staged[room])))

        async def applied() -> bool:
            seqs = [await rc.hget(keys.applied(room), "seq") for room in rooms]
            return seqs == [b"1"] * len(rooms)

        for _ in range(600):
            if await applied():
                break
            await asyncio.sleep(0.05)
        assert await applied()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await storage.aclose()


async def test_compaction_forget_and_lease_scripts_on_every_node(
        cluster_url: str, rc: aioredis.Redis, rooms: list[str], tmp_path: Path,
        script_calls: list[tuple[str, list[Any]]]) -> None:
    control = Control(rc)
    staged = await stage(rc, {room: [0] for room in rooms})
    for room in rooms:
        ok(await control.commit(InsertFrames(room=room, hashes=staged[room])))
        assert await compaction.compacted_below(rc, room) == 0
        (located,) = await locate_staged(rc, room, staged[room][:1])
        assert located.size > 0 and located.ref is None
        assert await pointing_markers(rc, room, staged[room][:1]) == [None]
    w = StorageWorker(cluster_url, ZarrFrameStore(tmp_path / "zarr"), "w1")
    try:
        for room in rooms:
            assert await w._take_lease(room)
            assert await w.renew_lease(room)
            await w.release_lease(room)
            assert await rc.exists(keys.storage_lease(room)) == 0
    finally:
        await w.aclose()


async def test_bus_relays_between_gateways_on_a_cluster(cluster_url: str,
                                                        rc: aioredis.Redis) -> None:
    heard: list[tuple[str, str, dict[str, Any]]] = []
    got = asyncio.Event()

    async def deliver(room: str, event: str, data: dict[str, Any]) -> None:
        heard.append((room, event, data))
        got.set()

    listener = Bus(cluster_url, deliver, lambda: rc)
    other = async_client(cluster_url)
    speaker = Bus(cluster_url, deliver, lambda: other)
    await listener.start()
    try:
        await speaker.publish("room-1", "lock_changed", {"locks": []})
        await asyncio.wait_for(got.wait(), 10)
    finally:
        await listener.stop()
        await other.aclose()
    assert heard == [("room-1", "lock_changed", {"locks": []})]


async def test_staging_budget_reads_every_primary(rc: aioredis.Redis) -> None:
    assert await used_memory(rc) > 0


def test_sync_client_and_urls(cluster_url: str, rooms: list[str]) -> None:
    client = sync_client(cluster_url)
    try:
        assert is_cluster(client)
        for room in rooms:
            client.hset(keys.meta(room), "seq", 1)
        assert [client.hget(keys.meta(room), "seq") for room in rooms] == [b"1"] * len(rooms)
    finally:
        client.close()
    parsed = parse_cluster_url("rediss+cluster://u:p%40ss@h1:7000,[::1]:7001/0?x=1")
    assert parsed.nodes == [("h1", 7000), ("::1", 7001)]
    assert (parsed.username, parsed.password, parsed.ssl) == ("u", "p@ss", True)
    assert len(node_urls(cluster_url)) == 3
    assert node_urls("redis://h:1/0") == ["redis://h:1/0"]
    with pytest.raises(ValueError):
        parse_cluster_url("redis+cluster://h1:7000/3")


def _lua_sources() -> dict[str, str]:
    sources = {f"control:{name}": text for name, text in (
        *((f"commit:{op}", control_scripts.commit_script(op))
          for op in get_args(control_scripts.CommitOp)),
        ("read_index", control_scripts.read_index_script()),
        ("lock", control_scripts.lock_script()),
        ("presenter", control_scripts.presenter_script()),
        ("fork", control_scripts.fork_script()))}
    modules = {"consumer": consumer, "storage.worker": storage_worker, "shared.staging": staging,
               "snapshotter.history": history, "snapshotter.compaction": compaction}
    for module_name, module in modules.items():
        for name, value in vars(module).items():
            if name.endswith("_LUA") and isinstance(value, str):
                sources[f"{module_name}:{name}"] = value
    return sources


def test_lua_scripts_only_touch_the_keys_they_are_given() -> None:
    """A script may only touch keys passed in KEYS (all of one room: checked on the
    cluster by ``script_calls``): no key name is built inside a script."""
    sources = _lua_sources()
    assert len(sources) >= 12
    for name, source in sources.items():
        assert not re.search(r"trajhub:[a-z]", source), f"{name} names a cross-room key"
        for call in re.finditer(r"redis\.call\(\s*'([A-Z]+)'\s*,\s*([^,)]+)", source):
            command, first = call.group(1), call.group(2).strip()
            if command in ("TIME",):
                continue
            assert ".." not in first, f"{name}: {command} on a key built in the script"
            assert not first.startswith(("'", '"')), f"{name}: {command} on a literal key"


def test_every_key_of_a_room_hashes_to_its_slot() -> None:
    room = "water.box-1"
    slot = key_slot(keys.meta(room).encode())
    builders = [name for name in dir(keys) if not name.startswith("_") and callable(
        getattr(keys, name)) and name not in ("room_keys",)]
    names: list[str] = list(keys.room_keys(room))
    for name in builders:
        fn = getattr(keys, name)
        try:
            value = fn(room)
        except TypeError:
            value = fn(room, "x" * 64)
        names.extend(value if isinstance(value, list) else [value])
    assert len(names) > 20
    assert {key_slot(n.encode()) for n in names} == {slot}
