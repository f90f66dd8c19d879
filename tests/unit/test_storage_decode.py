"""Storage's zero-copy decoding of staged blobs: same frames as the codec, no copies."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from trajhub.shared import codec
from trajhub.shared.consumer import IntegrityError
from trajhub.shared.events import SlotWrite
from trajhub.shared.frames import Frame, FrameRun, canonical_array, frames_equal
from trajhub.shared.hashing import frame_hash
from trajhub.shared.staging import views_in_a_row
from trajhub.storage.worker import RUN_MAX_BLOB_BYTES, decode_blobs, frame_view

DTYPES = st.sampled_from(["|b1", "|i1", "<u2", "<i4", ">i8", "<f2", "<f4", ">f8", "<c8",
                          "<c16", "<U1", ">U3"]).map(np.dtype)
ARRAYS = DTYPES.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(
    min_dims=0, max_dims=4, min_side=0, max_side=5)))
KEYS = st.from_regex(r"info\.[a-z][a-z0-9_]{0,40}", fullmatch=True)


def blob_owner(arr: np.ndarray[Any, Any]) -> Any:
    """The object at the bottom of ``arr``'s chain of views."""
    base: Any = arr
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def canonical(frame: Frame) -> Frame:
    return {k: canonical_array(v, k) for k, v in frame.items()}


def test_views_into_the_blob() -> None:
    frame = {"numbers": np.arange(5), "positions": np.ones((5, 3)),
             "calc.energy": np.asarray(-1.5), "info.name": np.asarray("water")}
    blob = codec.frame_to_bytes(frame)
    got = frame_view(blob)
    assert frames_equal(got, canonical(frame))
    for key in ("numbers", "positions", "calc.energy"):
        assert blob_owner(got[key]) is blob, key
        assert not got[key].flags.writeable


@pytest.mark.parametrize("frame", [
    {},
    {"info.big": np.arange(70_000, dtype=np.uint8)},  # bin32 and a uint32 shape entry
    {"info.mid": np.arange(300, dtype=np.float64), "info.empty": np.zeros((0, 3))},
    {f"info.k{i:02d}": np.asarray(i) for i in range(20)},  # a map16 of keys
    {"info." + "x" * 40: np.zeros(2), "info.u": np.array(["a", "bcd"])},  # str8 key
], ids=["empty", "bin32", "bin16", "map16", "str8"])
def test_encodings_match_the_codec(frame: Frame) -> None:
    blob = codec.frame_to_bytes(frame)
    assert frames_equal(frame_view(blob), codec.frame_from_bytes(blob))


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(KEYS, ARRAYS, max_size=6))
def test_random_frames_match_the_codec(frame: Frame) -> None:
    blob = codec.frame_to_bytes(frame)
    got, want = frame_view(blob), codec.frame_from_bytes(blob)
    assert got.keys() == want.keys()
    for key in got:
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape
        assert got[key].tobytes() == want[key].tobytes()


def test_other_msgpack_goes_through_the_codec() -> None:
    # Valid msgpack that frame_to_bytes never writes: a shape entry as a signed int8.
    blob = bytes([0x81, 0xa1, 0x61, 0x83, 0xa5]) + b"dtype" + bytes([0xa3]) + b"<u1" \
        + bytes([0xa5]) + b"shape" + bytes([0x91, 0xd0, 0x02]) \
        + bytes([0xa4]) + b"data" + bytes([0xc4, 0x02, 7, 9])
    assert msgpack.unpackb(blob)["a"]["shape"] == [2]
    got = frame_view(blob)
    assert got["a"].tolist() == [7, 9]


def test_big_endian_blobs_are_converted() -> None:
    blob = codec.packb({"info.x": {"dtype": ">f8", "shape": [2],
                                   "data": np.array([1.5, -2.0], dtype=">f8").tobytes()}})
    got = frame_view(blob)["info.x"]
    assert got.dtype == np.dtype("<f8") and got.tolist() == [1.5, -2.0]


