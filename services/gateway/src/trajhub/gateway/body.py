"""Reading request bodies: size cap before reading, content types, msgpack/JSON decoding."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from trajhub.gateway.errors import ApiError
from trajhub.shared.codec import CodecError, unpackb

MSGPACK_TYPES = frozenset({"application/msgpack", "application/x-msgpack"})
MSGPACK = "application/msgpack"


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def check_declared_size(request: Request, limit: int) -> None:
    """Refuse (413) a body whose Content-Length exceeds ``limit``, before reading it."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise ApiError(400, f"invalid Content-Length {declared[:40]!r}") from None
    if size > limit:
        raise ApiError(413, f"request body of {size} bytes exceeds the limit of {limit} bytes")


async def read_body(request: Request, limit: int) -> bytearray:
    """The body, read as a stream and cut off (413) as soon as it passes ``limit``."""
    check_declared_size(request, limit)
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
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
