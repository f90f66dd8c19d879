"""The msgpack wire format.

An array is ``{"dtype": "<f8", "shape": [n, 3], "data": <raw little-endian bytes>}``;
a frame is a map key -> array; bulk messages carry lists of frames. Decoding makes
zero-copy numpy views over the received bytes where it can.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import prod
from typing import Any

import msgpack
import numpy as np

from trajhub.shared.frames import Array, Frame, FrameError, canonical_array, check_dtype

MAX_ELEMENTS = 2**31


class CodecError(ValueError):
    """Bytes that are not a valid trajhub message; the message says what is wrong."""


def encode_array(arr: Array) -> dict[str, Any]:
    arr = canonical_array(arr)
    return {"dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.data.cast("B")
            if arr.size else b""}


def decode_array(obj: Any, key: str = "?") -> Array:
    if not isinstance(obj, Mapping) or set(obj) != {"dtype", "shape", "data"}:
        raise CodecError(f"{key}: an array must be a map with exactly dtype, shape and data")
    dtype_s, shape, data = obj["dtype"], obj["shape"], obj["data"]
    if not isinstance(dtype_s, str) or len(dtype_s) > 16:
        raise CodecError(f"{key}: dtype must be a short string like '<f8'")
    try:
        dtype = np.dtype(dtype_s)
    except (TypeError, ValueError, SyntaxError):  # numpy's parser raises all three
        raise CodecError(f"{key}: unknown dtype {dtype_s!r}") from None
    try:
        dtype = check_dtype(dtype, key)
    except FrameError as exc:
        raise CodecError(str(exc)) from None
    if (not isinstance(shape, list | tuple) or len(shape) > 8
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise CodecError(f"{key}: shape must be a list of at most 8 non-negative integers")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"{key}: data must be binary")
    count = prod(shape)
    if count > MAX_ELEMENTS or count * dtype.itemsize != len(data):
        raise CodecError(f"{key}: {len(data)} bytes do not hold shape {list(shape)} of "
                         f"{dtype.str}")
    big = np.dtype(dtype_s).byteorder == ">"
    arr = np.frombuffer(data, dtype=np.dtype(dtype_s) if big else dtype, count=count)
    arr = arr.reshape(shape)
    return arr.astype(dtype) if big else arr


def encode_frame(frame: Mapping[str, Array]) -> dict[str, Any]:
    return {key: encode_array(frame[key]) for key in sorted(frame)}


def decode_frame(obj: Any) -> Frame:
    if not isinstance(obj, Mapping):
        raise CodecError("a frame must be a map of key -> array")
    out: Frame = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CodecError("frame keys must be strings")
        out[key] = decode_array(value, key)
    return out


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def unpackb(data: bytes | bytearray | memoryview, max_bytes: int | None = None) -> Any:
    """Decode one msgpack message; raise CodecError on anything malformed."""
    if max_bytes is not None and len(data) > max_bytes:
        raise CodecError(f"message of {len(data)} bytes exceeds {max_bytes}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises a zoo of types on malformed input
        raise CodecError(f"malformed msgpack: {exc}") from None


def frame_to_bytes(frame: Mapping[str, Array]) -> bytes:
    """The canonical bytes of one frame (sorted keys): the staged-blob format."""
    return packb(encode_frame(frame))


def frame_from_bytes(data: bytes | bytearray | memoryview) -> Frame:
    return decode_frame(unpackb(data))


def frames_to_bytes(frames: Sequence[Mapping[str, Array]], **extra: Any) -> bytes:
    """A bulk message: ``{"frames": [frame, ...], **extra}``."""
    return packb({**extra, "frames": [encode_frame(f) for f in frames]})
