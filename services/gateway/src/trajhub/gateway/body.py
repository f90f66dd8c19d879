"""Reading request bodies: size cap before reading, content types, msgpack/JSON decoding."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from trajhub.gateway.errors import ApiError
from trajhub.shared.buffers import take_free, take_resized, unzeroed_bytearray
from trajhub.shared.codec import CodecError, unpackb

MSGPACK_TYPES = frozenset({"application/msgpack", "application/x-msgpack"})
MSGPACK = "application/msgpack"
PREALLOCATE_MAX = 64 * 2**20


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def body_size(request: Request) -> int | None:
    """The declared Content-Length, or None if absent or unreadable."""
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isdigit() else None


def check_declared_size(request: Request, limit: int) -> int | None:
    """Refuse (413) a body whose Content-Length exceeds ``limit``, before reading it;
    returns the declared size (None without a Content-Length)."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    try:
        size = int(declared)
    except ValueError:
        raise ApiError(400, f"invalid Content-Length {declared[:40]!r}") from None
    if size > limit:
        raise ApiError(413, f"request body of {size} bytes exceeds the limit of {limit} bytes")
    return size


class BodyBuffers:
    """Body buffers (of requests, or of answers), reused from one request to the next
    (event loop only).

    A new buffer the size of a bulk request is fresh memory, which the kernel maps in
    page by page: allocating and zeroing 16 MB took ~20 ms of a staging request here,
    more than hashing it. A buffer is handed out again only once nothing refers to it:
    no memoryview or array into it (the resize probe fails while one exists) and no
    other reference; until then it stays where it is and a new one is allocated.
    """

    def __init__(self, keep: int = 2, min_bytes: int = 2**20,
                 max_bytes: int = PREALLOCATE_MAX) -> None:
        self.keep = keep
        self.min_bytes = min_bytes
        self.max_bytes = max_bytes
        self._free: list[bytearray] = []
        self._zeros = memoryview(bytes(max_bytes // 2))  # calloc'd: never touched

    def take(self, size: int) -> bytearray:
        """A buffer of ``size`` bytes (contents undefined)."""
        buf = take_resized(self._free, size, self._zeros) if size >= self.min_bytes else None
        return unzeroed_bytearray(size) if buf is None else buf

    def take_at_least(self, size: int) -> bytearray:
        """A buffer of ``size`` bytes or more (contents undefined): the smallest free
        one that holds ``size``, as it is (never resized, so never reallocated), else a
        new one of ``size`` bytes. For a caller that uses only the first ``size`` bytes:
        a read's answers come in two sizes (full ones and the last), and a buffer kept
        from a full one then serves a last one too."""
        buf = take_free(self._free, size) if size >= self.min_bytes else None
        return unzeroed_bytearray(size) if buf is None else buf

    def give(self, buf: bytearray) -> None:
        """Keep ``buf`` for a later request, once nothing refers to it any more. The
        ``keep`` largest are kept (the most recent of equal ones): an upload's last,
        shorter body would otherwise push out a full-sized buffer, and the next upload's
        full bodies would each take new memory while the short one sat unused."""
        if (self.min_bytes <= buf.__alloc__() <= self.max_bytes
                and all(b is not buf for b in self._free)):
            self._free.append(buf)
            self._free.sort(key=bytearray.__alloc__)  # (stable: equal ones stay in order)
            del self._free[:-self.keep]


async def read_body(request: Request, limit: int,
                    buffers: BodyBuffers | None = None) -> bytearray:
    """The body, read as a stream and cut off (413) as soon as it passes ``limit``.

    With a Content-Length the buffer is allocated once (or taken from ``buffers``),
    when the first chunk arrives, and filled in place (no regrowth copies); at most
    PREALLOCATE_MAX bytes of it, so a client that declares much and sends little cannot
    make us hold much. Past that (or without a Content-Length) the buffer grows as the
    bytes come.
    """
    declared = check_declared_size(request, limit) or 0
    buf = bytearray()
    filled = 0
    async for chunk in request.stream():
        end = filled + len(chunk)
        if end > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
        if not filled and declared > len(chunk):
            size = min(declared, PREALLOCATE_MAX)
            buf = unzeroed_bytearray(size) if buffers is None else buffers.take(size)
        if end <= len(buf):
            buf[filled:end] = chunk
        else:
            del buf[filled:]
            buf += chunk
        filled = end
    del buf[filled:]  # shorter than declared (the server normally refuses that itself)
    return buf


def require_msgpack(request: Request) -> None:
    kind = content_type(request)
    if kind and kind not in MSGPACK_TYPES:
        raise ApiError(415, f"expected Content-Type {MSGPACK} (or application/x-msgpack), "
                            f"got {kind[:80]!r}")


def decode_msgpack_map(body: bytes | bytearray, limit: int) -> dict[str, Any]:
    """The body as a msgpack map (400 if it is not msgpack, 422 if not a map)."""
    if not body:
        raise ApiError(400, "request body is empty; expected a msgpack map")
    try:
        obj = unpackb(body, max_bytes=limit)
    except CodecError as exc:
        raise ApiError(400, str(exc)) from None
    if not isinstance(obj, dict):
        raise ApiError(422, f"request body must be a msgpack map, got {type(obj).__name__}")
    return obj


def decode_optional_map(body: bytes | bytearray, kind: str, limit: int) -> dict[str, Any]:
    """An optional JSON or msgpack map (DELETE's ``{"base_versions": [...]}``)."""
    if not body.strip():
        return {}
    if kind == "application/json":
        try:
            obj = json.loads(body)
        except ValueError as exc:
            raise ApiError(400, f"malformed JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ApiError(422, "request body must be a JSON object")
        return obj
    if kind and kind not in MSGPACK_TYPES:
        raise ApiError(415, f"expected application/json or {MSGPACK}, got {kind[:80]!r}")
    return decode_msgpack_map(body, limit)


JSON = "application/json"
JSON_BODY_LIMIT = 8 * 2**20
"""A lock target may list up to 100,000 frames."""


async def read_json_object(request: Request, *, required: bool = False) -> dict[str, Any]:
    """A JSON object body (``{}`` when the body is empty and not ``required``): 415 for
    another content type, 400 for malformed JSON, 422 for anything but an object."""
    body = await read_body(request, JSON_BODY_LIMIT)
    if not body.strip():
        if required:
            raise ApiError(400, "request body is empty; expected a JSON object")
        return {}
    kind = content_type(request)
    if kind and kind != JSON:
        raise ApiError(415, f"expected Content-Type {JSON}, got {kind[:80]!r}")
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ApiError(422, f"request body must be a JSON object, got {type(obj).__name__}")
    return obj


def only_fields(message: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    """The body's fields, refusing (422) any not in ``allowed``."""
    unknown = sorted(str(k) for k in message if k not in allowed)
    if unknown:
        raise ApiError(422, f"unknown field(s) {', '.join(unknown)}; this request takes "
                            f"{', '.join(allowed) or 'no fields'}")
    return message
