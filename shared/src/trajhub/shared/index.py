"""The packed form ``version:hash:slot`` of index entries in ``{room}:frames``.

The commit scripts (Lua) write it; this is the one place Python reads it.
"""

from __future__ import annotations

from trajhub.shared.events import FrameEntry


def unpack_entry(frame_id: int, packed: str | bytes) -> FrameEntry:
    text = packed.decode() if isinstance(packed, bytes) else packed
    version, content_hash, slot = text.split(":")
    return FrameEntry.known(frame_id, int(version), content_hash, int(slot))
