"""The gateway's upload fast path (scan in place, stage received bytes) accepts, refuses
and stages exactly what the generic path (``unpackb`` the whole body) does."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from starlette.requests import Request

from trajhub.gateway.body import read_body
from trajhub.gateway.errors import ApiError
from trajhub.gateway.ingest import PreparedFrames, parse_upload, parse_upload_generic
from trajhub.shared.codec import (
    IrregularEncoding,
    decode_frame,
    frame_to_bytes,
    packb,
    scan_bulk,
    unpackb,
)
from trajhub.shared.events import MAX_FRAMES_PER_COMMAND
from trajhub.shared.frames import Array, validate_frame
from trajhub.shared.hashing import frame_hash, validated_frame_hash

LIMIT = 2**26
ORDERS = "<>"
INTS = [np.dtype(f"{o}{k}{n}") for o in ORDERS for k in "iu" for n in (2, 4, 8)] + [
    np.dtype("i1"), np.dtype("u1")]
FLOATS = [np.dtype(f"{o}f{n}") for o in ORDERS for n in (2, 4, 8)]
NUMERIC = INTS + FLOATS + [np.dtype(f"{o}c{n}") for o in ORDERS for n in (8, 16)] + [
    np.dtype("?")]
UNICODE = [np.dtype(f"{o}U{n}") for o in ORDERS for n in (1, 4)]
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


# -- building wire frames ---------------------------------------------------------------

def spellings(dtype: np.dtype[Any]) -> list[str]:
    """Ways a client may write ``dtype``: numpy's own first, then equivalent others."""
    canonical = dtype.str
    bare = canonical[1:]
    if canonical[0] == ">":
        return [canonical]
    if canonical[0] == "<":
        return [canonical, bare, "=" + bare]
    return [canonical, bare, "<" + bare]  # e.g. "<i1": numpy spells it "|i1"


@st.composite
def wire_arrays(draw: st.DrawFn, dtypes: list[np.dtype[Any]],
                shape: Any = SHAPES, elements: Any = None) -> tuple[Array, dict[str, Any]]:
    """An array and its wire map: C-order bytes in the array's own byte order (whatever
    its memory layout), the dtype in one of its spellings."""
    dtype = draw(st.sampled_from(dtypes))
    arr = draw(hnp.arrays(dtype, shape, elements=elements))
    if arr.ndim >= 2 and draw(st.booleans()):
        arr = np.asfortranarray(arr)
    spelled = draw(st.sampled_from(spellings(arr.dtype)))
    return arr, {"dtype": spelled, "shape": list(arr.shape), "data": arr.tobytes()}


@st.composite
def wire_frames(draw: st.DrawFn) -> tuple[dict[str, Array], dict[str, Any]]:
    """A valid frame (as arrays) and its wire map, keys in a random order."""
    n = draw(st.integers(0, 5))
    parts = {
        "numbers": draw(wire_arrays(INTS, n, st.integers(0, 120))),
        "positions": draw(wire_arrays(FLOATS, (n, 3))),
    }
    optional = {
        "cell": wire_arrays(FLOATS + INTS[:2], (3, 3)),
        "pbc": wire_arrays([np.dtype("?")], (3,)),
        "info.name": wire_arrays(UNICODE, ()),
        "info.x": wire_arrays(NUMERIC + UNICODE),
        "calc.energy": wire_arrays(FLOATS, ()),
        "calc.forces": wire_arrays(FLOATS, (n, 3)),
        "arrays.m": wire_arrays(NUMERIC, st.sampled_from([(n,), (n, 2)])),
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
        parts[key] = draw(optional[key])
    keys = draw(st.permutations(sorted(parts))) if draw(st.booleans()) else sorted(parts)
    return ({k: parts[k][0] for k in keys}, {k: parts[k][1] for k in keys})


def canonical_wire(frame: dict[str, Array]) -> dict[str, Any]:
    """The wire map of frame_to_bytes (what trajhub.client sends)."""
    obj: dict[str, Any] = unpackb(frame_to_bytes(validate_frame(frame)))
    return obj


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, list[dict[str, Array]]]:
    """A bulk body: a few frames (canonical or not, some sharing one layout) and maybe
    other fields before or after them."""
    frames: list[dict[str, Array]] = []
    wire: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 4))):
        frame, obj = draw(wire_frames())
        canonical = draw(st.booleans())
        for _ in range(draw(st.integers(1, 3))):  # same layout, new positions
            copy = dict(frame)
            copy["positions"] = np.random.default_rng(len(frames)).random(
                frame["positions"].shape).astype(frame["positions"].dtype)
            frames.append(copy)
            wire.append(canonical_wire(copy) if canonical else
                        {**obj, "positions": {**obj["positions"],
                                              "data": copy["positions"].tobytes()}})
    fields = draw(st.dictionaries(st.sampled_from(["author", "indices", "base_versions"]),
                                  MSGPACK_VALUES, max_size=2))
    items = [*fields.items(), ("frames", wire)]
    if draw(st.booleans()):
        items.reverse()
    return packb(dict(items)), frames


MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
    | st.text(max_size=300) | st.binary(max_size=300)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=20)),
    lambda inner: st.lists(inner, max_size=20)
    | st.dictionaries(st.text(max_size=5), inner, max_size=20),
    max_leaves=40)


# -- comparing the two paths -------------------------------------------------------------

def outcome(parse: Any, body: bytes) -> tuple[Any, ...]:
    try:
        fields, prepared = parse(bytearray(body), LIMIT)
    except ApiError as exc:
        return ("refused", exc.status, exc.detail)
    assert isinstance(prepared, PreparedFrames)
    return ("ok", packb(fields), prepared.hashes, [bytes(b) for b in prepared.blobs])


def assert_same(body: bytes) -> tuple[Any, ...]:
    fast = outcome(parse_upload, body)
    assert fast == outcome(parse_upload_generic, body)
    return fast


@settings(max_examples=150, deadline=None)
@given(bodies())
def test_staged_bytes_are_frame_to_bytes_of_the_validated_frame(
        case: tuple[bytes, list[dict[str, Array]]]) -> None:
    body, frames = case
    scan_bulk(body)  # the fast path takes every body packb writes
    result = assert_same(body)
    assert result[0] == "ok"
    valid = [validate_frame(f) for f in frames]
    assert result[2] == [frame_hash(v) for v in valid]
    assert result[3] == [frame_to_bytes(v) for v in valid]


@settings(max_examples=50, deadline=None)
@given(bodies())
def test_scanned_frames_are_their_received_bytes(
        case: tuple[bytes, list[dict[str, Array]]]) -> None:
    body = case[0]
    fields, spans = scan_bulk(body)
    message = unpackb(body)
    assert packb(fields) == packb({k: v for k, v in message.items() if k != "frames"})
    assert len(spans) == len(message["frames"])
    for span, obj in zip(spans, message["frames"], strict=True):
        assert body[span.start:span.end] == packb(span.obj)
        assert packb(span.obj) == packb(obj)


def test_client_frames_are_staged_as_received() -> None:
    frames = [{"numbers": np.array([8, 1, 1]), "positions": np.zeros((3, 3)) + i,
               "info.name": np.asarray("water")} for i in range(3)]
    blobs = [frame_to_bytes(f) for f in frames]
    body = b"\x81" + packb("frames") + b"\x93" + b"".join(blobs)
    fields, prepared = parse_upload(bytearray(body), LIMIT)
    assert fields == {} and [bytes(b) for b in prepared.blobs] == blobs
    assert prepared.hashes == [frame_hash(f) for f in frames]


# -- refusals ---------------------------------------------------------------------------

