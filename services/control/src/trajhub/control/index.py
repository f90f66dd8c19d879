"""Read-only access to a room's live index, for the gateway."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import redis.asyncio as aioredis

from trajhub.control.scripts import read_index_script
from trajhub.shared import keys
from trajhub.shared.events import FrameEntry
from trajhub.shared.index import unpack_entry


class IndexOutOfRange(IndexError):
    """A requested index is not in the room's trajectory."""

    def __init__(self, index: int, n_frames: int, *, exists: bool = True) -> None:
        self.index = index
        self.n_frames = n_frames
        self.exists = exists
        super().__init__(f"index {index} out of range for {n_frames} frames")


@dataclass(frozen=True)
class IndexView:
    """The index of a room at one seq: ``entries[i]`` is the frame at ``indices[i]``."""

    seq: int
    n_frames: int
    exists: bool
    indices: list[int] = field(default_factory=list)
    entries: list[FrameEntry] = field(default_factory=list)


class RawIndex(NamedTuple):
    """The read script's answer: entries as ``fid,...`` and ``version:hash:slot,...``;
    ``created`` tells the room apart from an earlier one of its name; ``unchanged`` (no
    indices nor entries then) answers a read made ``if`` the room was still at a seq."""

    seq: int
    n_frames: int
    exists: bool
    indices: list[int]
    fids: bytes | str
    packed: bytes | str
    created: str = ""
    unchanged: bool = False


def _entries(fids: bytes, packed: bytes) -> list[FrameEntry]:
    if not fids:
        return []
    return [unpack_entry(int(fid), entry)
            for fid, entry in zip(fids.split(b","), packed.split(b","), strict=True)]


def _arg(value: int | None) -> str:
    return "" if value is None else str(int(value))


class IndexReader:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._script = redis.register_script(read_index_script())

    async def read(self, room: str, *, indices: list[int] | None = None,
                   start: int | None = 0, stop: int | None = None,
                   step: int | None = 1) -> IndexView:
        """Entries for ``indices`` (negative ones count from the end), else for the
        Python slice ``[start:stop:step]``; one atomic read."""
        raw = await self.read_raw(room, indices=indices, start=start, stop=stop, step=step)
        return IndexView(seq=raw.seq, n_frames=raw.n_frames, exists=raw.exists,
                         indices=raw.indices,
                         entries=_entries(_bytes(raw.fids), _bytes(raw.packed)))

    async def read_raw(self, room: str, *, indices: list[int] | None = None,
                       start: int | None = 0, stop: int | None = None,
                       step: int | None = 1, unless: tuple[int, str] | None = None
                       ) -> RawIndex:
        """``read`` with the entries left as the script's two flat strings, for callers
        that parse them their own way (``unless``: see ``script_call``)."""
        keys_, args = self.script_call(room, indices=indices, start=start, stop=stop,
                                       step=step, unless=unless)
        return self.answer(await self._script(keys=keys_, args=args), indices)

    @property
    def script(self) -> tuple[str, str]:
        """The read script's ``(sha1, source)``, for callers that send it themselves."""
        source = self._script.script
        return self._script.sha, source if isinstance(source, str) else bytes(source).decode()

    @staticmethod
    def script_call(room: str, *, indices: list[int] | None = None, start: int | None = 0,
                    stop: int | None = None, step: int | None = 1,
                    unless: tuple[int, str] | None = None) -> tuple[list[str], list[str]]:
        """The script's KEYS and ARGV for a read; with ``unless`` (seq, created), one
        that answers ``unchanged`` if the room is still at that seq."""
        if indices is not None:
            args = ["list", *(str(int(i)) for i in indices)]
        else:
            if step == 0:
                raise ValueError("slice step cannot be zero")
            args = ["slice", _arg(start), _arg(stop), _arg(1 if step is None else step)]
        if unless is not None:
            args = ["if", str(int(unless[0])), unless[1], *args]
        return [keys.meta(room), keys.order(room), keys.frames(room)], args

    @staticmethod
    def answer(reply: list[Any], indices: list[int] | None) -> RawIndex:
        """The script's reply as a RawIndex (IndexOutOfRange for a bad index)."""
        seq, n, exists, bad, first, stride, count, fids, packed, created = reply
        created = _text(created)
        if bad:
            raise IndexOutOfRange(int(bad), int(n), exists=bool(exists))
        if count < 0:
            return RawIndex(int(seq), int(n), bool(exists), [], "", "", created, True)
        if indices is not None:
            positions = [i + n if i < 0 else i for i in indices]
        else:
            positions = list(range(first, first + stride * count, stride))
        return RawIndex(int(seq), int(n), bool(exists), positions, fids, packed, created)

    async def list_rooms(self) -> list[tuple[str, int, int]]:
        """``(room, n_frames, seq)`` of every room, sorted by name."""
        names = sorted(_text(m) for m in await self.redis.smembers(keys.ROOMS))
        if not names:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.llen(keys.order(name))
                pipe.hget(keys.meta(name), "seq")
            replies = await pipe.execute()
        # A refused first commit still announces its room (control/control.py): a room
        # is listed once it has events.
        return [(name, int(replies[2 * i]), int(replies[2 * i + 1]))
                for i, name in enumerate(names) if replies[2 * i + 1] is not None]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value
