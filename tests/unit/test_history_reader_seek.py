"""HistoryReader seeks: the index at a past seq from the latest snapshot at or below it
plus only the archived segments covering the seqs after it, with cached store listings
that never hide a newer object. Real Redis (the room's stream and meta), a real zarr
store (memory) under the history store, and a counting wrapper around it."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from zarr.storage import MemoryStore

from trajhub.shared import keys
from trajhub.shared.events import Event, FrameEntry
from trajhub.shared.history import (
    decode_segment,
    encode_segment,
    encode_segment_json,
    encode_snapshot,
)
from trajhub.shared.history_reader import (
    HistoryGone,
    HistoryReader,
    Segments,
    SeqBeyondHead,
    UnknownRoom,
)
from trajhub.shared.history_store import ZarrHistoryStore
from trajhub.shared.replay import RoomIndex, replay

ROOM = "seek"
N_EVENTS = 125
SNAPSHOT_EVERY = 10
SEGMENT_EVENTS = 7  # not a divisor of SNAPSHOT_EVERY: segments straddle snapshots
ARCHIVED = 112  # segments 1..7, 8..14, ..., 106..112
KEEP_FROM = 100  # the stream keeps seqs 100..125

pytestmark = pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")


class CountingStore:
    """A HistoryStore that counts listings and remembers which segments were read."""

    def __init__(self) -> None:
        self.inner = ZarrHistoryStore(MemoryStore())
        self.calls: Counter[str] = Counter()
        self.segments_read: list[tuple[int, int]] = []

    def put_snapshot(self, room: str, seq: int, data: bytes) -> None:
        self.inner.put_snapshot(room, seq, data)

    def snapshot_seqs(self, room: str) -> list[int]:
        self.calls["snapshot_seqs"] += 1
        return self.inner.snapshot_seqs(room)

    def get_snapshot(self, room: str, seq: int) -> bytes:
        self.calls["get_snapshot"] += 1
        return self.inner.get_snapshot(room, seq)

    def put_segment(self, room: str, first: int, last: int, data: bytes) -> None:
        self.inner.put_segment(room, first, last, data)

    def segment_ranges(self, room: str) -> list[tuple[int, int]]:
        self.calls["segment_ranges"] += 1
        return self.inner.segment_ranges(room)

    def get_segment(self, room: str, first: int, last: int) -> bytes:
        self.segments_read.append((first, last))
        return self.inner.get_segment(room, first, last)

    def reset(self) -> None:
        self.calls.clear()
        self.segments_read.clear()


def h(i: int) -> str:
    return f"{i:064x}"


def history(n: int) -> list[Event]:
    """``n`` valid events: inserts at varying positions, replaces and deletes."""
    index = RoomIndex(room=ROOM)
    events: list[Event] = []
    for seq in range(1, n + 1):
        entries = index.entries
        common = {"room": ROOM, "seq": seq, "author": "a", "edit_id": f"e{seq}", "time": 0.0}
        if len(entries) < 3 or seq % 3 == 0:
            at = seq % (len(entries) + 1)
            new = FrameEntry(frame_id=seq, version=1, hash=h(seq), slot=seq)
            event = Event(kind="frames_inserted", indices=[at], frames=[new],
                          n_frames=len(entries) + 1, **common)  # type: ignore[arg-type]
        elif seq % 3 == 1:
            i = seq % len(entries)
            old = entries[i]
            new = FrameEntry(frame_id=old.frame_id, version=old.version + 1, hash=h(seq),
                             slot=seq)
            event = Event(kind="frames_replaced", indices=[i], frames=[new], prev=[old],
                          n_frames=len(entries), **common)  # type: ignore[arg-type]
        else:
            i = seq % len(entries)
            event = Event(kind="frames_deleted", indices=[i], frames=[entries[i]],
                          n_frames=len(entries) - 1, **common)  # type: ignore[arg-type]
        index.apply(event)
        events.append(event)
    return events


async def write_stream(r: aioredis.Redis, events: list[Event]) -> None:
    async with r.pipeline(transaction=False) as pipe:
        for e in events:
            pipe.xadd(keys.events(ROOM), {"seq": e.seq, "kind": e.kind,
                                          "data": e.model_dump_json()}, id=f"{e.seq}-0")
        pipe.hset(keys.meta(ROOM), "seq", events[-1].seq)
        await pipe.execute()


def archive(store: CountingStore, events: list[Event], first: int, last: int,
            size: int) -> list[tuple[int, int]]:
    """Segments of ``size`` events covering ``first..last``, as the snapshotter writes."""
    written = []
    for lo in range(first, last + 1, size):
        hi = min(lo + size - 1, last)
        store.put_segment(ROOM, lo, hi, encode_segment(ROOM, events[lo - 1:hi]))
        written.append((lo, hi))
    return written


def snapshot(store: CountingStore, events: list[Event], seq: int) -> None:
    store.put_snapshot(ROOM, seq, encode_snapshot(ROOM, seq, replay(events[:seq])))


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def events() -> list[Event]:
    return history(N_EVENTS)


@pytest.fixture
async def store(r: aioredis.Redis, events: list[Event]) -> CountingStore:
    """Snapshots every SNAPSHOT_EVERY, segments 1..ARCHIVED, the stream from KEEP_FROM."""
    out = CountingStore()
    await write_stream(r, events)
    for seq in range(SNAPSHOT_EVERY, N_EVENTS + 1, SNAPSHOT_EVERY):
        snapshot(out, events, seq)
    archive(out, events, 1, ARCHIVED, SEGMENT_EVENTS)
    await r.xtrim(keys.events(ROOM), minid=f"{KEEP_FROM}-0", approximate=False)
    out.reset()
    return out


def covering(first: int, last: int) -> list[tuple[int, int]]:
    """The fixture's segments that hold any of ``first..last``."""
    out = []
    for lo in range(1, ARCHIVED + 1, SEGMENT_EVENTS):
        hi = min(lo + SEGMENT_EVENTS - 1, ARCHIVED)
        if first <= last and lo <= last and hi >= first:
            out.append((lo, hi))
    return out


