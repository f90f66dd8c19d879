"""ZarrFrameStore on real Zarr stores (local disk under tmp_path, and memory://)."""

from __future__ import annotations

import os
import random
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from zarr.core.array import AsyncArray
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from trajhub.shared import zarr_store
from trajhub.shared.buffers import unexported
from trajhub.shared.frames import Frame, FrameRun, SlotColumns, canonical_array, frames_equal
from trajhub.shared.hashing import frame_hash
from trajhub.shared.ports import FrameStore, ProjectionCommit
from trajhub.shared.zarr_store import ProjectionError, ZarrFrameStore, open_store

ROOM = "demo"
# Strings live in zarr's VariableLengthBytes arrays, which zarr flags as not yet in the spec.
pytestmark = pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")


def make_frame(n_atoms: int, seed: int = 0, extra: dict[str, Any] | None = None) -> Frame:
    rng = np.random.default_rng(seed)
    frame: Frame = {
        "numbers": rng.integers(1, 90, n_atoms),
        "positions": rng.normal(size=(n_atoms, 3)),
        "cell": np.eye(3) * (10.0 + seed),
        "pbc": np.array([True, False, True]),
        "calc.energy": np.asarray(rng.normal()),
        "calc.forces": rng.normal(size=(n_atoms, 3)),
    }
    frame.update({k: np.asarray(v) for k, v in (extra or {}).items()})
    return frame


def write(store: FrameStore, frames: list[Frame], start: int | None = None,
          room: str = ROOM) -> None:
    start = store.n_slots(room) if start is None else start
    store.write_slots(room, start, frames, [frame_hash(f) for f in frames])


def canonical(frame: Frame) -> Frame:
    return {k: canonical_array(v, k) for k, v in frame.items()}


def assert_frames(got: list[Frame], want: list[Frame]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        w = canonical(w)
        assert frames_equal(g, w), (i, {k: (v.dtype, v.shape) for k, v in g.items()},
                                    {k: (v.dtype, v.shape) for k, v in w.items()})


def s22_frames(path: Path) -> list[Frame]:
    return [{"numbers": a.numbers, "positions": a.positions, "cell": a.cell.array,
             "pbc": a.pbc, "info.name": np.asarray(str(a.info["name"]))}
            for a in ase.io.read(path, ":")]


def plain_group(tmp_path: Path) -> Any:
    """The room's group opened with plain zarr, as a user would."""
    return zarr.open_group(str(tmp_path / "zarr"))[ROOM]


@pytest.fixture
def store(tmp_path: Path) -> ZarrFrameStore:
    return open_store(str(tmp_path / "zarr"))


@pytest.fixture
def count_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[str]]]:
    """Records every array-level read and write (the array's name): Zarr's, and the
    store's own reads of raw chunk files and writes of encoded chunks."""
    calls: dict[str, list[str]] = {"get": [], "set": []}
    real_get, real_set = AsyncArray.getitem, AsyncArray.setitem
    real_raw, real_put = zarr_store._RawChunks.read, ZarrFrameStore._put_chunk

    async def getitem(self: AsyncArray[Any], *args: Any, **kwargs: Any) -> Any:
        calls["get"].append(self.basename)
        return await real_get(self, *args, **kwargs)

    def raw_read(self: zarr_store._RawChunks, a: int, b: int, dims: tuple[int, ...],
                 out: Any = None) -> Any:
        calls["get"].append(self.array.basename)
        return real_raw(self, a, b, dims, out)

    async def setitem(self: AsyncArray[Any], *args: Any, **kwargs: Any) -> None:
        calls["set"].append(self.basename)
        await real_set(self, *args, **kwargs)

    async def put_chunk(self: ZarrFrameStore, array: AsyncArray[Any], *args: Any) -> None:
        calls["set"].append(array.basename)
        await real_put(self, array, *args)

    monkeypatch.setattr(AsyncArray, "getitem", getitem)
    monkeypatch.setattr(AsyncArray, "setitem", setitem)
    monkeypatch.setattr(zarr_store._RawChunks, "read", raw_read)
    monkeypatch.setattr(ZarrFrameStore, "_put_chunk", put_chunk)
    yield calls


