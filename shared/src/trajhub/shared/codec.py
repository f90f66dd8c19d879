"""The msgpack wire format.

An array is ``{"dtype": "<f8", "shape": [n, 3], "data": <raw little-endian bytes>}``;
a frame is a map key -> array; bulk messages carry lists of frames. Decoding makes
zero-copy numpy views over the received bytes where it can.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
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
    """The canonical bytes of one frame (sorted keys): the staged-blob format.

    Exactly ``packb(encode_frame(frame))``, written as the bytes around each array's data
    (cached per key, dtype and shape) joined with the data."""
    return b"".join(_frame_pieces(frame))


def frame_parts(frame: Mapping[str, Array]) -> list[bytes | memoryview]:
    """``frame_to_bytes`` before the join: the bytes around the arrays' data, and each
    array's data as a byte view of the array (not copied; it keeps the array alive)."""
    return [p if type(p) is bytes else memoryview(p).cast("B") for p in _frame_pieces(frame)]


def _frame_pieces(frame: Mapping[str, Array]) -> list[Any]:
    keys = sorted(frame)
    parts: list[Any] = [_map_header(len(keys))]
    for key in keys:
        arr = canonical_array(frame[key])
        parts.append(_array_prefix(key, arr.dtype.str, arr.shape, arr.nbytes))
        if arr.size:
            parts.append(arr)  # C-contiguous: join takes its buffer as is
    return parts


def frame_from_bytes(data: bytes | bytearray | memoryview) -> Frame:
    return decode_frame(unpackb(data))


def frames_to_bytes(frames: Sequence[Mapping[str, Array]], **extra: Any) -> bytes:
    """A bulk message: ``{"frames": [frame, ...], **extra}``."""
    parts = [_map_header(len(extra) + 1)]
    for key, value in extra.items():
        parts += [packb(key), packb(value)]
    parts += [packb("frames"), _array_header(len(frames))]
    parts += [frame_to_bytes(f) for f in frames]
    return b"".join(parts)


def _map_header(n: int) -> bytes:
    """The msgpack header of a map of ``n`` entries, as ``packb`` writes it."""
    if n < 16:
        return bytes([0x80 | n])
    return b"\xde" + n.to_bytes(2, "big") if n < 2**16 else b"\xdf" + n.to_bytes(4, "big")


def _array_header(n: int) -> bytes:
    """The msgpack header of an array of ``n`` items, as ``packb`` writes it."""
    if n < 16:
        return bytes([0x90 | n])
    return b"\xdc" + n.to_bytes(2, "big") if n < 2**16 else b"\xdd" + n.to_bytes(4, "big")


def _bin_header(n: int) -> bytes:
    if n < 2**8:
        return b"\xc4" + n.to_bytes(1, "big")
    return b"\xc5" + n.to_bytes(2, "big") if n < 2**16 else b"\xc6" + n.to_bytes(4, "big")


# Bounded (cleared when full): keys, dtypes and shapes come from callers.
_PREFIXES: dict[tuple[str, str, tuple[int, ...]], bytes] = {}
_PREFIXES_MAX = 1024


def _array_prefix(key: str, dtype: str, shape: tuple[int, ...], nbytes: int) -> bytes:
    """``packb`` of ``key`` and of the array's map up to its data (the bin header)."""
    cache_key = (key, dtype, shape)
    prefix = _PREFIXES.get(cache_key)
    if prefix is None:
        prefix = (packb(key) + _ARRAY_START + packb(dtype) + _SHAPE + packb(list(shape))
                  + _DATA + _bin_header(nbytes))
        if len(_PREFIXES) >= _PREFIXES_MAX:
            _PREFIXES.clear()
        _PREFIXES[cache_key] = prefix
    return prefix