async def test_index_at_every_seq_equals_a_full_replay(r: aioredis.Redis,
                                                       events: list[Event],
                                                       store: CountingStore) -> None:
    reader = HistoryReader(r, store)
    for seq in range(N_EVENTS + 1):
        assert await reader.index_at(ROOM, seq) == replay(events[:seq]), seq


async def test_reads_only_the_segments_after_the_snapshot(r: aioredis.Redis,
                                                          events: list[Event],
                                                          store: CountingStore) -> None:
    for seq in [1, 5, 9, 10, 13, 15, 29, 30, 57, 64, 77, 99]:
        reader = HistoryReader(r, store)  # fresh: the counts include the listings
        store.reset()
        assert await reader.index_at(ROOM, seq) == replay(events[:seq])
        base = seq - seq % SNAPSHOT_EVERY
        assert store.segments_read == covering(base + 1, seq), seq
        assert store.calls["get_snapshot"] == (1 if base else 0)
    reader = HistoryReader(r, store)
    store.reset()
    for seq in range(100, N_EVENTS + 1):  # after the trim point: snapshot + stream only
        assert await reader.index_at(ROOM, seq) == replay(events[:seq])
    assert store.segments_read == []


async def test_listings_are_cached_across_reads(r: aioredis.Redis, events: list[Event],
                                                store: CountingStore) -> None:
    reader = HistoryReader(r, store, listing_ttl_s=3600)
    for seq in [57, 3, 99, 64, 110, 57, 125]:
        assert await reader.index_at(ROOM, seq) == replay(events[:seq])
    assert store.calls["snapshot_seqs"] == 1
    assert store.calls["segment_ranges"] == 1
    uncached = HistoryReader(r, store, listing_ttl_s=0)
    store.reset()
    for seq in [57, 64]:
        await uncached.index_at(ROOM, seq)
    assert store.calls["snapshot_seqs"] == 2


async def test_a_seq_beyond_the_cached_segments_lists_again(r: aioredis.Redis,
                                                            events: list[Event],
                                                            store: CountingStore) -> None:
    reader = HistoryReader(r, store, listing_ttl_s=3600)
    assert await reader.index_at(ROOM, 57) == replay(events[:57])
    # The snapshotter moves on: more archived, the stream trimmed past what the reader
    # listed, and a snapshot the cached listing does not know.
    later = history(N_EVENTS + 40)
    await write_stream(r, later[N_EVENTS:])
    archive(store, later, ARCHIVED + 1, N_EVENTS + 30, SEGMENT_EVENTS)
    snapshot(store, later, N_EVENTS + 30)
    await r.xtrim(keys.events(ROOM), minid=f"{N_EVENTS + 25}-0", approximate=False)
    store.reset()
    for seq in [N_EVENTS + 24, 119, N_EVENTS + 35]:
        assert await reader.index_at(ROOM, seq) == replay(later[:seq]), seq
    assert store.calls["segment_ranges"] == 1  # listed again once, for seqs 121..149
    assert [e.seq async for e in reader.events(ROOM, 100, N_EVENTS + 40)] == list(
        range(101, N_EVENTS + 41))