@pytest.fixture
def selections(monkeypatch: pytest.MonkeyPatch,
               count_calls: dict[str, list[str]]) -> list[tuple[str, Any]]:
    """Every array-level read as (array name, selection)."""
    seen: list[tuple[str, Any]] = []
    counting, counting_raw = AsyncArray.getitem, zarr_store._RawChunks.read

    async def getitem(self: AsyncArray[Any], selection: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append((self.basename, selection))
        return await counting(self, selection, *args, **kwargs)

    def raw_read(self: zarr_store._RawChunks, a: int, b: int, dims: tuple[int, ...],
                 out: Any = None) -> Any:
        # Whole rows as Zarr would be asked for them: (slice(a, b),)
        cut = () if dims == tuple(self.array.shape[1:]) else tuple(slice(0, d) for d in dims)
        seen.append((self.array.basename, (slice(a, b), *cut)))
        return counting_raw(self, a, b, dims, out)

    monkeypatch.setattr(AsyncArray, "getitem", getitem)
    monkeypatch.setattr(zarr_store._RawChunks, "read", raw_read)
    return seen


# -- round trips --------------------------------------------------------------------------

def test_round_trip_is_exact_for_every_dtype_and_shape(store: ZarrFrameStore) -> None:
    big_endian = np.arange(6, dtype=">f8").reshape(2, 3)
    frame = make_frame(
        2,
        extra={"info.nan": np.array([np.nan, np.inf, -np.inf, -0.0, 1e-308]),
           "info.f16": np.array([1.5, np.nan], dtype=np.float16),
           "info.f32": np.float32(3.25),
           "info.c64": np.array([1 + 2j, np.nan * 1j], dtype=np.complex64),
           "info.c128": np.array([[1 - 1j]], dtype=np.complex128),
           "info.i8": np.array([-128, 127], dtype=np.int8),
           "info.u64": np.array([2**64 - 1, 0], dtype=np.uint64),
           "info.i16": np.array(-5, dtype=np.int16),
           "info.u8": np.zeros((2, 0, 3), dtype=np.uint8),
           "info.flag": np.bool_(True),
           "info.name": np.asarray("water dimer ü"),
           "info.tags": np.array([["a", "bb"], ["ccc", ""]]),
           "info.empty": np.zeros(0),
           "info.big": big_endian,
           "arrays.momenta": np.ones((2, 3), dtype=np.float32),
           "arrays.tensor": np.arange(2 * 3 * 3 * 2).reshape(2, 3, 3, 2)})
    write(store, [frame])
    [got] = store.read_slots(ROOM, [0])
    assert_frames([got], [frame])
    assert got["info.big"].dtype == np.dtype("<f8")
    assert np.isnan(got["info.nan"][0]) and np.signbit(got["info.nan"][3])
    assert got["calc.energy"].shape == () and got["info.name"].dtype.kind == "U"


def test_zero_atom_frames(store: ZarrFrameStore) -> None:
    frames = [make_frame(0), make_frame(3, 1), make_frame(0, 2)]
    write(store, frames)
    assert_frames(store.read_slots(ROOM, [0, 1, 2]), frames)


def test_s22_variable_atom_counts(store: ZarrFrameStore, s22_path: Path) -> None:
    frames = s22_frames(s22_path)
    assert len({len(f["numbers"]) for f in frames}) > 5
    write(store, frames[:1])
    write(store, frames[1:9])
    write(store, frames[9:])
    order = list(range(len(frames)))
    random.Random(0).shuffle(order)
    assert_frames(store.read_slots(ROOM, order), [frames[i] for i in order])
    assert store.read_hashes(ROOM, order) == [frame_hash(frames[i]) for i in order]


def test_keys_subset(store: ZarrFrameStore, s22_path: Path) -> None:
    frames = s22_frames(s22_path)
    write(store, frames)
    got = store.read_slots(ROOM, [3, 0], keys=["positions", "info.name", "no.such"])
    for g, f in zip(got, [frames[3], frames[0]], strict=True):
        assert set(g) == {"positions", "info.name"}
        assert np.array_equal(g["positions"], f["positions"])
        assert str(g["info.name"]) == str(f["info.name"])
    assert store.read_slots(ROOM, [1], keys=[]) == [{}]
    assert store.keys(ROOM) == ["cell", "info.name", "numbers", "pbc", "positions"]


def test_missing_keys_are_omitted_per_frame(store: ZarrFrameStore) -> None:
    frames = [make_frame(2), make_frame(3, 1, {"info.x": np.arange(4)}), make_frame(2, 2)]
    del frames[2]["calc.forces"]
    write(store, frames)
    got = store.read_slots(ROOM, [0, 1, 2])
    assert "info.x" not in got[0] and "info.x" in got[1] and "calc.forces" not in got[2]
    assert_frames(got, frames)


def test_repeated_and_unordered_slots(store: ZarrFrameStore) -> None:
    frames = [make_frame(5 + i, i) for i in range(300)]
    write(store, frames)
    slots = [299, 0, 0, 150, 7, 299, 8, 9, 200, 7]
    got = store.read_slots(ROOM, slots)
    assert_frames(got, [frames[s] for s in slots])
    got[1]["extra"] = np.zeros(1)
    assert "extra" not in got[2]  # each requested slot gets its own dict
    assert store.read_slots(ROOM, []) == []


def test_returned_arrays_are_read_only(store: ZarrFrameStore) -> None:
    write(store, [make_frame(3)])
    for _ in range(2):  # read from Zarr, then partly from the rows kept in memory
        [got] = store.read_slots(ROOM, [0])
        for value in got.values():
            with pytest.raises(ValueError):
                value[...] = 0
            with pytest.raises(ValueError):
                value.flags.writeable = True  # nobody can write into a shared cache
    assert_frames(store.read_slots(ROOM, [0]), [make_frame(3)])


def test_unwritten_and_negative_slots_raise(store: ZarrFrameStore) -> None:
    with pytest.raises(IndexError):
        store.read_slots("nowhere", [0])
    write(store, [make_frame(2)])
    with pytest.raises(IndexError):
        store.read_slots(ROOM, [0, 1])
    with pytest.raises(IndexError):
        store.read_slots(ROOM, [-1])
    with pytest.raises(IndexError):
        store.read_hashes(ROOM, [1])


# -- write-once ---------------------------------------------------------------------------

def test_write_once_skips_written_slots(store: ZarrFrameStore) -> None:
    first = [make_frame(3, i) for i in range(5)]
    write(store, first, start=0)
    assert store.n_slots(ROOM) == 5
    other = [make_frame(4, 100 + i) for i in range(5)]
    write(store, other, start=2)  # slots 2..4 exist: skipped; 5, 6 are new
    assert store.n_slots(ROOM) == 7
    assert_frames(store.read_slots(ROOM, range(7)), first + other[3:])
    write(store, first, start=0)  # a full repeat is harmless
    assert store.n_slots(ROOM) == 7
    with pytest.raises(ValueError, match="gap"):
        write(store, [make_frame(2)], start=9)


def test_write_rejects_bad_input(store: ZarrFrameStore) -> None:
    frame = make_frame(2)
    with pytest.raises(ValueError, match="hashes"):
        store.write_slots(ROOM, 0, [frame], [])
    with pytest.raises(ValueError, match="sha256"):
        store.write_slots(ROOM, 0, [frame], ["nothex"])
    with pytest.raises(ValueError, match="not allowed"):
        store.write_slots(ROOM, 0, [{"../evil": np.zeros(1)}], [frame_hash(frame)])
    with pytest.raises(ValueError):
        store.write_slots("bad/room", 0, [frame], [frame_hash(frame)])
    assert store.rooms() == []


def test_leftovers_of_a_crashed_write_are_replaced(store: ZarrFrameStore,
                                                   tmp_path: Path) -> None:
    write(store, [make_frame(2)])
    g = plain_group(tmp_path)
    # A write that died after creating arrays but before registering them and n_slots.
    g.create_array("info.x", shape=(5, 7, 2), dtype="i2", fill_value=9)
    g["positions"][1:3] = 7.0
    frames = [make_frame(3, 1, {"info.x": np.arange(4.0)}), make_frame(2, 2)]
    write(store, frames)
    assert_frames(store.read_slots(ROOM, [1, 2]), frames)


def test_reserved_room_name(store: ZarrFrameStore) -> None:
    with pytest.raises(ValueError, match="reserved"):
        write(store, [make_frame(1)], start=0, room="zarr.json")


# -- dtype and ndim variants --------------------------------------------------------------

def test_dtype_variants_round_trip_exactly(store: ZarrFrameStore, tmp_path: Path) -> None:
    values: list[Any] = [
        np.array([1.0, 2.0, 3.0]),
        np.array([1.0, 2.0], dtype=np.float32),
        np.arange(4, dtype=np.int32).reshape(2, 2),
        np.asarray("label"),
        None,
        np.array([5.0, 6.0, 7.0, 8.0]),
        np.array([True, False]),
    ]
    frames = []
    for i, value in enumerate(values):
        extra = {} if value is None else {"info.x": value}
        frames.append(make_frame(2, i, extra))
    frames[3]["positions"] = frames[3]["positions"].astype(np.float32)
    write(store, frames[:3])
    write(store, frames[3:])
    assert_frames(store.read_slots(ROOM, range(len(frames))), frames)
    assert_frames(open_store(str(tmp_path / "zarr")).read_slots(ROOM, [6, 1, 3]),
                  [frames[6], frames[1], frames[3]])
    names = set(plain_group(tmp_path).array_keys())
    assert {"info.x", "info.x@f4_1d", "info.x@i4_2d", "info.x@str", "info.x@b1_1d",
            "positions@f4_2d"} <= names


# -- persistence, rooms, projection -------------------------------------------------------

def test_reopen_from_disk(tmp_path: Path) -> None:
    path = str(tmp_path / "zarr")
    writer: FrameStore = open_store(path)  # mypy checks the protocol
    frames = [make_frame(3 + i, i) for i in range(10)]
    write(writer, frames, room="a")
    write(writer, frames[:2], room="b.1")
    writer.commit_projection("a", 4, [3, 1], [10, 11], [1, 2])
    for url in (path, f"file://{path}"):
        reader = open_store(url)
        assert reader.rooms() == ["a", "b.1"]
        assert reader.n_slots("a") == 10 and reader.n_slots("b.1") == 2
        assert reader.applied_seq("a") == 4 and reader.applied_seq("b.1") == 0
        assert_frames(reader.read_slots("a", range(10)), frames)
        seq, order, fids, versions = reader.read_projection("a")
        assert seq == 4 and order.tolist() == [3, 1] and fids.tolist() == [10, 11]
        assert versions.tolist() == [1, 2] and order.dtype == np.int64


def test_unknown_room_defaults(store: ZarrFrameStore) -> None:
    assert store.n_slots("ghost") == 0 and store.applied_seq("ghost") == 0
    assert store.rooms() == [] and store.keys("ghost") == []
    seq, order, fids, versions = store.read_projection("ghost")
    assert seq == 0 and order.size == fids.size == versions.size == 0


def test_rooms_ignores_stray_files(tmp_path: Path) -> None:
    root = tmp_path / "zarr"
    store = open_store(str(root))
    write(store, [make_frame(1)], room="r1")
    (root / "notes.txt").write_text("x")
    (root / "emptydir").mkdir()
    assert store.rooms() == ["r1"]


def test_projection_commit_and_read(store: ZarrFrameStore) -> None:
    write(store, [make_frame(2, i) for i in range(6)])
    store.commit_projection(ROOM, 3, [5, 0, 2], [1, 2, 3], [1, 1, 2])
    assert store.applied_seq(ROOM) == 3
    store.commit_projection(ROOM, 7, [0], [2], [1])  # shrinks
    seq, order, fids, versions = store.read_projection(ROOM)
    assert (seq, order.tolist(), fids.tolist(), versions.tolist()) == (7, [0], [2], [1])
    store.commit_projection(ROOM, 8, [], [], [])
    seq, order, _, _ = store.read_projection(ROOM)
    assert seq == 8 and order.size == 0
    with pytest.raises(ValueError, match="older"):
        store.commit_projection(ROOM, 2, [], [], [])
    with pytest.raises(ValueError, match="outside"):
        store.commit_projection(ROOM, 9, [6], [1], [1])
    with pytest.raises(ValueError, match="length"):
        store.commit_projection(ROOM, 9, [1, 2], [1], [1])
    assert store.n_slots(ROOM) == 6 and store.applied_seq(ROOM) == 8


def test_projection_committed_with_the_slots_it_refers_to(store: ZarrFrameStore) -> None:
    frames = [make_frame(2, i) for i in range(4)]
    hashes = [frame_hash(f) for f in frames]
    store.write_slots(ROOM, 0, frames[:2], hashes[:2],
                      commit=ProjectionCommit(1, [1, 0], [1, 2], [1, 1]))
    seq, order, fids, _ = store.read_projection(ROOM)
    assert (seq, order.tolist(), fids.tolist()) == (1, [1, 0], [1, 2])
    assert store.n_slots(ROOM) == 2
    # Bad projections are refused before anything is written.
    with pytest.raises(ValueError, match="outside"):
        store.write_slots(ROOM, 2, frames[2:], hashes[2:],
                          commit=ProjectionCommit(2, [4], [1], [1]))
    with pytest.raises(ValueError, match="older"):
        store.write_slots(ROOM, 2, frames[2:], hashes[2:],
                          commit=ProjectionCommit(0, [], [], []))
    assert store.n_slots(ROOM) == 2 and store.applied_seq(ROOM) == 1
    store.write_slots(ROOM, 2, frames[2:], hashes[2:],
                      commit=ProjectionCommit(2, [0, 3], [1, 4], [1, 1]))
    # Slots already written (a retry after a crash) still commit the projection.
    store.write_slots(ROOM, 0, frames, hashes, commit=ProjectionCommit(3, [3], [4], [2]))
    seq, order, _, versions = store.read_projection(ROOM)
    assert (seq, order.tolist(), versions.tolist()) == (3, [3], [2])
    assert store.n_slots(ROOM) == 4
    assert frames_equal(store.read_slots(ROOM, [3])[0], frames[3])


def test_torn_projection_is_detected(store: ZarrFrameStore, tmp_path: Path) -> None:
    write(store, [make_frame(2, i) for i in range(4)])
    store.commit_projection(ROOM, 2, [0, 1, 2], [1, 2, 3], [1, 1, 1])
    # What a crash between the array writes and the attribute write leaves behind.
    plain_group(tmp_path)["_order"][:3] = [3, 2, 1]
    with pytest.raises(ProjectionError):
        store.read_projection(ROOM)


def test_plain_zarr_readability(store: ZarrFrameStore, tmp_path: Path,
                                s22_path: Path) -> None:
    frames = s22_frames(s22_path)
    write(store, frames)
    store.commit_projection(ROOM, 1, list(range(len(frames)))[::-1],
                            list(range(len(frames))), [1] * len(frames))
    g = plain_group(tmp_path)
    assert g.attrs["n_slots"] == len(frames) and g.attrs["applied_seq"] == 1
    for i in (0, 5, 21):
        slot = int(g["_order"][i])
        n = int(g["positions.shape"][slot, 0])
        assert np.array_equal(g["positions"][slot, :n], frames[slot]["positions"])
        assert np.array_equal(g["numbers"][slot, :n], frames[slot]["numbers"])
        assert bytes(g["_hash"][slot]).hex() == frame_hash(frames[slot])
    assert np.array_equal(g["cell"][3], frames[3]["cell"])


# -- bulk I/O -----------------------------------------------------------------------------

PER_ATOM = ["calc.forces", "numbers", "positions"]
SMALL = ["calc.energy", "cell", "pbc"]  # per-frame keys of a few bytes per slot


def test_bulk_io_makes_one_call_per_array(store: ZarrFrameStore, tmp_path: Path,
                                          count_calls: dict[str, list[str]]) -> None:
    frames = [make_frame(40 + i % 7, i) for i in range(400)]
    write(store, frames)
    sets = count_calls["set"]
    assert sorted(sets) == sorted(set(sets))  # one write per array (400 slots: one chunk)
    assert {"positions", "positions.shape", "_hash"} <= set(sets)
    count_calls["get"].clear()
    got = store.read_slots(ROOM, range(400))
    # The writer knows the shapes it wrote: one data block per key, nothing else.
    assert sorted(count_calls["get"]) == sorted(PER_ATOM + SMALL)
    assert_frames(got[::37], frames[::37])

    reader = open_store(str(tmp_path / "zarr"))  # as another process would
    count_calls["get"].clear()
    assert_frames(reader.read_slots(ROOM, range(400))[::37], frames[::37])
    # Its first read also loads each key's shape rows.
    assert sorted(count_calls["get"]) == sorted(
        PER_ATOM + SMALL + [f"{k}.shape" for k in PER_ATOM + SMALL])
    count_calls["get"].clear()
    assert_frames(reader.read_slots(ROOM, range(400))[::37], frames[::37])
    # Then only the per-atom data: shapes and small keys stay in memory.
    assert sorted(count_calls["get"]) == PER_ATOM
    count_calls["get"].clear()
    reader.read_slots(ROOM, [5, 1, 3, 390, 2, 395], keys=["positions"])
    assert count_calls["get"] == ["positions", "positions"]  # runs 1..5 and 390..395


def test_single_frame_read_touches_only_per_atom_arrays(
        tmp_path: Path, count_calls: dict[str, list[str]],
        selections: list[tuple[str, Any]]) -> None:
    path = str(tmp_path / "zarr")
    writer, reader = open_store(path), open_store(path)
    frames = [make_frame(30, i) for i in range(10)]
    write(writer, frames)
    reader.read_slots(ROOM, [3])
    count_calls["get"].clear()
    assert_frames(reader.read_slots(ROOM, [7]), [frames[7]])
    assert sorted(count_calls["get"]) == PER_ATOM

    # Growth by another store: the reader reads just the new rows it keeps, once.
    more = [make_frame(50, 10 + i, {"info.tag": np.arange(i + 1)}) for i in range(3)]
    write(writer, more)
    selections.clear()
    assert_frames(reader.read_slots(ROOM, [11, 2]), [more[1], frames[2]])
    kept = {name: sel for name, sel in selections if name not in PER_ATOM}
    assert kept == {**{f"{k}.shape": (slice(10, 13),) for k in PER_ATOM + SMALL},
                    **{k: (slice(10, 13),) for k in SMALL},
                    "info.tag.shape": (slice(0, 13),), "info.tag": (slice(0, 13),)}
    count_calls["get"].clear()
    assert_frames(reader.read_slots(ROOM, [12, 10]), [more[2], more[0]])
    assert sorted(count_calls["get"]) == PER_ATOM


def test_kept_rows_follow_growing_padded_axes(tmp_path: Path) -> None:
    """A small per-frame key whose later values are larger (its padded axes grow)."""
    path = str(tmp_path / "zarr")
    writer, reader = open_store(path), open_store(path)
    frames = [make_frame(2, i, {"info.v": np.arange(i + 1.0)}) for i in range(3)]
    write(writer, frames)
    assert_frames(reader.read_slots(ROOM, [0, 1, 2]), frames)
    assert_frames(writer.read_slots(ROOM, [0, 1, 2]), frames)
    for batch in ([make_frame(2, 5, {"info.v": np.arange(9.0)})],
                  [make_frame(2, 6, {"info.v": np.arange(2.0)}), make_frame(3, 7)],
                  [make_frame(2, 8, {"info.v": np.arange(30.0)})]):  # no longer small
        write(writer, batch)
        frames += batch
        slots = list(range(len(frames)))
        assert_frames(reader.read_slots(ROOM, slots), frames)
        assert_frames(writer.read_slots(ROOM, slots[::-1]), frames[::-1])
        assert_frames(open_store(path).read_slots(ROOM, slots), frames)


# -- caching and concurrency --------------------------------------------------------------

def test_reader_sees_growth_made_by_another_store(tmp_path: Path) -> None:
    path = str(tmp_path / "zarr")
    writer, reader = open_store(path), open_store(path)
    small = [make_frame(10, i) for i in range(3)]
    write(writer, small)
    assert_frames(reader.read_slots(ROOM, [0, 1, 2]), small)  # reader caches arrays
    big = [make_frame(700, 10), make_frame(5, 11, {"info.new": np.arange(3)})]
    write(writer, big)
    assert_frames(reader.read_slots(ROOM, [3, 0, 4]), [big[0], small[0], big[1]])
    assert reader.keys(ROOM)[-1] == "positions" and "info.new" in reader.keys(ROOM)


def test_reader_forgets_a_room_made_again(tmp_path: Path) -> None:
    """Slots only grow; fewer of them means the room's group was deleted and made anew."""
    path = str(tmp_path / "zarr")
    reader = open_store(path)
    write(open_store(path), [make_frame(20, i) for i in range(5)])
    reader.read_slots(ROOM, range(5))
    shutil.rmtree(tmp_path / "zarr" / ROOM)
    again = [make_frame(3, 10 + i, {"info.x": np.arange(2)}) for i in range(2)]
    write(open_store(path), again)
    assert reader.n_slots(ROOM) == 2
    assert_frames(reader.read_slots(ROOM, [0, 1]), again)


@pytest.mark.parametrize("tail_budget", [16 << 20, 0])
def test_small_appends_read_back_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            tail_budget: int) -> None:
    """One-slot writes (made from the writer's copy of the chunk they fall in) cross
    chunks, grow padded axes and interleave with another writer's slots and projection
    commits; a fresh store and plain zarr read exactly what was written."""
    monkeypatch.setattr(zarr_store, "CHUNK_TARGET_BYTES", 4096)
    monkeypatch.setattr(zarr_store, "MAX_SLOT_CHUNK", 8)
    monkeypatch.setattr(zarr_store, "TAIL_CACHE_BYTES", tail_budget)
    path = str(tmp_path / "zarr")
    writer, other = open_store(path), open_store(path)
    frames: list[Frame] = []
    for i in range(30):
        by = other if i % 11 == 10 else writer
        frame = make_frame(3 + (i * 7) % 90, i)  # now and then wider than a chunk
        frames.append(frame)
        n = len(frames)
        length = min(n, 6 if by is other else 5)  # the other resizes the projection
        by.write_slots(ROOM, n - 1, [frame], [frame_hash(frame)], commit=ProjectionCommit(
            i + 1, list(range(n - length, n))[::-1], list(range(length)), [i] * length))
    reader = open_store(path)
    assert_frames(reader.read_slots(ROOM, range(30)), frames)
    seq, order, fids, versions = reader.read_projection(ROOM)
    assert (seq, order.tolist(), fids.tolist(), versions.tolist()) == (
        30, [29, 28, 27, 26, 25], list(range(5)), [29] * 5)
    group = plain_group(tmp_path)
    assert group.attrs["n_frames"] == 5  # (the projection arrays grow a chunk at a time)
    assert group["_order"][:5].tolist() == [29, 28, 27, 26, 25]
    for slot in (0, 7, 8, 29):
        n_atoms = int(group["positions.shape"][slot, 0])
        np.testing.assert_array_equal(group["positions"][slot, :n_atoms],
                                      frames[slot]["positions"])


