"""Bulk uploads staged as packs in the frame store, with markers in Redis: the gateway
writes them, readers follow them, storage applies and releases them, the sweep removes
the ones nobody committed. Real Redis, real Zarr directories, real HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis.asyncio as aioredis
from gateway_server import (  # noqa: F401  (fixtures)
    GatewayServer,
    apply_room,
    gateway,
    get_frames,
    make_frame,
    post_frames,
    start_gateway,
)
from redis import Redis
from zarr.abc.store import Store
from zarr.storage import LocalStore, MemoryStore

from tests.helpers import eventually
from tests.s3_fixture import new_s3_url
from trajhub.gateway.staging import Stager
from trajhub.shared import codec, keys
from trajhub.shared.buffers import BlockPool
from trajhub.shared.events import Event
from trajhub.shared.frames import Frame, frames_equal, validate_frame
from trajhub.shared.hashing import frame_hash
from trajhub.shared.staging import (
    MARKER,
    Located,
    PackRef,
    StagingPacks,
    locate_staged,
    marker,
    parse_marker,
    pointing_markers,
    read_located,
    release_packs,
    resolve,
    sweep,
    unlink_staged,
)
from trajhub.shared.zarr_store import open_store, open_zarr_store
from trajhub.storage.worker import StorageWorker

ROOM = "packs"
BIG_ATOMS = 25_000  # ~1 MB per frame with the extras: two frames pass 1 MiB


@pytest.fixture
def client(gateway: GatewayServer) -> Iterator[httpx.Client]:  # noqa: F811
    with httpx.Client(base_url=gateway.url, timeout=30) as c:
        yield c


def staging_dir(tmp_path: Path, room: str = ROOM) -> Path:
    return tmp_path / "zarr" / room / "_staging"


def pack_files(tmp_path: Path, room: str = ROOM) -> list[Path]:
    d = staging_dir(tmp_path, room)
    return sorted(d.iterdir()) if d.exists() else []


def staged_values(redis_url: str, frames: list[Frame], room: str = ROOM) -> list[bytes | None]:
    with Redis.from_url(redis_url) as r:
        return list(r.mget([keys.blob(room, frame_hash(f)) for f in frames]))


def big_frames(n: int, seed: int = 0) -> list[Frame]:
    return [validate_frame(make_frame(BIG_ATOMS, seed=seed + i)) for i in range(n)]


def assert_frames(client: httpx.Client, expected: list[Frame], room: str = ROOM) -> None:
    got = get_frames(client, room)
    assert got["hashes"] == [frame_hash(f) for f in expected]
    for want, have in zip(expected, got["frames"], strict=True):
        assert frames_equal(want, have)


def test_a_bulk_upload_is_staged_as_one_pack_read_from_it_and_released_once_applied(
        client: httpx.Client, redis_url: str, tmp_path: Path,
        apply_room: Callable[[str], int]) -> None:  # noqa: F811
    frames = big_frames(3)
    r = post_frames(client, ROOM, frames)
    assert r.status_code == 201, r.text

    packs = pack_files(tmp_path)
    assert len(packs) == 1, "one request, one pack"
    values = staged_values(redis_url, frames)
    refs = [parse_marker(v) for v in values]
    assert all(v is not None and v[:1] == MARKER and len(v) < 100 for v in values), \
        "Redis holds small markers, not the frames"
    assert {ref.pack for ref in refs if ref is not None} == {packs[0].name}
    sizes = [len(codec.frame_to_bytes(f)) for f in frames]
    assert [ref.size for ref in refs if ref is not None] == sizes

    # Committed, not applied (no storage runs here): served from the pack.
    assert_frames(client, frames)

    assert apply_room(ROOM) == 1
    assert staged_values(redis_url, frames) == [None] * 3
    assert pack_files(tmp_path) == [], "storage releases the pack it applied"
    stored = open_store(str(tmp_path / "zarr")).read_slots(ROOM, [0, 1, 2])
    for want, have in zip(frames, stored, strict=True):
        assert frames_equal(want, have)
    assert_frames(client, frames)


def test_storage_releases_what_it_applied_before_a_crash(
        client: httpx.Client, redis_url: str, tmp_path: Path) -> None:
    """A replica that applied a batch and died before acknowledging it: the next one
    finds those events done, never read their blobs itself, and still unlinks them and
    releases their pack."""
    frames = big_frames(2, seed=7)
    assert post_frames(client, ROOM, frames).status_code == 201

    async def go() -> None:
        with Redis.from_url(redis_url) as r:
            events = [Event.from_stream(fields) for _, fields in r.xrange(keys.events(ROOM))]
        first = StorageWorker(redis_url, open_store(str(tmp_path / "zarr")), "w1")
        second = StorageWorker(redis_url, open_store(str(tmp_path / "zarr")), "w2")
        try:
            assert await first._take_lease(ROOM)
            assert await first.handle_batch(ROOM, events) == len(events)  # (no ack)
            await first.release_lease(ROOM)  # (or let it expire)
            assert len(pack_files(tmp_path)) == 1
            assert await second.apply_room(ROOM) == 0, "nothing left to apply"
        finally:
            await first.aclose()
            await second.aclose()

    asyncio.run(go())
    assert staged_values(redis_url, frames) == [None, None]
    assert pack_files(tmp_path) == []
    assert_frames(client, frames)


def test_a_crash_at_the_ack_leaves_no_blob_or_pack_behind(
        client: httpx.Client, redis_url: str, tmp_path: Path) -> None:
    """Storage deletes the applied blobs before it acknowledges their events: a replica
    that dies at the ack has cleaned up already, and the one that restarts finds the
    events applied and acknowledges them."""
    frames = big_frames(2, seed=11)
    assert post_frames(client, ROOM, frames).status_code == 201

    class Died(Exception):
        pass

    async def die(*_: object) -> None:
        raise Died

    async def go() -> None:
        first = StorageWorker(redis_url, open_store(str(tmp_path / "zarr")), "w1")
        first.redis.xack = die  # type: ignore[method-assign]
        try:
            with pytest.raises(Died):
                await first.apply_room(ROOM)
        finally:
            await first.aclose()
        assert staged_values(redis_url, frames) == [None, None]
        assert pack_files(tmp_path) == []
        with Redis.from_url(redis_url) as r:
            assert r.xpending(keys.events(ROOM), keys.STORAGE_GROUP)["pending"] == 1
        second = StorageWorker(redis_url, open_store(str(tmp_path / "zarr")), "w1")
        try:
            assert await second.apply_room(ROOM) == 0, "applied before the crash"
        finally:
            await second.aclose()
        with Redis.from_url(redis_url) as r:
            assert r.xpending(keys.events(ROOM), keys.STORAGE_GROUP)["pending"] == 0

    asyncio.run(go())
    assert_frames(client, frames)


def test_a_small_edit_stays_in_redis(client: httpx.Client, redis_url: str,
                                     tmp_path: Path) -> None:
    frames = [validate_frame(make_frame(50, seed=1))]
    assert post_frames(client, ROOM, frames).status_code == 201
    assert staged_values(redis_url, frames) == [codec.frame_to_bytes(frames[0])]
    assert pack_files(tmp_path) == []


def test_packs_can_be_turned_off(start_gateway: Callable[..., GatewayServer],  # noqa: F811
                                 redis_url: str, tmp_path: Path) -> None:
    server = start_gateway(staging_pack_mb=0)
    frames = big_frames(2)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert post_frames(c, ROOM, frames).status_code == 201
        assert_frames(c, frames)
    assert staged_values(redis_url, frames) == [codec.frame_to_bytes(f) for f in frames]
    assert pack_files(tmp_path) == []


def test_a_lost_pack_is_a_missing_blob_for_storage(
        client: httpx.Client, redis_url: str, tmp_path: Path,
        apply_room: Callable[[str], int]) -> None:  # noqa: F811
    frames = big_frames(2)
    assert post_frames(client, ROOM, frames).status_code == 201
    (pack,) = pack_files(tmp_path)
    data = pack.read_bytes()
    pack.unlink()
    assert apply_room(ROOM) == 0, "nothing is applied without the frames"
    assert all(v is not None for v in staged_values(redis_url, frames)), \
        "the markers stay for a retry"
    pack.write_bytes(data)
    assert apply_room(ROOM) == 1
    assert pack_files(tmp_path) == []
    assert_frames(client, frames)


def test_duplicate_content_in_one_upload_is_packed_once(
        client: httpx.Client, redis_url: str, tmp_path: Path,
        apply_room: Callable[[str], int]) -> None:  # noqa: F811
    a, b = big_frames(2, seed=5)
    r = post_frames(client, ROOM, [a, b, a])
    assert r.status_code == 201, r.text
    (pack,) = pack_files(tmp_path)
    sizes = [len(codec.frame_to_bytes(f)) for f in (a, b)]
    assert pack.stat().st_size == 8 + 4 + 2 * 32 + sum(sizes)
    assert_frames(client, [a, b, a])
    assert apply_room(ROOM) == 1
    assert pack_files(tmp_path) == []
    assert_frames(client, [a, b, a])


def test_the_gateway_sweeps_the_pack_of_a_refused_upload(
        start_gateway: Callable[..., GatewayServer], redis_url: str,  # noqa: F811
        tmp_path: Path) -> None:
    server = start_gateway(staging_ttl_s=1)
    frames = big_frames(2)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert post_frames(c, ROOM, frames).status_code == 201
        (committed,) = pack_files(tmp_path)
        body = codec.frames_to_bytes(big_frames(2, seed=50), indices=[0, 1],
                                     base_versions=[7, 7])
        stale = c.put(f"/api/v1/rooms/{ROOM}/frames", content=body,
                      headers={"content-type": "application/msgpack"})
        assert stale.status_code == 409, stale.text
        assert len(pack_files(tmp_path)) == 2

        async def only_the_committed_pack_is_left() -> bool:
            return pack_files(tmp_path) == [committed]

        asyncio.run(eventually(only_the_committed_pack_is_left, limit_s=15))
        assert_frames(c, frames)


# -- the Redis side, directly -------------------------------------------------------------

def frame_blobs(n: int, seed: int = 0) -> tuple[list[str], list[bytes]]:
    frames = [validate_frame(make_frame(40, seed=seed + i)) for i in range(n)]
    return [frame_hash(f) for f in frames], [codec.frame_to_bytes(f) for f in frames]


async def test_stager_stages_a_pack_for_http_control(r: aioredis.Redis,
                                                     tmp_path: Path) -> None:
    packs = StagingPacks(LocalStore(tmp_path / "store"))
    stager = Stager(r, ttl_s=60, budget_bytes=1 << 40, pack_min_bytes=1)
    stager.packs = packs
    hashes, blobs = frame_blobs(3)
    await stager.stage(ROOM, hashes, blobs)
    values = await r.mget([keys.blob(ROOM, h) for h in hashes])
    assert all(parse_marker(v) is not None for v in values)
    assert 0 < await r.ttl(keys.blob(ROOM, hashes[0])) <= 60
    assert resolve(packs, ROOM, values) == blobs
    assert len(packs.packs(ROOM)) == 1


async def staged_pack(r: aioredis.Redis, tmp_path: Path
                      ) -> tuple[StagingPacks, list[str], list[bytes], str]:
    """Three frames written as one pack, a marker in Redis for each: (packs, hashes,
    blobs, the pack's name)."""
    packs = StagingPacks(LocalStore(tmp_path / "store"))
    hashes, blobs = frame_blobs(3)
    markers = packs.write(ROOM, hashes, blobs)
    (name,) = packs.packs(ROOM)
    await r.mset({keys.blob(ROOM, h): m for h, m in markers.items()})
    return packs, hashes, blobs, name


async def test_a_pack_is_released_only_once_no_marker_points_to_it(
        r: aioredis.Redis, tmp_path: Path) -> None:
    packs, hashes, blobs, name = await staged_pack(r, tmp_path)
    assert await release_packs(r, packs, ROOM, [name]) == []
    await r.delete(keys.blob(ROOM, hashes[0]), keys.blob(ROOM, hashes[1]))
    assert await release_packs(r, packs, ROOM, [name]) == [], "one frame still waits"
    # A marker of the same content into another pack does not hold this one.
    other = packs.write(ROOM, hashes[2:], blobs[2:])
    await r.set(keys.blob(ROOM, hashes[2]), other[hashes[2]])
    assert await release_packs(r, packs, ROOM, [name]) == [name]
    assert packs.packs(ROOM) == [parse_marker(other[hashes[2]]).pack]  # type: ignore[union-attr]
    refs = await pointing_markers(r, ROOM, hashes)
    assert refs[:2] == [None, None] and refs[2] is not None


async def test_markers_are_read_and_unlinked_for_more_keys_than_lua_can_unpack(
        r: aioredis.Redis) -> None:
    # One storage batch of 10,000 small frames: Lua's unpack() takes at most 8000.
    hashes = [f"{i:064x}" for i in range(9_001)]
    ref = PackRef("0000000000001-pack", 0, 10)
    await r.mset({keys.blob(ROOM, h): (marker(ref) if i % 2 else b"blob")
                  for i, h in enumerate(hashes)})
    refs = await pointing_markers(r, ROOM, hashes, unlink=True)
    assert refs == [ref if i % 2 else None for i in range(len(hashes))]
    assert await r.exists(*(keys.blob(ROOM, h) for h in hashes)) == 0


async def test_blobs_are_located_with_each_key_read_once(r: aioredis.Redis) -> None:
    """A marker comes back whole, with its frame's size; a frame staged in Redis, its own
    size (short or long); a key that is gone, 0."""
    ref = PackRef("0000000000001-pack", 96, 123_456)
    values = {"marker": marker(ref), "short": b"\x83" + b"s" * 40,
              "long": b"\x83" + b"l" * 5_000, "edge": b"\x83" + b"e" * 255}
    await r.mset({keys.blob(ROOM, k): v for k, v in values.items()})
    names = [*values, "gone"]
    assert await locate_staged(r, ROOM, names) == [
        Located(123_456, ref), Located(41, None), Located(5_001, None), Located(256, None),
        Located(0, None)]
    assert await pointing_markers(r, ROOM, names) == [ref, None, None, None, None]


async def test_located_blobs_are_read_from_their_pack_or_from_redis(
        r: aioredis.Redis, tmp_path: Path) -> None:
    packs = StagingPacks(LocalStore(tmp_path / "store"))
    hashes, blobs = frame_blobs(4)
    markers = packs.write(ROOM, hashes[:2], blobs[:2])
    await r.mset({keys.blob(ROOM, hashes[0]): markers[hashes[0]],
                  keys.blob(ROOM, hashes[1]): markers[hashes[1]],
                  keys.blob(ROOM, hashes[2]): blobs[2]})
    located = await locate_staged(r, ROOM, hashes)
    assert [at.ref is not None for at in located] == [True, True, False, False]
    assert [at.size for at in located] == [len(b) for b in blobs[:3]] + [0]
    assert await read_located(r, packs, ROOM, hashes, located) == [*blobs[:3], None]
    assert await read_located(r, None, ROOM, hashes, located) == [None, None, blobs[2], None]
    await unlink_staged(r, ROOM, hashes)
    assert await r.exists(*(keys.blob(ROOM, h) for h in hashes)) == 0


async def test_a_pack_whose_markers_were_all_unlinked_is_released_without_a_recheck(
        r: aioredis.Redis, tmp_path: Path) -> None:
    packs, hashes, _, name = await staged_pack(r, tmp_path)
    # Told of only some of its frames, the markers are asked: one still points to it.
    assert await release_packs(r, packs, ROOM, [name], {h: name for h in hashes[:2]}) == []
    # Told of all of them (their markers read and unlinked), Redis is not asked again:
    # the marker still set here would otherwise hold the pack.
    assert await release_packs(r, packs, ROOM, [name], {h: name for h in hashes}) == [name]
    assert packs.packs(ROOM) == []


async def test_sweep_deletes_old_unreferenced_packs_only(r: aioredis.Redis,
                                                         tmp_path: Path) -> None:
    packs = StagingPacks(LocalStore(tmp_path / "store"))
    hashes, blobs = frame_blobs(4)
    committed = packs.write(ROOM, hashes[:2], blobs[:2])  # its markers persist
    packs.write(ROOM, hashes[2:], blobs[2:])  # never committed: no markers
    packs.write("other-room", hashes[:1], blobs[:1])
    await r.mset({keys.blob(ROOM, h): m for h, m in committed.items()})
    assert len(packs.packs(ROOM)) == 2

    assert await sweep(r, packs, ttl_s=3600) == [], "young packs stay"
    gone = await sweep(r, packs, ttl_s=3600, now=time.time() + 7200)
    assert sorted(room for room, _ in gone) == ["other-room", ROOM]
    (left,) = packs.packs(ROOM)
    assert left == parse_marker(committed[hashes[0]]).pack  # type: ignore[union-attr]
    assert packs.packs("other-room") == []


# -- the pack store contract, on a local directory and on any other zarr store -----------

@pytest.fixture(params=["local", "memory", "s3"])
def any_packs(request: pytest.FixtureRequest, tmp_path: Path) -> StagingPacks:
    store: Store
    if request.param == "local":
        store = LocalStore(tmp_path / "s")
    elif request.param == "memory":
        store = MemoryStore()
    else:
        store = open_zarr_store(new_s3_url())
    return StagingPacks(store, fsync=True)


def test_pack_store_contract(any_packs: StagingPacks) -> None:
    hashes, blobs = frame_blobs(3, seed=9)
    markers = any_packs.write(ROOM, [*hashes, hashes[0]], [*blobs, blobs[0]])
    assert list(markers) == hashes
    refs = [parse_marker(m) for m in markers.values()]
    assert all(ref is not None for ref in refs)
    (name,) = any_packs.packs(ROOM)
    assert any_packs.rooms() == [ROOM]
    assert any_packs.hashes(ROOM, name) == hashes
    assert any_packs.read(ROOM, [ref for ref in refs if ref is not None]) == blobs
    assert resolve(any_packs, ROOM, [None, blobs[1], markers[hashes[2]]]) == \
        [None, blobs[1], blobs[2]]
    any_packs.delete(ROOM, name)
    assert any_packs.packs(ROOM) == []
    assert any_packs.hashes(ROOM, name) is None
    assert any_packs.read(ROOM, [ref for ref in refs if ref is not None]) == [None] * 3
    any_packs.delete(ROOM, name)  # twice is harmless
    with pytest.raises(ValueError):
        any_packs.key(ROOM, "../escape")


def test_frames_next_to_each_other_in_a_pack_read_back_in_any_order(
        any_packs: StagingPacks) -> None:
    """A local pack's refs that follow each other are read with one pread, cut apart."""
    hashes, blobs = frame_blobs(4, seed=3)
    markers = any_packs.write(ROOM, hashes, blobs)
    refs = [parse_marker(markers[h]) for h in hashes]
    assert all(ref is not None for ref in refs)
    r = [ref for ref in refs if ref is not None]
    order = [0, 1, 2, 3, 3, 2, 0, 1, 1, 3]
    assert any_packs.read(ROOM, [r[i] for i in order]) == [blobs[i] for i in order]
    too_long = r[3]._replace(size=r[3].size + 5)  # past the pack's end
    elsewhere = r[1]._replace(pack="0000000000000-" + "0" * 32)
    assert any_packs.read(ROOM, [r[2], too_long, r[0], elsewhere, r[2]]) == \
        [blobs[2], None, blobs[0], None, blobs[2]]


def test_resolving_without_packs_finds_nothing() -> None:
    hashes, blobs = frame_blobs(1)
    packs = StagingPacks(MemoryStore())
    marker = packs.write(ROOM, hashes, blobs)[hashes[0]]
    assert resolve(None, ROOM, [marker, blobs[0]]) == [None, blobs[0]]


def test_packs_are_read_from_worker_threads(any_packs: StagingPacks) -> None:
    hashes, blobs = frame_blobs(2)
    markers = any_packs.write(ROOM, hashes, blobs)

    async def in_a_thread() -> list[bytes | None]:
        return await asyncio.to_thread(resolve, any_packs, ROOM, list(markers.values()))

    assert asyncio.run(in_a_thread()) == blobs


def test_frames_read_into_a_pool_are_views_of_its_memory(tmp_path: Path) -> None:
    """Storage's reads: the same bytes as ``read``, back to back in one block of the
    pool, whose memory the next read gets again once the frames are gone."""
    packs = StagingPacks(LocalStore(tmp_path / "store"))
    hashes, blobs = frame_blobs(6)
    markers = packs.write(ROOM, hashes, blobs)
    refs = [parse_marker(markers[h]) for h in hashes]
    assert all(ref is not None for ref in refs)
    pool = BlockPool(64 * 2**20, min_bytes=1)
    got = packs.read_into(ROOM, refs, pool)  # type: ignore[arg-type]
    assert [bytes(b) for b in got if b is not None] == blobs == packs.read(ROOM, refs)  # type: ignore[arg-type]
    assert all(isinstance(b, memoryview) for b in got)
    owner = got[0].obj  # type: ignore[union-attr]
    assert all(b.obj is owner for b in got)  # type: ignore[union-attr]
    address = np.frombuffer(owner, np.uint8).ctypes.data
    del got, owner
    again = packs.read_into(ROOM, refs[2:], pool)  # type: ignore[arg-type]
    assert np.frombuffer(again[0].obj, np.uint8).ctypes.data == address  # type: ignore[union-attr]
    packs.delete(ROOM, refs[0].pack)  # type: ignore[union-attr]
    assert packs.read_into(ROOM, refs[:1], pool) == [None]  # type: ignore[arg-type]