@pytest.mark.parametrize("blob", [
    codec.frame_to_bytes({"info.x": np.arange(4)})[:-3],  # truncated
    codec.frame_to_bytes({"info.x": np.arange(4)}) + b"\x00",  # trailing bytes
    codec.packb({"info.x": {"dtype": "<f8", "shape": [3], "data": b"\x00" * 8}}),
    codec.packb({"info.x": {"dtype": "|O", "shape": [1], "data": b"\x00" * 8}}),
    codec.packb({"info.x": {"dtype": "<f8", "shape": [1] * 9, "data": b"\x00" * 8}}),
    codec.packb([1, 2]),
], ids=["truncated", "trailing", "short-data", "object-dtype", "nine-dims", "not-a-map"])
def test_malformed_blobs_raise_codec_errors(blob: bytes) -> None:
    with pytest.raises(codec.CodecError):
        frame_view(blob)


def test_verify_checks_the_hash_only_when_asked() -> None:
    frames = [{"numbers": np.arange(3)}, {"numbers": np.arange(4)}]
    blobs = [codec.frame_to_bytes(f) for f in frames]
    writes = [SlotWrite(slot=0, hash=frame_hash(frames[0])),
              SlotWrite(slot=1, hash=frame_hash(frames[0]))]  # the wrong content
    assert [len(f["numbers"]) for f in decode_blobs(blobs, writes)] == [3, 4]
    with pytest.raises(IntegrityError, match="slot 1"):
        decode_blobs(blobs, writes, verify=True)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(range(8)), min_size=1, max_size=30), st.data())
def test_a_batch_of_blobs_decodes_as_each_alone(picks: list[int], data: st.DataObject) -> None:
    """decode_blobs reads a blob through the layout of the one before when the bytes
    around its data are the same; anything else (another size, key, dtype or shape, the
    same size laid out otherwise, a big-endian or irregular blob) is read on its own."""
    rng = np.random.default_rng(data.draw(st.integers(0, 100)))
    kinds: list[Frame] = [
        {"numbers": np.arange(3), "arrays.a": rng.normal(size=(3, 3))},
        {"numbers": np.arange(4), "arrays.a": rng.normal(size=(4, 3))},
        {"numbers": np.arange(3), "arrays.b": rng.normal(size=(3, 3))},  # same size
        {"numbers": np.arange(3), "arrays.a": rng.normal(size=(9, 1))},  # same size
        {"numbers": np.arange(3, dtype=np.int32), "positions": rng.normal(size=(4, 3))},
        {"numbers": np.arange(3, dtype=">i8"), "positions": rng.normal(size=(3, 3))},
        {"info.e": np.asarray(rng.normal()), "info.z": np.zeros((0, 2))},
        {"numbers": np.arange(3), "positions": rng.normal(size=(3, 3)),
         "info.name": np.asarray("ab")},
    ]
    frames = [{k: v + i if v.dtype.kind in "if" else v for k, v in kinds[p].items()}
              for i, p in enumerate(picks)]
    blobs = [codec.frame_to_bytes(f) for f in frames]
    writes = [SlotWrite(slot=i, hash=frame_hash(f)) for i, f in enumerate(frames)]
    got = decode_blobs(blobs, writes, verify=True)
    assert all(frames_equal(g, frame_view(b)) for g, b in zip(got, blobs, strict=True))
    assert all(frames_equal(g, canonical(f)) for g, f in zip(got, frames, strict=True))


ALIKE: list[Frame] = [
    {"numbers": np.arange(3), "positions": np.ones((3, 3)), "pbc": np.ones(3, dtype=bool)},
    {"calc.energy": np.asarray(1.5), "info.c": np.asarray(2 + 1j), "info.z": np.zeros((0, 2))},
    {"numbers": np.arange(5, dtype=">i8"), "positions": np.ones((5, 3), dtype=np.float32)},
    {"info.odd": np.arange(7, dtype=np.int16), "info.f": np.ones((2, 2))},  # unaligned
]


@pytest.mark.parametrize("kind", ALIKE)
def test_blobs_laid_out_alike_decode_as_one_run(kind: Frame) -> None:
    frames = [{k: v + i if v.dtype.kind in "ifc" else v for k, v in kind.items()}
              for i in range(10)]
    blobs = [codec.frame_to_bytes(f) for f in frames]
    writes = [SlotWrite(slot=i, hash=frame_hash(f)) for i, f in enumerate(frames)]
    got = decode_blobs(blobs, writes, verify=True)
    assert isinstance(got, FrameRun) and len(got) == 10
    assert all(frames_equal(g, canonical(f)) for g, f in zip(got, frames, strict=True))
    assert all(not a.flags.writeable for a in got.columns.values())


