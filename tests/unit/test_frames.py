"""validate_frame: the frame model's rules, each failure naming its problem."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from trajhub.shared.frames import (
    FrameError,
    FrameRun,
    canonical_array,
    frames_equal,
    is_per_atom,
    n_atoms,
    validate_frame,
)


def frame(n: int = 3, change: dict[Any, Any] | None = None) -> dict[Any, Any]:
    out: dict[Any, Any] = {"numbers": np.arange(1, n + 1), "positions": np.zeros((n, 3)),
                           "cell": np.eye(3), "pbc": np.array([True, True, False])}
    out.update(change or {})
    return {k: v for k, v in out.items() if v is not None}


def test_valid_frame_is_canonicalized() -> None:
    raw = frame(2, {"positions": np.asfortranarray(np.ones((2, 3), dtype=">f4")),
                    "arrays.tags": [1, 2], "info.name": "x", "calc.energy": 1.0,
                    "calc.forces": np.zeros((2, 3)), "calc.stress": np.zeros(6),
                    "info.v": np.arange(7)})
    out = validate_frame(raw)
    assert out["positions"].dtype.str == "<f4" and out["positions"].flags.c_contiguous
    assert out["info.name"].dtype.kind == "U" and out["calc.energy"].shape == ()
    assert n_atoms(out) == 2


def test_zero_atoms_is_valid() -> None:
    out = validate_frame(frame(0, {"numbers": np.zeros(0, dtype=int)}))
    assert n_atoms(out) == 0


@pytest.mark.parametrize("change,message", [
    ({"positions": np.zeros((3, 2))}, r"positions must be a float array of shape \(N, 3\)"),
    ({"positions": np.zeros(9)}, r"positions must be .*shape \(9,\)"),
    ({"positions": np.zeros((3, 3), dtype=int)}, r"positions must be a float array"),
    ({"positions": np.zeros((4, 3))}, r"positions has shape \(4, 3\), but the frame has 3 atoms"),
    ({"numbers": np.arange(2)}, r"positions has shape \(3, 3\), but the frame has 2 atoms"),
    ({"numbers": np.zeros((3, 1), dtype=int)}, r"numbers must be a 1-d integer array"),
    ({"numbers": np.ones(3)}, r"numbers must be a 1-d integer array, got <f8"),
    ({"numbers": np.array([1, 2, 201])}, r"numbers must be atomic numbers between 0 and 200"),
    ({"numbers": np.array([1, -1, 2])}, r"atomic numbers"),
    ({"numbers": np.array([1, -128, 2], dtype=np.int8)}, r"atomic numbers"),
    ({"numbers": np.array([1, 2, 255], dtype=np.uint8)}, r"atomic numbers"),
    ({"numbers": np.array([-2**31, 2, 3], dtype=">i4")}, r"atomic numbers"),
    ({"numbers": np.array([0, 2**63, 3], dtype=np.uint64)}, r"atomic numbers"),
    ({"numbers": None}, r"frame has no 'numbers'"),
    ({"positions": None}, r"frame has no 'positions'"),
    ({"arrays.tags": np.arange(4)}, r"arrays\.tags has shape \(4,\), but the frame has 3 atoms"),
    ({"arrays.tags": np.int64(3)}, r"arrays\.tags has shape \(\)"),
    ({"arrays.names": np.array(["a", "b", "c"])}, r"arrays\.names: per-atom arrays must be "
                                                    r"numeric"),
    ({"calc.forces": np.zeros((2, 3))}, r"calc\.forces has shape \(2, 3\), but the frame has 3"),
    ({"calc.charges": np.zeros(5)}, r"calc\.charges has shape \(5,\)"),
    ({"pbc": np.array([1, 1, 0])}, r"pbc must be a \(3,\) bool array, got <i8"),
    ({"pbc": np.array([True, False])}, r"pbc must be a \(3,\) bool array.*shape \(2,\)"),
    ({"cell": np.eye(2)}, r"cell must be a \(3, 3\) number array, got shape \(2, 2\)"),
    ({"cell": np.zeros(9)}, r"cell must be a \(3, 3\) number array, got shape \(9,\)"),
    ({"cell": np.eye(3, dtype=bool)}, r"cell must be a \(3, 3\) number array"),
    ({"energy": np.float64(1)}, r"frame key 'energy' is not allowed"),
    ({"info.a.b": np.zeros(1)}, r"frame key 'info\.a\.b' is not allowed"),
    ({"Positions": np.zeros((3, 3))}, r"frame key 'Positions' is not allowed"),
    ({"info.x\n": np.zeros(1)}, r"is not allowed"),
    ({3: np.zeros(1)}, r"frame key 3 is not a string"),
    ({"info.obj": np.array([object()])}, r"info\.obj: dtype '\|O' is not supported"),
    ({"info.bytes": np.array([b"ab"])}, r"info\.bytes: dtype '\|S2' is not supported"),
    ({"info.dt": np.array(["2020-01-01"], dtype="M8[D]")}, r"info\.dt: dtype .* not supported"),
    ({"info.f128": np.zeros(1, dtype=np.longdouble)}, r"info\.f128: dtype .* not supported"),
    ({"info.deep": np.zeros((1,) * 9)}, r"info\.deep: 9 dimensions; at most 8"),
])
def test_invalid_frames_name_the_problem(change: dict[Any, Any], message: str) -> None:
    with pytest.raises(FrameError, match=message):
        validate_frame(frame(change=change))


def test_numbers_judged_valid_before_are_judged_by_value_under_another_dtype() -> None:
    """The last valid numbers are remembered by their bytes: the same bytes read as
    another dtype are other numbers, and checked as such."""
    valid = np.array([200, 6, 8], dtype=np.uint8)
    for _ in range(2):  # the second time from the memo
        assert validate_frame(frame(change={"numbers": valid}))["numbers"] is valid
    with pytest.raises(FrameError, match="atomic numbers"):  # 200 as int8 is -56
        validate_frame(frame(change={"numbers": valid.view(np.int8)}))
    with pytest.raises(FrameError, match="atomic numbers"):
        validate_frame(frame(change={"numbers": np.array([201, 6, 8], dtype=np.uint8)}))
    assert validate_frame(frame(change={"numbers": valid}))["numbers"] is valid


def test_frame_must_be_a_mapping() -> None:
    with pytest.raises(FrameError, match="mapping"):
        validate_frame([("numbers", np.arange(3))])  # type: ignore[arg-type]


@pytest.mark.parametrize("key,per_atom", [
    ("numbers", True), ("positions", True), ("arrays.momenta", True), ("calc.forces", True),
    ("calc.magmoms", True), ("calc.energy", False), ("calc.stress", False), ("cell", False),
    ("pbc", False), ("info.forces", False),
])
def test_is_per_atom(key: str, per_atom: bool) -> None:
    assert is_per_atom(key) is per_atom


def test_canonical_array_keeps_zero_d() -> None:
    assert canonical_array(np.float64(2.0)).shape == ()
    assert canonical_array(">i4").dtype.kind == "U"  # a string is a 0-d unicode array
    with pytest.raises(FrameError, match="not supported"):
        canonical_array(np.zeros(2, dtype="V8"), "info.v")


def test_frames_equal_is_exact() -> None:
    a = {"x": np.array([np.nan, 1.0])}
    assert frames_equal(a, {"x": np.array([np.nan, 1.0])})
    assert not frames_equal(a, {"x": np.array([np.nan, 1.0], dtype=np.float32)})
    assert not frames_equal(a, {"x": np.array([[np.nan, 1.0]])})
    assert not frames_equal(a, {"y": np.array([np.nan, 1.0])})


def test_a_frame_run_reads_as_its_frames() -> None:
    run = FrameRun({"positions": np.arange(24.0).reshape(4, 2, 3),
                    "calc.energy": np.arange(4.0)}, 4)
    assert len(run) == 4
    assert list(run[1]) == ["positions", "calc.energy"]
    assert np.array_equal(run[1]["positions"], np.arange(6.0, 12.0).reshape(2, 3))
    energy = run[-1]["calc.energy"]
    assert isinstance(energy, np.ndarray) and energy.shape == () and energy == 3.0
    part = run[1:3]
    assert isinstance(part, FrameRun) and len(part) == 2
    assert np.array_equal(part[0]["positions"], run[1]["positions"])
    assert len(run[3:]) == 1 and len(run[5:]) == 0
    assert [f["calc.energy"].item() for f in run] == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(IndexError):
        run[4]
    with pytest.raises(ValueError, match="4 rows"):
        FrameRun({"positions": np.zeros((3, 2, 3))}, 4)