def test_projection_commits_rewrite_the_chunks_that_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zarr_store, "PROJECTION_CHUNK", 4)
    path = str(tmp_path / "zarr")
    writer = open_store(path)
    write(writer, [make_frame(2, i) for i in range(12)])
    puts: list[str] = []
    real_put = zarr_store.atomic_put

    def put(target: Path, data: Any) -> None:
        puts.append(str(target.relative_to(tmp_path / "zarr" / ROOM)))
        real_put(target, data)

    monkeypatch.setattr(zarr_store, "atomic_put", put)
    steps = [
        (list(range(10)), [1] * 10),  # three chunks
        (list(range(10)), [1] * 5 + [2] + [1] * 4),  # one version changes: one chunk
        (list(range(5)), [3] * 5),  # shrinks
        (list(range(7)), [3] * 7),  # grows again inside the second chunk
    ]
    # Besides the group's document (the commit point): a changed chunk is put whole;
    # entries appended after committed ones go into the chunk's file in place.
    expected_puts = {2: ["_version/c/1"], 3: ["_version/c/0", "_version/c/1"], 4: []}
    for seq, (order, versions) in enumerate(steps, start=1):
        puts.clear()
        writer.commit_projection(ROOM, seq, order, order, versions)
        if seq in expected_puts:
            assert puts == [*expected_puts[seq], "zarr.json"]
        got = open_store(path).read_projection(ROOM)
        assert (got[0], got[1].tolist(), got[2].tolist(), got[3].tolist()) == (
            seq, order, order, versions)
        group = plain_group(tmp_path)
        assert group["_version"][:group.attrs["n_frames"]].tolist() == versions


