"""Every Redis key name trajhub uses, in one place.

Every key that belongs to a room carries the hash tag ``{room}`` so that one room's
keys share a Redis Cluster slot and every Lua script touches a single slot. Room
names are validated (see ``trajhub.shared.names``) and never contain braces.
Cross-room keys start with ``trajhub:`` and are only touched outside scripts, except
the storage replica registry, whose own script names that one key only.
"""

from __future__ import annotations

import hashlib

PREFIX = "trajhub"

# -- cross-room (never in a script with a room key) ---------------------------------------
ROOMS = f"{PREFIX}:rooms"
"""SET of every room name that has ever been committed to."""
NOTIFY = f"{PREFIX}:notify"
"""STREAM of ``{room: name}`` entries: a room has new events (non-atomic hint)."""
NOTIFY_MAXLEN = 10_000
BUS = f"{PREFIX}:bus"
"""PUB/SUB channel: small room messages (lock_changed, room_frame, presenter_changed)
every gateway relays to its own sockets. At most once, like every broadcast."""
STORAGE_REPLICAS = f"{PREFIX}:storage:replicas"
"""ZSET of live storage replicas: consumer name -> heartbeat expiry (ms, Redis clock).
Each replica prefers the rooms that rendezvous hashing over this set gives it."""

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
    """HASH written by the snapshotter (every field only moves forward): ``seq`` it has
    seen; ``snapshot_seq``, its latest snapshot in the history store; ``archived_seq``,
    events ``1..archived_seq`` are archived as segments; ``trimmed_seq``, the stream
    holds no event at or below it."""
    return f"{_tag(room)}:snapshotter"


def storage_lease(room: str) -> str:
    """STRING: the storage consumer that currently owns the room (SET NX PX)."""
    return f"{_tag(room)}:lease:storage"


def forks(room: str) -> str:
    """HASH fork room name -> the seq of this room it was forked at. Written by the
    gateway before the fork's own commit (so it may name a fork that failed): slots of
    those states are pinned against compaction."""
    return f"{_tag(room)}:forks"


def compaction(room: str) -> str:
    """HASH written by slot compaction (fields only move forward): ``below``, frame data
    of states before that seq may be gone (reads say 410); ``slots_dropped``, ``time``."""
    return f"{_tag(room)}:compaction"


def locks(room: str) -> str:
    """HASH lock token -> the lock's JSON record (author, fence, target, expires_at...)."""
    return f"{_tag(room)}:locks"


def lock_frames(room: str) -> str:
    """HASH frame id (or ``room`` for a whole-room lock) -> token of the lock on it."""
    return f"{_tag(room)}:lockfids"


def fence(room: str) -> str:
    """STRING counter: the last fencing number handed out with a lock (INCR)."""
    return f"{_tag(room)}:fence"


def lock_expiry(room: str) -> str:
    """ZSET lock token -> expiry (ms since the epoch); expired locks are purged lazily."""
    return f"{_tag(room)}:lockexp"


def presenter(room: str) -> str:
    """HASH: the presenter token's ``token``, ``author``, ``session``, ``expires_at``."""
    return f"{_tag(room)}:presenter"


def step(room: str) -> str:
    """HASH: the room's current step: ``frame``, ``by``, ``step_seq``, ``time``."""
    return f"{_tag(room)}:step"


def _author_tag(author: str) -> str:
    # Authors are free text: hash them so that key names stay short and brace-free.
    return hashlib.sha256(author.encode()).hexdigest()[:24]


def undo_stack(room: str, author: str) -> str:
    """LIST of the author's undoable seqs, newest first."""
    return f"{_tag(room)}:undo:{_author_tag(author)}"


def redo_stack(room: str, author: str) -> str:
    """LIST of the author's redoable (undo) seqs, newest first."""
    return f"{_tag(room)}:redo:{_author_tag(author)}"


def room_keys(room: str) -> list[str]:
    """The fixed keys a commit script touches, in the order the scripts expect."""
    return [events(room), meta(room), order(room), frames(room), slots(room),
            locks(room), lock_frames(room), lock_expiry(room)]
