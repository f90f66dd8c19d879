"""Event and command schemas, room and key name rules, and Redis key names."""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from trajhub.shared import keys
from trajhub.shared.events import (
    Command,
    CommitResult,
    DeleteFrames,
    Event,
    EventHead,
    FrameEntry,
    InsertFrames,
    ReplaceFrames,
)
from trajhub.shared.names import InvalidName, check_key_name, check_room_name

H1, H2 = "a" * 64, "0123456789abcdef" * 4


def event_data(**change: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "room": "demo", "seq": 3, "kind": "frames_inserted", "author": "me",
        "edit_id": "e1", "time": 1.5, "indices": [0, 1],
        "frames": [{"frame_id": 1, "version": 1, "hash": H1, "slot": 0},
                   {"frame_id": 2, "version": 1, "hash": H2, "slot": 1}],
        "base_versions": [], "new_slots": [{"slot": 0, "hash": H1}, {"slot": 1, "hash": H2}],
        "n_frames": 2,
    }
    data.update(change)
    return data


# -- events -------------------------------------------------------------------------------

def test_event_from_stream_with_bytes_and_str_fields() -> None:
    payload = json.dumps(event_data())
    from_bytes = Event.from_stream({b"seq": b"3", b"kind": b"frames_inserted",
                                    b"data": payload.encode()})
    from_str = Event.from_stream({"seq": "3", "data": payload})
    assert from_bytes == from_str
    assert from_bytes.hashes == [H1, H2] and from_bytes.new_slots[1].slot == 1
    with pytest.raises(ValueError, match="no data"):
        Event.from_stream({b"seq": b"3"})


def test_a_known_entry_is_the_entry_validation_makes() -> None:
    made = FrameEntry(frame_id=4, version=2, hash=H1, slot=9)
    known = FrameEntry.known(4, 2, H1, 9)
    assert known == made and hash(known) == hash(made) and repr(known) == repr(made)
    with pytest.raises(dataclasses.FrozenInstanceError):
        known.version = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="frame_id"):
        FrameEntry(frame_id="four", version=2, hash=H1, slot=9)  # type: ignore[arg-type]


def test_an_event_head_is_its_room_seq_and_json_size() -> None:
    payload = json.dumps(event_data())
    head = EventHead.from_stream({b"data": payload.encode()})
    event = Event.from_stream({b"data": payload.encode()})
    assert (head.room, head.seq) == (event.room, event.seq)
    assert head.json_bytes == len(payload.encode())
    assert EventHead.from_stream({"data": payload}) == head
    assert event.frame_count == 2
    with pytest.raises(ValueError, match="seq"):
        EventHead.from_stream({b"data": json.dumps({"room": "r"}).encode()})
    with pytest.raises(ValueError, match="no data"):
        EventHead.from_stream({b"seq": b"3"})


def test_event_accepts_lua_empty_tables_as_lists() -> None:
    event = Event.model_validate(event_data(kind="frames_deleted", indices={}, frames={},
                                            base_versions={}, new_slots={}))
    assert event.indices == [] and event.frames == [] and event.new_slots == []
    result = CommitResult.model_validate({"status": "conflict", "conflicts": {}})
    assert result.conflicts == [] and result.http_status == 409


