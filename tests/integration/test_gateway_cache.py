"""The gateway's frame cache (content hash -> encoded frame) and its read-ahead."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from gateway_server import (  # noqa: F401  (fixtures)
    MSGPACK,
    GatewayServer,
    get_frames,
    make_frame,
    post_frames,
    start_gateway,
)

from trajhub.gateway.cache import FrameCache, Ordered
from trajhub.gateway.reader import (
    JUMP_WINDOW,
    READ_AHEAD_MAX_REQUEST,
    SCRUB_WINDOW,
    SPLICE_MIN_BYTES,
    VIEWS_MIN_FRAMES,
)
from trajhub.gateway.routes import INLINE_RESPONSE_BYTES
from trajhub.shared import codec
from trajhub.shared.frames import Frame, frames_equal, validate_frame
from trajhub.shared.hashing import frame_hash
from trajhub.shared.zarr_store import open_store

ROOM = "cached-1"
Start = Callable[..., GatewayServer]


# -- FrameCache on its own -----------------------------------------------------------------
def test_lru_evicts_by_bytes_least_recently_used_first() -> None:
    cache = FrameCache(100)
    assert cache.put("a", b"x" * 40) and cache.put("b", b"y" * 40)
    assert cache.get_many(["a"]) == {"a": b"x" * 40}  # a is now more recent than b
    assert cache.put("c", b"z" * 40)
    assert "b" not in cache and "a" in cache and "c" in cache
    assert not cache.put("huge", b"h" * 101)
    stats = cache.stats()
    assert stats["bytes"] == 80 <= stats["budget_bytes"] == 100
    assert stats["entries"] == 2 and stats["evictions"] == 1
    assert cache.get_many(["a", "b", "b"]) == {"a": b"x" * 40}
    assert cache.stats()["hits"] == 2 and cache.stats()["misses"] == 1


def test_a_read_marks_its_frames_recently_used_in_its_order() -> None:
    cache = FrameCache(120)
    for h in "abc":
        assert cache.put(h, h.encode() * 40)
    assert sorted(cache.get_many(["c", "b", "a", "c", "x"])) == ["a", "b", "c"]
    assert cache.put("d", b"d" * 40)  # evicts c: b, a and d are more recent
    assert [h for h in "abcd" if h in cache] == ["a", "b", "d"]


def test_get_run_answers_in_order_or_not_at_all() -> None:
    cache = FrameCache(160)
    for h in "abcd":
        assert cache.put(h, h.encode() * 40)
    assert cache.get_run(["c", "x", "a"]) is None  # one missing: nothing counted or marked
    assert cache.stats()["hits"] == 0 and cache.stats()["misses"] == 0
    assert cache.get_run(["c", "b", "c"]) == [b"c" * 40, b"b" * 40, b"c" * 40]
    assert cache.stats()["hits"] == 2 and cache.stats()["misses"] == 0
    assert cache.get_run(["b"], count=False) == [b"b" * 40] and cache.stats()["hits"] == 2
    assert cache.put("e", b"e" * 40)  # evicts a, the least recently used (d was put last)
    assert [h for h in "abcde" if h in cache] == ["b", "c", "d", "e"]
    assert cache.put("f", b"f" * 40)  # then d: b and c were read after it was put
    assert [h for h in "bcdf" if h in cache] == ["b", "c", "f"]
    assert cache.get_run([]) is None and FrameCache(0).get_run(["b"]) is None


def slab_of(names: str, stride: int = 10) -> bytes:
    return b"".join(n.encode() * stride for n in names)


def test_a_slab_is_read_as_views_of_it() -> None:
    cache = FrameCache(1000)
    slab = slab_of("abcd")
    assert cache.put_slab(list("abcd"), slab, 10) == 4
    assert cache.put("x", b"x" * 10) and cache.stats()["bytes"] == 50
    for order in ("abcd", "bc", "dcba", "abxcd", "aab", "xd"):
        parts = cache.get_run(list(order))
        assert parts is not None
        assert b"".join(parts) == b"".join(n.encode() * 10 for n in order), order
    whole = cache.get_run(list("abcd"))
    assert whole is not None and len(whole) == 1 and isinstance(whole[0], memoryview)
    assert whole[0].obj is slab and whole[0].readonly  # the slab itself, not a copy
    assert [len(p) for p in cache.get_run(list("abxcd")) or []] == [20, 10, 20]
    assert [len(p) for p in cache.get_run(list("dcba")) or []] == [10, 10, 10, 10]
    assert cache.get_many(["c"]) == {"c": b"c" * 10}


def test_a_run_says_which_of_its_parts_are_frames_of_one_slab() -> None:
    cache = FrameCache(1000)
    assert cache.put_slab(list("abcd"), slab_of("abcd"), 10) == 4
    assert cache.put_slab(list("pq"), slab_of("pq", stride=7), 7) == 2
    assert cache.put("x", b"x" * 10)
    runs = {order: (cache.get_run(list(order)) or Ordered()).runs
            for order in ("abcd", "abxcd", "aab", "dcba", "xabpq", "x")}
    assert runs == {"abcd": [(0, 4, 10)], "abxcd": [(0, 2, 10), (3, 2, 10)],
                    "aab": [(1, 2, 10)], "dcba": [], "xabpq": [(1, 2, 10), (3, 2, 7)],
                    "x": []}


def test_a_slab_counts_whole_until_its_last_frame_goes() -> None:
    cache = FrameCache(60)
    assert cache.put("x", b"x" * 10)
    slab = slab_of("abcd")
    assert cache.put_slab(list("abcd"), slab, 10) == 4
    assert cache.stats()["bytes"] == 50
    assert cache.put("y", b"y" * 25)  # over budget: x goes, then a, b and c, then d
    assert [h for h in "xabcdy" if h in cache] == ["y"]
    assert cache.stats()["bytes"] == 25 and cache.stats()["evictions"] == 5
    assert cache.put_slab(list("pq"), slab_of("pq", 40), 40) == 0  # larger than budget
    assert cache.put_slab(list("pq"), slab_of("pq", 3), 4) == 0  # not 2 frames of 4
    # A hash already cached keeps its entry (and is marked as recently used).
    assert cache.put_slab(list("ym"), slab_of("zm"), 10) == 2
    assert cache.get_many(["y", "m"]) == {"y": b"y" * 25, "m": b"m" * 10}
    assert cache.stats()["bytes"] == 45
    cache.clear()
    assert cache.stats()["bytes"] == 0 and cache.get_run(["m"]) is None


def test_slab_bookkeeping_stays_exact_under_random_use() -> None:
    rng = np.random.default_rng(5)
    cache = FrameCache(400)
    for step in range(3000):
        names = [f"h{i}" for i in rng.integers(0, 60, int(rng.integers(1, 6)))]
        if rng.random() < 0.5:
            stride = int(rng.integers(1, 30))
            cache.put_slab(names, bytes(stride * len(names)), stride)
        elif rng.random() < 0.5:
            cache.put_many((h, bytes([step % 256]) * int(rng.integers(1, 30))) for h in names)
        else:
            cache.get_run(names)
        held = {id(at[0]): len(at[0]) for at in cache._in_slab.values()}
        own = sum(len(cache._items[h]) for h in cache._items if h not in cache._in_slab)
        assert cache.stats()["bytes"] == own + sum(held.values()) <= 400, step
        assert set(cache._in_slab) <= set(cache._items)


def test_one_put_adds_at_most_the_budget() -> None:
    cache = FrameCache(100)
    cache.put("old", b"o" * 30)
    kept = cache.put_many((f"h{i}", bytes([i]) * 30) for i in range(5))
    assert kept == 3 and all(f"h{i}" in cache for i in range(3))
    assert "h3" not in cache and "old" not in cache and cache.stats()["bytes"] == 90


def test_disabled_cache_keeps_nothing() -> None:
    cache = FrameCache(0)
    assert not cache.enabled and not cache.put("a", b"x")
    assert cache.get_many(["a"]) == {} and len(cache) == 0
    assert cache.stats()["misses"] == 0


def test_write_through_keeps_only_the_recent_share() -> None:
    cache = FrameCache(1000)
    hashes = [f"h{i}" for i in range(10)]
    blobs = [bytes(100)] * 10
    assert cache.put_recent(hashes, blobs, share=0.25) == 2
    assert "h9" in cache and "h8" in cache and "h7" not in cache
    assert cache.stats()["write_through"] == 2
    assert cache.put_recent(["m"], [memoryview(b"abc")], share=1.0) == 1
    assert cache.get_many(["m"]) == {"m": b"abc"}


# -- through the gateway --------------------------------------------------------------------
async def _apply(redis_url: str, storage_url: str, room: str) -> None:
    from trajhub.storage.worker import StorageWorker

    worker = StorageWorker(redis_url, open_store(storage_url), "test-storage")
    try:
        assert await worker.apply_room(room) > 0
    finally:
        await worker.aclose()


def apply_storage(server: GatewayServer, room: str = ROOM) -> None:
    asyncio.run(_apply(server.settings.redis_url, server.settings.storage_url, room))


def canon(frames: list[Frame]) -> list[Frame]:
    return [validate_frame(f) for f in frames]


def raw_get(client: httpx.Client, **params: Any) -> bytes:
    r = client.get(f"/api/v1/rooms/{ROOM}/frames", params=params)
    assert r.status_code == 200, r.text
    return r.content


def stats(client: httpx.Client) -> dict[str, int]:
    r = client.get("/api/v1/stats")
    assert r.status_code == 200, r.text
    out: dict[str, int] = r.json()["frame_cache"]
    return out


@pytest.fixture
def clients() -> Iterator[Callable[[GatewayServer], httpx.Client]]:
    opened: list[httpx.Client] = []

    def open_client(server: GatewayServer) -> httpx.Client:
        opened.append(httpx.Client(base_url=server.url, timeout=30))
        return opened[-1]

    yield open_client
    for c in opened:
        c.close()


@pytest.fixture
def applied_room(start_gateway: Start,  # noqa: F811
                 clients: Callable[[GatewayServer], httpx.Client]) -> list[Frame]:
    """40 frames uploaded through a writer gateway and applied to Zarr (no blobs left)."""
    writer = start_gateway()
    frames = canon([make_frame(5 + i % 3, seed=i) for i in range(40)])
    assert post_frames(clients(writer), ROOM, frames).status_code == 201
    apply_storage(writer)
    return frames


def test_hits_are_byte_identical_to_cold_reads(
        start_gateway: Start, clients: Callable[[GatewayServer], httpx.Client],  # noqa: F811
        applied_room: list[Frame]) -> None:
    warm, cold = clients(start_gateway()), clients(start_gateway(cache_mb=0))
    first = raw_get(warm, indices="3")
    assert stats(warm)["misses"] == 1 and stats(warm)["hits"] == 0
    again = raw_get(warm, indices="3")
    assert stats(warm)["hits"] == 1
    assert first == again == raw_get(cold, indices="3")

    everything = raw_get(warm)  # mixes hits and a bulk Zarr read, which it caches
    assert everything == raw_get(cold)
    assert stats(warm)["entries"] == len(applied_room)
    before = stats(warm)
    assert raw_get(warm, start=5, stop=30, step=2) == raw_get(cold, start=5, stop=30, step=2)
    assert stats(warm)["misses"] == before["misses"]
    got = get_frames(warm, ROOM, indices="7,3,7")
    assert got["hashes"] == [frame_hash(applied_room[i]) for i in (7, 3, 7)]
    for i, frame in zip((7, 3, 7), got["frames"], strict=True):
        assert frames_equal(frame, applied_room[i])


@pytest.mark.parametrize("selection", [{"indices": "4"}, {"indices": "9,2,9"},
                                       {"start": 0, "stop": 30}])
def test_keys_subsets_of_cached_frames(
        start_gateway: Start, clients: Callable[[GatewayServer], httpx.Client],  # noqa: F811
        applied_room: list[Frame], selection: dict[str, Any]) -> None:
    warm, cold = clients(start_gateway()), clients(start_gateway(cache_mb=0))
    raw_get(warm)  # every frame cached
    before = stats(warm)
    keys = "positions,info.name,calc.nothing"
    subset = raw_get(warm, keys=keys, **selection)
    assert stats(warm)["misses"] == before["misses"]
    assert stats(warm)["hits"] > before["hits"]
    assert subset == raw_get(cold, keys=keys, **selection)
    message = codec.unpackb(subset)
    for i, raw in zip(message["indices"], message["frames"], strict=True):
        frame = codec.decode_frame(raw)
        assert set(frame) == {"positions", "info.name"}
        assert frames_equal(frame, {k: applied_room[i][k] for k in frame})


def test_keys_miss_reads_whole_frames_so_later_reads_hit(
        start_gateway: Start, clients: Callable[[GatewayServer], httpx.Client],  # noqa: F811
        applied_room: list[Frame]) -> None:
    warm = clients(start_gateway())
    get_frames(warm, ROOM, indices="12", keys="positions")
    assert stats(warm)["misses"] == 1
    got = get_frames(warm, ROOM, indices="12")
    assert stats(warm)["hits"] == 1 and stats(warm)["misses"] == 1
    assert frames_equal(got["frames"][0], applied_room[12])


def test_budget_is_respected(
        start_gateway: Start, clients: Callable[[GatewayServer], httpx.Client],  # noqa: F811
        applied_room: list[Frame]) -> None:
    frame_bytes = len(codec.frame_to_bytes(applied_room[0]))
    budget_mb = 3.5 * frame_bytes / 2**20
    tiny = clients(start_gateway(cache_mb=budget_mb))
    budget = stats(tiny)["budget_bytes"]
    assert budget == int(budget_mb * 2**20)
    for params in ({"indices": "0"}, {"indices": "1"}, {}, {"indices": "5,6,7,8"},
                   {"indices": "20"}, {"start": 10, "stop": 20}, {"indices": "21"}):
        got = get_frames(tiny, ROOM, **params)
        for i, frame in zip(got["indices"], got["frames"], strict=True):
            assert frames_equal(frame, applied_room[i])
        s = stats(tiny)
        assert 0 < s["bytes"] <= budget and s["entries"] <= 3
    assert stats(tiny)["evictions"] > 0

    # An upload larger than the budget write-through caches at most its share.
    more = canon([make_frame(6, seed=100 + i) for i in range(10)])
    assert post_frames(tiny, ROOM, more).status_code == 201
    assert 0 <= stats(tiny)["bytes"] <= budget


def test_frames_larger_than_the_budget_are_not_cached(
        start_gateway: Start, clients: Callable[[GatewayServer], httpx.Client],  # noqa: F811
        ) -> None:
    client = clients(start_gateway(cache_mb=0.01))
    big = validate_frame(make_frame(2000, seed=1))
    assert post_frames(client, ROOM, [big]).status_code == 201
    got = get_frames(client, ROOM)
    assert frames_equal(got["frames"][0], big)
    assert stats(client)["entries"] == 0 and stats(client)["bytes"] == 0


def test_cache_off(start_gateway: Start,  # noqa: F811
                   clients: Callable[[GatewayServer], httpx.Client]) -> None:
    server = start_gateway(cache_mb=0)
    client = clients(server)
    frames = canon([make_frame(4, seed=i) for i in range(12)])
    assert post_frames(client, ROOM, frames).status_code == 201
    for applied in (False, True):  # from blobs, then from Zarr
        if applied:
            apply_storage(server)
        got = get_frames(client, ROOM)
        assert got["hashes"] == [frame_hash(f) for f in frames]
        for want, have in zip(frames, got["frames"], strict=True):
            assert frames_equal(want, have)
        for i in (0, 1, 2):
            assert frames_equal(get_frames(client, ROOM, indices=str(i))["frames"][0],
                                frames[i])
    assert stats(client) == {"hits": 0, "misses": 0, "entries": 0, "bytes": 0,
                             "budget_bytes": 0, "evictions": 0, "read_ahead": 0,
                             "write_through": 0}


def test_read_ahead_warms_neighbours(
        start_gateway: Start, clients: Callable[[GatewayServer], httpx.Client],  # noqa: F811
        applied_room: list[Frame]) -> None:
    client = clients(start_gateway())
    # Frames that are staged but not applied are never read ahead (only Zarr slots are).
    extra = canon([make_frame(5, seed=500 + i) for i in range(3)])
    writer = clients(start_gateway())
    assert post_frames(writer, ROOM, extra, at=5).status_code == 201
    model = applied_room[:5] + extra + applied_room[5:]

    get_frames(client, ROOM, indices="0")  # first read of the room: learns frame sizes
    assert stats(client)["read_ahead"] == 0
    get_frames(client, ROOM, indices="1")  # next to the last request: scrubbing
    _, ahead = SCRUB_WINDOW
    s = stats(client)
    assert s["misses"] == 2 and s["read_ahead"] == min(ahead, len(model) - 2) - len(extra)
    # Scrubbing on: the applied neighbours hit, the staged ones come from their blobs.
    for i in range(2, len(model)):
        got = get_frames(client, ROOM, indices=str(i))
        assert frames_equal(got["frames"][0], model[i])
    s = stats(client)
    assert s["misses"] == 2 + len(extra) and s["hits"] == len(model) - 2 - len(extra)


def test_a_jump_reads_ahead_a_narrow_window(
        start_gateway: Start, clients: Callable[[GatewayServer], httpx.Client],  # noqa: F811
        applied_room: list[Frame]) -> None:
    client = clients(start_gateway())
    get_frames(client, ROOM, indices="0")
    get_frames(client, ROOM, indices="38")  # far from 0: random access
    behind, _ = JUMP_WINDOW
    assert stats(client)["read_ahead"] == behind + 1  # 36, 37 and 39
    for i in (36, 37, 39):
        assert frames_equal(get_frames(client, ROOM, indices=str(i))["frames"][0],
                            applied_room[i])
    assert stats(client)["misses"] == 2


def test_replace_serves_the_new_hash(
        start_gateway: Start, clients: Callable[[GatewayServer], httpx.Client],  # noqa: F811
        applied_room: list[Frame]) -> None:
    reader = start_gateway()
    client, writer = clients(reader), clients(start_gateway())
    old = get_frames(client, ROOM, indices="2")
    assert old["hashes"] == [frame_hash(applied_room[2])] and old["versions"] == [1]

    new = validate_frame(make_frame(5, seed=1234))
    body = codec.frames_to_bytes([new], indices=[2])
    assert writer.put(f"/api/v1/rooms/{ROOM}/frames", content=body,
                      headers=MSGPACK).status_code == 200
    for applied in (False, True):  # from the blob (the other gateway wrote it), cached
        if applied:
            apply_storage(reader)
        got = get_frames(client, ROOM, indices="2,3")
        assert got["hashes"] == [frame_hash(new), frame_hash(applied_room[3])]
        assert got["versions"] == [2, 1]
        assert frames_equal(got["frames"][0], new)
        assert frames_equal(got["frames"][1], applied_room[3])
    cold = get_frames(clients(start_gateway(cache_mb=0)), ROOM, indices="2")  # from Zarr
    assert cold["hashes"] == [frame_hash(new)] and frames_equal(cold["frames"][0], new)

    # Replacing back to the old content: the old hash and bytes are served again.
    body = codec.frames_to_bytes([applied_room[2]], indices=[2])
    assert client.put(f"/api/v1/rooms/{ROOM}/frames", content=body,
                      headers=MSGPACK).status_code == 200
    got = get_frames(client, ROOM, indices="2")
    assert got["hashes"] == [frame_hash(applied_room[2])] and got["versions"] == [3]
    assert frames_equal(got["frames"][0], applied_room[2])


def test_uploads_are_written_through(
        start_gateway: Start, clients: Callable[[GatewayServer], httpx.Client],  # noqa: F811
        ) -> None:
    server = start_gateway()
    client = clients(server)
    frames = canon([make_frame(4, seed=i) for i in range(6)])
    frames.append(frames[0])  # a repeated frame is cached once
    assert post_frames(client, ROOM, frames).status_code == 201
    s = stats(client)
    assert s["write_through"] == s["entries"] == 6
    got = get_frames(client, ROOM)
    assert stats(client)["misses"] == 0 and stats(client)["hits"] == 6
    for want, have in zip(frames, got["frames"], strict=True):
        assert frames_equal(want, have)
    assert np.array_equal(got["frames"][6]["positions"], frames[0]["positions"])
    # The uploaded bytes in the cache are exactly what a cold read encodes from Zarr.
    apply_storage(server)
    assert raw_get(client) == raw_get(clients(start_gateway(cache_mb=0)))
    assert stats(client)["misses"] == 0


def test_keys_miss_of_frames_too_large_to_read_whole(
        start_gateway: Start, clients: Callable[[GatewayServer], httpx.Client],  # noqa: F811
        applied_room: list[Frame]) -> None:
    frame_bytes = len(codec.frame_to_bytes(applied_room[0]))
    client = clients(start_gateway(cache_mb=2.5 * frame_bytes / 2**20))
    get_frames(client, ROOM, indices="10", keys="positions")  # size unknown: whole frame
    assert stats(client)["entries"] == 1
    # Now known: more than the read-ahead share of the cache, so only the keys are read.
    got = get_frames(client, ROOM, indices="20", keys="positions")
    assert frames_equal(got["frames"][0], {"positions": applied_room[20]["positions"]})
    assert stats(client)["entries"] == 1 and stats(client)["read_ahead"] == 0
    get_frames(client, ROOM, indices="20,10")
    assert stats(client)["misses"] == 3 and stats(client)["hits"] == 1


def expected(message: dict[str, Any], want: list[Frame]) -> bytes:
    """The answer ``message`` (its fields as read) should be, with ``want`` encoded."""
    head = {k: message[k] for k in ("room", "seq", "n_frames", "indices", "frame_ids",
                                    "versions", "hashes")}
    return codec.packb({**head, "frames": [codec.encode_frame(f) for f in want]})


def test_bulk_reads_of_large_frames_answer_their_arrays_uncached(
        start_gateway: Start, clients: Callable[[GatewayServer], httpx.Client]  # noqa: F811
) -> None:
    """The frames of SPLICE_MIN_BYTES or more of a read of several are sent as their
    arrays' buffers and not cached; the answer is byte for byte what they encode to."""
    writer = start_gateway()
    n_atoms = SPLICE_MIN_BYTES // 8  # float32 positions + int32 numbers: 2 MiB
    frames = canon([make_frame(n_atoms - i % 2, seed=i) for i in range(READ_AHEAD_MAX_REQUEST + 2)]
                   + [make_frame(5, seed=99)])  # one small frame among them
    assert post_frames(clients(writer), ROOM, frames).status_code == 201
    apply_storage(writer)
    reader = clients(start_gateway())

    raw = raw_get(reader)
    message = codec.unpackb(raw)
    assert message["hashes"] == [frame_hash(f) for f in frames]
    assert raw == expected(message, frames)
    # only the small frame was cached: the large ones would have flushed the cache
    assert stats(reader)["entries"] == 1
    # so are reads of a few of them (as a reader pages through them), nor read ahead
    pair = raw_get(reader, indices="4,2")
    assert pair == expected(codec.unpackb(pair), [frames[4], frames[2]])
    assert stats(reader)["entries"] == 1
    subset = raw_get(reader, keys="positions,numbers", start=1)
    assert subset == expected(codec.unpackb(subset), [
        {k: f[k] for k in ("positions", "numbers")} for f in frames[1:]])
    assert stats(reader)["entries"] == 1
    # a single large frame (a viewer's read) is still cached, with its neighbours
    before = stats(reader)
    assert raw_get(reader, indices="3") == raw_get(reader, indices="3")
    after = stats(reader)
    assert after["misses"] == before["misses"] + 1 and after["hits"] == before["hits"] + 1
    assert after["entries"] > 2
    # a few of them with keys= are read whole (to be cached), and answer only those keys
    other = clients(start_gateway())
    raw_get(other, indices="0,1")  # the room's frame size is known from here on
    few = raw_get(other, keys="positions", indices="5,6")
    assert few == expected(codec.unpackb(few), [{"positions": frames[i]["positions"]}
                                                for i in (5, 6)])
    assert stats(other)["entries"] == 2