def test_a_blob_laid_out_otherwise_is_not_taken_for_one_of_the_run() -> None:
    """The same size, other bytes around the data (another key, or another shape):
    frame by frame, each as it is."""
    base = {"numbers": np.arange(3), "arrays.a": np.ones((3, 3))}
    for odd in ({"numbers": np.arange(3), "arrays.b": np.ones((3, 3))},
                {"numbers": np.arange(3), "arrays.a": np.ones((9, 1))}):
        frames = [base] * 9 + [odd]
        blobs = [codec.frame_to_bytes(f) for f in frames]
        assert len({len(b) for b in blobs}) == 1
        got = decode_blobs(blobs, [SlotWrite(slot=i, hash=frame_hash(f))
                                   for i, f in enumerate(frames)], verify=True)
        assert not isinstance(got, FrameRun)
        assert all(frames_equal(g, canonical(f)) for g, f in zip(got, frames, strict=True))


def test_strings_short_batches_and_large_frames_decode_frame_by_frame() -> None:
    named = [{"numbers": np.arange(3), "info.name": np.asarray("ab")}] * 10
    plain = [{"numbers": np.arange(3)}] * 7
    large = [{"positions": np.ones((RUN_MAX_BLOB_BYTES // 24 + 1, 3))}] * 8
    for frames in (named, plain, large):
        blobs = [codec.frame_to_bytes(f) for f in frames]
        got = decode_blobs(blobs, [SlotWrite(slot=i, hash=frame_hash(f))
                                   for i, f in enumerate(frames)])
        assert not isinstance(got, FrameRun)
        assert all(frames_equal(g, canonical(f)) for g, f in zip(got, frames, strict=True))


def test_frames_that_follow_each_other_in_one_buffer_run_without_a_copy() -> None:
    """Frames read from a pack in one go (memoryviews, back to back in one buffer) are
    a run of views of that buffer, large ones too; apart, or out of order, they are
    decoded as before."""
    large = [{"positions": np.full((RUN_MAX_BLOB_BYTES // 24 + 1, 3), float(i))}
             for i in range(8)]
    small = [{"numbers": np.arange(3) + i, "positions": np.ones((3, 3)) * i}
             for i in range(10)]
    for frames in (large, small):
        blobs = [codec.frame_to_bytes(f) for f in frames]
        buffer = bytearray(b"".join(blobs))
        size = len(blobs[0])
        views = [memoryview(buffer)[i * size:(i + 1) * size] for i in range(len(blobs))]
        writes = [SlotWrite(slot=i, hash=frame_hash(f)) for i, f in enumerate(frames)]
        got = decode_blobs(views, writes, verify=True)
        assert isinstance(got, FrameRun)
        assert all(blob_owner(a) is buffer for a in got.columns.values())
        assert all(frames_equal(g, canonical(f)) for g, f in zip(got, frames, strict=True))
        shuffled = views[1:] + views[:1]  # (not in a row: each is where it is)
        got = decode_blobs(shuffled, writes[1:] + writes[:1], verify=True)
        assert all(blob_owner(a) is not buffer for f in got for a in f.values())
        assert all(frames_equal(g, canonical(f))
                   for g, f in zip(got, frames[1:] + frames[:1], strict=True))


def test_views_in_a_row_needs_one_buffer_and_no_gaps() -> None:
    buffer = bytearray(range(40))
    view = memoryview(buffer)
    rows = views_in_a_row([view[0:10], view[10:20], view[20:30]], 10)
    assert rows is not None and rows.shape == (3, 10)
    assert np.shares_memory(rows, np.frombuffer(buffer, np.uint8))
    assert rows[2, 0] == 20
    assert views_in_a_row([view[0:10], view[11:21]], 10) is None  # a gap
    assert views_in_a_row([view[0:10], memoryview(bytearray(40))[10:20]], 10) is None
    assert views_in_a_row([bytes(view[0:10]), view[10:20]], 10) is None
    assert views_in_a_row([view[0:10], view[10:19]], 10) is None  # another size
