"""Canonical frame bytes (``codec.frame_to_bytes``) for many frames of one layout.

A trajectory's frames share their keys, dtypes and shapes, so the bytes around their
arrays' data are the same from frame to frame: taken once from a first frame's
``frame_to_bytes``, they are joined with each next frame's data (~2x faster than
``frame_to_bytes`` for small frames). The gateway encodes frames read from Zarr so, the
client the frames it uploads.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np

from trajhub.shared.buffers import populated_bytearray
from trajhub.shared.codec import frame_to_bytes
from trajhub.shared.frames import Array, SlotColumns

LAYOUT_BACKOFF = 16
"""Frames encoded plainly before a new layout is tried, when the last one fit no frame."""
LAYOUT_MAX_BYTES = 2**16
"""Larger frames are encoded plainly: copying their data costs far more than the rest."""


class Layout:
    """The canonical bytes of frames with one layout (the same keys, dtypes and shapes,
    every array C-contiguous and already canonical): the bytes around the arrays' data,
    taken from ``frame_to_bytes`` of a first frame, with each frame's data joined in."""

    def __init__(self, keys: tuple[str, ...], dtypes: tuple[np.dtype[Any], ...],
                 shapes: tuple[tuple[int, ...], ...], parts: list[Any],
                 data_at: tuple[int | None, ...]) -> None:
        self.keys, self.dtypes, self.shapes = keys, dtypes, shapes
        self.parts, self.data_at = parts, data_at

    @classmethod
    def of(cls, frame: Mapping[str, Any], whole: bytes) -> Layout | None:
        """The layout of ``frame``, whose ``frame_to_bytes`` is ``whole``; None when the
        frame is large (its join dominates: nothing to save) or not canonical."""
        if len(whole) > LAYOUT_MAX_BYTES:
            return None
        keys = tuple(sorted(frame))
        arrays = [frame[k] for k in keys]
        if not all(type(a) is np.ndarray and a.flags.c_contiguous for a in arrays):
            return None
        prefixes = []
        for k, a in zip(keys, arrays, strict=True):
            alone = frame_to_bytes({k: a})  # a one-key map header, then the key's bytes
            if not alone.startswith(b"\x81"):
                return None
            prefixes.append(alone[1:len(alone) - a.nbytes])
        header = whole[:len(whole) - sum(len(p) + a.nbytes
                                         for p, a in zip(prefixes, arrays, strict=True))]
        parts: list[Any] = [header]
        data_at: list[int | None] = []
        for p, a in zip(prefixes, arrays, strict=True):
            parts.append(p)
            data_at.append(len(parts) if a.size else None)
            if a.size:
                parts.append(None)
        layout = cls(keys, tuple(a.dtype for a in arrays), tuple(a.shape for a in arrays),
                     parts, tuple(data_at))
        # Only when frame_to_bytes takes these arrays as they are (canonical already).
        return layout if layout.encode(frame) == whole else None

    def encode_columns(self, columns: SlotColumns) -> list[bytes] | None:
        """``encode`` of each frame of ``columns``, joined from its rows without a frame
        dict or a check per frame; None when they are not of this layout."""
        pieces = self._pieces(columns)
        return None if pieces is None else list(map(b"".join, zip(*pieces, strict=True)))

    def encode_slab(self, columns: SlotColumns) -> memoryview | None:
        """``encode_columns`` of ``columns`` as one read-only buffer, the frames one
        after the other (each as long as every other: one layout, one shape per key).

        Written part by part for all frames at once (``empty_slab``, then a numpy copy
        per key): joining each frame's pieces cost a Python object per row and key (~10
        us a small frame), and the join's output zeroed fresh memory first."""
        if self._data_columns(columns) is None:
            return None
        slab = self.empty_slab(columns.count)
        for key, target in slab.columns.items():
            target[...] = columns.arrays[key]
        return slab.view()

    def empty_slab(self, count: int) -> EmptySlab:
        """A slab of ``count`` frames of this layout, the bytes around their values
        written, each key's values a column of it (a key with no bytes has none)."""
        sizes = [0 if part is None else len(part) for part in self.parts]
        for dtype, shape, at in zip(self.dtypes, self.shapes, self.data_at, strict=True):
            if at is not None:
                sizes[at] = math.prod(shape) * dtype.itemsize
        stride = sum(sizes)
        buf = populated_bytearray(count * stride)
        rows = np.frombuffer(buf, np.uint8).reshape(count, stride)
        starts = list(itertools.accumulate(sizes, initial=0))
        for part, at in zip(self.parts, starts, strict=False):
            if part is not None:
                rows[:, at:at + len(part)] = np.frombuffer(part, np.uint8)
        columns = {key: np.ndarray((count, *shape), dtype, buffer=buf, offset=starts[at],
                                   strides=(stride, *_c_strides(shape, dtype.itemsize)))
                   for key, dtype, shape, at in zip(self.keys, self.dtypes, self.shapes,
                                                    self.data_at, strict=True)
                   if at is not None}
        return EmptySlab(buf, stride, columns)

    def _data_columns(self, columns: SlotColumns) -> list[Any] | None:
        """Per part of the layout, the column whose rows fill it (None for a part of
        fixed bytes); None when ``columns`` are not of this layout."""
        if sorted(columns.arrays) != list(self.keys):
            return None
        data: list[Any] = [None] * len(self.parts)
        for key, dtype, shape, at in zip(self.keys, self.dtypes, self.shapes, self.data_at,
                                         strict=True):
            column = columns.arrays[key]
            if column.dtype != dtype or column.shape[1:] != shape:
                return None
            if at is not None:
                data[at] = column
        return data

    def _pieces(self, columns: SlotColumns) -> list[Any] | None:
        """Per part of the layout, its bytes for each frame of ``columns`` (an iterable
        of ``columns.count``); None when they are not of this layout."""
        data = self._data_columns(columns)
        if data is None:
            return None
        # Rows as 1-d views (a 0-d row would be a numpy scalar); not copied unless a row
        # is not C-contiguous.
        return [repeat(part, columns.count) if part is not None
                else list(column.reshape(columns.count, -1))
                for part, column in zip(self.parts, data, strict=True)]

    def encode(self, frame: Mapping[str, Any]) -> bytes | None:
        """The frame's canonical bytes, or None when it is not of this layout."""
        if len(frame) != len(self.keys):
            return None
        parts = self.parts.copy()
        for key, dtype, shape, at in zip(self.keys, self.dtypes, self.shapes, self.data_at,
                                         strict=True):
            a = frame.get(key)
            if (type(a) is not np.ndarray or a.dtype != dtype or a.shape != shape
                    or not a.flags.c_contiguous):
                return None
            if at is not None:
                parts[at] = a
        return b"".join(parts)