def given_back(pool: Any, timeout: float = 5.0) -> None:
    """Wait for the answer just read to be given back (the client can have every byte
    before the server has returned from its last send)."""
    deadline = time.monotonic() + timeout
    while not pool._free or any(sys.getrefcount(b) > 3 for b in pool._free):
        assert time.monotonic() < deadline, "the answer's buffer was not given back"
        time.sleep(0.01)


def test_large_answers_of_small_frames_reuse_their_buffer(
        start_gateway: Start, clients: Callable[[GatewayServer], httpx.Client]  # noqa: F811
) -> None:
    """An answer with more than INLINE_RESPONSE_BYTES of small frames is copied into a
    buffer the gateway keeps: the next such answer is written into the same memory, and
    both are exactly what the frames encode to."""
    writer = start_gateway()
    frames = canon([make_frame(400, seed=i) for i in range(300)])  # ~6 KB each: ~2 MB
    assert post_frames(clients(writer), ROOM, frames).status_code == 201
    apply_storage(writer)
    server = start_gateway()
    reader = clients(server)
    answers = server.app.gateway.answers
    first = raw_get(reader)
    assert len(first) > INLINE_RESPONSE_BYTES
    assert first == expected(codec.unpackb(first), frames)
    given_back(answers)  # once sent
    kept = id(answers._free[0])  # (no reference of ours: it would keep it from reuse)
    assert raw_get(reader) == first  # from the cache now, into the same buffer
    given_back(answers)
    assert [id(b) for b in answers._free] == [kept]
    part = raw_get(reader, start=30)  # a smaller answer, in the same buffer
    assert part == expected(codec.unpackb(part), frames[30:])
    given_back(answers)
    assert [id(b) for b in answers._free] == [kept]


