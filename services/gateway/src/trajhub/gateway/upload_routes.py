"""``POST /api/v1/rooms/{room}/upload``: a trajectory file in any format ASE reads.

The body is the file's bytes. ASE parses it in a worker thread (never on the event
loop); each ``Atoms`` becomes a frame through ``trajhub.shared.atoms.atoms_to_frame``
(the Python client's conversion), and the frames are committed in chunks through the
same stage-and-commit path as ``POST .../frames``. Progress goes to the room's sockets
on every gateway as ``upload_progress`` (over the bus).

The file is refused as a whole (422, nothing stored) when it cannot be read or a frame
cannot be converted; a refusal while committing (423, 503, ...) answers how many frames
were ``stored`` before it. Every chunk is its own commit, so an upload is not atomic:
another writer's frames may land between two chunks.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from trajhub.control import ControlUnavailable
from trajhub.gateway.body import check_declared_size, content_type, read_body
from trajhub.gateway.errors import ApiError, NotStarted
from trajhub.gateway.runtime import Gateway
from trajhub.gateway.writes import (
    build_command,
    check_room,
    lock_fields,
    stage_and_commit,
)
from trajhub.shared.atoms import atoms_to_frame, unstorable_info
from trajhub.shared.codec import frame_to_bytes
from trajhub.shared.events import CommitResult, InsertFrames
from trajhub.shared.frames import FrameError
from trajhub.shared.hashing import validated_frame_hash

router = APIRouter()

UPLOAD_EVENT = "upload_progress"
CHUNK_FRAMES = 64
CHUNK_BYTES = 8 * 2**20
"""A chunk is one commit: at most this many frames and (past its first frame) bytes."""
MAX_KEY_LENGTH = 128
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_\-.:]{8,128}$")
UPLOAD_ID = re.compile(r"^[A-Za-z0-9_\-.:]{1,128}$")
UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.+-]")
RETRY_AFTER_S = "2"

OptStr = Annotated[str | None, Query()]
IdemKey = Annotated[str | None, Header(alias="Idempotency-Key")]
Author = Annotated[str | None, Header(alias="X-Trajhub-Author")]
LockToken = Annotated[str | None, Header(alias="X-Trajhub-Lock")]
LockFence = Annotated[str | None, Header(alias="X-Trajhub-Fence")]


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


# -- the file: name, format, parsing (thread) ----------------------------------------------
@dataclass
class ParsedFile:
    """The file's frames as content hashes plus canonical blob bytes."""

    hashes: list[str] = field(default_factory=list)
    blobs: list[bytes] = field(default_factory=list)
    dropped_info: dict[str, str] = field(default_factory=dict)
    """``atoms.info`` entries that cannot be stored (name -> reason), left out."""


def safe_name(filename: str | None) -> str:
    """The file's base name with only harmless characters (it names a temporary file,
    whose extension ASE also uses to decompress ``.gz``/``.bz2``/``.xz``)."""
    base = re.split(r"[/\\]", filename or "")[-1]
    return UNSAFE_NAME_CHARS.sub("_", base).lstrip(".")[-200:] or "upload"


def load_ase() -> None:
    """Import ASE's readers (in a thread: the first import takes about a second).
    Only uploads of files need ASE (and with it SciPy, ~65 MB), so the gateway imports
    it on the first one, not at start."""
    import ase.io  # noqa: F401


def pick_format(filename: str | None, fmt: str | None) -> str:
    """ASE's format name: ``fmt`` if given, else guessed from the file name (422 if
    neither gives a format ASE can read)."""
    from ase.io.formats import UnknownFileTypeError, filetype, ioformats

    if fmt is None:
        if not filename:
            raise ApiError(422, "give filename= (its extension names the format) or format=")
        try:
            fmt = filetype(safe_name(filename), read=False)
        except UnknownFileTypeError as exc:
            raise ApiError(422, f"cannot tell the format of {filename!r} from its name "
                                f"({exc}); pass format=") from None
        where = f"guessed from the name {filename!r}"
    else:
        where = "given as format="
    io_format = ioformats.get(fmt)
    if io_format is None:
        raise ApiError(422, f"unknown file format {fmt!r} ({where}); pass format= with one "
                            f"of ASE's format names")
    if not io_format.can_read:
        raise ApiError(422, f"ASE cannot read the format {fmt!r} ({where})")
    return fmt