def expected_frame(slot: int) -> Frame:
    """Deterministic content per slot, with growing atom counts and optional keys."""
    n = 1 + (slot * 7) % 150
    frame: Frame = {"numbers": np.full(n, slot % 100, dtype=np.int64),
                    "positions": np.full((n, 3), float(slot)),
                    "calc.energy": np.asarray(float(slot))}
    if slot % 3 == 0:
        frame["info.name"] = np.asarray(f"slot-{slot}")
    if slot % 5 == 0:
        frame["info.v"] = np.arange(slot % 11, dtype=np.float32)
    return frame


def test_concurrent_reader_never_sees_partial_data(tmp_path: Path) -> None:
    path = str(tmp_path / "zarr")
    writer = open_store(path)
    readers = [writer, open_store(path)]  # same instance, and another "process"
    done = threading.Event()
    errors: list[BaseException] = []
    checked = [0, 0]

    def read_loop(k: int) -> None:
        rng = random.Random(k)
        reader = readers[k]
        try:
            while not done.is_set() or checked[k] == 0:
                n = reader.n_slots(ROOM)
                if n == 0:
                    continue
                slots = [rng.randrange(n) for _ in range(20)] + [n - 1]
                for slot, frame in zip(slots, reader.read_slots(ROOM, slots), strict=True):
                    assert frames_equal(frame, expected_frame(slot)), slot
                checked[k] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read_loop, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    try:
        slot = 0
        for batch in range(30):
            size = 1 + batch % 9
            frames = [expected_frame(s) for s in range(slot, slot + size)]
            write(writer, frames, start=slot)
            slot += size
    finally:
        done.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[0]
    assert all(checked)