BREAKS: list[tuple[str, Any]] = [
    ("positions", {"dtype": "<f8", "shape": [2, 2], "data": bytes(32)}),
    ("numbers", {"dtype": "<i8", "shape": [1], "data": (999).to_bytes(8, "little")}),
    ("calc.forces", {"dtype": "<f8", "shape": [7, 3], "data": bytes(168)}),
    ("cell", {"dtype": "<f8", "shape": [3], "data": bytes(24)}),
    ("info.x", {"dtype": "<f8", "shape": [3], "data": bytes(23)}),
    ("info.x", {"dtype": "V8", "shape": [1], "data": bytes(8)}),
    ("info.x", {"dtype": "<f8" + " " * 20, "shape": [], "data": bytes(8)}),
    ("info.x", {"dtype": "<f8", "shape": [1] * 9, "data": bytes(8)}),
    ("info.x", {"dtype": "<f8", "shape": [2**40, 2**40], "data": b""}),
    ("info.x", {"dtype": "<U0", "shape": [0], "data": b""}),
    ("info.x", {"dtype": "<f8", "shape": [], "data": bytes(8), "extra": 1}),
    ("info.x", {"dtype": "<f8", "shape": [-1], "data": bytes(8)}),
    ("info.x", {"dtype": "<f8", "shape": [True], "data": bytes(8)}),
    ("info.x", [1, 2]),
    ("bad key!", {"dtype": "<f8", "shape": [], "data": bytes(8)}),
]


@settings(max_examples=150, deadline=None)
@given(st.lists(wire_frames(), min_size=1, max_size=4), st.data())
def test_refusals_are_the_same(frames: list[tuple[Any, dict[str, Any]]],
                               data: st.DataObject) -> None:
    wire = [obj for _, obj in frames]
    at = data.draw(st.integers(0, len(wire) - 1))
    key, value = data.draw(st.sampled_from(BREAKS))
    wire[at] = {**wire[at], key: value}
    result = assert_same(packb({"frames": wire}))
    assert result[0] == "refused" and result[1] == 422
    assert f"frame {at}" in result[2]


@pytest.mark.parametrize("message", [
    {"frames": []},
    {"frames": "nope"},
    {"frame": []},
    [1, 2],
    {"frames": [{}] * (MAX_FRAMES_PER_COMMAND + 1)},
    {1: 2, "frames": []},
])
def test_structural_refusals_are_the_same(message: Any) -> None:
    assert assert_same(msgpack.packb(message, strict_types=False))[0] == "refused"


@settings(max_examples=200, deadline=None)
@given(bodies(), st.data())
def test_damaged_bodies_get_the_same_answer(case: tuple[bytes, Any], data: st.DataObject) -> None:
    body = bytearray(case[0])
    for _ in range(data.draw(st.integers(1, 3))):
        how = data.draw(st.sampled_from(["flip", "cut", "add", "drop"]))
        at = data.draw(st.integers(0, len(body) - 1))
        if how == "flip":
            body[at] = data.draw(st.integers(0, 255))
        elif how == "cut":
            del body[at:]
        elif how == "add":
            body[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        else:
            del body[at]
        if not body:
            break
    assert_same(bytes(body))


# -- irregular encodings go the generic way ---------------------------------------------

def irregular_bodies() -> Iterator[bytes]:
    frame = {"numbers": np.array([1, 2], "<i8"), "positions": np.zeros((2, 3))}
    canonical = frame_to_bytes(frame)
    wire = [canonical_wire(frame)]
    # str8 for a short key, uint8 for a small shape entry, bin16 for short data, map16
    yield b"\x81\xd9\x06frames\x91" + canonical
    yield b"\x81" + packb("frames") + b"\x91" + canonical.replace(
        b"\xa5shape\x92\x02\x03", b"\xa5shape\x92\xcc\x02\x03")
    yield b"\x81" + packb("frames") + b"\x91" + canonical.replace(
        b"\xa4data\xc4\x10", b"\xa4data\xc5\x00\x10")
    yield b"\xde\x00\x01" + packb("frames") + b"\x91" + canonical
    yield b"\x81" + packb("frames") + b"\xdc\x00\x01" + canonical
    yield packb({"frames": [{**wire[0], "cell": {"shape": [3, 3], "dtype": "<f8",
                                                 "data": bytes(72)}}]})
    # a repeated frame key, a repeated top-level key
    numbers = frame_to_bytes({"numbers": frame["numbers"]})
    yield b"\x81" + packb("frames") + b"\x91\x83" + numbers[1:] + canonical[1:]
    yield packb({"frames": wire})[:-1] + b"\x00" + b"\x00"
    yield b"\x82" + packb("frames") + packb(wire) + packb("frames") + packb(wire)
    # trailing bytes, deep nesting, bin keys
    yield packb({"frames": wire}) + b"\x00"
    nested: Any = 1
    for _ in range(40):
        nested = [nested]
    yield packb({"frames": wire, "author": nested})
    yield msgpack.packb({b"frames": wire, "x": 1})
    yield b"\x82" + packb("author") + b"\xc1" + packb("frames") + packb(wire)


@pytest.mark.parametrize("body", list(irregular_bodies()))
def test_irregular_encodings_take_the_generic_path(body: bytes) -> None:
    with pytest.raises(IrregularEncoding):
        scan_bulk(body)
    assert_same(body)


def test_wide_headers() -> None:
    frame = {"numbers": np.array([1], "<i8"), "positions": np.zeros((1, 3)),
             "info.big": np.arange(70_000, dtype="u1"), "info.mid": np.zeros(300)}
    body = packb({"frames": [canonical_wire(frame)] * 2})
    assert b"\xce\x00\x01\x11\x70" in body and b"\xc6\x00\x01\x11\x70" in body
    assert b"\xcd\x01\x2c" in body and b"\xc5\x09\x60" in body
    assert assert_same(body)[3] == [frame_to_bytes(frame)] * 2
    long_key = packb({"frames": [{**canonical_wire(frame), "info." + "k" * 300:
                                  canonical_wire(frame)["info.mid"]}]})
    assert b"\xda\x01\x31" in long_key
    assert assert_same(long_key)[0] == "refused"


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(max_size=40), MSGPACK_VALUES, max_size=4), st.booleans())
def test_other_fields_decode_as_unpackb_does(fields: dict[str, Any], first: bool) -> None:
    fields.pop("frames", None)
    frame = canonical_wire({"numbers": np.array([1]), "positions": np.zeros((1, 3))})
    items = [*fields.items(), ("frames", [frame])]
    body = packb(dict(items if first else items[::-1]))
    assert packb(sorted(scan_bulk(body)[0].items())) == packb(sorted(fields.items()))
    assert_same(body)


