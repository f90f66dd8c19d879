"""Decoding, validation and hashing of uploaded frames (CPU work: run in a thread).

Fast path: ``codec.scan_bulk_runs`` locates every frame in the body, as runs of frames
that share keys, dtypes and shapes (their bytes around the data are the same); the first
frame of a run is decoded (array data as zero-copy views) and validated, the others only
differ in their data, so only their data-dependent check (atomic numbers) is run, on the
whole run at once. A frame whose received bytes are already its canonical bytes (what
``frame_to_bytes`` of the validated frame gives) is staged as those bytes, with no
re-encoding, and hashed from the data in place with the run's precomputed headers. A
body the scanner does not take goes through ``unpackb`` as a whole (the generic path),
which also gives every error its answer, so both paths accept, refuse and stage exactly
the same.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from hashlib import sha256
from itertools import pairwise
from typing import Any

import numpy as np

from trajhub.gateway.body import decode_msgpack_map
from trajhub.gateway.errors import ApiError
from trajhub.shared.codec import (
    CodecError,
    FrameRun,
    FrameSpan,
    IrregularEncoding,
    decode_frame,
    decode_span,
    frame_to_bytes,
    scan_bulk_runs,
)
from trajhub.shared.events import MAX_FRAMES_PER_COMMAND
from trajhub.shared.frames import Frame, FrameError, validate_frame
from trajhub.shared.hashing import array_header, frame_hash, is_hash, validated_frame_hash

Blob = bytes | memoryview
"""A canonical frame's bytes; a memoryview into the request body when they were received
as such (redis-py sends memoryviews as they are, so staging copies nothing)."""


@dataclass(frozen=True)
class PreparedFrames:
    """Validated frames as content hashes plus their canonical blob bytes; ``blobs`` is
    None for a commit of frames staged before (``{"hashes": [...]}``), by hash only."""

    hashes: list[str]
    blobs: list[Blob] | None


def check_frame_count(raw: Any) -> None:
    if not isinstance(raw, list):
        raise ApiError(422, "'frames' must be a list of frames")
    check_count(len(raw))


def check_count(count: int) -> None:
    if not count:
        raise ApiError(422, "'frames' is empty; send at least one frame")
    if count > MAX_FRAMES_PER_COMMAND:
        raise ApiError(422, f"{count} frames in one request; at most "
                            f"{MAX_FRAMES_PER_COMMAND}")


def prepare_frame(number: int, obj: Any) -> tuple[str, bytes]:
    try:
        frame = validate_frame(decode_frame(obj))
    except (CodecError, FrameError) as exc:
        raise ApiError(422, f"frame {number}: {exc}") from None
    return frame_hash(frame), frame_to_bytes(frame)


def prepare_frames(raw: Any) -> PreparedFrames:
    check_frame_count(raw)
    hashes: list[str] = []
    blobs: list[Blob] = []
    for number, obj in enumerate(raw):
        h, blob = prepare_frame(number, obj)
        hashes.append(h)
        blobs.append(blob)
    return PreparedFrames(hashes, blobs)


def received_is_canonical(span: FrameSpan, decoded: Frame, valid: Frame) -> bool:
    """True when ``frame_to_bytes(valid)`` is exactly the received bytes of ``span``.

    The scanner guarantees the bytes are ``packb(span.obj)``; encode_frame(valid) is the
    same map when the keys came sorted, validation kept every decoded array (so the data
    are the received little-endian C-order bytes) and each dtype came spelled as numpy
    spells it (``"<f8"``, not ``">f8"``, ``"f8"`` or ``"float64"``).
    """
    keys = list(span.obj)
    if any(a >= b for a, b in pairwise(keys)):
        return False
    if list(valid) != keys:
        return False
    for key in keys:
        arr = valid[key]
        if arr is not decoded[key] or span.obj[key]["dtype"] != arr.dtype.str:
            return False
    return True


def validated_span(number: int, span: FrameSpan) -> tuple[Frame, Frame]:
    """The span's decoded and validated frame (422 naming frame ``number``)."""
    try:
        decoded = decode_span(span)
        return decoded, validate_frame(decoded)
    except (CodecError, FrameError) as exc:
        raise ApiError(422, f"frame {number}: {exc}") from None


