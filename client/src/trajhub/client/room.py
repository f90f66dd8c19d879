"""``Room``: a trajhub room as a Python list of ``ase.Atoms``.

Every operation is one or more HTTP requests; nothing is cached, so ``len(vis)`` and
``vis[i]`` always show the server's current state (including other people's edits).
Indices follow Python list semantics: negative indices and slices are resolved
against the current length (one ``GET`` of the room), so between that lookup and the
write someone else's edit may shift them; each request on its own is atomic.

Events: ``append``/``insert``/``vis[i] = x`` are one event each. ``extend`` and other
bulk writes are sent in chunks (at most ``chunk_bytes`` and ``chunk_frames`` per
request), one event per chunk. Assigning to a simple slice with a different number of
frames (``vis[1:3] = [a]``) is a delete event followed by an insert event.

Reads of many frames are split into requests of about ``read_bytes`` each (at most
``read_frames`` frames), sized from the frames already received, so that memory stays
bounded on both sides however large a frame is.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableSequence, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, SupportsIndex, TypeVar, overload

import ase
import numpy as np
from tqdm.auto import tqdm  # type: ignore[import-untyped]

from trajhub.client.convert import atoms_to_frame, frame_to_atoms
from trajhub.client.errors import FrameIndexError
from trajhub.client.http import Transport
from trajhub.shared.codec import frame_to_bytes, packb
from trajhub.shared.events import MAX_FRAMES_PER_COMMAND
from trajhub.shared.frames import Frame, validate_frame
from trajhub.shared.names import check_key_name, check_room_name

FrameLike = ase.Atoms | Mapping[str, Any]
Indices = Sequence[SupportsIndex] | np.ndarray[Any, Any]
T = TypeVar("T")

CHUNK_BYTES = 16 * 1024 * 1024
CHUNK_FRAMES = 1000
READ_BYTES = 16 * 1024 * 1024
READ_FRAMES = 5000
# The first read request, before any frame size is known: small, so that even frames
# of 100k atoms (~5 MB each) keep it near read_bytes; it costs small frames one request.
READ_FIRST_FRAMES = 8
# Explicit indices travel in the query string; keep URLs well under the 8 KiB that
# proxies and servers commonly accept (a comma is sent as %2C).
MAX_INDICES_CHARS = 6000
PROGRESS_MIN_FRAMES = 100
_MANY = (slice, np.ndarray, Sequence)  # as opposed to one index (int, numpy integer)


@dataclass(frozen=True)
class _Chunk:
    body: bytes
    offset: int  # position of the chunk's first frame in the whole upload
    count: int


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


def _body(frames: list[bytes], indices: Sequence[int] | None) -> bytes:
    """``{["indices": [...],] "frames": [...]}`` from frames packed one by one."""
    parts = [bytes([0x80 | (1 if indices is None else 2)])]
    if indices is not None:
        parts += [packb("indices"), packb(list(indices))]
    parts += [packb("frames"), _array_header(len(frames)), *frames]
    return b"".join(parts)


def _as_list(values: Iterable[FrameLike]) -> list[FrameLike]:
    if isinstance(values, ase.Atoms | Mapping):
        raise TypeError("assign an iterable of frames (e.g. [atoms]) to a slice, "
                        "not a single frame")
    try:
        return list(values)
    except TypeError:
        raise TypeError("can only assign an iterable of frames to a slice") from None


def _writable(frame: Frame) -> Frame:
    # Decoded arrays are mostly read-only views of the answer: copy those, once.
    return {key: arr if arr.flags.writeable else arr.copy() for key, arr in frame.items()}


def _frames_nbytes(frames: list[Frame]) -> int:
    return sum(arr.nbytes for frame in frames for arr in frame.values())


def _fit_query(indices: list[int]) -> list[int]:
    """The longest prefix of ``indices`` (at least one) that fits MAX_INDICES_CHARS."""
    chars = 0
    for n, i in enumerate(indices):
        chars += len(str(i)) + 3
        if chars > MAX_INDICES_CHARS and n:
            return indices[:n]
    return indices


class Room(MutableSequence[ase.Atoms]):
    """A room on a trajhub server, used like a list of ``ase.Atoms``.

    ``Room(url, room, author=None, timeout=60.0)``. ``author`` is recorded in the
    room's events (the server's default when None); ``timeout`` is per HTTP request,
    in seconds (None waits forever).
    """

    def __init__(self, url: str, room: str, *, author: str | None = None,
                 timeout: float | None = 60.0, chunk_bytes: int = CHUNK_BYTES,
                 chunk_frames: int = CHUNK_FRAMES, overlap: bool = True,
                 transport: Transport | None = None, read_bytes: int = READ_BYTES,
                 read_frames: int = READ_FRAMES) -> None:
        self.url = url.rstrip("/")
        self.room = check_room_name(room)
        self.chunk_bytes = chunk_bytes
        self.chunk_frames = chunk_frames
        self.read_bytes = read_bytes
        self.read_frames = read_frames
        self.overlap = overlap  # encode the next chunk while the current one uploads
        self.transport = transport or Transport(self.url, timeout=timeout, author=author)

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
            return self._read(self._resolve_many(index), convert=frame_to_atoms)
        i = self._resolve(index)
        return self._read([i], convert=frame_to_atoms)[0]

    def get(self, indices: SupportsIndex | slice | Indices | None = None,
            keys: Sequence[str] | None = None) -> list[Frame]:
        """Frames as dicts of (writable) numpy arrays, optionally only ``keys``.

        ``indices``: a list of indices (any order, repeats and negatives allowed), a
        slice, a single index (a list of one frame), or None for all frames. A frame
        that lacks one of ``keys`` comes back without it.
        """
        if keys is not None:
            keys = [check_key_name(k) for k in keys]
        if indices is None:
            wanted: range | list[int] = range(len(self))
        elif isinstance(indices, _MANY):
            wanted = self._resolve_many(indices)
        else:
            wanted = [self._resolve(indices)]
        return self._read(wanted, keys, convert=_writable)

    def __iter__(self) -> Iterator[ase.Atoms]:
        for frames in self._read_chunks(range(len(self))):
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

    def _read(self, indices: range | list[int], keys: Sequence[str] | None = None, *,
              convert: Callable[[Frame], T]) -> list[T]:
        """The frames at ``indices``, each passed through ``convert`` (which copies the
        arrays) as its answer arrives, so that only one answer is held at a time."""
        out: list[T] = []
        for part in self._read_chunks(indices, keys):
            out.extend(convert(f) for f in part)
            del part  # before the next answer arrives
        return out

    def _read_chunks(self, indices: range | list[int], keys: Sequence[str] | None = None
                     ) -> Iterator[list[Frame]]:
        """The frames at ``indices``, one list per request.

        The first request asks for READ_FIRST_FRAMES; each next one for as many frames
        as fit ``read_bytes`` at the size of the frames of the previous answer (so a
        trajectory whose frames grow is followed), at most ``read_frames``.
        """
        pos, size = 0, max(1, min(READ_FIRST_FRAMES, self.read_frames))
        while pos < len(indices):
            part = indices[pos:pos + size]
            if isinstance(part, range) and part.step > 0:
                # stop = last + 1 keeps it non-negative and exact for the server.
                answer = self.transport.get_frames(self.room, start=part.start,
                                                   stop=part[-1] + 1, step=part.step,
                                                   keys=keys)
            else:
                part = _fit_query(list(part))
                answer = self.transport.get_frames(self.room, indices=part, keys=keys)
            frames: list[Frame] = answer["frames"]
            yield frames
            pos += len(part)
            per_frame = max(_frames_nbytes(frames) / max(len(frames), 1), 1.0)
            size = max(1, min(self.read_frames, int(self.read_bytes / per_frame)))
            del answer, frames  # before the next answer arrives

    def _chunks(self, values: Iterable[FrameLike],
                indices: Sequence[int] | None = None) -> Iterator[_Chunk]:
        """Request bodies of at most chunk_bytes / chunk_frames each.

        Each frame is packed to bytes as soon as it is taken from ``values``: that is
        its snapshot, so a generator that yields the same Atoms again and again (an MD
        loop) uploads every state, not the last one.
        """
        batch: list[bytes] = []
        size = offset = 0

        def flush() -> _Chunk:
            part = None if indices is None else indices[offset:offset + len(batch)]
            return _Chunk(_body(batch, part), offset, len(batch))

        for value in values:
            packed = frame_to_bytes(_to_frame(value))
            if batch and (size + len(packed) > self.chunk_bytes
                          or len(batch) >= self.chunk_frames):
                yield flush()
                offset, batch, size = offset + len(batch), [], 0
            batch.append(packed)
            size += len(packed)
        if batch:
            yield flush()

    def _send(self, chunks: Iterator[_Chunk], send: Callable[[_Chunk], object]) -> Iterator[_Chunk]:
        """Send every chunk; yield each once it is committed.

        With ``overlap``, one background thread sends chunk k while this thread builds
        chunk k+1 (the caller's iterable is always consumed in the caller's thread).
        """
        if not self.overlap:
            for chunk in chunks:
                send(chunk)
                yield chunk
            return
        with ThreadPoolExecutor(1, thread_name_prefix="trajhub-upload") as pool:
            pending: tuple[Future[object], _Chunk] | None = None
            for chunk in chunks:
                if pending is not None:
                    pending[0].result()
                    yield pending[1]
                pending = (pool.submit(send, chunk), chunk)
            if pending is not None:
                pending[0].result()
                yield pending[1]

    def _insert_many(self, values: Iterable[FrameLike], *, at: int | None,
                     progress: bool | None) -> None:
        total = len(values) if isinstance(values, Sequence) else None
        show_now = progress is True or (
            progress is None and total is not None and total > PROGRESS_MIN_FRAMES)
        bar: Any = tqdm(total=total, unit="frame", desc=self.room) if show_now else None

        def send(chunk: _Chunk) -> object:
            return self.transport.post_frames(
                self.room, chunk.body, at=None if at is None else at + chunk.offset)

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

    def _replace(self, indices: list[int], values: Sequence[FrameLike]) -> None:
        def send(chunk: _Chunk) -> object:
            return self.transport.put_frames(self.room, chunk.body)

        for _ in self._send(self._chunks(values, indices), send):
            pass

    def _delete(self, indices: range | list[int]) -> None:
        """Delete ascending ``indices`` (a range goes as start/stop/step, one event per
        MAX_FRAMES_PER_COMMAND). Chunks go from the end so that the indices of the
        chunks still to come do not shift."""
        size = MAX_FRAMES_PER_COMMAND if isinstance(indices, range) else self.chunk_frames
        for start in reversed(range(0, len(indices), size)):
            part = indices[start:start + size]
            if isinstance(part, range):
                self.transport.delete_frames(self.room, start=part.start, stop=part[-1] + 1,
                                             step=part.step)
            else:
                self.transport.delete_frames(self.room, list(part))

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
