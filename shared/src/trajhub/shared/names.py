"""Validation of user-chosen names (rooms, frame keys)."""

from __future__ import annotations

import re
from functools import lru_cache

ROOM_NAME_MAX = 64
_ROOM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_KEY_RE = re.compile(
    r"^(numbers|positions|cell|pbc|(arrays|info|calc)\.[A-Za-z0-9_][A-Za-z0-9_\-]{0,63})$"
)


class InvalidName(ValueError):
    """A room or key name that trajhub refuses; the message says why."""


def check_room_name(name: str) -> str:
    if not name:
        raise InvalidName("room name is empty")
    if len(name) > ROOM_NAME_MAX:
        raise InvalidName(f"room name is {len(name)} characters long; at most {ROOM_NAME_MAX}")
    if ".." in name:
        raise InvalidName("room name may not contain '..'")
    if not _ROOM_RE.fullmatch(name):
        raise InvalidName(
            "room name may contain only letters, digits, '_', '-' and '.', "
            "and must start with a letter or digit"
        )
    return name


@lru_cache(maxsize=4096)  # the same few keys recur in every frame of an upload
def check_key_name(key: str) -> str:
    if not _KEY_RE.fullmatch(key):
        raise InvalidName(
            f"frame key {key[:80]!r} is not allowed: use numbers, positions, cell, pbc, "
            "or arrays.<name>, info.<name>, calc.<name> (name: letters, digits, '_', '-')"
        )
    return key
