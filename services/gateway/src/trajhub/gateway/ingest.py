"""Decoding, validation and hashing of uploaded frames (CPU work: run in a thread).

Fast path: ``codec.scan_bulk`` locates every frame in the body and decodes it with the
array data as zero-copy views; a frame whose received bytes are already its canonical
bytes (what ``frame_to_bytes`` of the validated frame gives) is staged as those bytes,
with no re-encoding. A body the scanner does not take goes through ``unpackb`` as a
whole (the generic path), which also gives every error its answer, so both paths accept,
refuse and stage exactly the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from trajhub.gateway.body import decode_msgpack_map
from trajhub.gateway.errors import ApiError
from trajhub.shared.codec import (
    CodecError,
    FrameSpan,
    IrregularEncoding,
    decode_frame,
    decode_span,
    frame_to_bytes,
    scan_bulk,
)
from trajhub.shared.events import MAX_FRAMES_PER_COMMAND
from trajhub.shared.frames import Frame, FrameError, validate_frame
from trajhub.shared.hashing import frame_hash, validated_frame_hash


@dataclass(frozen=True)
class PreparedFrames:
    """Validated frames as content hashes plus their canonical blob bytes."""

    hashes: list[str]
    blobs: list[bytes]

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.blobs)


def check_frame_count(raw: Any) -> None:
    if not isinstance(raw, list):
        raise ApiError(422, "'frames' must be a list of frames")
    if not raw:
        raise ApiError(422, "'frames' is empty; send at least one frame")
    if len(raw) > MAX_FRAMES_PER_COMMAND:
        raise ApiError(422, f"{len(raw)} frames in one request; at most "
                            f"{MAX_FRAMES_PER_COMMAND}")


def prepare_frame(number: int, obj: Any) -> tuple[str, bytes]:
    try:
        frame = validate_frame(decode_frame(obj))
    except (CodecError, FrameError) as exc:
        raise ApiError(422, f"frame {number}: {exc}") from None
    return frame_hash(frame), frame_to_bytes(frame)


def prepare_frames(raw: Any) -> PreparedFrames:
    check_frame_count(raw)
    hashes, blobs = [], []
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


def prepare_spans(body: bytes | bytearray, spans: list[FrameSpan]) -> PreparedFrames:
    check_frame_count(spans)
    view = memoryview(body)
    hashes, blobs = [], []
    for number, span in enumerate(spans):
        try:
            decoded = decode_span(span)
            valid = validate_frame(decoded)
        except (CodecError, FrameError) as exc:
            raise ApiError(422, f"frame {number}: {exc}") from None
        hashes.append(validated_frame_hash(valid))
        if received_is_canonical(span, decoded, valid):
            blobs.append(view[span.start:span.end].tobytes())
        else:
            blobs.append(frame_to_bytes(valid))
    return PreparedFrames(hashes, blobs)


def parse_upload_generic(body: bytes | bytearray,
                         limit: int) -> tuple[dict[str, Any], PreparedFrames]:
    """Decode the whole body with ``unpackb``, then each frame (the reference path)."""
    message = decode_msgpack_map(body, limit)
    if "frames" not in message:
        raise ApiError(422, "request body has no 'frames' list")
    prepared = prepare_frames(message.pop("frames"))
    return message, prepared


def parse_upload(body: bytes | bytearray, limit: int) -> tuple[dict[str, Any], PreparedFrames]:
    """Decode a ``{"frames": [...], ...}`` body; returns its other fields and the frames."""
    if 0 < len(body) <= limit:
        try:
            fields, spans = scan_bulk(body)
        except IrregularEncoding:
            pass
        else:
            return fields, prepare_spans(body, spans)
    return parse_upload_generic(body, limit)
