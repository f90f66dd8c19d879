"""PATCH of one frame: merge some keys into the frame its author saw, stage the merged
frame whole and commit a ``PatchFrames`` (storage keeps only the changed keys)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from trajhub.gateway.errors import ApiError
from trajhub.gateway.routes import read_index
from trajhub.gateway.runtime import Gateway
from trajhub.gateway.selection import Selection
from trajhub.shared import keys as rkeys
from trajhub.shared.codec import CodecError, decode_array, frame_from_bytes, frame_to_bytes
from trajhub.shared.events import FrameEntry
from trajhub.shared.frames import Frame, FrameError, validate_frame
from trajhub.shared.hashing import validated_frame_hash
from trajhub.shared.index import unpack_entry
from trajhub.shared.names import InvalidName, check_key_name

PATCH_FIELDS = ("frame", "base_version", "frame_id", "author")
_IF_MATCH = re.compile(r'^(?:W/)?"(\d{1,18})"$')


@dataclass(frozen=True)
class PatchBody:
    frame: Frame
    base_version: int
    frame_id: int | None


@dataclass(frozen=True)
class Merged:
    hash: str
    blob: bytes


def _non_negative_int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ApiError(422, f"{name} must be a non-negative integer")
    return value


def parse_if_match(value: str | None) -> int | None:
    if value is None:
        return None
    match = _IF_MATCH.fullmatch(value.strip())
    if match is None:
        raise ApiError(422, f'If-Match must be a frame version in quotes, like "3"; '
                            f"got {value[:40]!r}")
    return int(match.group(1))


def decode_patch(raw: Any) -> Frame:
    """The patch's arrays; 422 naming the key for a bad key name or array."""
    if not isinstance(raw, dict) or not raw:
        raise ApiError(422, "'frame' must be a non-empty map of key -> array")
    out: Frame = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ApiError(422, f"frame key {key!r} is not a string")
        try:
            check_key_name(key)
            out[key] = decode_array(value, key)
        except (InvalidName, CodecError) as exc:
            raise ApiError(422, str(exc)) from None
    return out


def parse_patch_body(message: dict[str, Any], if_match: str | None) -> PatchBody:
    unknown = sorted(str(k) for k in message if k not in PATCH_FIELDS)
    if unknown:
        raise ApiError(422, f"unknown field(s) {', '.join(unknown)}; a patch takes "
                            f"{', '.join(PATCH_FIELDS)}")
    if "frame" not in message:
        raise ApiError(422, "request body has no 'frame' (the keys to change)")
    header = parse_if_match(if_match)
    body = message.get("base_version")
    if body is not None:
        body = _non_negative_int(body, "base_version")
    if header is None and body is None:
        raise ApiError(428, 'a patch needs the version it is based on: send If-Match: '
                            '"<version>" or "base_version" in the body')
    if header is not None and body is not None and header != body:
        raise ApiError(422, f"If-Match ({header}) and base_version ({body}) disagree")
    frame_id = message.get("frame_id")
    if frame_id is not None:
        frame_id = _non_negative_int(frame_id, "frame_id")
    base = header if header is not None else body
    assert base is not None
    return PatchBody(frame=decode_patch(message["frame"]), base_version=base,
                     frame_id=frame_id)


async def locate(gw: Gateway, room: str, index: int,
                 frame_id: int | None) -> tuple[int, FrameEntry]:
    """The frame's current index and entry, by index or by frame id (404 if gone)."""
    if frame_id is None:
        view = await read_index(gw, room, Selection(indices=[index]))
        return view.indices[0], view.entries[0]
    async with gw.redis.pipeline(transaction=True) as pipe:
        pipe.hget(rkeys.frames(room), str(frame_id))
        pipe.lpos(rkeys.order(room), str(frame_id))
        packed, position = await pipe.execute()
    if packed is None or position is None:
        raise ApiError(404, f"room {room!r} has no frame with id {frame_id}")
    return int(position), unpack_entry(frame_id, packed)


def check_base(room: str, index: int, entry: FrameEntry, base: int) -> None:
    if entry.version != base:
        raise ApiError(409, f"room {room!r}: frame {index} (id {entry.frame_id}) is at "
                            f"version {entry.version}, not {base}: re-read it and retry",
                       extra={"conflicts": [{"index": index, "frame_id": entry.frame_id,
                                             "expected": base, "actual": entry.version,
                                             "hash": entry.hash}]})


def merge(current: bytes | memoryview, patch: Frame) -> Merged:
    """The current frame with the patch's keys over it, validated (CPU: in a thread)."""
    merged = {**frame_from_bytes(current), **patch}
    try:
        valid = validate_frame(merged)
    except FrameError as exc:
        raise ApiError(422, f"the patched frame breaks the rules: {exc}") from None
    return Merged(hash=validated_frame_hash(valid), blob=frame_to_bytes(valid))


async def load_and_merge(gw: Gateway, room: str, index: int, entry: FrameEntry,
                         patch: Frame) -> Merged:
    by_slot = await gw.loader.load(room, await gw.store(), [entry], None, [index])
    current = by_slot.get(entry.slot)
    if current is None:
        raise ApiError(503, f"frame {index} of {room!r} could not be read; retry later",
                       headers={"Retry-After": "2"})
    if len(current) < 2**20:
        return merge(current, patch)
    return await asyncio.to_thread(merge, current, patch)