@pytest.mark.parametrize("change", [
    {"kind": "frames_moved"},
    {"extra": 1},
    {"seq": "three"},
    {"indices": {"a": 1}},
    {"frames": [{"frame_id": 1, "version": 1, "hash": H1}]},
])
def test_event_schema_rejects(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Event.model_validate(event_data(**change))


def test_events_are_frozen() -> None:
    event = Event.model_validate(event_data())
    with pytest.raises(ValidationError):
        event.seq = 4


# -- commands -----------------------------------------------------------------------------

COMMAND: TypeAdapter[Any] = TypeAdapter(Command)


def test_commands_dispatch_on_op() -> None:
    assert isinstance(COMMAND.validate_python({"op": "insert", "room": "demo",
                                               "hashes": [H1]}), InsertFrames)
    replace = COMMAND.validate_python({"op": "replace", "room": "demo", "indices": [0],
                                       "hashes": [H2], "base_versions": [1]})
    assert isinstance(replace, ReplaceFrames) and replace.author == "anonymous"
    delete = COMMAND.validate_python({"op": "delete", "room": "demo", "indices": [2, 0]})
    assert isinstance(delete, DeleteFrames)
    with pytest.raises(ValidationError):
        COMMAND.validate_python({"op": "move", "room": "demo"})


@pytest.mark.parametrize("kwargs,problem", [
    ({"hashes": []}, "at least 1"),
    ({"hashes": ["A" * 64]}, "sha256"),
    ({"hashes": ["a" * 63]}, "sha256"),
    ({"hashes": [H1, "zz"]}, "sha256"),
    ({"hashes": [H1], "at": -1}, "greater than or equal"),
    ({"hashes": [H1], "room": "a/b"}, "room name"),
    ({"hashes": [H1], "room": ".."}, "room name"),
    ({"hashes": [H1], "room": ""}, "room name"),
    ({"hashes": [H1], "idempotency_key": "short"}, "at least 8"),
    ({"hashes": [H1], "idempotency_key": "has space here"}, "pattern"),
    ({"hashes": [H1], "color": "red"}, "xtra"),
])
def test_insert_rejects(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        InsertFrames.model_validate({"room": "demo", **kwargs})


@pytest.mark.parametrize("model,kwargs", [
    (ReplaceFrames, {"indices": [-1], "hashes": [H1]}),
    (ReplaceFrames, {"indices": [], "hashes": []}),
    (ReplaceFrames, {"indices": [0], "hashes": ["nothex"]}),
    (DeleteFrames, {"indices": [0, -2]}),
    (DeleteFrames, {"indices": []}),
    (DeleteFrames, {"indices": [0], "room": "x{y}"}),
])
def test_replace_and_delete_reject(model: type[Any], kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate({"room": "demo", **kwargs})


# -- names --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["demo", "run-1.2_b", "A", "0", "a" * 64, "x.y.z"])
def test_room_names_accepted(name: str) -> None:
    assert check_room_name(name) == name


@pytest.mark.parametrize("name", ["", "a/b", "/demo", "..", "a..b", "{demo}", "de{mo",
                                  "my room", " demo", "a" * 65, "a" * 300, ".hidden",
                                  "-x", "_x", "demo\n", "dämo", "a:b", "a\\b", "a\0"])
def test_room_names_rejected(name: str) -> None:
    with pytest.raises(InvalidName):
        check_room_name(name)


@pytest.mark.parametrize("key", ["numbers", "positions", "cell", "pbc", "info.name",
                                 "calc.energy", "arrays.momenta", "info.x-1", "info._y",
                                 "calc." + "a" * 64])
def test_key_names_accepted(key: str) -> None:
    assert check_key_name(key) == key


@pytest.mark.parametrize("key", ["", "energy", "info", "info.", "info.a.b", "info.a/b",
                                 "arrays.-x", "calc." + "a" * 65, "positions ", "Positions",
                                 "info.x\n", "positions\n", "other.x", "../positions",
                                 "info.x@f4", "positions.shape", "_hash"])
def test_key_names_rejected(key: str) -> None:
    with pytest.raises(InvalidName, match="not allowed"):
        check_key_name(key)


# -- Redis keys ---------------------------------------------------------------------------

def room_key_functions() -> list[tuple[str, Callable[..., Any]]]:
    return [(name, fn) for name, fn in inspect.getmembers(keys, inspect.isfunction)
            if fn.__module__ == keys.__name__ and not name.startswith("_")
            and next(iter(inspect.signature(fn).parameters), None) == "room"]


def call_for(fn: Callable[..., Any], room: str) -> list[str]:
    extra = {"content_hash": H1, "key": "idem-key-1", "author": "alice {x}"}
    params = list(inspect.signature(fn).parameters)[1:]
    out = fn(room, *(extra[p] for p in params))
    return out if isinstance(out, list) else [out]


def test_every_room_key_carries_the_hash_tag_once() -> None:
    functions = room_key_functions()
    assert {"events", "meta", "order", "frames", "slots", "blob", "applied",
            "storage_lease", "room_keys"} <= {name for name, _ in functions}
    for name, fn in functions:
        for room in ("demo", "run-1.2_b"):
            for key in call_for(fn, room):
                assert key.count("{" + room + "}") == 1, (name, key)
                assert key.count("{") == 1 and key.count("}") == 1, (name, key)
                assert key.index("{") < key.index("}")


def test_room_keys_differ_between_rooms_and_kinds() -> None:
    seen: dict[str, str] = {}
    for name, fn in room_key_functions():
        if name == "room_keys":
            continue
        for room in ("a", "ab", "b"):
            for key in call_for(fn, room):
                assert key not in seen, (key, seen.get(key), name)
                seen[key] = name
    assert keys.blob("a", H1).startswith(keys.blob_prefix("a"))
    assert keys.room_keys("a") == [keys.events("a"), keys.meta("a"), keys.order("a"),
                                   keys.frames("a"), keys.slots("a"), keys.locks("a"),
                                   keys.lock_frames("a"), keys.lock_expiry("a")]
    assert keys.undo_stack("a", "bob") != keys.undo_stack("a", "alice")
    assert keys.undo_stack("a", "bob") != keys.redo_stack("a", "bob")


def test_cross_room_keys_have_no_hash_tag() -> None:
    for key in (keys.ROOMS, keys.NOTIFY):
        assert key.startswith("trajhub:") and "{" not in key
