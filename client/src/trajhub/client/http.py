"""The client's HTTP transport: one keep-alive ``httpx.Client`` and the server's API.

Writes carry an ``Idempotency-Key`` made once per logical request and reused on every
retry, so a POST/PUT/DELETE whose answer was lost can be sent again without applying
twice. 503 (busy) is retried honouring ``Retry-After``; connection errors are retried
for requests that are safe to repeat; error statuses become the exceptions of
``trajhub.client.errors`` with the server's ``detail`` in the message.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from trajhub.client.errors import (
    BadRequest,
    ConflictError,
    FrameIndexError,
    PayloadTooLarge,
    RoomNotFound,
    ServerError,
    ServerUnavailable,
    TrajhubConnectionError,
    TrajhubError,
)
from trajhub.shared.codec import CodecError, decode_frame, unpackb

MSGPACK = "application/msgpack"
API = "/api/v1"


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def _csv(values: Sequence[int] | Sequence[str]) -> str:
    return ",".join(str(v) for v in values)


def _selection(indices: Sequence[int] | None, start: int | None, stop: int | None,
               step: int | None) -> dict[str, str]:
    params: dict[str, str] = {}
    if indices is not None:
        params["indices"] = _csv(indices)
    for name, value in (("start", start), ("stop", stop), ("step", step)):
        if value is not None:
            params[name] = str(value)
    return params


def _detail(response: httpx.Response) -> object:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    return body.get("detail", body) if isinstance(body, dict) else body


def _detail_text(detail: object) -> str:
    return detail if isinstance(detail, str) else json.dumps(detail)[:1000]


class Transport:
    """Synchronous access to one trajhub server."""

    def __init__(self, base_url: str, *, timeout: float | None = 60.0,
                 author: str | None = None, busy_retries: int = 5,
                 connect_retries: int = 3, backoff_s: float = 0.2,
                 max_wait_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.author = author
        self.busy_retries = busy_retries
        self.connect_retries = connect_retries
        self.backoff_s = backoff_s
        self.max_wait_s = max_wait_s
        headers = {"X-Trajhub-Author": author} if author else {}
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

    # -- the API ---------------------------------------------------------------------

    def room_info(self, room: str) -> dict[str, Any] | None:
        """``{room, n_frames, seq, applied_seq}``, or None if the room does not exist."""
        try:
            response = self.request("GET", self._room_path(room), not_found=RoomNotFound)
        except RoomNotFound:
            return None
        return response.json()  # type: ignore[no-any-return]

    def get_frames(self, room: str, *, indices: Sequence[int] | None = None,
                   start: int | None = None, stop: int | None = None,
                   step: int | None = None,
                   keys: Sequence[str] | None = None) -> dict[str, Any]:
        """The msgpack answer of ``GET .../frames`` with ``frames`` decoded to Frames."""
        params = _selection(indices, start, stop, step)
        if keys is not None:
            params["keys"] = _csv(keys)
        response = self.request("GET", self._frames_path(room), params=params)
        try:
            body = unpackb(response.content)
            body["frames"] = [decode_frame(f) for f in body["frames"]]
        except (CodecError, KeyError, TypeError) as exc:
            raise TrajhubError(f"unreadable answer from {response.url}: {exc}",
                               status=response.status_code, url=str(response.url)) from None
        return body  # type: ignore[no-any-return]

    def post_frames(self, room: str, body: bytes, *, at: int | None = None,
                    idempotency_key: str | None = None) -> dict[str, Any]:
        """Insert the frames of a msgpack ``{"frames": [...]}`` body (append if at is None)."""
        params = {"at": str(at)} if at is not None else None
        response = self.request("POST", self._frames_path(room), params=params,
                                content=body, idempotency_key=idempotency_key)
        return response.json()  # type: ignore[no-any-return]

    def put_frames(self, room: str, body: bytes, *,
                   idempotency_key: str | None = None) -> dict[str, Any]:
        """Replace frames: msgpack ``{"indices": [...], "frames": [...]}``."""
        response = self.request("PUT", self._frames_path(room), content=body,
                                idempotency_key=idempotency_key)
        return response.json()  # type: ignore[no-any-return]

    def delete_frames(self, room: str, indices: Sequence[int] | None = None, *,
                      start: int | None = None, stop: int | None = None,
                      step: int | None = None,
                      idempotency_key: str | None = None) -> dict[str, Any]:
        """Delete explicit ``indices`` or the slice ``start:stop:step`` (one event)."""
        response = self.request("DELETE", self._frames_path(room),
                                params=_selection(indices, start, stop, step),
                                idempotency_key=idempotency_key)
        return response.json()  # type: ignore[no-any-return]

    def close(self) -> None:
        self._client.close()

    # -- plumbing --------------------------------------------------------------------

    def _room_path(self, room: str) -> str:
        return f"{API}/rooms/{quote(room, safe='')}"

    def _frames_path(self, room: str) -> str:
        return f"{self._room_path(room)}/frames"

    def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                content: bytes | None = None, idempotency_key: str | None = None,
                not_found: type[TrajhubError] = FrameIndexError) -> httpx.Response:
        """Send with retries; return a 2xx response or raise the mapped exception.

        Writes always get an Idempotency-Key (a new one unless given), the same on
        every attempt, which is what makes retrying them safe.
        """
        headers: dict[str, str] = {}
        if method != "GET":
            headers["Idempotency-Key"] = idempotency_key or new_idempotency_key()
        if content is not None:
            headers["Content-Type"] = MSGPACK
        busy = connect = 0
        while True:
            try:
                response = self._client.request(method, path, params=params,
                                                content=content, headers=headers)
            except httpx.TransportError as exc:
                connect += 1
                if connect > self.connect_retries:
                    url = f"{self.base_url}{path}"
                    raise TrajhubConnectionError(
                        f"cannot reach the trajhub server: {method} {url} failed after "
                        f"{connect} attempts ({type(exc).__name__}: {exc})",
                        url=url) from exc
                time.sleep(min(self.backoff_s * 2 ** (connect - 1), self.max_wait_s))
                continue
            if response.status_code == 503 and busy < self.busy_retries:
                busy += 1
                time.sleep(self._retry_after(response, busy))
                continue
            if response.is_success:
                return response
            raise self._error(response, not_found)

    def _retry_after(self, response: httpx.Response, attempt: int) -> float:
        header = response.headers.get("Retry-After", "")
        try:
            wait = float(header)
        except ValueError:  # absent, or an HTTP date: fall back to exponential backoff
            wait = self.backoff_s * 2 ** (attempt - 1)
        return max(0.0, min(wait, self.max_wait_s))

    def _error(self, response: httpx.Response,
               not_found: type[TrajhubError]) -> TrajhubError:
        detail = _detail(response)
        status = response.status_code
        request = response.request
        where = f"{request.method} {request.url}"
        classes: dict[int, type[TrajhubError]] = {
            400: BadRequest, 404: not_found, 409: ConflictError, 413: PayloadTooLarge,
            415: BadRequest, 422: BadRequest, 503: ServerUnavailable,
        }
        cls = classes.get(status, ServerError)
        return cls(f"{_detail_text(detail)} (HTTP {status} from {where})",
                   status=status, url=str(request.url), detail=detail)
