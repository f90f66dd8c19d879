"""``Room``: a trajhub room as a Python list of ``ase.Atoms``.

Every operation is one or more HTTP requests; nothing is cached, so ``len(vis)`` and
``vis[i]`` always show the server's current state (including other people's edits).
Indices follow Python list semantics: negative indices and slices are resolved
against the current length (one ``GET`` of the room), so between that lookup and the
write someone else's edit may shift them; each request on its own is atomic. A read of
every frame (``get()``, ``vis[:]``, iterating) skips that lookup: its first answer
says how many frames there are.

Events: ``append``/``insert``/``vis[i] = x`` are one event each. ``extend`` and other
bulk writes are sent in chunks (at most ``chunk_bytes`` and ``chunk_frames`` per
request), one event per chunk. Assigning to a simple slice with a different number of
frames (``vis[1:3] = [a]``) is a delete event followed by an insert event.

Reads of many frames are split into requests of about ``read_bytes`` each (twice that
for frames of 1 MiB or more; at most ``read_frames`` frames), sized from the frames
already received, so that memory stays bounded on both sides however large a frame is.
The arrays ``get`` returns are writable and the caller's own; those of a large answer
are views of the buffer it was received into (and may not be aligned to their itemsize).

Working with others in the same room:

- Base versions. The Room remembers, from its reads (and its own edits), which frame (by
  stable id) and which version it saw at each index (the last ``seen_limit`` indices).
  ``vis[i] = atoms``, ``del vis[i]`` and ``patch`` of frames it has seen go by frame id
  with the version seen: someone's insert before the frame never redirects the edit to
  another frame, and an edit of a frame someone changed since raises ``ConflictError``
  (nothing is written). Frames it has not seen are addressed by index, unconditionally
  (``patch`` reads their version first). Its own inserts and deletes forget the indices
  they shift.
- Locks. ``with vis.lock():`` / ``with vis.lock(frames=[3, 4]):`` (see ``Lock``): inside,
  every write of this Room presents the lock. A write refused because someone else holds
  a lock (HTTP 423) is retried with backoff for ``lock_wait`` seconds, then raises
  ``LockedError`` naming the holder; retries reuse the request's Idempotency-Key, so a
  chunk is never written twice or skipped.
- ``patch``, ``undo``/``redo``, ``history``, ``locks`` and the playback ``step``.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableSequence, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from typing import Any, SupportsIndex, TypeVar, overload

import ase
import numpy as np
from tqdm.auto import tqdm  # type: ignore[import-untyped]

from trajhub.client.convert import atoms_to_frame, frame_to_atoms
from trajhub.client.errors import BadRequest, FrameIndexError, RoomNotFound
from trajhub.client.http import Transport, WritableFrames, new_idempotency_key
from trajhub.client.locks import Lock, wait_while_locked
from trajhub.client.versions import SEEN_LIMIT, SeenVersions
from trajhub.shared.atoms_encoder import AtomsEncoder
from trajhub.shared.codec import encode_frame, packb
from trajhub.shared.events import MAX_FRAMES_PER_COMMAND
from trajhub.shared.frame_encoder import FrameEncoder
from trajhub.shared.frames import Frame, FrameError, canonical_array, validate_frame
from trajhub.shared.names import InvalidName, check_key_name, check_room_name

FrameLike = ase.Atoms | Mapping[str, Any]
Indices = Sequence[SupportsIndex] | np.ndarray[Any, Any]
T = TypeVar("T")

CHUNK_BYTES = 16 * 1024 * 1024
CHUNK_FRAMES = 1000
SEND_PART_BYTES = 256 * 1024
READ_BYTES = 16 * 1024 * 1024
READ_FRAMES = 5000
# The first read request, before any frame size is known: small, so that even frames
# of 100k atoms (~5 MB each) keep it near read_bytes; it costs small frames one request.
READ_FIRST_FRAMES = 8
# An upload of more than one chunk stages this many chunks ahead (each on a connection
# of its own) of the one committing: the server receives, hashes and writes the next
# chunks while it commits the one before.
STAGE_AHEAD = 2
# Read requests in flight while the caller works on an answer (see _read_chunks), so
# that the server prepares answers while this process reads and decodes another
# (read-all of 1,000 x 1,000 and 10,000 x 100: -15-30% with two against one; 100 x
# 100,000: -10-25% since the server reuses its read blocks' memory). Three: once the
# client's decoding had got cheaper, a third in flight took a further 8-13% off all
# three shapes (medians of 20-40 alternating reads), where it had made no difference.
READ_AHEAD = 3
# Frames of this size or more are asked for LARGE_READ_FACTOR times read_bytes at a time:
# fewer, larger requests (100 x 100,000 atoms: 0.67-0.73 s against 0.77-0.92 s in
# requests of 16 MiB). Smaller frames gain nothing from it, and the server's answer
# buffers for them would grow as much.
READ_LARGE_FRAME_BYTES = 2**20
LARGE_READ_FACTOR = 2
# Explicit indices travel in the query string; keep URLs well under the 8 KiB that
# proxies and servers commonly accept (a comma is sent as %2C).
MAX_INDICES_CHARS = 6000
PROGRESS_MIN_FRAMES = 100
NOT_STAGED = "was not staged or has expired"  # the server's refusal of a commit by hash
HISTORY_PAGE = 1000  # the server's largest page
_MANY = (slice, np.ndarray, Sequence)  # as opposed to one index (int, numpy integer)


@dataclass(frozen=True)
class _Chunk:
    frames: list[bytes]  # each packed on its own
    offset: int  # position of the chunk's first frame in the whole upload
    head: Mapping[str, Any] | None = None  # replace: how its frames are addressed
    last: bool = True  # no chunk follows

    @property
    def count(self) -> int:
        return len(self.frames)

    def body(self) -> list[bytes]:
        """``{**head, "frames": [...]}``: stages and commits the frames at once."""
        return _body(self.frames, self.head)

    def staging_body(self) -> list[bytes]:
        """``{"frames": [...]}`` for ``POST .../blobs``."""
        return _body(self.frames, None)

    def staged_body(self, hashes: list[str]) -> bytes:
        """``{**head, "hashes": [...]}``: commits the frames staged as ``hashes``."""
        return packb({**(self.head or {}), "hashes": hashes})


def _to_frame(value: object) -> Frame:
    if isinstance(value, ase.Atoms):
        return atoms_to_frame(value)
    if isinstance(value, Mapping):
        return validate_frame(value)
    raise TypeError(f"a frame must be ase.Atoms or a dict of arrays, got {type(value).__name__}")


def _array_header(n: int) -> bytes:
    """The msgpack header of an array of ``n`` items."""
    if n < 16:
        return bytes([0x90 | n])
    if n < 2**16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _body(frames: list[bytes], head: Mapping[str, Any] | None) -> list[bytes]:
    """``{**head, "frames": [...]}`` from frames packed one by one, as the parts the
    request sends one after the other: a large frame is a part of its own (joining
    them would copy the whole body once more), runs of small ones are joined (one
    send each would cost more than the copy)."""
    head = head or {}
    start = [bytes([0x80 | (len(head) + 1)])]
    for key, value in head.items():
        start += [packb(key), packb(value)]
    start += [packb("frames"), _array_header(len(frames))]
    parts, small = [b"".join(start)], []
    for frame in frames:
        if len(frame) < SEND_PART_BYTES:
            small.append(frame)
            continue
        if small:
            parts.append(b"".join(small))
            small = []
        parts.append(frame)
    if small:
        parts.append(b"".join(small))
    return parts


def _patch_frame(changes: Mapping[str, Any]) -> Frame:
    """The keys of a patch in canonical form (ValueError naming a bad key)."""
    if not changes:
        raise ValueError("patch() needs at least one key to change, e.g. positions=...")
    out: Frame = {}
    for key, value in changes.items():
        try:
            out[check_key_name(key)] = canonical_array(value, key)
        except (InvalidName, FrameError) as exc:
            raise ValueError(f"patch key {key!r}: {exc}") from None
    return out


def _as_list(values: Iterable[FrameLike]) -> list[FrameLike]:
    if isinstance(values, ase.Atoms | Mapping):
        raise TypeError("assign an iterable of frames (e.g. [atoms]) to a slice, "
                        "not a single frame")
    try:
        return list(values)
    except TypeError:
        raise TypeError("can only assign an iterable of frames to a slice") from None


_WRITEABLE = operator.attrgetter("flags.writeable")
_NBYTES = operator.attrgetter("nbytes")


def _writable(frame: Frame) -> Frame:
    # Decoded arrays are mostly read-only views of the answer: copy those, once. A frame
    # decoded a run at a time is writable already, and its dict is the caller's own.
    if all(map(_WRITEABLE, frame.values())):
        return frame
    return {key: arr if arr.flags.writeable else arr.copy() for key, arr in frame.items()}


def _mean_frame_nbytes(frames: list[Frame], sample: int = 64) -> float:
    """The frames' mean size, from at most ``sample`` of them spread over the list (a
    read of thousands of small frames need not look at every array of each)."""
    if not frames:
        return 0.0
    picked = frames[::max(1, len(frames) // sample)]
    total: int = sum(map(_NBYTES, chain.from_iterable(map(dict.values, picked))))
    return total / len(picked)


def _fit_query(indices: list[int]) -> list[int]:
    """The longest prefix of ``indices`` (at least one) that fits MAX_INDICES_CHARS."""
    chars = 0
    for n, i in enumerate(indices):
        chars += len(str(i)) + 3
        if chars > MAX_INDICES_CHARS and n:
            return indices[:n]
    return indices


class _Every:
    """The ``indices`` of a read of every frame (see ``Room._read_chunks``)."""


EVERY = _Every()


def _is_whole(index: slice | Indices) -> bool:
    """Whether ``index`` is ``[:]`` (or ``[0::1]``): every frame."""
    return (isinstance(index, slice) and index.start in (None, 0) and index.stop is None
            and index.step in (None, 1))


def _selected(frames: Room | RoomAt,
              indices: SupportsIndex | slice | Indices | None) -> range | list[int]:
    """The non-negative indices ``get(indices)`` reads (None: every frame)."""
    if indices is None:
        return range(len(frames))
    if isinstance(indices, _MANY):
        return frames._resolve_many(indices)
    return [frames._resolve(indices)]


class Room(MutableSequence[ase.Atoms]):
    """A room on a trajhub server, used like a list of ``ase.Atoms``.

    ``Room(url, room, author=None, timeout=60.0, lock_wait=30.0)``. ``author`` is
    recorded in the room's events and names this Room in locks (the server's default
    when None); ``timeout`` is per HTTP request, in seconds (None waits forever);
    ``lock_wait`` is how long a write refused by someone else's lock is retried before
    ``LockedError``; ``seen_limit`` bounds the remembered base versions.
    """

    def __init__(self, url: str, room: str, *, author: str | None = None,
                 timeout: float | None = 60.0, chunk_bytes: int = CHUNK_BYTES,
                 chunk_frames: int = CHUNK_FRAMES, overlap: bool = True,
                 transport: Transport | None = None, read_bytes: int = READ_BYTES,
                 read_frames: int = READ_FRAMES, lock_wait: float = 30.0,
                 seen_limit: int = SEEN_LIMIT) -> None:
        self.url = url.rstrip("/")
        self.room = check_room_name(room)
        self.chunk_bytes = chunk_bytes
        self.chunk_frames = chunk_frames
        self.read_bytes = read_bytes
        self.read_frames = read_frames
        self.overlap = overlap  # encode the next chunk while the current one uploads
        self.lock_wait = lock_wait
        self.transport = transport or Transport(self.url, timeout=timeout, author=author)
        self.seen = SeenVersions(seen_limit)
        self._locks: list[Lock] = []  # held by `with`, innermost last

    # -- reading ---------------------------------------------------------------------

    def __len__(self) -> int:
        info = self.transport.room_info(self.room)
        return 0 if info is None else int(info["n_frames"])

    # np.ndarray has __index__, hence the overlap.
    @overload
    def __getitem__(self, index: SupportsIndex) -> ase.Atoms: ...  # type: ignore[overload-overlap]
    @overload
    def __getitem__(self, index: slice | Indices) -> list[ase.Atoms]: ...

    def __getitem__(self, index: SupportsIndex | slice | Indices) -> Any:
        if isinstance(index, _MANY):
            wanted = EVERY if _is_whole(index) else self._resolve_many(index)
            return self._read(wanted, convert=frame_to_atoms)
        i = self._resolve(index)
        return self._read([i], convert=frame_to_atoms)[0]

    def get(self, indices: SupportsIndex | slice | Indices | None = None,
            keys: Sequence[str] | None = None) -> list[Frame]:
        """Frames as dicts of (writable) numpy arrays, optionally only ``keys``.

        ``indices``: a list of indices (any order, repeats and negatives allowed), a
        slice, a single index (a list of one frame), or None for all frames. A frame
        that lacks one of ``keys`` comes back without it.
        """
        keys = None if keys is None else [check_key_name(k) for k in keys]
        wanted = EVERY if indices is None else _selected(self, indices)
        return self._read(wanted, keys, convert=_writable)

    def __iter__(self) -> Iterator[ase.Atoms]:
        for frames in self._read_chunks(EVERY):
            yield from (frame_to_atoms(f) for f in frames)
            del frames  # before the next answer arrives

    def __repr__(self) -> str:
        try:
            n: int | str = len(self)
        except Exception as exc:  # a repr must not raise; show why the count is unknown
            n = f"? ({type(exc).__name__})"
        return f"Room(url={self.url!r}, room={self.room!r}, n_frames={n})"

    # -- writing ---------------------------------------------------------------------

    def append(self, value: FrameLike) -> None:
        self._insert_many([value], at=None, progress=False)

    def extend(self, values: Iterable[FrameLike], *, progress: bool | None = None) -> None:
        """Append frames, in chunks; a progress bar shows for more than 100 frames or
        more than one chunk when ``progress`` is None, always/never for True/False."""
        if isinstance(values, ase.Atoms):
            raise TypeError("extend() takes an iterable of frames; use append(atoms) for one")
        if values is self:
            values = list(values)
        self._insert_many(values, at=None, progress=progress)

    def insert(self, index: SupportsIndex, value: FrameLike) -> None:
        """Insert before ``index``, like ``list.insert`` (beyond the end appends)."""
        i, n = operator.index(index), len(self)
        i = max(i + n, 0) if i < 0 else i
        self._insert_many([value], at=None if i >= n else i, progress=False)

    @overload
    def __setitem__(self, index: SupportsIndex, value: FrameLike) -> None: ...
    @overload
    def __setitem__(self, index: slice | Indices, value: Iterable[FrameLike]) -> None: ...

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, slice):
            self._set_slice(index, _as_list(value))
        elif isinstance(index, np.ndarray | Sequence):
            indices, values = self._resolve_many(index), _as_list(value)
            if len(indices) != len(values):
                raise ValueError(f"attempt to assign {len(values)} frames to "
                                 f"{len(indices)} indices")
            self._replace(list(indices), values)
        else:
            self._replace([self._resolve(index)], [value])

    def __delitem__(self, index: SupportsIndex | slice | Indices) -> None:
        if isinstance(index, _MANY):
            indices = self._resolve_many(index)
            if isinstance(indices, range):
                self._delete(indices if indices.step > 0 else indices[::-1])
            else:
                self._delete(sorted(set(indices)))
        else:
            self._delete([self._resolve(index)])

    def clear(self) -> None:
        del self[:]

    def reverse(self) -> None:
        frames = self.get()
        self._replace(list(range(len(frames))), frames[::-1])

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Room:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- collaboration ---------------------------------------------------------------

    def lock(self, frames: SupportsIndex | Indices | None = None, *, start: int | None = None,
             stop: int | None = None, ttl: float = 30.0, wait: float = 30.0,
             message: str | None = None) -> Lock:
        """A lock on the whole room, or on ``frames`` (indices) or ``start <= i < stop``;
        taken by ``with`` (``with vis.lock(frames=[3, 4], message="relaxing"): ...``).

        Inside the ``with`` block every write of this Room presents the lock, and the
        lock is renewed in the background every ``ttl / 3`` seconds; leaving the block
        (also by an exception) releases it. ``ttl`` (0.1..600 s) is how long it outlives
        a crashed client. If someone else holds a conflicting lock, taking it is retried
        for ``wait`` seconds, then ``LockedError`` names the holder. Frames this Room has
        seen are locked by frame id (the frames it saw, wherever they moved since).
        Other people's inserts are blocked only by a room lock. Locks do not nest: a
        room lock conflicts with any other lock, even this Room's own.
        """
        if frames is not None and (start is not None or stop is not None):
            raise TypeError("lock() takes frames or start/stop, not both")
        if frames is None and start is None and stop is None:
            return Lock(self, "room", ttl=ttl, wait=wait, message=message)
        if frames is not None:
            if isinstance(frames, SupportsIndex) and not isinstance(frames, np.ndarray):
                frames = [frames]
            indices = list(self._resolve_many(frames))
            target: dict[str, Any] = {"frames": indices}
        else:
            indices = list(self._resolve_many(slice(start, stop)))
            target = {"start": indices[0], "stop": indices[-1] + 1} if indices else {}
        if not indices:
            raise ValueError("lock() got no frames to lock")
        seen = self.seen.lookup_all(sorted(set(indices)))
        if seen is not None:
            target = {"frame_ids": seen[0]}
        return Lock(self, target, ttl=ttl, wait=wait, message=message)

    def locks(self) -> list[dict[str, Any]]:
        """The room's live locks: ``{"author", "fence", "expires_at" (ms since the epoch),
        "message", "target"}`` each (never their tokens)."""
        answer = self.transport.list_locks(self.room)
        return list(answer.get("locks", []))

    def patch(self, index: SupportsIndex, frame: Mapping[str, Any] | None = None, /,
              **keys: Any) -> int:
        """Change only some keys of frame ``index``; returns the frame's new version.

        Keys are frame keys, given as a dict and/or as keywords:
        ``vis.patch(3, positions=new_positions)``,
        ``vis.patch(3, {"arrays.forces": f, "info.energy": -1.5})``. The other keys of
        the frame stay. The edit is made against the version of the frame this Room last
        saw (read first if it has not seen it): if someone changed the frame since,
        ``ConflictError`` and nothing is written.
        """
        i = self._resolve(index)
        changes = _patch_frame({**(frame or {}), **keys})
        seen = self.seen.get(i)
        if seen is None:
            for _ in self._read_chunks([i], keys=["numbers"]):
                pass
            seen = self.seen.get(i)
            if seen is None:
                raise FrameIndexError(f"frame {i} of room {self.room!r}: the server did not "
                                      "say its version")
        frame_id, version = seen
        body = packb({"frame": encode_frame(changes), "base_version": version,
                      "frame_id": frame_id})
        key = new_idempotency_key()
        answer = self._committing(lambda headers: self.transport.patch_frame(
            self.room, i, body, headers=headers, idempotency_key=key))
        self._remember_edit([i], {"frame_ids": [frame_id]}, answer)
        return int(answer["versions"][0])

    def undo(self) -> dict[str, Any]:
        """Revert this author's latest edit not yet undone (a new event); returns the
        server's answer (``seq``, ``reverts``, ``change``, ``indices``, ``frame_ids``,
        ...). ``NothingToUndo`` if there is none; ``ConflictError`` naming the later edit
        if someone changed those frames since."""
        answer = self._committing(lambda headers: self.transport.undo(self.room,
                                                                      headers=headers))
        self.seen.clear()
        return answer

    def redo(self) -> dict[str, Any]:
        """Revert this author's latest undo (see ``undo``); ``NothingToRedo`` if none."""
        answer = self._committing(lambda headers: self.transport.redo(self.room,
                                                                      headers=headers))
        self.seen.clear()
        return answer

    def history(self, since: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """The room's events after seq ``since``, oldest first, at most ``limit`` (all if
        None): ``{"seq", "kind", "change", "author", "time", "edit_id", "indices",
        "frame_ids", "versions", "base_versions", "keys", "reverts"}`` each."""
        events: list[dict[str, Any]] = []
        while limit is None or len(events) < limit:
            size = HISTORY_PAGE if limit is None else min(HISTORY_PAGE, limit - len(events))
            page = self.transport.history(self.room, since=since, limit=size)
            got = page.get("events", [])
            events.extend(got)
            if not got or page.get("next") is None:
                break
            since = int(got[-1]["seq"])
        return events

    def fork(self, new_name: str, at_seq: SupportsIndex | None = None) -> Room:
        """A new room ``new_name`` holding this room's frames as of seq ``at_seq`` (now
        if None), without copying frame data; from then on each room has its own
        history. ``ConflictError`` if ``new_name`` exists, ``HistoryGone`` if that seq
        is beyond retention."""
        name = check_room_name(new_name)
        seq = None if at_seq is None else operator.index(at_seq)
        self.transport.fork_room(name, self.room, seq)
        return Room(self.url, name, transport=self.transport, chunk_bytes=self.chunk_bytes,
                    chunk_frames=self.chunk_frames, overlap=self.overlap,
                    read_bytes=self.read_bytes, read_frames=self.read_frames,
                    lock_wait=self.lock_wait, seen_limit=self.seen.limit)

    def at(self, seq: SupportsIndex) -> RoomAt:
        """A read-only view of the room as it was at seq ``seq`` (after that event; 0 is
        the empty room): a sequence of ``ase.Atoms`` with ``len``, indexing, slicing,
        iteration and ``get(indices, keys)``. ``HistoryGone`` if the seq is beyond the
        room's retention, ``BadRequest`` if it is after the room's latest event."""
        return RoomAt(self, operator.index(seq))

    @property
    def step(self) -> int | None:
        """The room's current step (the frame everyone's viewer shows), None if unset.

        Setting it (``vis.step = 10``, negative indices allowed) raises ``LockedError``
        naming the presenter while someone presents (drives the playback)."""
        return self.transport.get_step(self.room).get("frame")

    @step.setter
    def step(self, frame: SupportsIndex) -> None:
        self.transport.set_step(self.room, self._resolve(frame))

    def _push_lock(self, lock: Lock) -> None:
        if lock.room is not self:
            raise ValueError("a Lock is used with the Room that made it")
        if lock not in self._locks:
            self._locks.append(lock)

    def _pop_lock(self, lock: Lock) -> None:
        if lock in self._locks:
            self._locks.remove(lock)

    # -- index resolution ------------------------------------------------------------

    def _resolve(self, index: SupportsIndex) -> int:
        """A non-negative index; negative ones are resolved against the current length.

        Non-negative indices go to the server unchecked: it answers IndexError (404)
        when they are out of range, which saves a round trip.
        """
        i = operator.index(index)
        if i >= 0:
            return i
        n = len(self)
        if i + n < 0:
            raise FrameIndexError(f"frame index {i} out of range: room {self.room!r} "
                                  f"has {n} frames")
        return i + n

    def _resolve_many(self, index: slice | Indices) -> range | list[int]:
        if isinstance(index, slice):
            return range(*index.indices(len(self)))
        if isinstance(index, str | bytes) or not isinstance(index, Sequence | np.ndarray):
            raise TypeError(f"frame indices must be integers, slices or sequences of "
                            f"integers, not {type(index).__name__}")
        indices = [operator.index(i) for i in index]
        if any(i < 0 for i in indices):
            n = len(self)
            bad = [i for i in indices if i < -n]
            if bad:
                raise FrameIndexError(f"frame index {bad[0]} out of range: room "
                                      f"{self.room!r} has {n} frames")
            indices = [i + n if i < 0 else i for i in indices]
        return indices

    # -- requests --------------------------------------------------------------------

    def _read(self, indices: range | list[int] | _Every, keys: Sequence[str] | None = None,
              *, convert: Callable[[Frame], T], at_seq: int | None = None) -> list[T]:
        """The frames at ``indices`` (EVERY: all the room's), each passed through
        ``convert`` (which copies the arrays) as its answer arrives, so that only a few
        answers are held at a time."""
        out: list[T] = []
        for part in self._read_chunks(indices, keys, at_seq=at_seq):
            if convert is _writable and isinstance(part, WritableFrames):
                out += part  # type: ignore[arg-type]  # (T is Frame for _writable)
            else:
                out.extend(convert(f) for f in part)
            del part  # before the next answer arrives
        return out

    def _read_chunks(self, indices: range | list[int] | _Every,
                     keys: Sequence[str] | None = None, *,
                     at_seq: int | None = None) -> Iterator[list[Frame]]:
        """The frames at ``indices`` (as of seq ``at_seq`` if given), one list per request.
        EVERY reads all the room's frames (none if there is no such room), as many as
        its first answer says it has: no request for the count first.

        The first request asks for READ_FIRST_FRAMES; each next one for as many frames
        as fit ``read_bytes`` (twice that for large frames, see READ_LARGE_FRAME_BYTES)
        at the size of the frames of the latest answer (so a trajectory whose frames grow
        is followed), at most ``read_frames``. From the second request on, READ_AHEAD
        requests are in flight (each answer is read and decoded in a thread) while the
        caller works on the one
        before: the server prepares an answer and its bytes travel while this process
        works on another.
        """
        first_size = max(1, min(READ_FIRST_FRAMES, self.read_frames))
        if isinstance(indices, _Every):
            try:
                answer = self.transport.get_frames(self.room, start=0, stop=first_size,
                                                   keys=keys, at_seq=at_seq,
                                                   not_found=RoomNotFound)
            except RoomNotFound:
                return
            indices, pos = range(int(answer["n_frames"])), len(answer["indices"])
        elif not indices:
            return
        else:
            first = self._part(indices, 0, first_size)
            answer = self._fetch(first, keys, at_seq)
            pos = len(first)
        if pos >= len(indices):
            yield self._received(answer, at_seq)
            return
        pending: deque[Future[dict[str, Any]]] = deque()
        with ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="trajhub-read") as pool:
            try:
                while True:
                    size = self._read_size(answer["frames"])
                    while len(pending) < READ_AHEAD and pos < len(indices):
                        part = self._part(indices, pos, size)
                        pos += len(part)
                        pending.append(pool.submit(self._fetch, part, keys, at_seq))
                    yield self._received(answer, at_seq)
                    del answer  # before the next answer arrives
                    if not pending:
                        return
                    answer = pending.popleft().result()
            finally:
                for future in pending:  # the caller stopped early or a request failed
                    future.cancel()

    @staticmethod
    def _part(indices: range | list[int], pos: int, size: int) -> range | list[int]:
        part = indices[pos:pos + size]
        if isinstance(part, range) and part.step > 0:
            return part
        return _fit_query(list(part))

    def _fetch(self, part: range | list[int], keys: Sequence[str] | None,
               at_seq: int | None) -> dict[str, Any]:
        if isinstance(part, range) and part.step > 0:
            # stop = last + 1 keeps it non-negative and exact for the server.
            return self.transport.get_frames(self.room, start=part.start,
                                             stop=part[-1] + 1, step=part.step,
                                             keys=keys, at_seq=at_seq)
        return self.transport.get_frames(self.room, indices=list(part), keys=keys,
                                         at_seq=at_seq)

    def _received(self, answer: dict[str, Any], at_seq: int | None) -> list[Frame]:
        if at_seq is None:  # past versions are no base for an edit
            self.seen.record(answer.get("indices", ()), answer.get("frame_ids", ()),
                             answer.get("versions", ()))
        frames: list[Frame] = answer["frames"]
        return frames

    def _read_size(self, frames: list[Frame]) -> int:
        """Frames per request: as many as fit read_bytes (LARGE_READ_FACTOR times that
        for large frames) at the size of ``frames``, at most read_frames."""
        per_frame = max(_mean_frame_nbytes(frames), 1.0)
        budget = self.read_bytes * (LARGE_READ_FACTOR if per_frame >= READ_LARGE_FRAME_BYTES
                                    else 1)
        return max(1, min(self.read_frames, int(budget / per_frame)))

    def _chunks(self, values: Iterable[FrameLike],
                address: Callable[[int, int], Mapping[str, Any]] | None = None
                ) -> Iterator[_Chunk]:
        """Request bodies of at most chunk_bytes / chunk_frames each; ``address(offset,
        count)`` gives the fields that say which frames a chunk replaces.

        Each frame is packed to bytes as soon as it is taken from ``values``: that is
        its snapshot, so a generator that yields the same Atoms again and again (an MD
        loop) uploads every state, not the last one.
        """
        batch: list[bytes] = []
        size = offset = 0
        encode, encode_atoms = FrameEncoder(), AtomsEncoder()

        def flush(last: bool) -> _Chunk:
            head = None if address is None else address(offset, len(batch))
            return _Chunk(batch, offset, head, last)

        for value in values:
            packed = (encode_atoms(value) if isinstance(value, ase.Atoms)
                      else encode(_to_frame(value)))
            if batch and (size + len(packed) > self.chunk_bytes
                          or len(batch) >= self.chunk_frames):
                yield flush(last=False)
                offset, batch, size = offset + len(batch), [], 0
            batch.append(packed)
            size += len(packed)
        if batch:
            yield flush(last=True)

    def _send(self, chunks: Iterator[_Chunk], send: Callable[[_Chunk, list[str] | None], object]
              ) -> Iterator[_Chunk]:
        """Send every chunk; yield each once it is committed, in order.

        ``send(chunk, None)`` stages and commits a chunk in one request, ``send(chunk,
        hashes)`` commits it once staged. Without ``overlap``, or for a single chunk,
        every chunk is one request. Otherwise the upload is pipelined: each chunk is
        staged first (``POST .../blobs``, STAGE_AHEAD at a time), then committed by its
        hashes, in order, by one committing thread, while this thread packs the next
        chunks (the caller's iterable is always consumed in the caller's thread). A
        failed chunk fails the upload: no chunk after it is committed.
        """
        first = next(chunks, None)
        if first is None:
            return
        if not self.overlap or first.last:
            for chunk in chain([first], chunks):
                send(chunk, None)
                yield chunk
            return
        with ThreadPoolExecutor(STAGE_AHEAD, thread_name_prefix="trajhub-stage") as stagers, \
                ThreadPoolExecutor(1, thread_name_prefix="trajhub-commit") as committer:
            pending: deque[tuple[_Chunk, Future[object]]] = deque()
            previous: Future[object] | None = None
            try:
                for chunk in chain([first], chunks):
                    staged = stagers.submit(self._stage, chunk)
                    previous = committer.submit(self._commit_staged, chunk, staged, previous,
                                                send)
                    pending.append((chunk, previous))
                    while len(pending) > STAGE_AHEAD:
                        done, committed = pending.popleft()
                        committed.result()
                        yield done
                while pending:
                    done, committed = pending.popleft()
                    committed.result()
                    yield done
            finally:
                for _, committed in pending:  # a chunk failed, or the caller stopped
                    committed.cancel()

    def _stage(self, chunk: _Chunk) -> list[str]:
        return self.transport.stage_frames(self.room, chunk.staging_body())

    def _commit_staged(self, chunk: _Chunk, staged: Future[list[str]],
                       previous: Future[object] | None,
                       send: Callable[[_Chunk, list[str] | None], object]) -> object:
        """Commit ``chunk`` once the one before it is committed (never after a failed
        one) and its frames are staged; staged again if they expired meanwhile."""
        if previous is not None:
            previous.result()
        try:
            return send(chunk, staged.result())
        except BadRequest as exc:
            if NOT_STAGED not in str(exc):
                raise
        return send(chunk, self._stage(chunk))

    def _insert_many(self, values: Iterable[FrameLike], *, at: int | None,
                     progress: bool | None) -> None:
        total = len(values) if isinstance(values, Sequence) else None
        show_now = progress is True or (
            progress is None and total is not None and total > PROGRESS_MIN_FRAMES)
        bar: Any = tqdm(total=total, unit="frame", desc=self.room) if show_now else None

        keys: dict[int, str] = {}

        def send(chunk: _Chunk, hashes: list[str] | None) -> object:
            # The same key for every retry of a chunk: never committed twice.
            key = keys.setdefault(chunk.offset, new_idempotency_key())
            body = chunk.body() if hashes is None else chunk.staged_body(hashes)
            return self._committing(lambda headers: self.transport.post_frames(
                self.room, body, at=None if at is None else at + chunk.offset,
                idempotency_key=key, headers=headers))

        if at is not None:
            self.seen.forget_from(at)
        try:
            for chunk in self._send(self._chunks(values), send):
                if bar is None and progress is None and chunk.offset > 0:
                    # more than one chunk: worth a bar after all
                    bar = tqdm(total=total, unit="frame", desc=self.room,
                               initial=chunk.offset)
                if bar is not None:
                    bar.update(chunk.count)
        finally:
            if bar is not None:
                bar.close()

    def _address(self, indices: Sequence[int]) -> dict[str, Any]:
        """Frame ids and the versions seen if every one of ``indices`` was seen, else the
        indices themselves (no base versions)."""
        seen = self.seen.lookup_all(indices)
        if seen is None:
            return {"indices": list(indices)}
        return {"frame_ids": seen[0], "base_versions": seen[1]}

    def _remember_edit(self, indices: Sequence[int], head: Mapping[str, Any] | None,
                       answer: Mapping[str, Any]) -> None:
        """After a replace or patch: the new versions of the frames at ``indices``."""
        fids, versions = answer.get("frame_ids", []), answer.get("versions", [])
        if head is not None and "frame_ids" in head:
            new = dict(zip(fids, versions, strict=False))
            if all(f in new for f in head["frame_ids"]):
                self.seen.record(indices, head["frame_ids"],
                                 [new[f] for f in head["frame_ids"]])
        else:
            self.seen.record(answer.get("indices", []), fids, versions)

    def _replace(self, indices: list[int], values: Sequence[FrameLike]) -> None:
        def address(offset: int, count: int) -> dict[str, Any]:
            return self._address(indices[offset:offset + count])

        keys: dict[int, str] = {}

        def send(chunk: _Chunk, hashes: list[str] | None) -> object:
            key = keys.setdefault(chunk.offset, new_idempotency_key())
            body = chunk.body() if hashes is None else chunk.staged_body(hashes)
            answer = self._committing(lambda headers: self.transport.put_frames(
                self.room, body, idempotency_key=key, headers=headers))
            self._remember_edit(indices[chunk.offset:chunk.offset + chunk.count],
                                chunk.head, answer)
            return answer

        for _ in self._send(self._chunks(values, address), send):
            pass

    def _delete(self, indices: range | list[int]) -> None:
        """Delete ascending ``indices`` (a range goes as start/stop/step, one event per
        MAX_FRAMES_PER_COMMAND; seen frames by id with base versions). Chunks go from
        the end so that the indices of the chunks still to come do not shift."""
        size = MAX_FRAMES_PER_COMMAND if isinstance(indices, range) else self.chunk_frames
        for start in reversed(range(0, len(indices), size)):
            part = indices[start:start + size]
            self._delete_part(part)
            self.seen.forget_from(part[0])

    def _delete_part(self, part: range | list[int]) -> None:
        selection: dict[str, Any] = {"idempotency_key": new_idempotency_key()}
        seen = self.seen.lookup_all(part)
        if seen is not None:
            selection["body"] = packb({"frame_ids": seen[0], "base_versions": seen[1]})
        elif isinstance(part, range):
            selection.update(start=part.start, stop=part[-1] + 1, step=part.step)
        else:
            selection["indices"] = list(part)
        self._committing(lambda headers: self.transport.delete_frames(
            self.room, headers=headers, **selection))

    def _committing(self, send: Callable[[Mapping[str, str]], T]) -> T:
        """``send(headers presenting our lock, if any)``; while someone else's lock
        refuses it (423), again with backoff for ``lock_wait`` seconds. A lock of ours
        that was lost raises LockedError before anything is sent."""
        def attempt() -> T:
            return send(self._locks[-1].headers() if self._locks else {})

        return wait_while_locked(attempt, self.lock_wait,
                                 f"could not write to room {self.room!r}")

    def _set_slice(self, index: slice, values: list[FrameLike]) -> None:
        n = len(self)
        target = range(*index.indices(n))
        if index.step not in (None, 1):
            if len(values) != len(target):
                raise ValueError(f"attempt to assign sequence of size {len(values)} to "
                                 f"extended slice of size {len(target)}")
            if values:
                self._replace(list(target), values)
            return
        if len(values) == len(target):
            if values:
                self._replace(list(target), values)
            return
        # A simple slice that changes the length: two events, delete then insert.
        if target:
            self._delete(target)
        if values:
            at = target.start if target.start < n - len(target) else None
            self._insert_many(values, at=at, progress=None)


