"""Patch (layered) slots of ZarrFrameStore on a real Zarr store under tmp_path."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.core.array import AsyncArray

from trajhub.shared import zarr_store
from trajhub.shared.frames import Frame, canonical_array, frames_equal
from trajhub.shared.hashing import frame_hash
from trajhub.shared.zarr_store import Layer, ZarrFrameStore, open_store

ROOM = "demo"
pytestmark = pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")
PER_ATOM = ["calc.forces", "numbers", "positions"]


def make_frame(n_atoms: int, seed: int = 0) -> Frame:
    rng = np.random.default_rng(seed)
    return {
        "numbers": rng.integers(1, 90, n_atoms),
        "positions": rng.normal(size=(n_atoms, 3)),
        "cell": np.eye(3) * (10.0 + seed),
        "pbc": np.array([True, False, True]),
        "calc.energy": np.asarray(rng.normal()),
        "calc.forces": rng.normal(size=(n_atoms, 3)),
        "info.name": np.asarray(f"frame {seed}"),
    }


def patched(frame: Frame, seed: int, keys: list[str]) -> Frame:
    """``frame`` with new values for ``keys`` (the whole merged frame)."""
    rng = np.random.default_rng(1000 + seed)
    n = len(frame["numbers"])
    new = {"positions": rng.normal(size=(n, 3)), "calc.energy": np.asarray(rng.normal()),
           "calc.forces": rng.normal(size=(n, 3)), "info.name": np.asarray(f"patch {seed}"),
           "arrays.tag": rng.integers(0, 5, n), "cell": np.eye(3) * rng.uniform(5, 9)}
    return {**frame, **{k: new[k] for k in keys}}


def write(store: ZarrFrameStore, frames: list[Frame], layers: list[Layer | None] | None = None,
          start: int | None = None) -> None:
    start = store.n_slots(ROOM) if start is None else start
    store.write_slots(ROOM, start, frames, [frame_hash(f) for f in frames], layers)


def assert_frames(got: list[Frame], want: list[Frame]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        w = {k: canonical_array(v, k) for k, v in w.items()}
        assert frames_equal(g, w), (i, sorted(g), sorted(w))


def raw(tmp_path: Path) -> Any:
    """The room's group opened with plain zarr, as a user would."""
    return zarr.open_group(str(tmp_path / "zarr"), mode="r")[ROOM]


def held(g: Any, slot: int, key: str) -> bool:
    return bool(g[f"{key}.shape"][slot, 0] >= 0)


@pytest.fixture
def store(tmp_path: Path) -> ZarrFrameStore:
    return open_store(str(tmp_path / "zarr"))