# -- hashing ------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["numbers", "positions", "info.a", "calc.b"]),
                       st.sampled_from(NUMERIC + UNICODE).flatmap(
                           lambda dt: hnp.arrays(dt, SHAPES)), max_size=4),
       st.sampled_from(["as is", "fortran", "strided"]))
def test_validated_frame_hash_is_frame_hash(frame: dict[str, Array], layout: str) -> None:
    if layout == "fortran":
        frame = {k: np.asfortranarray(a) for k, a in frame.items()}
    elif layout == "strided":
        frame = {k: a[::-1] if a.ndim else a for k, a in frame.items()}
    assert validated_frame_hash(frame) == frame_hash(frame)
    canonical = {k: decode_frame(unpackb(frame_to_bytes(frame)))[k] for k in frame}
    assert validated_frame_hash(canonical) == frame_hash(frame)


# -- reading the body ---------------------------------------------------------------------

def request(chunks: list[bytes], declared: int | None) -> Request:
    headers = [] if declared is None else [(b"content-length", str(declared).encode())]
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                for i, c in enumerate(chunks)] or [{"type": "http.request", "body": b""}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    return Request({"type": "http", "method": "POST", "headers": headers}, receive)


@pytest.mark.parametrize("declared", ["exact", "shorter", "longer", None])
def test_read_body_joins_the_chunks(declared: str | None) -> None:
    chunks = [bytes([i]) * (1000 + i) for i in range(20)]
    whole = b"".join(chunks)
    size = {"exact": len(whole), "shorter": len(whole) - 5000, "longer": len(whole) + 10,
            None: None}[declared]
    assert asyncio.run(read_body(request(chunks, size), LIMIT)) == whole
    assert asyncio.run(read_body(request([], None), LIMIT)) == b""


def test_read_body_refuses_past_the_limit() -> None:
    chunks = [bytes(600)] * 3
    for declared in (None, 1000, 1800):
        with pytest.raises(ApiError) as info:
            asyncio.run(read_body(request(list(chunks), declared), 1000))
        assert info.value.status == 413
