"""ZarrFrameStore forks: a fork's slots below ``parent_slots`` are read from its parent's
group (recursively), its own slots start there, nothing is copied."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from trajhub.shared.frames import Frame, frames_equal, validate_frame
from trajhub.shared.hashing import frame_hash
from trajhub.shared.zarr_store import ZarrFrameStore


def frame(seed: int, n_atoms: int = 4) -> Frame:
    rng = np.random.default_rng(seed)
    return validate_frame({"numbers": rng.integers(1, 50, n_atoms).astype(np.int32),
                           "positions": rng.normal(size=(n_atoms, 3)),
                           "info.label": np.array(f"f{seed}"),
                           "calc.energy": np.array(float(seed))})


def write(store: ZarrFrameStore, room: str, start: int, frames: list[Frame]) -> None:
    store.write_slots(room, start, frames, [frame_hash(f) for f in frames])


def test_fork_reads_parent_slots_and_writes_its_own(tmp_path: Path) -> None:
    store = ZarrFrameStore(tmp_path)
    base = [frame(i) for i in range(5)]
    write(store, "a", 0, base)
    store.init_fork("b", "a", 5)
    store.init_fork("b", "a", 5)  # idempotent
    assert store.n_slots("b") == 5
    own = [frame(10), frame(11, n_atoms=7)]
    write(store, "b", 5, own)
    got = store.read_slots("b", [6, 0, 4, 5, 0])
    assert all(frames_equal(x, y) for x, y in
               zip(got, [own[1], base[0], base[4], own[0], base[0]], strict=True))
    only = store.read_slots("b", [1, 5], keys=["positions"])
    assert [set(f) for f in only] == [{"positions"}, {"positions"}]
    assert store.read_hashes("b", [5, 2]) == [frame_hash(own[0]), frame_hash(base[2])]
    # The parent's data arrays were not copied: the fork's rows below 5 are padding.
    g = zarr.open_group(str(tmp_path / "b"), mode="r")
    assert g.attrs["parent"] == "a" and g.attrs["parent_slots"] == 5
    shapes = g["positions.shape"]
    assert isinstance(shapes, zarr.Array)
    assert (np.asarray(shapes[:5, 0]) == -1).all()
    with pytest.raises(ValueError):
        store.init_fork("b", "c", 5)


def test_fork_of_fork_and_patches_over_parent_slots(tmp_path: Path) -> None:
    store = ZarrFrameStore(tmp_path)
    base = [frame(i) for i in range(3)]
    write(store, "a", 0, base)
    changed = {**base[1], "positions": np.zeros((4, 3))}
    # A patch slot in the parent itself (slot 3 over slot 1).
    store.write_slots("a", 3, [changed], [frame_hash(changed)], [(1, ["positions"])])
    store.init_fork("b", "a", 4)
    write(store, "b", 4, [frame(20)])
    store.init_fork("c", "b", 5)
    # c patches a frame living in a's patch slot 3, and one in b's slot 4.
    p1 = {**changed, "calc.energy": np.array(-9.0)}
    p2 = {**frame(20), "info.label": np.array("patched")}
    store.write_slots("c", 5, [p1, p2], [frame_hash(p1), frame_hash(p2)],
                      [(3, ["calc.energy"]), (4, ["info.label"])])
    got = store.read_slots("c", [0, 3, 4, 5, 6])
    want = [base[0], changed, frame(20), p1, p2]
    assert all(frames_equal(x, y) for x, y in zip(got, want, strict=True))
    assert set(store.read_slots("c", [5], keys=["positions"])[0]) == {"positions"}
    assert np.array_equal(store.read_slots("c", [5], keys=["positions"])[0]["positions"],
                          np.zeros((4, 3)))
    # A fresh store (another process) reads the same through both parents.
    fresh = ZarrFrameStore(tmp_path)
    assert all(frames_equal(x, y) for x, y in
               zip(fresh.read_slots("c", [6, 0, 3]), [p2, base[0], changed], strict=True))
