"""Markers and pack headers (``trajhub.shared.staging``): pure functions."""

from __future__ import annotations

import numpy as np

from trajhub.shared import codec
from trajhub.shared.frames import validate_frame
from trajhub.shared.staging import (
    MARKER,
    PackRef,
    has_markers,
    header_hashes,
    marker,
    pack_age_s,
    pack_header,
    pack_name,
    parse_marker,
)


def test_a_marker_names_its_pack_offset_and_size() -> None:
    ref = PackRef(pack_name(), 76, 123_456)
    value = marker(ref)
    assert value.startswith(MARKER) and len(value) < 80
    assert parse_marker(value) == ref
    assert parse_marker(memoryview(value)) == ref


def test_no_frame_is_taken_for_a_marker() -> None:
    frame = validate_frame({"numbers": np.array([1, 8, 1]), "positions": np.zeros((3, 3))})
    blob = codec.frame_to_bytes(frame)
    assert parse_marker(blob) is None
    assert not has_markers([blob, None])
    assert has_markers([blob, marker(PackRef("p", 1, 2))])


def test_damaged_markers_are_not_markers() -> None:
    for value in (None, b"", MARKER, MARKER + b"p 1", MARKER + b"p x 2",
                  MARKER + b"p 1 2" + b" " * 300):
        assert parse_marker(value) is None


def test_a_pack_header_lists_its_hashes() -> None:
    hashes = [f"{i:064x}" for i in range(3)]
    head = pack_header(hashes)
    assert header_hashes(head) == hashes
    assert header_hashes(head + b"frame bytes") == hashes
    assert header_hashes(head[:-1]) is None
    assert header_hashes(b"not a pack") is None
    assert header_hashes(pack_header([])) == []


def test_a_pack_name_carries_its_age() -> None:
    name = pack_name(now=1_000.0)
    assert pack_name(now=1_000.0) != name
    assert abs(pack_age_s(name, now=1_060.0) - 60.0) < 1e-6
    assert pack_name(now=999.0) < name, "names sort by creation time"
    assert pack_age_s("garbage", now=5.0) == 0.0
