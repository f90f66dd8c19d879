"""Decoding, validation and hashing of uploaded frames (CPU work: run in a thread)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trajhub.gateway.body import decode_msgpack_map
from trajhub.gateway.errors import ApiError
from trajhub.shared.codec import CodecError, decode_frame, frame_to_bytes
from trajhub.shared.events import MAX_FRAMES_PER_COMMAND
from trajhub.shared.frames import FrameError, validate_frame
from trajhub.shared.hashing import frame_hash


@dataclass(frozen=True)
class PreparedFrames:
    """Validated frames as content hashes plus their canonical blob bytes."""

    hashes: list[str]
    blobs: list[bytes]

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.blobs)


def prepare_frame(number: int, obj: Any) -> tuple[str, bytes]:
    try:
        frame = validate_frame(decode_frame(obj))
    except (CodecError, FrameError) as exc:
        raise ApiError(422, f"frame {number}: {exc}") from None
    return frame_hash(frame), frame_to_bytes(frame)


def prepare_frames(raw: Any) -> PreparedFrames:
    if not isinstance(raw, list):
        raise ApiError(422, "'frames' must be a list of frames")
    if not raw:
        raise ApiError(422, "'frames' is empty; send at least one frame")
    if len(raw) > MAX_FRAMES_PER_COMMAND:
        raise ApiError(422, f"{len(raw)} frames in one request; at most "
                            f"{MAX_FRAMES_PER_COMMAND}")
    hashes, blobs = [], []
    for number, obj in enumerate(raw):
        h, blob = prepare_frame(number, obj)
        hashes.append(h)
        blobs.append(blob)
    return PreparedFrames(hashes, blobs)


def parse_upload(body: bytes | bytearray, limit: int) -> tuple[dict[str, Any], PreparedFrames]:
    """Decode a ``{"frames": [...], ...}`` body; returns its other fields and the frames."""
    message = decode_msgpack_map(body, limit)
    if "frames" not in message:
        raise ApiError(422, "request body has no 'frames' list")
    prepared = prepare_frames(message.pop("frames"))
    return message, prepared