def prepare_span(view: memoryview, number: int, span: FrameSpan) -> tuple[str, Blob]:
    decoded, valid = validated_span(number, span)
    if received_is_canonical(span, decoded, valid):
        return validated_frame_hash(valid), view[span.start:span.end]
    return validated_frame_hash(valid), frame_to_bytes(valid)


def prepare_spans(body: bytes | bytearray, spans: list[FrameSpan]) -> PreparedFrames:
    check_frame_count(spans)
    view = memoryview(body)
    prepared = [prepare_span(view, number, span) for number, span in enumerate(spans)]
    return PreparedFrames([h for h, _ in prepared], [b for _, b in prepared])


def check_numbers(body: bytes | bytearray, run: FrameRun, first: int, valid: Frame) -> None:
    """validate_frame's one data-dependent check (atomic numbers in 0..200) for frames
    1.. of a run whose frame 0 is ``valid``, all at once; a failure is answered as the
    frame's own validation answers it."""
    numbers = valid["numbers"]
    if run.count < 2 or not numbers.size:
        return
    off, size = run.data[list(run.first.obj).index("numbers")]
    block = np.frombuffer(body, np.uint8, count=(run.count - 1) * run.stride,
                          offset=run.first.end).reshape(run.count - 1, run.stride)
    values = block[:, off:off + size].view(numbers.dtype)
    bad = (values.min(axis=1) < 0) | (values.max(axis=1) > 200)
    if bad.any():
        i = 1 + int(np.argmax(bad))
        validated_span(first + i, run.span(i))
        raise AssertionError("a frame with out-of-range numbers passed validation")


def run_hashes(view: memoryview, run: FrameRun, valid: Frame) -> list[str]:
    """``validated_frame_hash`` of every frame of a canonical run (frame 0 is ``valid``):
    the per-array headers are the same for all, only the data are fed per frame. A large
    run is hashed by two threads (hashlib lets go of the GIL for large updates)."""
    where = dict(zip(run.first.obj, run.data, strict=True))
    parts = []
    for key in sorted(valid, key=lambda k: k.encode()):
        arr = valid[key]
        off, size = where[key]
        parts.append((array_header(key, arr.dtype.str, arr.shape, arr.nbytes), off, size))
    starts = range(run.first.start, run.end, run.stride)
    if run.end - run.first.start < PARALLEL_HASH_BYTES or len(starts) < 2 \
            or run.stride < PARALLEL_HASH_FRAME_BYTES:
        return _hashes(view, starts, parts)
    half = len(starts) // 2
    other = _hash_pool().submit(_hashes, view, starts[half:], parts)
    return _hashes(view, starts[:half], parts) + other.result()


PARALLEL_HASH_BYTES = 4 << 20
"""Runs from this size on, of frames of PARALLEL_HASH_FRAME_BYTES or more, are hashed on
two threads (sha256 runs at 0.25-0.4 GB/s on this project's VMs without SHA
instructions, ~1.1 GB/s on those with them: one of an upload's largest costs)."""
PARALLEL_HASH_FRAME_BYTES = 32 << 10
"""Smaller frames are hashed on one thread, however many: each one's hash lets go of the
GIL and takes it back, and two threads doing that in turn took longer than one
(5,600-byte frames: 50 against 36 ms for 10,000 of them; 56,000-byte ones: 27 against
41 ms)."""
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _hash_pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="trajhub-hash")
        return _POOL


def _hashes(view: memoryview, starts: range,
            parts: list[tuple[bytes, int, int]]) -> list[str]:
    """The hash of each frame of ``starts`` (evenly spaced in ``view``): of its
    ``parts``, each a header, then the data at ``off``, ``size`` bytes into the frame."""
    row = sum(len(header) + size for header, _, size in parts)
    if row > HASH_ROW_MAX_BYTES:
        return _hashes_by_part(view, starts, parts)
    return _hashes_by_row(view, starts, parts, row)


def _hashes_by_part(view: memoryview, starts: range,
                    parts: list[tuple[bytes, int, int]]) -> list[str]:
    out = []
    for start in starts:
        h = sha256()
        for header, off, size in parts:
            h.update(header)
            h.update(view[start + off:start + off + size])
        out.append(h.hexdigest())
    return out


