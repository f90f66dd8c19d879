"""Snapshots of a room's index and archived segments of its events (pure: no I/O).

A **snapshot** is the room's index (frame ids, versions, hashes, slots in logical
order) as of one seq. A **segment** is a contiguous run of events ``first..last``. Both
are written by the snapshotter to the room's history in the store (``HistoryStore``)
before the Redis stream is trimmed, so any past state stays reachable: the index at seq
S is the latest snapshot at or below S plus the events after it, replayed
(``trajhub.shared.replay``).

Encodings are msgpack maps with a format number; arrays are raw little-endian bytes,
so a 1M-frame snapshot is ~60 MB of bytes, not a million Python objects on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgpack
import numpy as np

from trajhub.shared.events import Event, FrameEntry
from trajhub.shared.replay import RoomIndex

FORMAT = 1


class HistoryFormatError(ValueError):
    """Bytes that are not a snapshot or segment of a known format."""


def _pack(message: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(message, use_bin_type=True)
    return data


def encode_snapshot(room: str, seq: int, entries: Sequence[FrameEntry]) -> bytes:
    return _pack({
        "format": FORMAT, "kind": "snapshot", "room": room, "seq": seq,
        "frame_ids": np.array([e.frame_id for e in entries], "<i8").tobytes(),
        "versions": np.array([e.version for e in entries], "<i8").tobytes(),
        "slots": np.array([e.slot for e in entries], "<i8").tobytes(),
        "hashes": b"".join(bytes.fromhex(e.hash) for e in entries),
    })


def decode_snapshot(data: bytes) -> tuple[str, int, list[FrameEntry]]:
    """``(room, seq, entries)``."""
    message = _unpack(data, "snapshot")
    ids, versions, slots = (np.frombuffer(message[k], "<i8")
                            for k in ("frame_ids", "versions", "slots"))
    digests = message["hashes"]
    if not len(ids) == len(versions) == len(slots) == len(digests) // 32:
        raise HistoryFormatError("snapshot arrays differ in length")
    entries = [FrameEntry.known(f, v, digests[32 * i:32 * i + 32].hex(), s)
               for i, (f, v, s) in enumerate(zip(ids.tolist(), versions.tolist(),
                                                 slots.tolist(), strict=True))]
    return str(message["room"]), int(message["seq"]), entries


def encode_segment(room: str, events: Sequence[Event]) -> bytes:
    """Events ``first..last`` (contiguous seqs, in order) as one segment."""
    if not events:
        raise ValueError("a segment holds at least one event")
    seqs = [e.seq for e in events]
    if seqs != list(range(seqs[0], seqs[0] + len(seqs))):
        raise ValueError(f"segment seqs are not contiguous: {seqs[0]}..{seqs[-1]}")
    return encode_segment_json(room, seqs[0], [e.model_dump_json() for e in events])


def encode_segment_json(room: str, first: int, texts: Sequence[str | bytes]) -> bytes:
    """The events of seqs ``first ..`` given as their JSON (as the stream holds them) as
    one segment: the same segment as ``encode_segment`` of those events, without
    parsing them (what the caller read is what it archives)."""
    if not texts:
        raise ValueError("a segment holds at least one event")
    return _pack({
        "format": FORMAT, "kind": "segment", "room": room, "first": first,
        "last": first + len(texts) - 1,
        "events": [t.decode() if isinstance(t, bytes) else t for t in texts],
    })


def decode_segment(data: bytes, *, first: int | None = None, last: int | None = None
                   ) -> list[Event]:
    """The segment's events, or only those with ``first <= seq <= last`` (a bound left
    None is open): the others are not parsed, which is most of the cost."""
    message = _unpack(data, "segment")
    texts: list[str] = message["events"]
    if first is not None or last is not None:
        start = int(message["first"])
        lo = 0 if first is None else max(0, first - start)
        hi = len(texts) if last is None else max(lo, min(len(texts), last - start + 1))
        texts = texts[lo:hi]
    return [Event.model_validate_json(e) for e in texts]


def index_at(snapshot: tuple[int, Sequence[FrameEntry]] | None, events: Iterable[Event],
             seq: int, room: str | None = None) -> list[FrameEntry]:
    """The index at ``seq``: ``snapshot`` (``(its seq, entries)``, None for the empty
    room at seq 0) plus ``events`` after it, applied up to ``seq`` (later ones ignored)."""
    base_seq, entries = snapshot if snapshot is not None else (0, [])
    if base_seq > seq:
        raise ValueError(f"snapshot at seq {base_seq} is after the wanted seq {seq}")
    index = RoomIndex(entries, seq=base_seq, room=room)
    for event in events:
        if event.seq <= base_seq:
            continue
        if event.seq > seq:
            break
        index.apply(event)
    if index.seq != seq:
        raise ValueError(f"events end at seq {index.seq}, before the wanted seq {seq}")
    return list(index.entries)


def _unpack(data: bytes, kind: str) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise HistoryFormatError(f"not a {kind}: {exc}") from None
    if not isinstance(message, dict) or message.get("kind") != kind:
        raise HistoryFormatError(f"not a {kind}")
    if message.get("format") != FORMAT:
        raise HistoryFormatError(f"{kind} format {message.get('format')!r}; this trajhub "
                                 f"reads format {FORMAT}")
    return message
