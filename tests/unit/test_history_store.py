"""ZarrHistoryStore on real Zarr stores (local disk under tmp_path, memory://, and S3 on
a local moto server, ``tests/s3_fixture.py``)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.s3_fixture import new_s3_url
from trajhub.shared.events import FrameEntry
from trajhub.shared.hashing import frame_hash
from trajhub.shared.history import decode_snapshot, encode_snapshot
from trajhub.shared.history_store import ZarrHistoryStore, open_history_store
from trajhub.shared.ports import HistoryStore
from trajhub.shared.zarr_store import open_store

pytestmark = pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")


@pytest.fixture(params=["dir", "file", "memory", "s3"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "s3":
        return new_s3_url()
    if request.param == "dir":
        return str(tmp_path / "zarr")
    if request.param == "file":
        return f"file://{tmp_path / 'zarr'}"
    return f"memory://hist-{uuid.uuid4().hex}"


def test_is_a_history_store(url: str) -> None:
    store: HistoryStore = open_history_store(url)
    assert isinstance(store, ZarrHistoryStore)


def test_empty_room_lists_nothing(url: str) -> None:
    store = open_history_store(url)
    assert store.snapshot_seqs("r") == []
    assert store.segment_ranges("r") == []
    with pytest.raises(KeyError):
        store.get_snapshot("r", 1)
    with pytest.raises(KeyError):
        store.get_segment("r", 1, 2)


def test_round_trip_and_sorted_listing(url: str) -> None:
    store = open_history_store(url)
    for seq in (1000, 5, 20, 3):
        store.put_snapshot("r", seq, f"snap{seq}".encode())
    for first, last in ((1001, 2000), (1, 9), (10, 1000)):
        store.put_segment("r", first, last, f"seg{first}".encode())
    store.put_snapshot("other", 7, b"x")
    assert store.snapshot_seqs("r") == [3, 5, 20, 1000]
    assert store.segment_ranges("r") == [(1, 9), (10, 1000), (1001, 2000)]
    assert store.get_snapshot("r", 20) == b"snap20"
    assert store.get_segment("r", 10, 1000) == b"seg10"
    assert store.snapshot_seqs("other") == [7]
    with pytest.raises(KeyError):
        store.get_segment("r", 10, 999)


def test_rewrite_is_idempotent(url: str) -> None:
    store = open_history_store(url)
    entries = [FrameEntry(frame_id=i, version=1, slot=i, hash=f"{i:064x}") for i in range(3)]
    data = encode_snapshot("r", 4, entries)
    store.put_snapshot("r", 4, data)
    store.put_snapshot("r", 4, data)
    assert store.snapshot_seqs("r") == [4]
    assert decode_snapshot(store.get_snapshot("r", 4)) == ("r", 4, entries)


# Plain zarr warns that ``_history`` is not a Zarr node when listing a room's members.
@pytest.mark.filterwarnings("ignore:Object at _history:UserWarning")
def test_shares_the_store_with_frames(url: str) -> None:
    """History sits beside a room's Zarr group without disturbing it; memory:// is
    shared per URL between frame and history stores."""
    frames = open_store(url)
    frame = {"positions": np.zeros((2, 3))}
    frames.write_slots("r", 0, [frame], [frame_hash(frame)])
    history = open_history_store(url)
    history.put_snapshot("r", 1, b"s")
    assert open_history_store(url).snapshot_seqs("r") == [1]
    assert frames.rooms() == ["r"]
    reopened = open_store(url)
    assert reopened.n_slots("r") == 1
    if not url.startswith("memory://"):
        group = zarr.open_group(url.removeprefix("file://"), mode="r")
        assert "r" in list(group.group_keys())
        assert "positions" in dict(group["r"].members())  # type: ignore[union-attr]


def test_bad_names_and_seqs(tmp_path: Path) -> None:
    store = ZarrHistoryStore(tmp_path)
    with pytest.raises(ValueError):
        store.put_snapshot("a/b", 1, b"")
    with pytest.raises(ValueError):
        store.put_snapshot("r", -1, b"")
    with pytest.raises(ValueError):
        store.put_segment("r", 5, 4, b"")