# -- Locating frames inside a bulk message, in place ----------------------------------------
#
# The gateway receives bulk messages written by ``packb`` (the client packs every frame
# with frame_to_bytes). ``scan_bulk`` finds each frame's bytes in the message and decodes
# its map with numpy-free Python, the array data left as memoryviews over the message, so
# a frame already in canonical form can be staged as the very bytes received. It only takes
# the layout ``packb`` writes (minimal headers; array maps in the order dtype, shape, data;
# no repeated keys) and raises IrregularEncoding for anything else, so a caller can fall
# back to ``unpackb``: for what it takes, each FrameSpan's bytes are exactly
# ``packb(span.obj)``, and the fields and frames are what ``unpackb`` would give.

MAX_SCAN_DEPTH = 32


class IrregularEncoding(ValueError):
    """Bytes outside the layout ``scan_bulk`` takes; decode them with ``unpackb``."""


@dataclass(frozen=True, slots=True)
class FrameSpan:
    """One frame of a bulk message: its decoded map (array data are memoryviews over the
    message) and the message's bytes ``[start, end)`` that encode it."""

    obj: dict[str, dict[str, Any]]
    start: int
    end: int


_ARRAY_START = b"\x83\xa5dtype"  # fixmap(3), "dtype"
_SHAPE = b"\xa5shape"
_DATA = b"\xa4data"
# Minimum value that needs each wider header; a smaller one means a non-minimal header.
_MIN_8, _MIN_16, _MIN_32 = 1 << 8, 1 << 16, 1 << 32


def _uint(buf: bytes | bytearray, pos: int, size: int, minimum: int) -> int:
    value = int.from_bytes(buf[pos:pos + size], "big")
    if value < minimum or pos + size > len(buf):
        raise IrregularEncoding("non-minimal or truncated header")
    return value


def _container_header(buf: bytes | bytearray, pos: int, fix: int) -> tuple[int, int]:
    """Length and end of a map (``fix`` 0x80) or array (``fix`` 0x90) header."""
    b = buf[pos]
    if fix <= b < fix + 16:
        return b & 0x0F, pos + 1
    wide = 0xDE if fix == 0x80 else 0xDC
    if b == wide:
        return _uint(buf, pos + 1, 2, 16), pos + 3
    if b == wide + 1:
        return _uint(buf, pos + 1, 4, _MIN_16), pos + 5
    raise IrregularEncoding("expected a map or an array")


