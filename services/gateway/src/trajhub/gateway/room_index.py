"""A room's whole index as JSON: the answer of ``GET /api/v1/rooms/{room}/index`` and
the ``index`` of a Socket.IO ``join_room`` answer (here so that both build it alike)."""

from __future__ import annotations

from typing import Any

from trajhub.control import IndexOutOfRange, IndexReader
from trajhub.shared.events import FrameEntry


def index_json(room: str, seq: int, entries: list[FrameEntry]) -> dict[str, Any]:
    return {"room": room, "seq": seq, "n_frames": len(entries),
            "frame_ids": [e.frame_id for e in entries],
            "versions": [e.version for e in entries],
            "hashes": [e.hash for e in entries]}


async def live_index(index: IndexReader, room: str) -> dict[str, Any] | None:
    """The room's index now (one atomic read), or None if the room does not exist."""
    try:
        view = await index.read(room)
    except IndexOutOfRange:  # pragma: no cover - a whole read names no index
        return None
    if not view.exists:
        return None
    return index_json(room, view.seq, view.entries)
