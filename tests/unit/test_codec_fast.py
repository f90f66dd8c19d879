"""The fast encoders (``frame_to_bytes``, ``frames_to_bytes``) write exactly what
``packb`` of the encoded maps writes, for any array: views, byte orders, large headers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from trajhub.shared.codec import (
    encode_frame,
    frame_to_bytes,
    frames_of_columns,
    frames_to_bytes,
    packb,
)

DTYPES = st.sampled_from(
    ["|b1", "|i1", "|u1", "<i8", ">i4", "<u2", "<f8", ">f8", "<f2", "<c16", ">c8", "<U3",
     ">U1"]).map(np.dtype)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
ARRAYS = DTYPES.flatmap(lambda dt: hnp.arrays(dt, SHAPES))
KEYS = st.sampled_from(["numbers", "positions", "cell", "pbc", "info.a", "calc.energy",
                        "arrays.é", "info." + "k" * 40])
FRAMES = st.dictionaries(KEYS, ARRAYS, max_size=8)


def reference(frame: dict[str, Any]) -> bytes:
    return packb(encode_frame(frame))


@settings(max_examples=200, deadline=None)
@given(FRAMES, st.sampled_from(["as is", "fortran", "strided", "list"]))
def test_frame_to_bytes_is_packb_of_encode_frame(frame: dict[str, Any], how: str) -> None:
    if how == "fortran":
        frame = {k: np.asfortranarray(v) for k, v in frame.items()}
    elif how == "strided":
        frame = {k: v[::2] if v.ndim else v for k, v in frame.items()}
    elif how == "list":
        frame = {k: v.tolist() for k, v in frame.items()}
    assert frame_to_bytes(frame) == reference(frame)
    assert frame_to_bytes(frame) == reference(frame)  # again, from the caches


def test_wide_headers() -> None:
    frame = {f"info.k{i:02d}": np.arange(i * 3000, dtype="<f8") for i in range(20)}
    frame["info.big"] = np.zeros((3, 70000), dtype="<u1")
    frame["info.bigshape"] = np.zeros((0, 2**33), dtype="<f8")
    assert frame_to_bytes(frame) == reference(frame)


@settings(max_examples=50, deadline=None)
@given(st.lists(FRAMES, max_size=20),
       st.dictionaries(st.sampled_from(["at", "x", "author"]),
                       st.integers(-2**63, 2**64 - 1) | st.text(max_size=5)))
def test_frames_to_bytes_is_packb_of_the_message(frames: list[dict[str, Any]],
                                                 extra: dict[str, Any]) -> None:
    expected = packb({**extra, "frames": [encode_frame(f) for f in frames]})
    assert frames_to_bytes(frames, **extra) == expected


def test_frames_of_columns_keeps_any_key_as_it_is() -> None:
    keys = ["it's", 'say "hi"', "back\\slash", "new\nline", "ü", "a0", "{}"]
    columns = [np.arange(3.0) * k for k in range(len(keys))]
    frames = frames_of_columns(keys, columns, 3)
    assert [list(f) for f in frames] == [keys] * 3
    for i, frame in enumerate(frames):
        for k, key in enumerate(keys):
            assert frame[key].shape == () and frame[key] == i * k
    assert frames_of_columns([], [], 2) == [{}, {}]


def test_frames_of_columns_refuses_columns_of_other_lengths() -> None:
    with pytest.raises(ValueError, match="lengths"):
        frames_of_columns(["a", "b"], [np.zeros((3, 2)), np.zeros((2, 2))], 3)