def test_local_store_replaces_files_atomically(tmp_path: Path) -> None:
    """Guards the zarr>=3.1.3 pin: a chunk is never visible half written."""
    store = LocalStore(tmp_path)
    contents = [bytes([1]) * 3_000_000, bytes([2]) * 1_000]
    proto = default_buffer_prototype()
    zarr.core.sync.sync(store.set("c/0", proto.buffer.from_bytes(contents[0])))
    done = threading.Event()
    reads = 0

    def writer() -> None:
        for i in range(60):
            zarr.core.sync.sync(store.set("c/0", proto.buffer.from_bytes(contents[i % 2])))
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    while not done.is_set():
        assert (tmp_path / "c" / "0").read_bytes() in contents
        reads += 1
    t.join()
    assert reads > 0
    assert not list(tmp_path.rglob("*.partial"))


# -- store URLs ---------------------------------------------------------------------------

def test_memory_urls_share_data_per_name() -> None:
    a, b = open_store("memory://shared-test"), open_store("memory://shared-test")
    other = open_store("memory://other-test")
    write(a, [make_frame(2)], room="m")
    assert b.n_slots("m") == 1 and other.n_slots("m") == 0
    assert_frames(b.read_slots("m", [0]), [make_frame(2)])


# -- property-based -----------------------------------------------------------------------

DTYPES = st.sampled_from(["<f8", "<f4", "<f2", "<i8", "<i4", "<i2", "|i1", "<u8", "<u4",
                          "<u2", "|u1", "|b1", "<c8", "<c16", ">f8", ">i4"])
INFO = st.builds(
    lambda arr: arr,
    DTYPES.flatmap(lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3,
                                                                        min_side=0,
                                                                        max_side=4))))


@st.composite
def frames_strategy(draw: st.DrawFn) -> Frame:
    n = draw(st.integers(0, 70))
    frame: Frame = {
        "numbers": draw(hnp.arrays(np.int64, n, elements=st.integers(0, 118))),
        "positions": draw(hnp.arrays(draw(st.sampled_from(["<f8", "<f4"])), (n, 3))),
    }
    for name in draw(st.sets(st.sampled_from(["a", "b", "c"]), max_size=3)):
        frame[f"info.{name}"] = draw(INFO)
    if draw(st.booleans()):
        frame["info.s"] = draw(hnp.arrays(np.dtype("<U3"), hnp.array_shapes(min_dims=0,
                                                                               max_dims=2,
                                                                               min_side=0)))
    return frame


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(frames_strategy(), min_size=1, max_size=4), min_size=1,
                        max_size=4))
def test_random_frames_round_trip(batches: list[list[Frame]]) -> None:
    store = ZarrFrameStore(zarr.storage.MemoryStore())
    written: list[Frame] = []
    for batch in batches:
        write(store, batch)
        written.extend(batch)
    order = list(range(len(written)))[::-1]
    assert_frames(store.read_slots(ROOM, order), [written[i] for i in order])
    fresh = ZarrFrameStore(store.store)  # nothing cached: what the chunks hold
    assert_frames(fresh.read_slots(ROOM, order), [written[i] for i in order])


# -- raw chunk reads ----------------------------------------------------------------------
@st.composite
def raw_cases(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...], list[Any], Any]:
    """(shape, chunks, regions written, dtype) of a raw array: 1-3 dims, some chunks
    never written."""
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 12), min_size=ndim, max_size=ndim)))
    chunks = tuple(draw(st.integers(1, n + 3)) for n in shape)
    regions = draw(st.lists(st.tuples(*(st.integers(0, n - 1) for n in shape)), max_size=4))
    dtype = draw(st.sampled_from(["<f8", "<f4", "<i4", "|u1", "|b1", "<c16"]))
    return shape, chunks, regions, dtype


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=raw_cases(), data=st.data(), blosc=st.booleans())
def test_raw_chunk_reads_match_zarr(tmp_path: Path, case: Any, data: st.DataObject,
                                    blosc: bool) -> None:
    shape, chunks, regions, dtype = case
    path = tmp_path / f"raw-{abs(hash(repr((case, blosc))))}"
    shutil.rmtree(path, ignore_errors=True)
    compressors = zarr.codecs.BloscCodec(cname="lz4", shuffle="shuffle") if blosc else None
    arr = zarr.create_array(LocalStore(path), shape=shape, chunks=chunks, dtype=dtype,
                            compressors=compressors, fill_value=1)
    rng = np.random.default_rng(len(regions))
    for start in regions:  # a box from ``start`` to the end: other chunks stay unwritten
        box = tuple(slice(s, None) for s in start)
        arr[box] = (rng.random(arr[box].shape) * 100).astype(dtype)
    raw = zarr_store._raw_chunks(arr._async_array, LocalStore(path))
    assert raw is not None
    a = data.draw(st.integers(0, shape[0] - 1))
    b = data.draw(st.integers(a + 1, shape[0]))
    dims: tuple[int, ...] = ()
    if len(shape) > 1:
        dims = (data.draw(st.integers(1, shape[1])), *chunks[2:])
    block = raw.read(a, b, dims)
    if len(shape) == 3 and chunks[2] > shape[2]:
        return  # (the selection would reach past the array: not one the store makes)
    assert block is not None
    want = arr[(slice(a, b), *(slice(0, d) for d in dims))]
    assert block.dtype == want.dtype and np.array_equal(block, want)


@pytest.mark.parametrize("records", [1, 2, 3, 500])
def test_raw_reads_of_part_of_each_slot_come_in_batches_of_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, records: int) -> None:
    """A trajectory's atoms short of the chunk: each slot's first rows, many slots per
    preadv (PREADV_RECORDS), the same values as Zarr's."""
    monkeypatch.setattr(zarr_store, "PREADV_RECORDS", records)
    arr = zarr.create_array(LocalStore(tmp_path / "a"), shape=(30, 9, 3), chunks=(7, 4, 3),
                            dtype="<f8", compressors=None)
    arr[:] = np.random.default_rng(1).random((30, 9, 3))
    raw = zarr_store._raw_chunks(arr._async_array, LocalStore(tmp_path / "a"))
    assert raw is not None
    for a, b, d1 in ((0, 30, 9), (1, 29, 3), (5, 6, 5), (3, 17, 1)):
        block = raw.read(a, b, (d1, 3))
        assert block is not None and np.array_equal(block, arr[a:b, :d1]), (a, b, d1)