@pytest.fixture
def gets(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The name of the array of every array-level read (Zarr's, or of raw chunk files)."""
    calls: list[str] = []
    real, real_raw = AsyncArray.getitem, zarr_store._RawChunks.read

    async def getitem(self: AsyncArray[Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(self.basename)
        return await real(self, *args, **kwargs)

    def raw_read(self: zarr_store._RawChunks, *args: Any) -> Any:
        calls.append(self.array.basename)
        return real_raw(self, *args)

    monkeypatch.setattr(AsyncArray, "getitem", getitem)
    monkeypatch.setattr(zarr_store._RawChunks, "read", raw_read)
    yield calls


def test_patch_slot_stores_only_its_keys(store: ZarrFrameStore, tmp_path: Path) -> None:
    frames = [make_frame(5, i) for i in range(2)]
    write(store, frames)
    merged = patched(frames[1], 1, ["positions"])
    write(store, [merged], [(1, ["positions"])])

    g = raw(tmp_path)
    assert g.attrs["layered"] is True and g.attrs["n_slots"] == 3
    assert list(g["_base"][:3]) == [-1, -1, 1]
    assert held(g, 2, "positions")
    assert not any(held(g, 2, k) for k in ["numbers", "cell", "pbc", "calc.energy",
                                            "calc.forces"])
    assert g["info.name"][2] == b""  # strings: empty bytes where the slot has no value
    np.testing.assert_array_equal(g["positions"][2, :5], merged["positions"])

    assert_frames(store.read_slots(ROOM, [2, 0, 2, 1]), [merged, frames[0], merged, frames[1]])
    assert store.read_hashes(ROOM, [2]) == [frame_hash(merged)]
    reader = open_store(str(tmp_path / "zarr"))  # another process
    assert_frames(reader.read_slots(ROOM, [2, 1]), [merged, frames[1]])
    assert_frames(reader.read_slots(ROOM, [2], keys=["numbers", "positions"]),
                  [{"numbers": merged["numbers"], "positions": merged["positions"]}])


def test_reader_sees_the_first_patch_written_by_another_store(tmp_path: Path) -> None:
    path = str(tmp_path / "zarr")
    writer, reader = open_store(path), open_store(path)
    frames = [make_frame(4, i) for i in range(2)]
    write(writer, frames)
    assert_frames(reader.read_slots(ROOM, [0, 1]), frames)  # before the room is layered
    merged = patched(frames[0], 0, ["calc.forces"])
    write(writer, [merged], [(0, ["calc.forces"])])
    assert_frames(reader.read_slots(ROOM, [2, 1, 0]), [merged, frames[1], frames[0]])
    more = patched(frames[1], 1, ["positions"])
    write(writer, [make_frame(4, 5), more], [None, (1, ["positions"])])
    assert_frames(reader.read_slots(ROOM, [4, 3, 2]), [more, make_frame(4, 5), merged])


def test_patch_on_a_patch_is_flattened(store: ZarrFrameStore, tmp_path: Path) -> None:
    base = make_frame(4, 0)
    first = patched(base, 1, ["positions", "info.name"])
    second = patched(first, 2, ["calc.energy"])
    write(store, [base])
    write(store, [first], [(0, ["positions", "info.name"])])
    write(store, [second], [(1, ["calc.energy"])])

    g = raw(tmp_path)
    assert list(g["_base"][:3]) == [-1, 0, 0]  # slot 2 points past slot 1, at slot 0
    # ... and holds slot 1's keys too, with the values of the merged frame.
    assert [k for k in ["positions", "calc.energy", "numbers", "calc.forces", "cell"]
            if held(g, 2, k)] == ["positions", "calc.energy"]
    assert g["info.name"][2] != b""
    np.testing.assert_array_equal(g["positions"][2, :4], first["positions"])
    assert_frames(store.read_slots(ROOM, [2, 1, 0]), [second, first, base])
    assert_frames(open_store(str(tmp_path / "zarr")).read_slots(ROOM, [2, 1]),
                  [second, first])


def test_patch_reads_keys_only_its_base_has(store: ZarrFrameStore) -> None:
    base = {**make_frame(6, 3), "arrays.charge": np.linspace(-1, 1, 6),
            "info.note": np.asarray("only in the base")}
    write(store, [make_frame(6, 4), base])
    merged = patched(base, 5, ["positions", "arrays.tag"])  # arrays.tag: a new key
    write(store, [merged], [(1, ["positions", "arrays.tag"])])
    [got] = store.read_slots(ROOM, [2])
    assert sorted(got) == sorted(merged)
    assert_frames([got], [merged])
    assert str(got["info.note"]) == "only in the base"
    assert_frames(store.read_slots(ROOM, [2], keys=["arrays.charge", "arrays.tag"]),
                  [{"arrays.charge": base["arrays.charge"], "arrays.tag": merged["arrays.tag"]}])


def test_bases_in_the_same_write(store: ZarrFrameStore, tmp_path: Path) -> None:
    """A batch with a frame, its patch and a patch of that patch (all new slots)."""
    write(store, [make_frame(3, 9)])
    a = make_frame(3, 0)
    b = patched(a, 1, ["positions"])
    c = patched(b, 2, ["cell"])
    d = patched(c, 3, ["calc.forces"])
    write(store, [a, b, c, d], [None, (1, ["positions"]), (2, ["cell"]), (3, ["calc.forces"])])
    g = raw(tmp_path)
    assert list(g["_base"][:5]) == [-1, -1, 1, 1, 1]
    assert [k for k in ["positions", "cell", "calc.forces"] if held(g, 4, k)] == \
        ["positions", "cell", "calc.forces"]
    assert not held(g, 4, "numbers")
    assert_frames(store.read_slots(ROOM, range(1, 5)), [a, b, c, d])
    assert_frames(open_store(str(tmp_path / "zarr")).read_slots(ROOM, [4, 3, 2]), [d, c, b])


def test_write_is_once_and_retry_safe(store: ZarrFrameStore, tmp_path: Path) -> None:
    a = make_frame(3, 0)
    b = patched(a, 1, ["positions"])
    write(store, [a, b], [None, (0, ["positions"])])
    files = sorted(p.name for p in (tmp_path / "zarr" / ROOM).iterdir())
    # A repeated write (as after a crash before the projection commit) changes nothing,
    # also one overlapping new slots.
    write(store, [a, b], [None, (0, ["positions"])], start=0)
    c = patched(b, 2, ["calc.energy"])
    write(store, [b, c], [(0, ["positions"]), (1, ["calc.energy"])], start=1)
    assert store.n_slots(ROOM) == 3
    assert sorted(p.name for p in (tmp_path / "zarr" / ROOM).iterdir()) == files
    assert list(raw(tmp_path)["_base"][:3]) == [-1, 0, 0]
    assert_frames(store.read_slots(ROOM, [0, 1, 2]), [a, b, c])


def test_patch_that_drops_a_key_is_stored_whole(store: ZarrFrameStore,
                                                tmp_path: Path) -> None:
    a = make_frame(3, 0)
    without = {k: v for k, v in a.items() if k != "calc.forces"}
    write(store, [a, without], [None, (0, ["calc.forces", "positions"])])
    g = raw(tmp_path)
    assert "_base" not in g and not g.attrs.get("layered")
    assert held(g, 1, "numbers")
    assert_frames(store.read_slots(ROOM, [1]), [without])


def test_bad_layers_are_refused(store: ZarrFrameStore) -> None:
    a = make_frame(3, 0)
    with pytest.raises(ValueError, match="not an earlier slot"):
        write(store, [a], [(0, ["positions"])])
    with pytest.raises(ValueError, match="layers"):
        write(store, [a], [None, None])
    assert store.n_slots(ROOM) == 0


def test_reads_batch_bases_per_run(store: ZarrFrameStore, gets: list[str]) -> None:
    bases = [make_frame(20, i) for i in range(10)]
    write(store, bases)
    write(store, [make_frame(20, 100 + i) for i in range(190)])  # slots 10..199
    patches = [patched(f, i, ["positions"]) for i, f in enumerate(bases)]
    write(store, patches, [(i, ["positions"]) for i in range(10)])  # slots 200..209
    store.read_slots(ROOM, [0])  # loads the small per-frame keys (cell, pbc, energy)
    gets.clear()
    assert_frames(store.read_slots(ROOM, range(200, 210)), patches)
    # Two runs (bases 0..9 and patches 200..209): positions from both, the other
    # per-atom keys from the bases only; never a call per frame.
    assert sorted(gets) == ["calc.forces", "info.name", "info.name", "numbers",
                            "positions", "positions"]
    gets.clear()
    neighbours = list(range(190, 210))  # patches and whole frames in one run with bases
    store.read_slots(ROOM, neighbours)
    assert sorted(gets) == ["calc.forces", "calc.forces", "info.name", "info.name",
                            "numbers", "numbers", "positions", "positions"]


def test_plain_zarr_merge_by_hand(store: ZarrFrameStore, tmp_path: Path) -> None:
    """The recipe in the module docstring."""
    a = make_frame(7, 0)
    b = patched(a, 1, ["positions"])
    write(store, [a, b], [None, (0, ["positions"])])
    g = raw(tmp_path)

    def read_key(s: int, key: str) -> Any:
        n = g[f"{key}.shape"][s, 0]
        if n == -1 and "_base" in g and s < g["_base"].shape[0] and g["_base"][s] >= 0:
            return read_key(int(g["_base"][s]), key)
        return g[key][s, :n]

    np.testing.assert_array_equal(read_key(1, "positions"), b["positions"])
    np.testing.assert_array_equal(read_key(1, "numbers"), a["numbers"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_patch_histories_match_a_model(tmp_path: Path, seed: int) -> None:
    """Random frames and patches (of any earlier slot, any keys), written in random
    batches; every slot reads back as its whole frame, in this and a fresh store."""
    rnd = random.Random(seed)
    keys = ["positions", "calc.energy", "calc.forces", "info.name", "arrays.tag", "cell"]
    model: list[Frame] = []
    layers: list[Layer | None] = []
    for i in range(60):
        if not model or rnd.random() < 0.3:
            model.append(make_frame(rnd.randint(1, 9), i))
            layers.append(None)
        else:
            base = rnd.randrange(len(model))
            chosen = rnd.sample(keys, rnd.randint(1, 3))
            model.append(patched(model[base], i, chosen))
            layers.append((base, chosen))
    path = str(tmp_path / "zarr")
    writer, start = open_store(path), 0
    while start < len(model):
        end = min(len(model), start + rnd.randint(1, 12))
        write(writer, model[start:end], layers[start:end], start=start)
        start = end
    order = list(range(len(model)))
    rnd.shuffle(order)
    for store in (writer, open_store(path)):
        assert_frames(store.read_slots(ROOM, order), [model[s] for s in order])
        assert store.read_hashes(ROOM, order) == [frame_hash(model[s]) for s in order]
    g: Any = zarr.open_group(path, mode="r")[ROOM]
    bases = g["_base"][:len(model)]
    assert all(b < 0 or bases[b] < 0 for b in bases)  # chains have depth 1
