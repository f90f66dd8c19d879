"""replay(): a room's live index rebuilt from its events, and the events that do not fit."""

from __future__ import annotations

from typing import Any

import pytest

from trajhub.shared.events import Event, FrameEntry
from trajhub.shared.replay import ReplayError, RoomIndex, replay

ROOM = "r1"


def h(i: int) -> str:
    return f"{i:064x}"


def entry(fid: int, version: int, content: int | None = None) -> FrameEntry:
    c = fid if content is None else content
    return FrameEntry(frame_id=fid, version=version, hash=h(c), slot=c)


def event(seq: int, kind: str, indices: list[int], frames: list[FrameEntry], n: int,
          **extra: Any) -> Event:
    return Event(room=ROOM, seq=seq, kind=kind, author="a", edit_id=f"e{seq}",  # type: ignore[arg-type]
                 time=0.0, indices=indices, frames=frames, n_frames=n, **extra)


def history() -> list[Event]:
    """insert 0..3; replace frame 1; delete frames 0 and 2; undo that delete; insert at
    0; undo the insert; redo a replace (undo-style replace)."""
    return [
        event(1, "frames_inserted", [0, 1, 2, 3], [entry(i, 1) for i in range(4)], 4),
        event(2, "frames_replaced", [1], [entry(1, 2, 9)], 4, prev=[entry(1, 1)]),
        event(3, "frames_deleted", [0, 2], [entry(0, 1), entry(2, 1)], 2),
        event(4, "undo", [0, 2], [entry(0, 2), entry(2, 2)], 4, effect="insert", reverts=3),
        event(5, "frames_inserted", [0], [entry(4, 1)], 5),
        event(6, "undo", [0], [entry(4, 1)], 4, effect="delete", reverts=5),
        event(7, "redo", [3], [entry(3, 2, 7)], 4, effect="replace", reverts=2,
              prev=[entry(3, 1)]),
    ]


def test_replay_rebuilds_inserts_replaces_deletes_and_reverts() -> None:
    assert replay(history()) == [entry(0, 2), entry(1, 2, 9), entry(2, 2), entry(3, 2, 7)]
    assert replay([]) == []


def test_room_index_applies_one_event_at_a_time_and_from_a_snapshot() -> None:
    events = history()
    index = RoomIndex()
    for e in events[:3]:
        index.apply(e)
    assert (index.seq, len(index), index.room) == (3, 2, ROOM)
    resumed = RoomIndex(index.entries, seq=index.seq, room=ROOM)
    for e in events[3:]:
        resumed.apply(e)
    assert resumed.entries == replay(events)


def test_insert_positions_are_final_positions_applied_in_order() -> None:
    start = event(1, "frames_inserted", [0, 1], [entry(0, 1), entry(1, 1)], 2)
    # Frames 2 and 3 end up at 0 and 2: [2, 0, 3, 1].
    mid = event(2, "frames_inserted", [0, 2], [entry(2, 1), entry(3, 1)], 4)
    assert [e.frame_id for e in replay([start, mid])] == [2, 0, 3, 1]
    # An undo of a delete at the very end appends (position == length).
    tail = event(3, "frames_inserted", [4], [entry(4, 1)], 5)
    assert [e.frame_id for e in replay([start, mid, tail])] == [2, 0, 3, 1, 4]


def test_seq_gap_is_refused_and_leaves_the_index_unchanged() -> None:
    events = history()
    index = RoomIndex()
    index.apply(events[0])
    with pytest.raises(ReplayError, match="seq gap: expected seq 2, got 3"):
        index.apply(events[2])
    with pytest.raises(ReplayError, match="seq gap"):
        replay([events[0], events[0]])
    assert index.seq == 1 and len(index) == 4


@pytest.mark.parametrize(("bad", "message"), [
    (event(2, "frames_replaced", [4], [entry(4, 2)], 4), "index 4 out of range for 4"),
    (event(2, "frames_deleted", [7], [entry(0, 1)], 3), "index 7 out of range"),
    (event(2, "frames_inserted", [6], [entry(4, 1)], 5), "insert position 6 out of range"),
    (event(2, "frames_replaced", [1], [entry(2, 2)], 4), "frame id mismatch at index 1"),
    (event(2, "frames_deleted", [0], [entry(3, 1)], 3), "frame id mismatch at index 0"),
    (event(2, "frames_deleted", [0], [entry(0, 1, 5)], 3), "the event deletes"),
    (event(2, "frames_replaced", [0], [entry(0, 2)], 4, prev=[entry(0, 1, 8)]),
     "the event's prev says"),
    (event(2, "frames_replaced", [0], [entry(0, 1, 8)], 4), "does not exceed 1"),
    (event(2, "frames_inserted", [4], [entry(2, 1)], 5), "frame id 2 is already present"),
    (event(2, "frames_inserted", [1, 0], [entry(4, 1), entry(5, 1)], 6), "strictly ascending"),
    (event(2, "frames_deleted", [2, 1], [entry(2, 1), entry(1, 1)], 2), "strictly ascending"),
    (event(2, "frames_inserted", [4], [entry(4, 1)], 9), "5 frames after it, the event says 9"),
    (event(2, "frames_replaced", [0, 1], [entry(0, 2)], 4), "2 indices for 1 frames"),
    (event(2, "frames_inserted", [4], [entry(4, 1)], 5).model_copy(update={"room": "other"}),
     "belongs to room 'other'"),
])
def test_events_that_do_not_fit_raise(bad: Event, message: str) -> None:
    index = RoomIndex()
    index.apply(history()[0])
    before = list(index.entries)
    with pytest.raises(ReplayError, match=message):
        index.apply(bad)
    assert index.entries == before and index.seq == 1


def test_a_restored_frame_must_come_back_with_a_newer_version() -> None:
    events = history()[:3]
    stale = event(4, "undo", [0], [entry(0, 1)], 3, effect="insert", reverts=3)
    with pytest.raises(ReplayError, match="frame id 0 version 1 does not exceed its earlier"):
        replay([*events, stale])


def test_starting_entries_must_not_repeat_a_frame_id() -> None:
    with pytest.raises(ReplayError, match="repeat a frame id"):
        RoomIndex([entry(0, 1), entry(0, 2)])