def test_cold_reads_of_runs_of_alike_frames_are_the_frames(
        start_gateway: Start, clients: Callable[[GatewayServer], httpx.Client],  # noqa: F811
) -> None:
    """Zarr reads hand runs of alike slots to the encoder as columns (``read_columns``):
    what a gateway without a cache answers is each frame's own canonical bytes, whatever
    the runs (atom counts, keys held and dtypes changing along the trajectory)."""
    writer = start_gateway()

    def alike(n_atoms: int, seed: int, **more: Any) -> Frame:
        return {**make_frame(n_atoms, seed, extras=False), "cell": np.eye(3) * seed,
                "calc.energy": np.asarray(-1.5 * seed), **more}

    frames = canon([alike(5, i) for i in range(12)] + [alike(7, i) for i in range(12, 24)]
                   + [alike(7, i, **{"info.tag": np.asarray(i)}) for i in range(24, 30)]
                   + [alike(5 + i % 2, i) for i in range(30, 36)])
    assert post_frames(clients(writer), ROOM, frames).status_code == 201
    apply_storage(writer)
    runs, _ = open_store(writer.settings.storage_url).read_columns(ROOM, range(36))
    assert [(run.start, run.count) for run in runs][:3] == [(0, 12), (12, 12), (24, 6)]
    cold, warm = clients(start_gateway(cache_mb=0)), clients(start_gateway())
    for params in ({}, {"start": 3, "stop": 33, "step": 2}, {"indices": "29,11,12,13,0"}):
        got = get_frames(cold, ROOM, **params)
        assert got["hashes"] == [frame_hash(frames[i]) for i in got["indices"]]
        assert all(frames_equal(f, frames[i])
                   for f, i in zip(got["frames"], got["indices"], strict=True))
        first = raw_get(warm, **params)
        assert without_runs(raw_get(cold, **params)) == without_runs(first)
        assert raw_get(warm, **params) == first
        assert runs_hold(first)
    # Read from one slab each (the first read cached them so), alike runs are said so.
    whole = codec.unpackb(raw_get(warm))
    strides = [len(codec.packb(codec.encode_frame(frames[i]))) for i in (0, 12, 24)]
    assert whole["runs"][:3] == [[0, 12, strides[0]], [12, 12, strides[1]],
                                 [24, 6, strides[2]]]
    assert "runs" not in codec.unpackb(raw_get(cold))  # (no slabs without a cache)


