"""The packed form of index entries stored in ``{room}:frames`` (and built in Lua)."""

from __future__ import annotations

from trajhub.shared.events import FrameEntry


def pack_entry(version: int, content_hash: str, slot: int) -> str:
    return f"{version}:{content_hash}:{slot}"


def unpack_entry(frame_id: int, packed: str | bytes) -> FrameEntry:
    text = packed.decode() if isinstance(packed, bytes) else packed
    version, content_hash, slot = text.split(":")
    return FrameEntry(frame_id=frame_id, version=int(version), hash=content_hash,
                      slot=int(slot))
