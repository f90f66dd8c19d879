"""The msgpack wire format: exact round trips, and CodecError for anything malformed."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from trajhub.shared.codec import (
    CodecError,
    IrregularEncoding,
    decode_array,
    decode_frame,
    encode_array,
    frame_from_bytes,
    frame_parts,
    frame_to_bytes,
    frames_to_bytes,
    packb,
    scan_bulk,
    unpackb,
)
from trajhub.shared.frames import Frame, frames_equal

NUMERIC = (["|b1", "|i1", "|u1"]
           + [f"{o}{k}{n}" for o in "<>" for k in "iu" for n in (2, 4, 8)]
           + [f"{o}f{n}" for o in "<>" for n in (2, 4, 8)]
           + [f"{o}c{n}" for o in "<>" for n in (8, 16)])
UNICODE = [f"{o}U{n}" for o in "<>" for n in (1, 3, 8)]
DTYPES = st.sampled_from(NUMERIC + UNICODE).map(np.dtype)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)
ARRAYS = DTYPES.flatmap(lambda dt: hnp.arrays(dt, SHAPES))


def little(dtype: np.dtype[Any]) -> np.dtype[Any]:
    return dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype


def same(got: np.ndarray[Any, Any], original: np.ndarray[Any, Any]) -> None:
    """Bit-exact, and little-endian C order whatever the input was."""
    assert got.dtype == little(original.dtype)
    assert got.dtype.byteorder in "<|="
    assert got.shape == original.shape
    assert got.tobytes() == np.ascontiguousarray(original, dtype=got.dtype).tobytes()


def through_wire(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return decode_array(unpackb(packb(encode_array(arr))))


# -- round trips --------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(ARRAYS)
def test_array_round_trip(arr: np.ndarray[Any, Any]) -> None:
    same(decode_array(encode_array(arr)), arr)
    same(through_wire(arr), arr)


@settings(max_examples=50, deadline=None)
@given(ARRAYS.filter(lambda a: a.ndim >= 2))
def test_fortran_order_and_views_round_trip(arr: np.ndarray[Any, Any]) -> None:
    same(through_wire(np.asfortranarray(arr)), arr)
    same(through_wire(arr.T), arr.T)
    same(through_wire(arr[::2]), arr[::2])


@pytest.mark.parametrize("dtype", NUMERIC + UNICODE)
def test_every_dtype_zero_d_and_empty(dtype: str) -> None:
    zero_d = np.zeros((), dtype=dtype)
    same(through_wire(zero_d), zero_d)
    assert through_wire(zero_d).ndim == 0
    for shape in [(0,), (3, 0), (0, 0, 7)]:
        empty = np.zeros(shape, dtype=dtype)
        same(through_wire(empty), empty)


def test_large_and_high_dimensional_arrays() -> None:
    big = np.random.default_rng(0).normal(size=(1000, 1000, 3))
    same(through_wire(big), big)
    eight_d = np.arange(2**8, dtype=">i4").reshape((2,) * 8)
    same(through_wire(eight_d), eight_d)


def test_special_floats_survive() -> None:
    arr = np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0, 5e-324])
    got = through_wire(arr)
    same(got, arr)
    assert np.signbit(got[4]) and got[5] == 5e-324


FRAMES = st.dictionaries(
    st.sampled_from(["numbers", "positions", "cell", "pbc", "info.a", "calc.energy"]),
    ARRAYS, max_size=6)


@settings(max_examples=100, deadline=None)
@given(FRAMES)
def test_frame_round_trip(frame: Frame) -> None:
    got = frame_from_bytes(frame_to_bytes(frame))
    assert set(got) == set(frame)
    for key in frame:
        same(got[key], frame[key])
    reordered = dict(reversed(list(frame.items())))
    assert frame_to_bytes(reordered) == frame_to_bytes(frame)


@settings(max_examples=100, deadline=None)
@given(FRAMES)
def test_frame_parts_join_to_frame_to_bytes(frame: Frame) -> None:
    parts = frame_parts(frame)
    assert b"".join(parts) == frame_to_bytes(frame)
    views = [p for p in parts if isinstance(p, memoryview)]
    # each non-empty array's data is one view (of the array, or of its canonical copy)
    assert len(views) == sum(1 for a in frame.values() if a.size)
    for view in views:
        assert view.format == "B" and isinstance(view.obj, np.ndarray)


def test_frame_parts_view_the_callers_arrays() -> None:
    positions = np.arange(30_000, dtype=np.float64).reshape(10_000, 3)
    parts = frame_parts({"positions": positions, "numbers": np.ones(10_000, np.int32)})
    (view,) = [p for p in parts if isinstance(p, memoryview) and len(p) == positions.nbytes]
    assert view.obj is positions


def test_frames_to_bytes_is_a_bulk_message() -> None:
    frames = [{"positions": np.zeros((2, 3))}, {"positions": np.ones((1, 3))}]
    msg = unpackb(frames_to_bytes(frames, seq=7))
    assert msg["seq"] == 7 and len(msg["frames"]) == 2
    assert frames_equal(decode_frame(msg["frames"][1]), frames[1])


# -- malformed input ----------------------------------------------------------------------

def good() -> dict[str, Any]:
    return {"dtype": "<f8", "shape": [2, 3], "data": bytes(48)}


@pytest.mark.parametrize("change", [
    {"data": bytes(47)},
    {"data": bytes(49)},
    {"data": "not bytes"},
    {"data": [0] * 48},
    {"dtype": "V8", "shape": [6], "data": bytes(48)},
    {"dtype": "O"},
    {"dtype": "garbage"},
    {"dtype": "9^GY*c"},
    {"dtype": ","},
    {"dtype": "f8,i4"},
    {"dtype": "(2)f8"},
    {"dtype": "M8[s]"},
    {"dtype": "S8"},
    {"dtype": "<U0", "shape": [0], "data": b""},
    {"dtype": "<f16"},
    {"dtype": "<f8" + " " * 20},
    {"dtype": 8},
    {"dtype": None},
    {"shape": 6},
    {"shape": "2,3"},
    {"shape": {"a": 1}},
    {"shape": [2, -3]},
    {"shape": [2, 3.0]},
    {"shape": [True, 3]},
    {"shape": [1] * 9, "data": bytes(8)},
    {"shape": [2**40, 2**40], "data": b""},
])
def test_malformed_arrays_raise_codec_error(change: dict[str, Any]) -> None:
    with pytest.raises(CodecError):
        decode_array({**good(), **change})


@pytest.mark.parametrize("obj", [
    {**good(), "extra": 1},
    {"dtype": "<f8", "shape": [2, 3]},
    [b"<f8", [2, 3], bytes(48)],
    b"raw",
    None,
])
def test_arrays_must_be_exact_maps(obj: Any) -> None:
    with pytest.raises(CodecError):
        decode_array(obj)


def test_error_names_the_key() -> None:
    with pytest.raises(CodecError, match="positions"):
        decode_frame({"positions": {**good(), "data": b"x"}})


def test_malformed_frames_raise_codec_error() -> None:
    data = frame_to_bytes({"positions": np.zeros((4, 3))})
    for bad in [data[:-3], data[:1], b"", b"\xc1", packb([1, 2]), packb({"k": 1}),
                msgpack.packb({1: good()})]:
        with pytest.raises(CodecError):
            frame_from_bytes(bad)
    with pytest.raises(CodecError, match="exceeds"):
        unpackb(data, max_bytes=10)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    try:
        frame = frame_from_bytes(data)
    except CodecError:
        return
    assert isinstance(frame, dict)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy's 'a' alias
@settings(max_examples=300, deadline=None)
@given(st.text(max_size=16), st.lists(st.integers(0, 4), max_size=3), st.binary(max_size=64))
def test_random_dtype_strings_never_escape(dtype: str, shape: list[int], data: bytes) -> None:
    try:
        arr = decode_array({"dtype": dtype, "shape": shape, "data": data})
    except CodecError:
        return
    assert arr.dtype.kind in "biufcU"


def test_scan_bulk_min_frame_bytes_refuses_small_frames() -> None:
    frames = [{"positions": np.full((10, 3), float(i))} for i in range(4)]
    body = frames_to_bytes(frames, room="r")
    per_frame = len(frame_to_bytes(frames[0]))
    fields, spans = scan_bulk(body, min_frame_bytes=per_frame)  # just enough
    assert fields == {"room": "r"} and len(spans) == 4
    with pytest.raises(IrregularEncoding):
        scan_bulk(body, min_frame_bytes=per_frame + 1)
    assert scan_bulk(frames_to_bytes([]), min_frame_bytes=10**9)[1] == []
