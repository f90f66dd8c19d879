"""encode_frames (FrameEncoder) gives exactly frame_to_bytes of each frame, whatever the
mix of layouts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from trajhub.shared import frame_encoder
from trajhub.shared.codec import frame_to_bytes
from trajhub.shared.frame_encoder import (
    LAYOUT_MAX_BYTES,
    empty_slab,
    encode_columns,
    encode_frames,
    encode_slab,
)
from trajhub.shared.frames import SlotColumns


def _trajectory(n: int, atoms: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    block = rng.random((n, atoms, 3))
    block.flags.writeable = False
    return [{"numbers": np.arange(atoms), "positions": block[i], "cell": np.eye(3),
             "pbc": np.ones(3, bool), "calc.energy": block[i, 0, 0, ...]} for i in range(n)]


def test_a_trajectory_encodes_as_frame_to_bytes() -> None:
    frames = _trajectory(50, 7)
    assert encode_frames(frames) == [frame_to_bytes(f) for f in frames]


def test_mixed_and_odd_frames_encode_as_frame_to_bytes() -> None:
    odd: list[dict[str, Any]] = [
        {"a": np.zeros(0)}, {"a": np.zeros((2, 3))[:, 0]}, {"b": np.arange(3, dtype=">i4")},
        {"b": np.arange(3, dtype=">i4")}, {"x": np.ones(()), "y": np.ones(3, bool)},
        {"x": np.ones(()), "y": np.ones(4, bool)}, {"x": np.ones((), np.float32)}, {},
        {"s": np.array("abc")}, {"s": np.array("abd")},
        {f"k{i}": np.ones(2) for i in range(20)}, {f"k{i}": np.ones(2) for i in range(20)},
        {"x": np.ones(()), "z": np.ones(3, bool)}]
    frames = (odd + odd[::-1] + _trajectory(3, 2) + odd * 3 + _trajectory(40, 3)
              + _trajectory(3, 5000) + _trajectory(2, 3))
    assert encode_frames(frames) == [frame_to_bytes(f) for f in frames]


def _columns(frames: list[dict[str, Any]]) -> SlotColumns:
    return SlotColumns(0, len(frames), {k: np.stack([f[k] for f in frames]) for k in frames[0]})


@pytest.mark.parametrize("frames", [
    _trajectory(30, 7),
    _trajectory(3, 5000),  # large frames: no layout, each encoded on its own
    [{"a": np.zeros((2, 0)), "b": np.arange(3.0)}] * 4,  # an empty array
    [{"x": np.array(i, ">f8"), "y": np.arange(3, dtype=">i4")} for i in range(5)],  # big-endian
    [{"s": np.array(s)} for s in ("ab", "cd", "ef")],  # strings
    [{}, {}],
])
def test_columns_encode_as_frame_to_bytes(frames: list[dict[str, Any]]) -> None:
    columns = _columns(frames)
    assert encode_columns(columns) == [frame_to_bytes(f) for f in frames]
    expected = [frame_to_bytes(f) for f in frames]
    slab = encode_slab(columns)
    if slab is not None:  # one layout fits all: every frame as long, one after the other
        assert slab == (b"".join(expected), len(expected[0]))
        assert slab[0].readonly  # (the cache hands out views of it)
        assert {len(e) for e in expected} == {slab[1]}


def test_strided_columns_encode_as_frame_to_bytes() -> None:
    """Rows that are C-contiguous in a column that is not (a padded block cut down)."""
    block = np.random.default_rng(1).random((6, 9, 4))
    block.flags.writeable = False
    columns = SlotColumns(3, 6, {"positions": block[:, :5], "info.e": block[:, 0, 0],
                                 "numbers": np.arange(6 * 5).reshape(6, 5)})
    assert encode_columns(columns) == [frame_to_bytes(f) for f in columns.frames()]
    expected = [frame_to_bytes(f) for f in columns.frames()]
    assert encode_slab(columns) == (b"".join(expected), len(expected[0]))


def test_a_trajectory_encodes_as_one_slab() -> None:
    frames = _trajectory(30, 7)
    expected = [frame_to_bytes(f) for f in frames]
    assert encode_slab(_columns(frames)) == (b"".join(expected), len(expected[0]))
    assert encode_slab(_columns(_trajectory(3, 5000))) is None  # no layout for large frames


@pytest.mark.parametrize("frames", [
    _trajectory(30, 7),
    [{"a": np.zeros((2, 0)), "b": np.arange(3.0)}] * 4,  # an empty array: no column
    [{"x": np.array(i, "<f8"), "y": np.arange(3, dtype="<i4") + i} for i in range(5)],
])
def test_an_empty_slab_filled_column_by_column_is_the_encoded_slab(
        frames: list[dict[str, Any]]) -> None:
    columns = _columns(frames)
    layout = {k: (a.dtype, a.shape[1:]) for k, a in columns.arrays.items()}
    slab = empty_slab(layout, len(frames))
    assert slab is not None
    for key, column in slab.columns.items():
        assert column.shape == columns.arrays[key].shape and column.base is slab.buffer
        column[...] = columns.arrays[key]
    assert (slab.view(), slab.stride) == encode_slab(columns)
    assert slab.view().readonly
    assert empty_slab({"big": (np.dtype("<f8"), (5000, 3))}, 2) is None  # as encode_slab


def test_no_empty_slab_of_large_frames_and_no_frame_made_to_learn_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames too large for a slab are known so from their shapes: no frame of zeros is
    made and encoded (for 100,000 atoms that was 11 MB of fresh memory per request)."""
    def encoded(_: Any) -> bytes:
        raise AssertionError("a frame was encoded to learn its layout")

    monkeypatch.setattr(frame_encoder, "frame_to_bytes", encoded)
    big = {"numbers": (np.dtype("<i8"), (100_000,)), "positions": (np.dtype("<f8"), (100_000, 3))}
    assert empty_slab(big, 5) is None
    assert empty_slab({"x": (np.dtype("<f8"), (3,))}, 0) is None
    assert empty_slab({"x": (np.dtype("<f8"), (LAYOUT_MAX_BYTES // 8 + 1,))}, 2) is None