class RoomAt(Sequence[ase.Atoms]):
    """A room pinned at one past seq (``Room.at(seq)``): read-only, never changes.

    The index at that seq is read once, when the view is made; frames are read as they
    are asked for (``GET .../frames?at_seq=``). Writing raises ``TypeError``.
    """

    def __init__(self, room: Room, seq: int) -> None:
        if seq < 0:
            raise ValueError(f"seq must be >= 0, not {seq}")
        self._room = room
        self.seq = seq
        index = room.transport.get_index(room.room, at_seq=seq)
        self.frame_ids: list[int] = list(index["frame_ids"])
        self.versions: list[int] = list(index["versions"])
        self.hashes: list[str] = list(index["hashes"])

    @property
    def room(self) -> str:
        return self._room.room

    def __len__(self) -> int:
        return len(self.frame_ids)

    @overload
    def __getitem__(self, index: SupportsIndex) -> ase.Atoms: ...  # type: ignore[overload-overlap]
    @overload
    def __getitem__(self, index: slice | Indices) -> list[ase.Atoms]: ...

    def __getitem__(self, index: SupportsIndex | slice | Indices) -> Any:
        if isinstance(index, _MANY):
            return self._room._read(self._resolve_many(index), convert=frame_to_atoms,
                                    at_seq=self.seq)
        return self._room._read([self._resolve(index)], convert=frame_to_atoms,
                                at_seq=self.seq)[0]

    def get(self, indices: SupportsIndex | slice | Indices | None = None,
            keys: Sequence[str] | None = None) -> list[Frame]:
        """Frames as dicts of (writable) numpy arrays, as ``Room.get``."""
        keys = None if keys is None else [check_key_name(k) for k in keys]
        wanted = _selected(self, indices)
        return self._room._read(wanted, keys, convert=_writable, at_seq=self.seq)

    def __iter__(self) -> Iterator[ase.Atoms]:
        for frames in self._room._read_chunks(range(len(self)), at_seq=self.seq):
            yield from (frame_to_atoms(f) for f in frames)
            del frames

    def __repr__(self) -> str:
        return f"RoomAt(room={self.room!r}, seq={self.seq}, n_frames={len(self)})"

    def _resolve(self, index: SupportsIndex) -> int:
        i, n = operator.index(index), len(self)
        if not -n <= i < n:
            raise FrameIndexError(f"frame index {i} out of range: room {self.room!r} had "
                                  f"{n} frames at seq {self.seq}")
        return i + n if i < 0 else i

    def _resolve_many(self, index: slice | Indices) -> range | list[int]:
        if isinstance(index, slice):
            return range(*index.indices(len(self)))
        if isinstance(index, str | bytes) or not isinstance(index, Sequence | np.ndarray):
            raise TypeError(f"frame indices must be integers, slices or sequences of "
                            f"integers, not {type(index).__name__}")
        return [self._resolve(i) for i in index]

    def _read_only(self, *args: object, **kwargs: object) -> None:
        raise TypeError(f"room {self.room!r} at seq {self.seq} is a read-only view of the "
                        f"past; write to the Room itself (e.g. vis[i] = atoms)")

    __setitem__ = __delitem__ = append = extend = insert = _read_only
    patch = clear = pop = remove = reverse = _read_only