async def test_refusals_keep_their_meaning(r: aioredis.Redis, events: list[Event],
                                           store: CountingStore) -> None:
    reader = HistoryReader(r, store)
    with pytest.raises(SeqBeyondHead) as beyond:
        await reader.index_at(ROOM, N_EVENTS + 1)
    assert beyond.value.head == N_EVENTS
    with pytest.raises(UnknownRoom):
        await reader.index_at("nobody", 1)
    with pytest.raises(ValueError):
        await reader.index_at(ROOM, -1)
    # Trimmed but never archived: gone, also for a reader that cached the listings.
    await r.xtrim(keys.events(ROOM), minid=f"{N_EVENTS - 2}-0", approximate=False)
    assert await reader.index_at(ROOM, 64) == replay(events[:64])
    with pytest.raises(HistoryGone) as gone:
        await reader.index_at(ROOM, 115)  # snapshot 110, then 111..115: 113.. not archived
    assert gone.value.seq == ARCHIVED + 1
    assert "beyond retention" in gone.value.reason


async def test_a_vanished_cached_segment_is_listed_again(r: aioredis.Redis,
                                                         events: list[Event]) -> None:
    """Compaction may replace segments by others: a cached name that is gone is not an
    error while the store still holds the events."""
    store = CountingStore()
    await write_stream(r, events)
    archive(store, events, 1, 70, 5)
    await r.xtrim(keys.events(ROOM), minid="71-0", approximate=False)
    reader = HistoryReader(r, store, listing_ttl_s=3600)
    assert await reader.index_at(ROOM, 33) == replay(events[:33])
    # Replace the 5-event segments by 35-event ones.
    memory = store.inner.store
    assert isinstance(memory, MemoryStore)
    for first, last in store.inner.segment_ranges(ROOM):
        await memory.delete(store.inner.segment_key(ROOM, first, last))
    archive(store, events, 1, 70, 35)
    assert await reader.index_at(ROOM, 33) == replay(events[:33])
    assert await reader.index_at(ROOM, 68) == replay(events[:68])


def test_segments_bisect_with_overlaps_and_gaps() -> None:
    s = Segments([(1, 10), (5, 20), (21, 30), (40, 45), (41, 42)])
    assert s.covering(1) == (1, 10)
    assert s.covering(12) == (5, 20)
    assert s.covering(30) == (21, 30)
    assert s.covering(43) == (40, 45)  # the later-starting (41, 42) ends before 43
    assert s.covering(42) == (41, 42)
    assert s.covering(0) is None and s.covering(35) is None and s.covering(46) is None
    assert s.covers(1, 30) and not s.covers(25, 41) and s.covers(40, 45)
    assert Segments([]).covering(1) is None


def test_decode_segment_parses_only_the_asked_seqs(events: list[Event]) -> None:
    data = encode_segment(ROOM, events[9:20])  # seqs 10..20
    assert decode_segment(data) == events[9:20]
    assert decode_segment(data, first=13, last=15) == events[12:15]
    assert decode_segment(data, first=18) == events[17:20]
    assert decode_segment(data, last=11) == events[9:11]
    assert decode_segment(data, first=1, last=99) == events[9:20]
    assert decode_segment(data, first=30) == []


def test_a_segment_of_the_events_json_is_the_segment_of_the_events(
        events: list[Event]) -> None:
    """The snapshotter archives the JSON the stream holds (bytes) without parsing it."""
    texts = [e.model_dump_json().encode() for e in events[9:20]]
    data = encode_segment_json(ROOM, 10, texts)
    assert data == encode_segment(ROOM, events[9:20])
    assert decode_segment(data) == events[9:20]
    with pytest.raises(ValueError, match="at least one event"):
        encode_segment_json(ROOM, 10, [])