def without_runs(raw: bytes) -> dict[str, Any]:
    """An answer's fields but ``runs`` (which says how frames were kept, not what they are)."""
    message: dict[str, Any] = codec.unpackb(raw)
    message.pop("runs", None)
    return message


def runs_hold(raw: bytes) -> bool:
    """Whether every run an answer states is of frames of that size and one layout."""
    message = codec.unpackb(raw)
    for first, count, stride in message.get("runs", []):
        frames = message["frames"][first:first + count]
        layouts = {tuple((k, v["dtype"], tuple(v["shape"])) for k, v in f.items())
                   for f in frames}
        if len(frames) != count or len(layouts) != 1 \
                or {len(codec.packb(f)) for f in frames} != {stride}:
            return False
    return True


def test_repeated_long_reads_answer_from_the_kept_view_and_the_cache(
        start_gateway: Start, clients: Callable[[GatewayServer], httpx.Client],  # noqa: F811
) -> None:
    """A read of VIEWS_MIN_FRAMES or more is kept with its packed entry fields; repeated
    while every frame is cached, it is answered from both, exactly as a gateway without
    a cache answers it, and not once the room has changed."""
    client = clients(start_gateway())
    cold = clients(start_gateway(cache_mb=0))
    frames = canon([make_frame(2, seed=i, extras=False) for i in range(VIEWS_MIN_FRAMES + 9)])
    assert post_frames(client, ROOM, frames).status_code == 201
    params = {"start": 1, "stop": len(frames)}
    first = raw_get(client, **params)
    before = stats(client)
    assert raw_get(client, **params) == first == raw_get(cold, **params)
    assert stats(client)["hits"] == before["hits"] + len(frames) - 1
    assert stats(client)["misses"] == before["misses"]

    new = validate_frame(make_frame(3, seed=999, extras=False))
    body = codec.frames_to_bytes([new], indices=[7])
    assert client.put(f"/api/v1/rooms/{ROOM}/frames", content=body,
                      headers=MSGPACK).status_code == 200
    got = get_frames(client, ROOM, **params)
    assert got["versions"][6] == 2 and got["hashes"][6] == frame_hash(new)
    assert frames_equal(got["frames"][6], new)
    assert raw_get(client, **params) == raw_get(cold, **params) != first


def test_put_slab_says_how_many_of_its_frames_stay() -> None:
    cache = FrameCache(50)
    assert cache.put("x", b"x" * 30)
    # x is marked recently used before a and b are added, so it goes first to make room
    assert cache.put_slab(["x", "a", "b"], slab_of("xab"), 10) == 2
    assert [h for h in "xab" if h in cache] == ["a", "b"] and cache.stats()["bytes"] == 30
