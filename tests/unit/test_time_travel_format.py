"""The pure parts of time travel: segment lookup and the CLI's text."""

from __future__ import annotations

from trajhub.cli import format_history, format_index
from trajhub.shared.history_reader import _covering, _gone_reason


def test_covering_picks_the_segment_holding_a_seq() -> None:
    ranges = [(1, 10), (5, 20), (21, 30)]
    assert _covering(ranges, 1) == (1, 10)
    assert _covering(ranges, 12) == (5, 20)
    assert _covering(ranges, 30) == (21, 30)
    assert _covering(ranges, 31) is None
    assert _covering([], 1) is None
    assert "nothing is archived" in _gone_reason("r", 3, [])
    assert "archived seqs start at 21" in _gone_reason("r", 3, [(21, 30)])


def test_format_history_and_index() -> None:
    events = [
        {"seq": 1, "kind": "frames_inserted", "change": "insert", "author": "alice",
         "time": 0.0, "indices": [0, 1], "frame_ids": [0, 1], "keys": [], "reverts": None},
        {"seq": 2, "kind": "undo", "change": "delete", "author": "bob", "time": 60.0,
         "indices": list(range(12)), "frame_ids": list(range(12)), "keys": [],
         "reverts": 1},
        {"seq": 3, "kind": "frames_patched", "change": "replace", "author": "bob",
         "time": 60.0, "indices": [4], "frame_ids": [7], "keys": ["positions"],
         "reverts": None},
    ]
    lines = format_history(events)
    assert lines[0].split()[:5] == ["1", "1970-01-01", "00:00:00", "alice", "frames_inserted"]
    assert "indices=0,1 ids=0,1" in lines[0]
    assert "undo (delete)" in lines[1] and "reverts=1" in lines[1] and ",... (12)" in lines[1]
    assert "keys=positions" in lines[2]
    index = {"room": "r", "seq": 3, "n_frames": 2, "frame_ids": [7, 2], "versions": [3, 1],
             "hashes": ["ab" * 32, "cd" * 32]}
    out = format_index(index)
    assert out[0] == "room r at seq 3: 2 frames"
    assert out[2].split() == ["0", "7", "3", "ab" * 8]
    assert format_index({**index, "n_frames": 0, "frame_ids": [], "versions": [],
                         "hashes": []})[2:] == []