def _str_end(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    """Start and end of a str's content."""
    b = buf[pos]
    if 0xA0 <= b <= 0xBF:
        start = pos + 1
        return start, start + (b & 0x1F)
    if b == 0xD9:
        return pos + 2, pos + 2 + _uint(buf, pos + 1, 1, 32)
    if b == 0xDA:
        return pos + 3, pos + 3 + _uint(buf, pos + 1, 2, _MIN_8)
    if b == 0xDB:
        return pos + 5, pos + 5 + _uint(buf, pos + 1, 4, _MIN_16)
    raise IrregularEncoding("expected a string")


def _str(buf: bytes | bytearray, pos: int) -> tuple[str, int]:
    start, end = _str_end(buf, pos)
    if end > len(buf):
        raise IrregularEncoding("truncated string")
    return buf[start:end].decode("utf-8"), end


def _bin_end(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    """Start and end of a bin's content."""
    b = buf[pos]
    if b == 0xC4:
        return pos + 2, pos + 2 + buf[pos + 1]
    if b == 0xC5:
        return pos + 3, pos + 3 + _uint(buf, pos + 1, 2, _MIN_8)
    if b == 0xC6:
        return pos + 5, pos + 5 + _uint(buf, pos + 1, 4, _MIN_16)
    raise IrregularEncoding("expected binary data")


def _shape(buf: bytes | bytearray, pos: int) -> tuple[list[int], int]:
    """A list of non-negative ints (what ``packb`` writes for a shape)."""
    n, pos = _container_header(buf, pos, 0x90)
    shape = []
    for _ in range(n):
        b = buf[pos]
        if b < 0x80:
            value, pos = b, pos + 1
        elif b == 0xCC:
            value, pos = _uint(buf, pos + 1, 1, 0x80), pos + 2
        elif b == 0xCD:
            value, pos = _uint(buf, pos + 1, 2, _MIN_8), pos + 3
        elif b == 0xCE:
            value, pos = _uint(buf, pos + 1, 4, _MIN_16), pos + 5
        elif b == 0xCF:
            value, pos = _uint(buf, pos + 1, 8, _MIN_32), pos + 9
        else:
            raise IrregularEncoding("a shape entry that is not a non-negative int")
        shape.append(value)
    return shape, pos


@dataclass(frozen=True, slots=True)
class _Layout:
    """A scanned frame's bytes around its array data. Frames of one upload mostly share
    keys, dtypes and shapes; frames with the very same bytes there decode the same way,
    so a run of them is recognized with one vectorized comparison (``_repeats``)."""

    keys: tuple[str, ...]
    dtypes: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    data: tuple[tuple[int, int], ...]  # each array's data: offset from the frame's start, size
    gaps: tuple[tuple[int, bytes], ...]  # every other run of bytes: offset, the bytes
    gap_bytes: int  # their total size


@dataclass(frozen=True, slots=True)
class FrameRun:
    """``count`` consecutive frames of a bulk message whose bytes around the array data
    are the very same (so the same keys, dtypes and shapes, in the same order): frame
    ``i`` is the message's bytes ``[first.start + i * stride, first.start + (i + 1) *
    stride)`` and its arrays' data sit at ``data`` (offset from the frame's start, size),
    in the order of ``first.obj``. ``span(i)`` is what ``scan_bulk`` gives for frame i."""

    first: FrameSpan
    count: int
    stride: int
    data: tuple[tuple[int, int], ...]
    view: memoryview  # the whole message

    @property
    def end(self) -> int:
        return self.first.start + self.count * self.stride

    def span(self, i: int) -> FrameSpan:
        if i == 0:
            return self.first
        start = self.first.start + i * self.stride
        obj = {key: {"dtype": value["dtype"], "shape": list(value["shape"]),
                     "data": self.view[start + off:start + off + size]}
               for (key, value), (off, size) in zip(self.first.obj.items(), self.data,
                                                    strict=True)}
        return FrameSpan(obj, start, start + self.stride)

    def spans(self) -> list[FrameSpan]:
        return [self.span(i) for i in range(self.count)]


def _layout(start: int, end: int, obj: dict[str, dict[str, Any]],
            data: list[tuple[int, int]], buf: bytes | bytearray) -> _Layout:
    gap_starts = [start, *(off + size for off, size in data[:-1])]
    gaps = tuple((a - start, bytes(buf[a:off]))
                 for a, (off, _) in zip(gap_starts, data, strict=True) if off > a)
    return _Layout(tuple(obj), tuple(v["dtype"] for v in obj.values()),
                   tuple(tuple(v["shape"]) for v in obj.values()),
                   tuple((off - start, size) for off, size in data), gaps,
                   sum(len(g) for _, g in gaps))


def _scan_frame(buf: bytes | bytearray, view: memoryview,
                pos: int) -> tuple[FrameSpan, _Layout | None]:
    start = pos
    n, pos = _container_header(buf, pos, 0x80)
    obj: dict[str, dict[str, Any]] = {}
    data_at: list[tuple[int, int]] = []
    for _ in range(n):
        key, pos = _str(buf, pos)
        if not buf.startswith(_ARRAY_START, pos):
            raise IrregularEncoding("expected an array map of dtype, shape, data")
        dtype, pos = _str(buf, pos + len(_ARRAY_START))
        if not buf.startswith(_SHAPE, pos):
            raise IrregularEncoding("expected 'shape'")
        shape, pos = _shape(buf, pos + len(_SHAPE))
        if not buf.startswith(_DATA, pos):
            raise IrregularEncoding("expected 'data'")
        data, pos = _bin_end(buf, pos + len(_DATA))
        if pos > len(buf):
            raise IrregularEncoding("truncated data")
        obj[key] = {"dtype": dtype, "shape": shape, "data": view[data:pos]}
        data_at.append((data, pos - data))
    if len(obj) != n:
        raise IrregularEncoding("a frame key is repeated")
    layout = _layout(start, pos, obj, data_at, buf) if n else None
    return FrameSpan(obj, start, pos), layout


def _repeats(buf: bytes | bytearray, pos: int, stride: int, most: int,
             layout: _Layout) -> int:
    """How many frames from ``pos`` on (at most ``most``) have the layout's bytes around
    their data, each ``stride`` bytes long; compared in blocks of about _REPEAT_BLOCK
    bytes of those (bounded temporaries, an early stop at a change of layout)."""
    most = min(most, (len(buf) - pos) // stride)
    per_block = max(1, _REPEAT_BLOCK // max(layout.gap_bytes, 1))
    done = 0
    while done < most:
        k = min(per_block, most - done)
        same = np.ones(k, dtype=bool)
        for at, gap in layout.gaps:  # each gap of every frame as one opaque item
            kind = np.dtype(f"V{len(gap)}")
            items = np.ndarray((k,), kind, buffer=buf, offset=pos + done * stride + at,
                               strides=(stride,))
            same &= items == np.frombuffer(gap, kind)[0]
        if not same.all():
            return done + int(np.argmin(same))
        done += k
    return done


_REPEAT_BLOCK = 2**22


def _scan_runs(buf: bytes | bytearray, view: memoryview, pos: int, count: int,
               said: Sequence[tuple[int, int, int]] = ()) -> list[FrameRun]:
    """The ``count`` frames from ``pos`` on as runs of one layout. ``said``: runs the
    sender says are of one layout, ``(first, count, stride)`` each (sorted, apart): of
    those only the first and the last frame are compared, not every frame (~1 us each,
    most of it in cache misses); a said run that does not hold is scanned as any other."""
    told = {first: (n, stride) for first, n, stride in said}
    starts = sorted(told)
    runs: list[FrameRun] = []
    done = 0
    while done < count:
        span, layout = _scan_frame(buf, view, pos)
        stride, n = span.end - span.start, 1
        if layout is not None:
            run = told.get(done)
            if run is not None and _holds(buf, pos, stride, layout, run, count - done):
                n = run[0]
            else:  # up to the next said run at most, to meet it where it starts
                k = bisect_right(starts, done)
                upto = starts[k] if k < len(starts) else count
                n += _repeats(buf, span.end, stride, upto - done - 1, layout)
        runs.append(FrameRun(span, n, stride, layout.data if layout else (), view))
        done += n
        pos = runs[-1].end
    return runs


def _holds(buf: bytes | bytearray, pos: int, stride: int, layout: _Layout,
           run: tuple[int, int], left: int) -> bool:
    """Whether a said run of ``run = (count, stride)`` frames from ``pos`` fits what is
    left and its last frame has the layout of its first (at ``pos``, ``stride`` long)."""
    n, said_stride = run
    last = pos + (n - 1) * stride
    return (said_stride == stride and 1 < n <= left and last + stride <= len(buf)
            and _repeats(buf, last, stride, 1, layout) == 1)


# Bytes that follow the type byte, for fixed-size types; ext types carry their type byte.
_FIXED_SIZE = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4,
               0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5,
               0xD7: 9, 0xD8: 17}
# Length-prefixed types: (bytes of the length, extra bytes after it).
_PREFIXED = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xC7: (1, 1), 0xC8: (2, 1),
             0xC9: (4, 1), 0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0)}


def _skip(buf: bytes | bytearray, pos: int) -> int:
    """The end of the (any) msgpack object at ``pos``; nesting is capped at MAX_SCAN_DEPTH."""
    pending = [1]  # objects still to skip at each open nesting level
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        b = buf[pos]
        items = 0
        if b < 0x80 or b >= 0xE0:
            pos += 1
        elif b < 0x90:
            items, pos = 2 * (b & 0x0F), pos + 1
        elif b < 0xA0:
            items, pos = b & 0x0F, pos + 1
        elif b < 0xC0:
            pos += 1 + (b & 0x1F)
        elif b in _FIXED_SIZE:
            pos += 1 + _FIXED_SIZE[b]
        elif b in _PREFIXED:
            size, extra = _PREFIXED[b]
            pos += 1 + size + extra + int.from_bytes(buf[pos + 1:pos + 1 + size], "big")
        elif b in (0xDC, 0xDD, 0xDE, 0xDF):
            size = 2 if b in (0xDC, 0xDE) else 4
            items = int.from_bytes(buf[pos + 1:pos + 1 + size], "big") * (2 if b >= 0xDE else 1)
            pos += 1 + size
        else:
            raise IrregularEncoding(f"reserved type byte 0x{b:02x}")
        if pos > len(buf):
            raise IrregularEncoding("truncated message")
        if items:
            if len(pending) >= MAX_SCAN_DEPTH:
                raise IrregularEncoding("nested too deeply")
            pending.append(items)
    return pos


# Dtype strings seen by decode_span: the dtype when decode_array would view the data
# as is (allowed and not big-endian), else None. Bounded (cleared when full): the
# strings come from clients.
_PLAIN_DTYPES: dict[str, np.dtype[Any] | None] = {}
_PLAIN_DTYPES_MAX = 256


def _plain_dtype(dtype_s: str) -> np.dtype[Any] | None:
    try:
        return _PLAIN_DTYPES[dtype_s]
    except KeyError:
        pass
    plain: np.dtype[Any] | None = None
    if len(dtype_s) <= 16:
        try:
            parsed = np.dtype(dtype_s)
            plain = check_dtype(parsed) if parsed.byteorder != ">" else None
        except Exception:  # anything numpy refuses: decode_array gives the answer
            plain = None
    if len(_PLAIN_DTYPES) >= _PLAIN_DTYPES_MAX:
        _PLAIN_DTYPES.clear()
    _PLAIN_DTYPES[dtype_s] = plain
    return plain


def decode_span(span: FrameSpan) -> Frame:
    """``decode_frame(span.obj)``: the same arrays (zero-copy views over the message) and
    the same errors, with the common little-endian case taken without decode_array's
    generic checks (the scanner already made sure of the map's structure)."""
    out: Frame = {}
    for key, value in span.obj.items():
        data = value["data"]
        plain = plain_layout(value, len(data))
        if plain is not None:
            dtype, shape, count = plain
            out[key] = np.frombuffer(data, dtype=dtype, count=count).reshape(shape)
        else:
            out[key] = decode_array(value, key)
    return out


def plain_layout(value: Mapping[str, Any], size: int
                 ) -> tuple[np.dtype[Any], tuple[int, ...], int] | None:
    """(dtype, shape, element count) of an encoded array whose ``size`` data bytes can
    be viewed as they are (an allowed little-endian dtype, a sane shape, the right
    size); None when decode_array must judge it."""
    dtype_s = value["dtype"]
    dtype = _plain_dtype(dtype_s) if isinstance(dtype_s, str) else None
    shape = tuple(value["shape"])
    if dtype is None or len(shape) > 8:
        return None
    count = prod(shape)
    if count > MAX_ELEMENTS or count * dtype.itemsize != size:
        return None
    return dtype, shape, count


def decode_run(run: FrameRun) -> list[Frame] | None:
    """``decode_span`` of every frame of ``run`` (zero-copy views over the message),
    each key's arrays cut from one strided view of all the run's frames: ~1 us per array
    instead of ~20 us per frame for the span's dict and each frombuffer. None when a
    dtype or a size is one that decode_span leaves to decode_array (the caller then
    decodes span by span, which gives the same answer or error)."""
    columns: list[Array] = []
    for value, (offset, size) in zip(run.first.obj.values(), run.data, strict=True):
        plain = plain_layout(value, size)
        if plain is None:
            return None
        dtype, shape, _ = plain
        inner = [dtype.itemsize * prod(shape[k + 1:]) for k in range(len(shape))]
        columns.append(np.ndarray((run.count, *shape), dtype=dtype, buffer=run.view,
                                  offset=run.first.start + offset,
                                  strides=(run.stride, *inner)))
    return frames_of_columns(list(run.first.obj), columns, run.count)


def frames_of_columns(keys: list[str], columns: list[Array], count: int) -> list[Frame]:
    """``count`` frames whose ``keys[k]`` is row i of ``columns[k]`` (a view of it)."""
    if not keys:
        return [{} for _ in range(count)]
    # Iterating gives each row's view (0-d rows need the explicit index).
    rows = [list(c) if c.ndim > 1 else [c[i, ...] for i in range(count)] for c in columns]
    if any(len(r) != count for r in rows):
        raise ValueError("columns of different lengths")
    return list(map(_frame_builder(tuple(keys)), *rows))


@lru_cache(maxsize=64)
def _frame_builder(keys: tuple[str, ...]) -> Callable[..., Frame]:
    """``lambda a0, a1, ...: {keys[0]: a0, keys[1]: a1, ...}``. A dict display with
    constant keys builds a frame in half the time ``dict(zip(keys, row))`` takes (~1.6 ms
    of a read of 10,000 frames). The keys enter the source as ``repr`` literals only."""
    args = ", ".join(f"a{i}" for i in range(len(keys)))
    items = ", ".join(f"{key!r}: a{i}" for i, key in enumerate(keys))
    builder: Callable[..., Frame] = eval(f"lambda {args}: {{{items}}}", {})
    return builder


def _scan_field(data: bytes | bytearray, view: memoryview, pos: int) -> tuple[Any, int]:
    end = _skip(data, pos)
    try:
        return unpackb(view[pos:end]), end
    except CodecError as exc:
        raise IrregularEncoding(str(exc)) from None


def scan_bulk(data: bytes | bytearray, *,
              min_frame_bytes: int = 0) -> tuple[dict[str, Any], list[FrameSpan]]:
    """A bulk message ``{"frames": [...], **fields}`` as its other fields (decoded with
    ``unpackb``) and its frames, located in place (see above); IrregularEncoding when the
    message is not in the layout ``packb`` writes, has no ``frames`` list or repeats a key.

    With ``min_frame_bytes``, also IrregularEncoding (before any frame is scanned) when
    the bytes from the first frame to the end come to less than that per frame: for a
    caller to whom ``unpackb`` is the faster path for small frames."""
    fields, runs = scan_bulk_runs(data, min_frame_bytes=min_frame_bytes)
    return fields, [span for run in runs for span in run.spans()]


def scan_bulk_runs(data: bytes | bytearray, *,
                   min_frame_bytes: int = 0) -> tuple[dict[str, Any], list[FrameRun]]:
    """``scan_bulk`` with the frames as runs of frames that share their layout (see
    FrameRun), for a caller that handles such a run as a whole; the same errors."""
    view = memoryview(data)
    try:
        n, pos = _container_header(data, 0, 0x80)
        fields: dict[str, Any] = {}
        runs: list[FrameRun] | None = None
        for _ in range(n):
            key, pos = _str(data, pos)
            if key in fields or (key == "frames" and runs is not None):
                raise IrregularEncoding(f"key {key!r} is repeated")
            if key == "frames":
                count, pos = _container_header(data, pos, 0x90)
                if len(data) - pos < min_frame_bytes * count:
                    raise IrregularEncoding("frames smaller than min_frame_bytes")
                runs = _scan_runs(data, view, pos, count)
                pos = runs[-1].end if runs else pos
            else:
                fields[key], pos = _scan_field(data, view, pos)
    except (IndexError, UnicodeDecodeError) as exc:  # ran off the end; not UTF-8
        raise IrregularEncoding(str(exc)) from None
    if runs is None:
        raise IrregularEncoding("no 'frames' list")
    if pos != len(data):
        raise IrregularEncoding("bytes after the message")
    return fields, runs
