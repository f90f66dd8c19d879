"""Every Redis key name trajhub uses, in one place.

Every key that belongs to a room carries the hash tag ``{room}`` so that one room's
keys share a Redis Cluster slot and every Lua script touches a single slot. Room
names are validated (see ``trajhub.shared.names``) and never contain braces.
Cross-room keys start with ``trajhub:`` and are only touched outside scripts.
"""

from __future__ import annotations

PREFIX = "trajhub"

# -- cross-room (never touched by a script) ---------------------------------------------
ROOMS = f"{PREFIX}:rooms"
"""SET of every room name that has ever been committed to."""
NOTIFY = f"{PREFIX}:notify"
"""STREAM of ``{room: name}`` entries: a room has new events (non-atomic hint)."""
NOTIFY_MAXLEN = 10_000

# -- consumer groups on room event streams ------------------------------------------------
STORAGE_GROUP = "storage"
SNAPSHOTTER_GROUP = "snapshotter"
CONSUMER_GROUPS = (STORAGE_GROUP, SNAPSHOTTER_GROUP)
"""Created by the commit script at a room's first event (control/lua/commit.lua: GROUPS)."""


def _tag(room: str) -> str:
    return "{" + room + "}"


def events(room: str) -> str:
    """STREAM of the room's committed events; entry id is ``<seq>-0``."""
    return f"{_tag(room)}:events"


def meta(room: str) -> str:
    """HASH: ``seq`` (last event), ``next_fid``, ``next_slot``, ``created``."""
    return f"{_tag(room)}:meta"


def order(room: str) -> str:
    """LIST of frame ids in logical (trajectory) order."""
    return f"{_tag(room)}:order"


def frames(room: str) -> str:
    """HASH frame_id -> packed index entry ``version:hash:slot``."""
    return f"{_tag(room)}:frames"


def slots(room: str) -> str:
    """HASH content hash -> slot already assigned to that content in this room."""
    return f"{_tag(room)}:slots"


def blob(room: str, content_hash: str) -> str:
    """STRING: a staged frame (canonical msgpack bytes), TTL until committed."""
    return f"{_tag(room)}:blob:{content_hash}"


def blob_prefix(room: str) -> str:
    return f"{_tag(room)}:blob:"


def idempotency(room: str, key: str) -> str:
    """STRING: the JSON result of the first commit that used this idempotency key."""
    return f"{_tag(room)}:idem:{key}"


def applied(room: str) -> str:
    """HASH written by storage after each applied batch: ``seq``, ``slots``."""
    return f"{_tag(room)}:applied"


def snapshotter_state(room: str) -> str:
    """HASH written by the snapshotter: ``seq`` it has seen."""
    return f"{_tag(room)}:snapshotter"


def storage_lease(room: str) -> str:
    """STRING: the storage consumer that currently owns the room (SET NX PX)."""
    return f"{_tag(room)}:lease:storage"


def room_keys(room: str) -> list[str]:
    """The fixed keys a commit script touches, in the order the scripts expect."""
    return [events(room), meta(room), order(room), frames(room), slots(room)]