def test_a_strided_read_skips_into_one_kept_scratch_and_one_record_needs_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a read skips between records lands in the thread's scratch buffer, kept
    from one read to the next (a new one each time was fresh memory); a single record
    (a 100,000-atom frame, its chunk to itself) skips nothing and takes none."""
    path = tmp_path / "f"
    path.write_bytes(bytes(range(40)))
    fd = os.open(path, os.O_RDONLY)
    taken: list[int] = []
    real = zarr_store._scratch

    def scratch(size: int) -> memoryview:
        taken.append(size)
        return real(size)

    monkeypatch.setattr(zarr_store, "_scratch", scratch)
    try:
        out = bytearray(6)
        assert zarr_store._pread_rows(fd, memoryview(out), [0], 6, 10, 3)
        assert out == bytes(range(3, 9)) and taken == []
        first = real(7)
        for _ in range(2):
            out = bytearray(9)
            assert zarr_store._pread_rows(fd, memoryview(out), [0, 3, 6], 3, 10, 0)
            assert out == bytes([0, 1, 2, 10, 11, 12, 20, 21, 22])
        assert taken == [7, 7]
        assert real(7).obj is first.obj, "the same scratch buffer again"
    finally:
        os.close(fd)


def test_strided_preads_say_when_the_file_ends(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(40)))
    out = bytearray(12)
    fd = os.open(path, os.O_RDONLY)
    try:
        flat = memoryview(out)
        assert zarr_store._pread_rows(fd, flat, [0, 3, 6, 9], 3, 10, 0)
        assert out == bytes([0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32])
        assert zarr_store._pread_rows(fd, flat, [0], 12, 12, 0)
        assert not zarr_store._pread_rows(fd, flat, [0, 3, 6, 9], 3, 13, 0), "past the end"
    finally:
        os.close(fd)


def test_raw_chunk_reads_refuse_what_they_cannot_read(tmp_path: Path) -> None:
    arr = zarr.create_array(LocalStore(tmp_path / "a"), shape=(4, 10, 3), chunks=(2, 4, 2),
                            dtype="<f8", compressors=None)
    arr[:] = 1.0
    raw = zarr_store._raw_chunks(arr._async_array, LocalStore(tmp_path / "a"))
    assert raw is not None
    assert raw.read(0, 2, (10, 3)) is None  # axis 2 spans two chunks
    assert raw.read(0, 2, (10, 2)) is not None
    chunk = tmp_path / "a" / "c" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-8])  # a torn file: Zarr is asked (and says so)
    assert raw.read(0, 2, (10, 2)) is None
    compressed = zarr.create_array(LocalStore(tmp_path / "b"), shape=(4,), chunks=(2,),
                                   dtype="<f8", compressors=zarr.codecs.ZstdCodec())
    assert zarr_store._raw_chunks(compressed._async_array, LocalStore(tmp_path / "b")) is None
    packed = zarr.create_array(LocalStore(tmp_path / "d"), shape=(4,), chunks=(2,),
                               dtype="<i8", compressors=zarr.codecs.BloscCodec())
    packed[:] = [1, 2, 3, 4]
    raw = zarr_store._raw_chunks(packed._async_array, LocalStore(tmp_path / "d"))
    assert raw is not None and raw.blosc and list(raw.read(0, 4, ())) == [1, 2, 3, 4]
    (tmp_path / "d" / "c" / "1").write_bytes(b"not blosc")  # Zarr is asked (and says so)
    assert raw.read(0, 4, ()) is None and list(raw.read(0, 2, ())) == [1, 2]
    assert zarr_store._raw_chunks(arr._async_array, zarr.storage.MemoryStore()) is None
    # another writer's big-endian chunks are not this machine's bytes: Zarr reads them
    big = zarr.create_array(LocalStore(tmp_path / "c"), shape=(4,), chunks=(2,),
                            dtype="<f8", compressors=None,
                            serializer=zarr.codecs.BytesCodec(endian="big"))
    big[:] = [1.0, 2.0, 3.0, 4.0]
    assert zarr_store._raw_chunks(big._async_array, LocalStore(tmp_path / "c")) is None


def test_frame_data_is_read_from_raw_chunks(store: ZarrFrameStore,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    frames = [make_frame(50 + i % 3, i) for i in range(20)]
    write(store, frames)
    raw_reads: list[str] = []
    real = zarr_store._RawChunks.read

    def spy(self: zarr_store._RawChunks, a: int, b: int, dims: tuple[int, ...],
            out: Any = None) -> Any:
        block = real(self, a, b, dims, out)
        if block is not None:
            raw_reads.append(self.array.basename)
        return block

    monkeypatch.setattr(zarr_store._RawChunks, "read", spy)
    assert_frames(store.read_slots(ROOM, [3, 4, 5, 17]), [frames[i] for i in (3, 4, 5, 17)])
    assert {"positions", "calc.forces", "numbers"} <= set(raw_reads)  # (numbers: Blosc)


def test_a_run_is_read_straight_into_the_arrays_into_gives(store: ZarrFrameStore) -> None:
    """``into`` is told a run's layout before anything is read, and the keys it gives
    arrays for are read into them in place (raw chunks and Blosc ones alike); a key it
    gives none for comes in a block of its own, and a read of several runs never asks."""
    frames = [make_frame(50, i) for i in range(20)]
    write(store, frames)
    told: list[dict[str, Any]] = []
    given: dict[str, Any] = {}

    def into(layout: dict[str, Any]) -> dict[str, Any]:
        told.append(layout)
        slab = bytearray(16 * 4096)  # 16 slots 4 KB apart, as in a slab of frames
        given.update(
            positions=np.ndarray((16, 50, 3), "<f8", buffer=slab, strides=(4096, 24, 8)),
            numbers=np.ndarray((16, 50), "<i8", buffer=slab, offset=1200, strides=(4096, 8)))
        return dict(given)

    [run], rest = store.read_columns(ROOM, range(2, 18), into=into)
    assert not rest and (run.start, run.count) == (2, 16)
    assert [(k, told[0][k]) for k in ("positions", "numbers", "calc.energy")] == [
        ("positions", (np.dtype("<f8"), (50, 3))), ("numbers", (np.dtype("<i8"), (50,))),
        ("calc.energy", (np.dtype("<f8"), ()))]
    for key in ("positions", "numbers"):  # raw chunks, Blosc
        assert np.shares_memory(run.arrays[key], given[key])
    assert not np.shares_memory(run.arrays["calc.forces"], given["positions"])
    assert_frames(run.frames(), [canonical(f) for f in frames[2:18]])

    columns, rest = store.read_columns(ROOM, [1, 2, 5], into=into)  # two runs
    assert len(told) == 1
    got = {c.start + i: f for c in columns for i, f in enumerate(c.frames())} | rest
    assert_frames([got[s] for s in (1, 2, 5)], [canonical(frames[s]) for s in (1, 2, 5)])


def test_raw_read_blocks_reuse_the_memory_of_blocks_no_one_holds(
        store: ZarrFrameStore, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = zarr_store.BlockPool(max_bytes=64 * 2**20, min_bytes=1024)
    monkeypatch.setattr(zarr_store, "READ_BLOCKS", pool)
    frames = [make_frame(60, i) for i in range(12)]
    write(store, frames)
    held = store.read_slots(ROOM, list(range(12)))
    assert_frames(held, frames)
    first = len(pool._kept)
    # The blocks the frames are views of (a shape rows' block, copied into the cache of
    # rows, may be free already: the pool may hand that one out again).
    kept = {id(b) for b in pool._kept if not unexported(b)}
    assert len(kept) >= 2  # positions and forces, at least
    again = store.read_slots(ROOM, list(range(12)))  # the first blocks are still held
    assert not kept & {id(b) for b in pool._kept[first:]}
    assert_frames(again, frames)
    before = {id(b) for b in pool._kept}
    del held, again
    third = store.read_slots(ROOM, list(range(6)))
    assert_frames(third, frames[:6])
    assert {id(b) for b in pool._kept} == before, "the new blocks reused kept memory"


# -- reads as columns ---------------------------------------------------------------------
def expand(columns: list[SlotColumns], frames: dict[int, Frame]) -> dict[int, Frame]:
    """Slot -> frame of what ``read_columns`` gave; no slot in two places."""
    out = dict(frames)
    for run in columns:
        assert run.count >= zarr_store.MIN_COLUMN_FRAMES
        for slot, frame in zip(range(run.start, run.start + run.count), run.frames(),
                               strict=True):
            assert slot not in out
            out[slot] = frame
    return out


@st.composite
def plain_frames(draw: st.DrawFn) -> Frame:
    """Frames of one dtype per key and no strings (what can come as columns), with the
    atom counts and the keys held varying."""
    n = draw(st.sampled_from([0, 2, 3, 3, 3]))
    frame: Frame = {"numbers": np.arange(n, dtype=np.int64),
                    "positions": draw(hnp.arrays(np.float64, (n, 3)))}
    if draw(st.booleans()):
        frame["calc.energy"] = np.asarray(draw(st.floats(allow_nan=False)))
    if draw(st.booleans()):
        frame["info.grid"] = np.full(draw(st.sampled_from([(2, 2), (2, 2), (1, 3)])), 1.5)
    return frame


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(plain_frames(), min_size=1, max_size=12), data=st.data())
def test_read_columns_gives_the_frames_read_slots_gives(frames: list[Frame],
                                                        data: st.DataObject) -> None:
    store = ZarrFrameStore(zarr.storage.MemoryStore())
    for i in range(0, len(frames), 5):
        write(store, frames[i:i + 5])
    slots = data.draw(st.lists(st.integers(0, len(frames) - 1), min_size=1, max_size=16))
    keys = data.draw(st.none() | st.lists(st.sampled_from(
        ["numbers", "positions", "calc.energy", "info.grid", "nope"]), unique=True))
    want = sorted(set(slots))
    for reader in (store, ZarrFrameStore(store.store)):  # kept rows; blocks read whole
        columns, rest = reader.read_columns(ROOM, slots, keys)
        got = expand(columns, rest)
        assert sorted(got) == want
        assert_frames([got[s] for s in want], reader.read_slots(ROOM, want, keys))
        for run in columns:
            for column in run.arrays.values():
                assert not column.flags.writeable


def test_a_trajectory_reads_as_one_column_run(store: ZarrFrameStore) -> None:
    frames = [make_frame(5, seed) for seed in range(30)]
    write(store, frames)
    write(store, [make_frame(7, 30), *(make_frame(5, seed) for seed in range(31, 40))])
    columns, rest = store.read_columns(ROOM, [*range(40), 3, 0])
    # Slot 30 has another atom count (the block read is padded to it): a run of its own.
    assert [(run.start, run.count) for run in columns] == [(0, 30), (31, 9)]
    assert sorted(rest) == [30]
    assert_frames([expand(columns, rest)[s] for s in range(40)],
                  store.read_slots(ROOM, range(40)))
    assert store.read_columns(ROOM, []) == ([], {})
    with pytest.raises(IndexError):
        store.read_columns(ROOM, [-1])


def test_patches_strings_and_dtype_variants_read_as_frames(store: ZarrFrameStore) -> None:
    frames = [make_frame(4, seed) for seed in range(6)]
    write(store, frames)
    merged = {**frames[1], "positions": np.zeros((4, 3))}
    store.write_slots(ROOM, 6, [merged], [frame_hash(merged)], [(1, ["positions"])])
    assert store.read_columns(ROOM, range(6))[0]  # before the patch slot: columns
    columns, rest = store.read_columns(ROOM, range(7))
    assert columns == [] and sorted(rest) == list(range(7))
    assert_frames([rest[s] for s in range(7)], [*frames, merged])
    named = {**make_frame(4, 9), "info.name": np.asarray("x")}
    write(store, [named, named])
    assert store.read_columns(ROOM, [7, 8])[0] == []


@pytest.mark.parametrize("where", ["dir", "memory"])
def test_a_local_store_opens_arrays_from_their_metadata_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """A first read in a local directory reads each array's zarr.json itself (no Zarr
    open, whose file reads go through worker threads); other stores open through Zarr."""
    path = str(tmp_path / "zarr") if where == "dir" else f"memory://opens-{tmp_path.name}"
    frames = [make_frame(5, i) for i in range(4)]
    write(open_store(path), frames)
    opened: list[str] = []
    real_open = AsyncArray.open

    async def counting_open(*args: Any, **kwargs: Any) -> Any:
        opened.append(str(args[0]))
        return await real_open(*args, **kwargs)

    monkeypatch.setattr(AsyncArray, "open", counting_open)
    reader = open_store(path)
    assert_frames(reader.read_slots(ROOM, [2, 0]), [frames[2], frames[0]])
    assert bool(opened) == (where == "memory")


def run_of(frames: list[Frame]) -> FrameRun:
    return FrameRun({k: np.stack([f[k] for f in frames]) for k in frames[0]}, len(frames))


def write_run(store: ZarrFrameStore, run: FrameRun) -> None:
    store.write_slots(ROOM, store.n_slots(ROOM), run, [f"{i:064x}" for i in range(len(run))])


def store_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_a_frame_run_is_stored_byte_for_byte_as_its_frames(tmp_path: Path) -> None:
    frames = [make_frame(4, i, {"info.z": np.zeros((0, 2)), "info.i": np.int16(i)})
              for i in range(12)]
    by_frame, by_run = open_store(str(tmp_path / "a")), open_store(str(tmp_path / "b"))
    for store, batch in ((by_frame, frames[:8]), (by_run, run_of(frames[:8]))):
        store.write_slots(ROOM, 0, batch, [frame_hash(f) for f in frames[:8]])
    # A run that starts below n_slots: its written slots are skipped, as a list's are.
    for store, batch in ((by_frame, frames[5:]), (by_run, run_of(frames[5:]))):
        store.write_slots(ROOM, 5, batch, [frame_hash(f) for f in frames[5:]])
    assert store_files(tmp_path / "a") == store_files(tmp_path / "b")
    assert_frames(ZarrFrameStore(tmp_path / "b").read_slots(ROOM, range(12)), frames)


def test_a_frame_run_that_needs_converting_goes_frame_by_frame(
        store: ZarrFrameStore, monkeypatch: pytest.MonkeyPatch) -> None:
    plans: list[str] = []
    real = zarr_store._plan_run

    def counting(run: FrameRun, registry: Any) -> Any:
        plans.append("run")
        return real(run, registry)

    monkeypatch.setattr(zarr_store, "_plan_run", counting)
    frames = [make_frame(3, i) for i in range(4)]
    big = run_of(frames)
    big.columns["positions"] = big.columns["positions"].astype(">f8")
    write_run(store, big)
    assert plans == [], "big-endian columns are converted frame by frame"
    write_run(store, run_of(frames))
    assert plans == ["run"]
    store.write_slots(ROOM, 8, run_of(frames), [frame_hash(f) for f in frames],
                      layers=[None, (1, ("positions",)), None, None])
    assert plans == ["run"], "a run with patch slots goes frame by frame"
    assert_frames(store.read_slots(ROOM, range(12)), frames * 3)
    with pytest.raises(ValueError, match="is not allowed"):
        write_run(store, FrameRun({"bad key": np.zeros((2, 3))}, 2))


def test_appends_write_raw_chunks_in_place_byte_for_byte(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An append into a partly filled chunk of raw floats writes its rows into the file
    (the file is not replaced); the files are those a whole-chunk rewrite gives."""
    frames = [make_frame(5 + i % 3, i) for i in range(40)]
    batches = [frames[:3], frames[3:4], frames[4:11], frames[11:12], frames[12:40]]
    in_place = open_store(str(tmp_path / "a"))
    chunk = tmp_path / "a" / ROOM / "positions" / "c" / "0" / "0" / "0"
    inodes = set()
    for batch in batches:
        write(in_place, batch)
        inodes.add(chunk.stat().st_ino)
    assert len(inodes) == 1, "the positions chunk was replaced, not written in place"
    monkeypatch.setattr(zarr_store, "_write_rows", lambda *_: False)
    whole = open_store(str(tmp_path / "b"))
    for batch in batches:
        write(whole, batch)
    assert store_files(tmp_path / "a") == store_files(tmp_path / "b")
    assert_frames(open_store(str(tmp_path / "a")).read_slots(ROOM, range(40)), frames)