class FrameEncoder:
    """``frame_to_bytes`` of one frame after another, through the layout of the frames
    before while it fits (a new one made when it stops fitting, unless layouts change
    at every frame)."""

    def __init__(self) -> None:
        self._layout: Layout | None = None
        self._used = True  # whether the current layout encoded a frame since it was made
        self._skip = 0

    @property
    def layout(self) -> Layout | None:
        """The layout the next frame is tried with."""
        return self._layout

    def __call__(self, frame: Mapping[str, Any]) -> bytes:
        encoded = self._layout.encode(frame) if self._layout is not None else None
        if encoded is not None:
            self._used = True
            return encoded
        encoded = frame_to_bytes(frame)
        if self._skip:
            self._skip -= 1
        elif not self._used:  # layouts change at every frame (or are not canonical)
            self._skip, self._used = LAYOUT_BACKOFF, True
        else:  # making a layout costs about two frame_to_bytes
            self._layout, self._used = Layout.of(frame, encoded), False
        return encoded


def encode_frames(frames: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """``[frame_to_bytes(f) for f in frames]``, through one FrameEncoder."""
    encode = FrameEncoder()
    return [encode(f) for f in frames]


def encode_columns(columns: SlotColumns) -> list[bytes]:
    """``encode_frames(columns.frames())``, through one layout for all of them (taken
    from the first frame) when it fits: ~1 us a small frame instead of ~9."""
    layout, _ = _first_layout(columns)
    encoded = layout.encode_columns(columns) if layout is not None else None
    return encoded if encoded is not None else encode_frames(columns.frames())


def encode_slab(columns: SlotColumns) -> tuple[memoryview, int] | None:
    """``b"".join(encode_columns(columns))`` and the length of each frame's bytes in
    it, when one layout fits every frame (then all are that long); else None."""
    layout, stride = _first_layout(columns)
    slab = layout.encode_slab(columns) if layout is not None else None
    return None if slab is None else (slab, stride)


@dataclass
class EmptySlab:
    """A slab for ``count`` frames of one layout with only the bytes around their data
    written: ``columns[key]`` is where the key's values go, a (count, *shape) view."""

    buffer: bytearray
    stride: int
    columns: dict[str, Array]

    def view(self) -> memoryview:
        """The slab, once its columns are filled (what ``encode_slab`` gives)."""
        return memoryview(self.buffer).toreadonly()


def empty_slab(layout: Mapping[str, tuple[np.dtype[Any], tuple[int, ...]]], count: int
               ) -> EmptySlab | None:
    """The slab ``encode_slab`` would make of ``count`` frames whose keys have these
    dtypes and shapes, but for their values, which its columns take (so a reader can
    read them straight in: no block of their own, no copy from it). None when frames
    of this layout are not encoded so (too large, or no such layout)."""
    data = sum(math.prod(shape) * np.dtype(dtype).itemsize for dtype, shape in layout.values())
    if count <= 0 or data > LAYOUT_MAX_BYTES:  # (before a frame of zeros is made and
        return None  # encoded to learn so: 11 MB of fresh memory for 100,000 atoms)
    first = {key: np.zeros(shape, dtype) for key, (dtype, shape) in layout.items()}
    made = Layout.of(first, frame_to_bytes(first))
    return None if made is None else made.empty_slab(count)


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """The strides of a C-contiguous array of ``shape``."""
    return tuple(itemsize * math.prod(shape[i + 1:]) for i in range(len(shape)))


def _first_layout(columns: SlotColumns) -> tuple[Layout | None, int]:
    """The layout of the first frame of ``columns`` and the length of its bytes."""
    first = {key: column[0, ...] for key, column in columns.arrays.items()}
    whole = frame_to_bytes(first)
    return Layout.of(first, whole), len(whole)