def read_images(body: bytes | bytearray, name: str, fmt: str) -> list[Any]:
    """``ase.io.read(..., index=":")`` of the bytes, from a temporary file: every ASE
    reader takes a path (not all take a file object, nor compressed data)."""
    import ase.io

    with tempfile.TemporaryDirectory(prefix="trajhub-upload-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(body)
        try:
            images = ase.io.read(path, index=":", format=fmt)
        except Exception as exc:  # every reader fails in its own way
            raise ApiError(422, f"cannot read {name!r} as {fmt}: "
                                f"{type(exc).__name__}: {exc}") from None
    if not isinstance(images, list):
        images = [images]
    if not images:
        raise ApiError(422, f"{name!r} holds no frames (read as {fmt})")
    return images


def convert_images(images: list[Any]) -> ParsedFile:
    out = ParsedFile()
    for number, atoms in enumerate(images):
        for key, reason in unstorable_info(atoms).items():
            out.dropped_info.setdefault(key, reason)
            atoms.info.pop(key, None)
        try:
            frame = atoms_to_frame(atoms)
        except (FrameError, ValueError, TypeError) as exc:
            raise ApiError(422, f"frame {number}: {exc}") from None
        out.hashes.append(validated_frame_hash(frame))
        out.blobs.append(frame_to_bytes(frame))
    return out


def parse_file(body: bytes | bytearray, name: str, fmt: str) -> ParsedFile:
    """Read and convert the whole file (CPU work: run in a thread)."""
    return convert_images(read_images(body, name, fmt))


# -- chunks -------------------------------------------------------------------------------
def chunk_bounds(blobs: list[bytes]) -> list[tuple[int, int]]:
    """``[start, stop)`` of each chunk: up to CHUNK_FRAMES frames and CHUNK_BYTES bytes
    (a single larger frame is a chunk of its own)."""
    bounds: list[tuple[int, int]] = []
    start, size = 0, 0
    for i, blob in enumerate(blobs):
        if i > start and (i - start >= CHUNK_FRAMES or size + len(blob) > CHUNK_BYTES):
            bounds.append((start, i))
            start, size = i, 0
        size += len(blob)
    bounds.append((start, len(blobs)))
    return bounds


def chunk_key(key: str | None, number: int) -> str | None:
    """Chunk ``number``'s Idempotency-Key, derived from the request's (a retry of the
    upload derives the same keys, so committed chunks answer their first result)."""
    if key is None:
        return None
    suffix = f".u{number}"
    if len(key) + len(suffix) > MAX_KEY_LENGTH:
        key = hashlib.sha256(key.encode()).hexdigest()
    return key + suffix


def check_idempotency_key(key: str | None) -> None:
    if key is not None and not IDEMPOTENCY_KEY.match(key):
        raise ApiError(422, "Idempotency-Key must be 8-128 characters of A-Z a-z 0-9 _ - . :")


def pick_upload_id(upload_id: str | None) -> str:
    if upload_id is None:
        return uuid.uuid4().hex
    if not UPLOAD_ID.match(upload_id):
        raise ApiError(422, "upload_id must be 1-128 characters of A-Z a-z 0-9 _ - . :")
    return upload_id


# -- progress -----------------------------------------------------------------------------
class Progress:
    """``upload_progress`` messages for one upload, to the room's sockets on every
    gateway (best effort, like every broadcast: the HTTP answer is what counts)."""

    def __init__(self, gw: Gateway, room: str, upload_id: str) -> None:
        self._gw = gw
        self.room = room
        self.upload_id = upload_id
        self.done = 0
        self.total = 0

    async def emit(self, phase: str, done: int, total: int, message: str | None = None) -> None:
        self.done, self.total = done, total
        data: dict[str, Any] = {"room": self.room, "upload_id": self.upload_id,
                                "phase": phase, "done": done, "total": total}
        if message is not None:
            data["message"] = message
        await self._gw.bus.publish(self.room, UPLOAD_EVENT, data)

    async def failed(self, message: str) -> None:
        await self.emit("error", self.done, self.total, message)


# -- the route ----------------------------------------------------------------------------
def refuse_multipart(request: Request) -> None:
    """The gateway does not install python-multipart: the body is the file itself."""
    if content_type(request) == "multipart/form-data":
        raise ApiError(415, "multipart/form-data is not accepted; send the file's bytes as the "
                            "body (Content-Type: application/octet-stream) with ?filename=")


async def receive_file(gw: Gateway, request: Request) -> bytearray:
    limit = gw.settings.max_upload_bytes
    check_declared_size(request, limit)
    body = await read_body(request, limit)
    if not body:
        raise ApiError(422, "the file is empty")
    return body


async def commit_chunks(gw: Gateway, room: str, parsed: ParsedFile, progress: Progress,
                        at: int | None, fields: dict[str, Any],
                        idempotency_key: str | None) -> list[CommitResult]:
    """Commit every chunk in order; a refusal raises with the frames ``stored`` so far."""
    results: list[CommitResult] = []
    stored, total = 0, len(parsed.hashes)
    await progress.emit("storing", 0, total)
    for number, (start, stop) in enumerate(chunk_bounds(parsed.blobs)):
        hashes, blobs = parsed.hashes[start:stop], parsed.blobs[start:stop]
        try:
            await gw.stager.check_budget(sum(len(b) for b in blobs))
            command = build_command(InsertFrames, room=room,
                                    at=None if at is None else at + stored, hashes=hashes,
                                    idempotency_key=chunk_key(idempotency_key, number),
                                    **fields)
            results.append(await stage_and_commit(gw.stager, gw.control, command, hashes,
                                                  blobs))
        except ApiError as exc:
            raise ApiError(exc.status, exc.detail, headers=exc.headers,
                           extra={**exc.extra, "stored": stored}) from None
        except (RedisError, OSError, ControlUnavailable, NotStarted) as exc:
            raise ApiError(503, f"a backend is unavailable: {exc}; retry later",
                           headers={"Retry-After": RETRY_AFTER_S},
                           extra={"stored": stored}) from None
        stored = stop
        await progress.emit("storing", stored, total)
    return results


@router.post("/api/v1/rooms/{room}/upload", status_code=201)
async def upload_file(room: str, request: Request, filename: OptStr = None,
                      fmt: Annotated[str | None, Query(alias="format")] = None,
                      at: Annotated[int | None, Query(ge=0)] = None,
                      upload_id: OptStr = None, idempotency_key: IdemKey = None,
                      author: Author = None, lock: LockToken = None,
                      fence: LockFence = None) -> JSONResponse:
    gw = gateway(request)
    check_room(room)
    refuse_multipart(request)
    fields = {"author": author or None, **lock_fields(lock, fence)}
    check_idempotency_key(idempotency_key)
    uid = pick_upload_id(upload_id)
    await asyncio.to_thread(load_ase)
    fmt = pick_format(filename, fmt)
    body = await receive_file(gw, request)
    progress = Progress(gw, room, uid)
    try:
        await progress.emit("parsing", 0, len(body))
        parsed = await asyncio.to_thread(parse_file, body, safe_name(filename), fmt)
        del body
        with gw.writing():
            results = await commit_chunks(gw, room, parsed, progress, at, fields,
                                          idempotency_key)
    except ApiError as exc:
        await progress.failed(exc.detail)
        exc.extra["upload_id"] = uid
        raise
    except Exception as exc:
        await progress.failed(f"internal error: {type(exc).__name__}")
        raise
    n = len(parsed.hashes)
    await progress.emit("done", n, n)
    first, last = results[0].event, results[-1].event
    assert first is not None and last is not None
    return JSONResponse({"room": room, "upload_id": uid, "n_frames": n,
                         "first_index": first.indices[0], "seq": last.seq,
                         "room_frames": last.n_frames, "format": fmt,
                         "dropped_info": parsed.dropped_info}, status_code=201)