def interleaved(frames: list[Frame]) -> FrameRun:
    """A run whose columns are strided views of one buffer holding the frames back to
    back, each frame's arrays one after another, as storage reads them from a pack."""
    keys = sorted(frames[0])
    frame_bytes = sum(np.asarray(frames[0][k]).nbytes for k in keys)
    buf = bytearray(frame_bytes * len(frames))
    columns, at = {}, 0
    for key in keys:
        first = np.asarray(frames[0][key])
        column: np.ndarray[Any, Any] = np.ndarray(
            (len(frames), *first.shape), first.dtype, buffer=buf, offset=at,
            strides=(frame_bytes, *first.strides))
        for i, frame in enumerate(frames):
            column[i] = frame[key]
        columns[key] = column
        at += first.nbytes
    return FrameRun(columns, len(frames))


def test_large_slots_go_into_chunk_files_from_where_they_are(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slots of large rows (frames apart, or a run's strided columns as storage reads
    them) are written into a raw chunk file as views of their values with fill bytes
    between, no padded copy; the files are those a whole-chunk rewrite gives."""
    frames = [make_frame(400, i) for i in range(12)]  # 9,600 bytes of positions a slot
    batches: list[list[Frame] | FrameRun] = [
        frames[:1], interleaved(frames[1:3]), frames[3:4], interleaved(frames[4:12])]
    views: list[int] = []
    real = zarr_store._slot_bytes

    def spy(rows: np.ndarray[Any, Any], *args: Any) -> list[memoryview]:
        out = real(rows, *args)
        if rows.shape[1:] == (400, 3):
            views.append(sum(np.shares_memory(rows, np.frombuffer(b, np.uint8))
                             for b in out))
        return out

    monkeypatch.setattr(zarr_store, "_slot_bytes", spy)
    in_place = open_store(str(tmp_path / "a"))
    chunk = tmp_path / "a" / ROOM / "positions" / "c" / "0" / "0" / "0"
    inodes = set()
    for batch in batches:
        in_place.write_slots(ROOM, in_place.n_slots(ROOM), batch,
                             [frame_hash(f) for f in batch])
        inodes.add(chunk.stat().st_ino)
    assert len(inodes) == 1, "the positions chunk was replaced, not written in place"
    # positions and forces, batch by batch (the first batch makes the chunk whole)
    assert views == [2, 2, 1, 1, 8, 8], "each slot written from its own values"
    monkeypatch.setattr(zarr_store, "_write_rows", lambda *_: False)
    whole = open_store(str(tmp_path / "b"))
    for batch in batches:
        write(whole, list(batch))
    assert store_files(tmp_path / "a") == store_files(tmp_path / "b")
    assert_frames(open_store(str(tmp_path / "a")).read_slots(ROOM, range(12)), frames)


def test_a_short_vectored_write_goes_on_where_it_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buffers = [memoryview(bytes([i]) * (i * 3 + 1)) for i in range(10)]
    real = os.pwritev
    calls = []

    def short(fd: int, bufs: list[memoryview], offset: int) -> int:
        calls.append(len(bufs))
        assert len(bufs) <= 4
        return real(fd, bufs, offset) if sum(map(len, bufs)) <= 7 else \
            real(fd, [b"".join(bytes(b) for b in bufs)[:7]], offset)

    monkeypatch.setattr(zarr_store, "IOV_BATCH", 4)
    monkeypatch.setattr(os, "pwritev", short)
    path = tmp_path / "f"
    path.write_bytes(b"x" * 5)
    fd = os.open(path, os.O_WRONLY)
    try:
        zarr_store._pwrite_all(fd, list(buffers), 2)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"xx" + b"".join(bytes(b) for b in buffers)
    assert len(calls) > 10


def test_compressed_chunks_are_in_small_blosc_blocks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """New arrays compress in blocks of BLOSC_BLOCK_BYTES (Blosc's own choice was the
    whole chunk, and as much scratch memory, fresh, per read of it); a room whose chunks
    are of the old kind is still read."""
    frames = [make_frame(3_000, i) for i in range(3)]
    store = open_store(str(tmp_path / "zarr"))
    write(store, frames)
    chunk = (tmp_path / "zarr" / ROOM / "numbers" / "c" / "0" / "0").read_bytes()
    assert int.from_bytes(chunk[4:8], "little") > zarr_store.BLOSC_BLOCK_BYTES
    assert int.from_bytes(chunk[8:12], "little") == zarr_store.BLOSC_BLOCK_BYTES
    assert_frames(open_store(str(tmp_path / "zarr")).read_slots(ROOM, range(3)), frames)

    def before(dtype: Any) -> tuple[Any, ...]:
        return (zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle",
                                       typesize=dtype.itemsize),)

    monkeypatch.setattr(zarr_store, "chunk_compressors", before)
    write(open_store(str(tmp_path / "old")), frames, room="old")
    monkeypatch.undo()
    old = (tmp_path / "old" / "old" / "numbers" / "c" / "0" / "0").read_bytes()
    assert int.from_bytes(old[8:12], "little") == int.from_bytes(old[4:8], "little")
    assert_frames(open_store(str(tmp_path / "old")).read_slots("old", range(3)), frames)


def test_a_fork_appends_beside_its_parent_slots(tmp_path: Path) -> None:
    """A fork's own arrays start at its parent's slot count, inside a chunk whose file
    the fork does not have yet: that chunk is written whole (fill values below), and
    the appends after it go in place."""
    store = open_store(str(tmp_path / "zarr"))
    frames = [make_frame(4, i) for i in range(9)]
    write(store, frames[:5])
    store.init_fork("fork", ROOM, 3)
    write(store, frames[5:7], start=3, room="fork")
    write(store, frames[7:9], room="fork")
    got = open_store(str(tmp_path / "zarr")).read_slots("fork", range(7))
    assert_frames(got, frames[:3] + frames[5:9])
    assert_frames(open_store(str(tmp_path / "zarr")).read_slots(ROOM, range(5)), frames[:5])


def test_bookkeeping_arrays_are_raw_and_old_compressed_ones_still_grow(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new room's ``.shape`` and ``_hash`` arrays are not compressed (appends go into
    their files in place); a room whose ones are (made before) is appended to as ever."""
    frames = [make_frame(3 + i % 2, i) for i in range(8)]
    new = open_store(str(tmp_path / "zarr"))
    write(new, frames[:4])
    group = plain_group(tmp_path)
    assert group["positions.shape"].compressors == ()
    assert group["_hash"].compressors == ()
    assert group["numbers"].compressors != ()  # (data arrays follow CODEC)

    real_create = ZarrFrameStore._create

    async def compressed(self: ZarrFrameStore, *args: Any, raw: bool = False,
                         **kwargs: Any) -> Any:
        return await real_create(self, *args, **kwargs)

    monkeypatch.setattr(ZarrFrameStore, "_create", compressed)
    old = open_store(str(tmp_path / "old"))
    write(old, frames[:4], room="old")
    monkeypatch.undo()
    assert zarr.open_group(str(tmp_path / "old"))["old"]["positions.shape"].compressors != ()
    again = open_store(str(tmp_path / "old"))
    write(again, frames[4:], room="old")
    write(new, frames[4:])
    assert_frames(open_store(str(tmp_path / "old")).read_slots("old", range(8)), frames)
    assert_frames(open_store(str(tmp_path / "zarr")).read_slots(ROOM, range(8)), frames)