def _hashes_by_row(view: memoryview, starts: range, parts: list[tuple[bytes, int, int]],
                   row: int) -> list[str]:
    """Small frames: each frame's parts laid one after another into a row of a reused
    block, HASH_BLOCK_BYTES of frames at a time, and each row hashed in one call
    (feeding the parts one by one cost two calls per key and frame, all under the GIL:
    hashlib lets go of it only for inputs over 2 KB)."""
    if not starts:
        return []
    rows = max(1, min(len(starts), HASH_BLOCK_BYTES // max(row, 1)))
    block = np.empty((rows, row), np.uint8)
    data: list[tuple[int, int, int]] = []  # (offset in the frame, size, block column)
    at = 0
    for header, off, size in parts:
        block[:, at:at + len(header)] = np.frombuffer(header, np.uint8)
        at += len(header)
        data.append((off, size, at))
        at += size
    body = np.frombuffer(view, np.uint8)
    out: list[str] = []
    for i in range(0, len(starts), rows):
        n = min(rows, len(starts) - i)
        frames = body[starts[i]:starts[i] + n * starts.step].reshape(n, starts.step)
        for off, size, col in data:
            block[:n, col:col + size] = frames[:, off:off + size]
        out += [sha256(r).hexdigest() for r in block[:n]]
    return out


HASH_BLOCK_BYTES = 2 << 20
"""Small frames hashed per block (a buffer reused block after block)."""
HASH_ROW_MAX_BYTES = 64 << 10
"""Larger frames are fed part by part: copying them would cost more than the calls."""


def prepare_run(body: bytes | bytearray, view: memoryview, run: FrameRun,
                first: int) -> tuple[list[str], list[Blob]]:
    """Hashes and blobs of a run's frames (``first``: frame 0's number in the upload)."""
    decoded, valid = validated_span(first, run.first)
    if run.count == 1 or not received_is_canonical(run.first, decoded, valid):
        prepared = [prepare_span(view, first + i, run.span(i)) for i in range(run.count)]
        return [h for h, _ in prepared], [b for _, b in prepared]
    check_numbers(body, run, first, valid)
    blobs: list[Blob] = [view[start:start + run.stride]
                         for start in range(run.first.start, run.end, run.stride)]
    return run_hashes(view, run, valid), blobs


def prepare_runs(body: bytes | bytearray, runs: list[FrameRun]) -> PreparedFrames:
    check_count(sum(run.count for run in runs))
    view = memoryview(body)
    hashes: list[str] = []
    blobs: list[Blob] = []
    first = 0
    for run in runs:
        more_hashes, more_blobs = prepare_run(body, view, run, first)
        hashes += more_hashes
        blobs += more_blobs
        first += run.count
    return PreparedFrames(hashes, blobs)


def staged_hashes(raw: Any) -> PreparedFrames:
    """The ``hashes`` of a commit of staged frames (``POST .../blobs`` staged them)."""
    check_frame_count(raw)
    for number, h in enumerate(raw):
        if not is_hash(h):
            raise ApiError(422, f"hashes[{number}] is not a content hash (64 lowercase "
                                f"hex digits): {str(h)[:80]!r}")
    return PreparedFrames(list(raw), None)


def check_not_both(fields: dict[str, Any]) -> None:
    if "hashes" in fields:
        raise ApiError(422, "send either 'frames' or the 'hashes' of staged frames, not both")


def parse_upload_generic(body: bytes | bytearray,
                         limit: int) -> tuple[dict[str, Any], PreparedFrames]:
    """Decode the whole body with ``unpackb``, then each frame (the reference path);
    or take its ``hashes`` of frames staged before."""
    message = decode_msgpack_map(body, limit)
    if "frames" not in message:
        if "hashes" in message:
            return message, staged_hashes(message.pop("hashes"))
        raise ApiError(422, "request body has no 'frames' list (nor the 'hashes' of "
                            "frames staged with POST .../blobs)")
    check_not_both(message)
    return message, prepare_frames(message.pop("frames"))


def parse_upload(body: bytes | bytearray, limit: int) -> tuple[dict[str, Any], PreparedFrames]:
    """Decode a ``{"frames": [...], ...}`` body; returns its other fields and the frames."""
    if 0 < len(body) <= limit:
        try:
            fields, runs = scan_bulk_runs(body)
        except IrregularEncoding:
            pass
        else:
            check_not_both(fields)
            return fields, prepare_runs(body, runs)
    return parse_upload_generic(body, limit)
