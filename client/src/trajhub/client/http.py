"""The client's HTTP transport: a keep-alive urllib3 pool and the server's API.

Writes carry an ``Idempotency-Key`` made once per logical request and reused on every
retry, so a POST/PUT/DELETE whose answer was lost can be sent again without applying
twice. 503 (busy) is retried honouring ``Retry-After``; connection errors are retried
for requests that are safe to repeat; error statuses become the exceptions of
``trajhub.client.errors`` with the server's ``detail`` in the message.

urllib3 rather than httpx: against a bare local uvicorn, a 56 MB GET takes ~0.03 s with
urllib3 and ~0.14 s with httpx (which assembles bodies from many small pieces), a 56 MB
POST 0.06 s against 0.19 s, a tiny GET 0.45 ms against 0.7 ms. Bare http.client moves
bodies no faster and saves ~0.15 ms per tiny request, not worth re-doing the pool,
stale-connection checks, TLS and proxies. A body arrives as one ``bytes`` object read
straight from the socket; a request body is handed to ``sendall`` as it is.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlencode

import msgpack
import numpy as np
import urllib3
from urllib3.util import parse_url

from trajhub.client.errors import (
    BadRequest,
    ConflictError,
    FrameIndexError,
    HistoryGone,
    LockedError,
    NothingToRedo,
    NothingToUndo,
    PayloadTooLarge,
    RoomNotFound,
    ServerError,
    ServerUnavailable,
    TrajhubConnectionError,
    TrajhubError,
)
from trajhub.shared.buffers import RecentBuffers, populated_bytearray
from trajhub.shared.codec import (
    CodecError,
    FrameRun,
    IrregularEncoding,
    _scan_runs,
    decode_frame,
    decode_run,
    decode_span,
    frames_of_columns,
    plain_layout,
    scan_bulk,
    scan_bulk_runs,
    unpackb,
)
from trajhub.shared.frames import Frame

MSGPACK = "application/msgpack"
JSON = "application/json"
API = "/api/v1"
USER_AGENT = "trajhub-python"
POOL_SIZE = 4  # concurrent requests per server kept alive (uploads overlap one request)
# Frames at least this large on average are decoded in place (see decode_frames_body).
# Measured, msgpack vs in place, decode + get()'s copy per ~20 MB: frames of one layout
# (same keys and shapes, as in a trajectory) 17 KiB 47 vs 29 ms, 55 KiB 24 vs 12 ms;
# frames each laid out differently 1 KiB 38 vs 46 ms, 16 KiB 52 vs 55 ms, 51 KiB 20 vs
# 21 ms: below this, in place wins only sometimes and loses by up to a fifth.
IN_PLACE_MIN_FRAME_BYTES = 32 * 1024
# Smaller frames that come in runs of one layout (a trajectory) are decoded a run at a
# time: one copy per key per run, each frame's arrays views of those copies (2,000
# frames of 100 atoms: ~8 ms against ~90 ms through msgpack and decode_frame).
MIN_RUN_FRAMES = 4
MIN_RUN_BODY_BYTES = 64 * 1024  # below, the scan costs more than it saves
# Answers at least this large are read into a bytearray (see Transport.request); below,
# urllib3's own read is faster than the loop, and copying the arrays costs little.
WRITABLE_MIN_BYTES = 2**20
# Those bytearrays come from RECEIVE_BUFFERS: once the frames of an answer are all
# dropped, its buffer serves a later answer with its memory already mapped in (new
# memory cost this client ~0.5-1 ms per MB to fault in on the project's VMs, half of
# receiving it). The buffers of the latest answers, up to this many bytes in all, stay
# held after their frames are gone.
RECEIVE_KEEP_BYTES = 64 * 2**20
RECEIVE_BUFFERS = RecentBuffers(RECEIVE_KEEP_BYTES, min_bytes=WRITABLE_MIN_BYTES)


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


@dataclass(frozen=True, slots=True)
class Response:
    """A complete answer: the status, the headers and the whole body as one bytes."""

    method: str
    url: str
    status_code: int
    headers: Mapping[str, str]  # case-insensitive (urllib3's HTTPHeaderDict)
    content: bytes | bytearray  # a bytearray when asked for as writable

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def reason_phrase(self) -> str:
        try:
            return HTTPStatus(self.status_code).phrase
        except ValueError:
            return ""

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


def _json_body(response: Response) -> object:
    """The error answer as JSON, or None if it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def _detail(response: Response, body: object) -> object:
    if body is None:
        return response.text[:500] or response.reason_phrase
    return body.get("detail", body) if isinstance(body, dict) else body


def _who(holder: Mapping[str, Any]) -> str:
    message = holder.get("message")
    return f"{holder.get('author', '?')}" + (f" ({message})" if message else "")


def _explain(status: int, text: str, body: object) -> str:
    """The server's reason, plus the holder or the later edit when it does not say."""
    if not isinstance(body, dict):
        return text
    holder, later = body.get("holder"), body.get("later")
    if status == 423 and isinstance(holder, dict) and str(holder.get("author")) not in text:
        text = f"{text}; held by {_who(holder)}"
    if status == 409 and isinstance(later, dict):
        text = (f"{text}; later edit: seq {later.get('seq')} ({later.get('kind')}) by "
                f"{later.get('author')} on frame id {later.get('frame_id')}")
    return text


def _detail_text(detail: object) -> str:
    return detail if isinstance(detail, str) else json.dumps(detail)[:1000]


def _pool_manager(base_url: str, timeout: float | None) -> urllib3.PoolManager:
    """A pool for ``base_url``, through the proxy the environment names for it (as
    httpx did by default: ``http_proxy``/``https_proxy``/``all_proxy``, ``no_proxy``)."""
    url = parse_url(base_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"not an http(s) URL: {base_url!r}")
    options: dict[str, Any] = {
        "num_pools": 2, "maxsize": POOL_SIZE, "block": False, "retries": False,
        "timeout": urllib3.Timeout(connect=timeout, read=timeout)}
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(url.netloc or url.host):
        return urllib3.ProxyManager(proxy if "://" in proxy else f"http://{proxy}", **options)
    return urllib3.PoolManager(**options)


class Transport:
    """Synchronous access to one trajhub server (thread-safe)."""

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
        self._headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
        if author:
            self._headers["X-Trajhub-Author"] = author
        self._pool = _pool_manager(self.base_url, timeout)

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
                   step: int | None = None, keys: Sequence[str] | None = None,
                   at_seq: int | None = None,
                   not_found: type[TrajhubError] = FrameIndexError) -> dict[str, Any]:
        """The msgpack answer of ``GET .../frames`` with ``frames`` decoded to Frames
        (as of seq ``at_seq`` if given: ``HistoryGone`` if that is beyond retention);
        a 404 (no such room, or an index out of range) raises ``not_found``.

        The frames' arrays may be views of one buffer (the answer's, or copies made
        while decoding) and may be read-only: copy what you want to keep apart or modify.
        """
        params = _selection(indices, start, stop, step)
        if keys is not None:
            params["keys"] = _csv(keys)
        if at_seq is not None:
            params["at_seq"] = str(at_seq)
        response = self.request("GET", self._frames_path(room), params=params, writable=True,
                                not_found=not_found)
        try:
            return decode_frames_body(response.content)
        except (CodecError, KeyError, TypeError) as exc:
            raise TrajhubError(f"unreadable answer from {response.url}: {exc}",
                               status=response.status_code, url=response.url) from None

    def get_index(self, room: str, at_seq: int | None = None) -> dict[str, Any]:
        """``{"room", "seq", "n_frames", "frame_ids", "versions", "hashes"}``: the whole
        index now, or as of seq ``at_seq`` (``HistoryGone`` if beyond retention)."""
        params = {"at_seq": str(at_seq)} if at_seq is not None else None
        response = self.request("GET", f"{self._room_path(room)}/index", params=params,
                                not_found=RoomNotFound)
        return response.json()  # type: ignore[no-any-return]

    def post_frames(self, room: str, body: bytes | Sequence[bytes], *, at: int | None = None,
                    idempotency_key: str | None = None,
                    headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Insert the frames of a msgpack ``{"frames": [...]}`` body, or the staged frames
        of ``{"hashes": [...]}`` (append if at is None)."""
        params = {"at": str(at)} if at is not None else None
        response = self.request("POST", self._frames_path(room), params=params,
                                content=body, idempotency_key=idempotency_key,
                                headers=headers)
        return response.json()  # type: ignore[no-any-return]

    def stage_frames(self, room: str, body: bytes | Sequence[bytes]) -> list[str]:
        """Stage the frames of a msgpack ``{"frames": [...]}`` body without committing
        them; returns their content hashes, which a later ``post_frames``/``put_frames``
        body ``{"hashes": [...]}`` commits. Safe to repeat (content addressed)."""
        response = self.request("POST", f"{self._room_path(room)}/blobs", content=body)
        hashes: list[str] = response.json()["hashes"]
        return hashes

    def put_frames(self, room: str, body: bytes | Sequence[bytes], *,
                   idempotency_key: str | None = None,
                   headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Replace frames: msgpack ``{"indices" | "frame_ids": [...], "frames": [...],
        "base_versions"?: [...]}``."""
        response = self.request("PUT", self._frames_path(room), content=body,
                                idempotency_key=idempotency_key, headers=headers)
        return response.json()  # type: ignore[no-any-return]

    def delete_frames(self, room: str, indices: Sequence[int] | None = None, *,
                      start: int | None = None, stop: int | None = None,
                      step: int | None = None, body: bytes | None = None,
                      idempotency_key: str | None = None,
                      headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Delete explicit ``indices`` or the slice ``start:stop:step`` (one event), or
        the frames a msgpack ``body`` names (``{"frame_ids", "base_versions"?}``)."""
        response = self.request("DELETE", self._frames_path(room),
                                params=_selection(indices, start, stop, step),
                                content=body, idempotency_key=idempotency_key,
                                headers=headers)
        return response.json()  # type: ignore[no-any-return]

    def patch_frame(self, room: str, index: int, body: bytes, *,
                    headers: Mapping[str, str] | None = None,
                    idempotency_key: str | None = None) -> dict[str, Any]:
        """Change some keys of frame ``index``: msgpack ``{"frame", "base_version",
        "frame_id"?}``."""
        response = self.request("PATCH", f"{self._frames_path(room)}/{index}", content=body,
                                headers=headers, idempotency_key=idempotency_key)
        return response.json()  # type: ignore[no-any-return]

    def fork_room(self, room: str, base_room: str, at_seq: int | None = None, *,
                  idempotency_key: str | None = None) -> dict[str, Any]:
        """Create ``room`` as a fork of ``base_room`` at ``at_seq`` (its current seq if
        None): ``{"room", "seq", "n_frames", "base_room", "base_seq", "frame_ids",
        "versions", "hashes"}``. ConflictError if ``room`` exists, RoomNotFound if the
        base does not, HistoryGone if that seq is beyond retention."""
        body: dict[str, Any] = {"base_room": base_room}
        if at_seq is not None:
            body["at_seq"] = at_seq
        response = self.request("PUT", self._room_path(room), content=json.dumps(body).encode(),
                                content_type=JSON, idempotency_key=idempotency_key,
                                not_found=RoomNotFound)
        return response.json()  # type: ignore[no-any-return]

    # -- collaboration ---------------------------------------------------------------

    def acquire_lock(self, room: str, target: object, ttl_ms: int,
                     message: str | None = None) -> dict[str, Any]:
        """``{"token", "fence", "expires_at", "target"}``; LockedError (423) if held."""
        body: dict[str, Any] = {"target": target, "ttl_ms": ttl_ms}
        if message is not None:
            body["message"] = message
        return self._json("POST", f"{self._room_path(room)}/locks", body)

    def renew_lock(self, room: str, token: str, ttl_ms: int) -> dict[str, Any]:
        """``{"token", "fence", "expires_at"}``; LockedError (404) if no longer held."""
        return self._json("PUT", self._lock_path(room, token), {"ttl_ms": ttl_ms},
                          not_found=LockedError)

    def release_lock(self, room: str, token: str) -> dict[str, Any]:
        """``{"status", "fence"}``; LockedError (404) if no longer held."""
        return self._json("DELETE", self._lock_path(room, token), None,
                          not_found=LockedError)

    def list_locks(self, room: str) -> dict[str, Any]:
        return self._json("GET", f"{self._room_path(room)}/locks", None,
                          not_found=RoomNotFound)

    def undo(self, room: str, *, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        return self._json("POST", f"{self._room_path(room)}/undo", {}, headers=headers,
                          not_found=NothingToUndo)

    def redo(self, room: str, *, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        return self._json("POST", f"{self._room_path(room)}/redo", {}, headers=headers,
                          not_found=NothingToRedo)

    def history(self, room: str, *, since: int = 0, limit: int | None = None
                ) -> dict[str, Any]:
        """One page: ``{"room", "events": [...], "next": seq or None}``."""
        params = {"since": str(since)}
        if limit is not None:
            params["limit"] = str(limit)
        response = self.request("GET", f"{self._room_path(room)}/history", params=params,
                                not_found=RoomNotFound)
        return response.json()  # type: ignore[no-any-return]

    def get_step(self, room: str) -> dict[str, Any]:
        return self._json("GET", f"{self._room_path(room)}/step", None,
                          not_found=RoomNotFound)

    def set_step(self, room: str, frame: int, token: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"frame": frame}
        if token is not None:
            body["token"] = token
        return self._json("PUT", f"{self._room_path(room)}/step", body)

    def close(self) -> None:
        self._pool.clear()

    # -- plumbing --------------------------------------------------------------------

    def _room_path(self, room: str) -> str:
        return f"{API}/rooms/{quote(room, safe='')}"

    def _frames_path(self, room: str) -> str:
        return f"{self._room_path(room)}/frames"

    def _lock_path(self, room: str, token: str) -> str:
        return f"{self._room_path(room)}/locks/{quote(token, safe='')}"

    def _json(self, method: str, path: str, body: object, *,
              headers: Mapping[str, str] | None = None,
              not_found: type[TrajhubError] = FrameIndexError) -> dict[str, Any]:
        """A request with an optional JSON body whose answer is a JSON object."""
        content = None if body is None else json.dumps(body).encode()
        response = self.request(method, path, content=content, content_type=JSON,
                                headers=headers, not_found=not_found)
        return response.json()  # type: ignore[no-any-return]

    def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                content: bytes | Sequence[bytes] | None = None,
                idempotency_key: str | None = None,
                not_found: type[TrajhubError] = FrameIndexError,
                headers: Mapping[str, str] | None = None,
                content_type: str = MSGPACK, writable: bool = False) -> Response:
        """Send with retries; return a 2xx response or raise the mapped exception.

        With ``writable``, a 2xx body is read into a bytearray (arrays decoded in place
        from it are then writable, so nobody has to copy them).

        Writes always get an Idempotency-Key (a new one unless given), the same on
        every attempt, which is what makes retrying them safe. ``headers`` are added to
        the defaults (e.g. the lock a write presents).
        """
        sent = dict(self._headers)
        if headers:
            sent.update(headers)
        headers = sent
        if method != "GET":
            headers["Idempotency-Key"] = idempotency_key or new_idempotency_key()
        if content is not None:
            headers["Content-Type"] = content_type
        if content is not None and not isinstance(content, bytes):
            # Parts, sent one after the other (urllib3 would send them chunked).
            headers["Content-Length"] = str(sum(len(part) for part in content))
        url = f"{self.base_url}{path}"
        full_url = f"{url}?{urlencode(params)}" if params else url
        busy = connect = 0
        while True:
            try:
                answer = self._pool.urlopen(method, full_url, body=content, headers=headers,
                                            redirect=False, preload_content=not writable)
                data = _read_writable(answer) if writable else answer.data
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                connect += 1
                if connect > self.connect_retries:
                    raise TrajhubConnectionError(
                        f"cannot reach the trajhub server: {method} {url} failed after "
                        f"{connect} attempts ({type(exc).__name__}: {exc})",
                        url=url) from exc
                time.sleep(min(self.backoff_s * 2 ** (connect - 1), self.max_wait_s))
                continue
            response = Response(method, full_url, answer.status, answer.headers, data)
            if response.status_code == 503 and busy < self.busy_retries:
                busy += 1
                time.sleep(self._retry_after(response, busy))
                continue
            if response.is_success:
                return response
            raise self._error(response, not_found)

    def _retry_after(self, response: Response, attempt: int) -> float:
        header = response.headers.get("Retry-After", "")
        try:
            wait = float(header)
        except ValueError:  # absent, or an HTTP date: fall back to exponential backoff
            wait = self.backoff_s * 2 ** (attempt - 1)
        return max(0.0, min(wait, self.max_wait_s))

    def _error(self, response: Response, not_found: type[TrajhubError]) -> TrajhubError:
        body = _json_body(response)
        detail = _detail(response, body)
        status = response.status_code
        where = f"{response.method} {response.url}"
        classes: dict[int, type[TrajhubError]] = {
            400: BadRequest, 404: not_found, 409: ConflictError, 413: PayloadTooLarge,
            410: HistoryGone, 415: BadRequest, 422: BadRequest, 423: LockedError,
            428: BadRequest,
            503: ServerUnavailable,
        }
        cls = classes.get(status, ServerError)
        text = _explain(status, _detail_text(detail), body)
        return cls(f"{text} (HTTP {status} from {where})",
                   status=status, url=response.url, detail=detail, body=body)


def _read_writable(answer: Any) -> bytes | bytearray:
    """The whole body of a streamed urllib3 response: for a large 2xx answer of known
    length, read straight into a bytearray (one copy from the socket)."""
    try:
        length = int(answer.headers.get("Content-Length", ""))
    except ValueError:
        length = -1
    if (not 200 <= answer.status < 300 or length < WRITABLE_MIN_BYTES
            or answer.headers.get("Content-Encoding")):
        data: bytes = answer.data
        answer.release_conn()
        return data
    buf = RECEIVE_BUFFERS.take(length, populated_bytearray)
    view = memoryview(buf)
    got = 0
    # urllib3's readinto reads into a new bytes and copies that (2.5x slower for a
    # 10 MB answer); the http.client response under it reads into the buffer itself.
    raw = getattr(answer, "_fp", None)
    readinto = raw.readinto if isinstance(raw, http.client.HTTPResponse) else answer.readinto
    try:
        while got < length:
            n = readinto(view[got:])
            if not n:
                raise urllib3.exceptions.IncompleteRead(got, length - got)
            got += n
    finally:
        view.release()
        answer.release_conn()
    return buf


# -- decoding a frames answer without copying the arrays -----------------------------------

class WritableFrames(list[Frame]):
    """Decoded frames whose every array is writable and whose dicts are new: copies made
    while decoding, or views of a bytearray answer nothing else refers to (a caller
    that wants writable frames need not look at each array)."""


def decode_frames_body(body: bytes | bytearray) -> dict[str, Any]:
    """The fields of a ``GET .../frames`` answer, ``frames`` decoded to Frames (a
    WritableFrames when every array is writable).

    msgpack copies every ``bin`` it decodes. Large frames are therefore located in
    ``body`` by ``codec.scan_bulk`` instead, so that their arrays are views of ``body``
    itself (never copied); small ones go through msgpack's C decoder, as does anything
    the scanner does not take (it knows only the layout ``packb`` writes, which is the
    server's), and msgpack says what is wrong with a malformed answer.
    """
    if len(body) >= IN_PLACE_MIN_FRAME_BYTES:
        scanned = _scan_frames_last(body)
        if scanned is not None:
            fields, pos, runs = scanned
            if len(body) - pos >= IN_PLACE_MIN_FRAME_BYTES * sum(r.count for r in runs):
                fields["frames"] = _views_of(body, [frame for run in runs for frame in (
                    decode_run(run) or [decode_span(s) for s in run.spans()])])
                return fields
            if len(body) >= MIN_RUN_BODY_BYTES:
                frames = _decode_runs(body, runs)
                if frames is not None:
                    fields["frames"] = WritableFrames(frames)
                    return fields
        else:  # not the server's layout: the scanner's own rules (and errors) decide
            try:
                fields, spans = scan_bulk(body, min_frame_bytes=IN_PLACE_MIN_FRAME_BYTES)
            except IrregularEncoding:
                pass
            else:
                fields["frames"] = _views_of(body, [decode_span(span) for span in spans])
                return fields
            by_runs = _decode_by_runs(body) if len(body) >= MIN_RUN_BODY_BYTES else None
            if by_runs is not None:
                return by_runs
    head = unpackb(body)
    if not isinstance(head, dict) or not isinstance(head.get("frames"), list):
        raise CodecError("a frames answer must be a map with a list of frames")
    head["frames"] = [decode_frame(f) for f in head["frames"]]
    return head


def _views_of(body: bytes | bytearray, frames: list[Frame]) -> list[Frame]:
    """``frames``, decoded in place from ``body``: writable if ``body`` is."""
    return WritableFrames(frames) if isinstance(body, bytearray) else frames


class _BodyReader:
    """A file over ``body`` for msgpack's Unpacker, which then copies only what it reads."""

    def __init__(self, body: bytes | bytearray) -> None:
        self._view = memoryview(body)
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._view) if n < 0 else self._pos + n
        out = bytes(self._view[self._pos:end])
        self._pos += len(out)
        return out


def _scan_frames_last(body: bytes | bytearray
                      ) -> tuple[dict[str, Any], int, list[FrameRun]] | None:
    """The answer's fields, the position of its first frame and its frames as runs, when
    ``frames`` is its last field (as the server writes it); None for anything else.

    The fields before the frames (indices, ids, versions, hashes: thousands of items
    for a long read) are decoded by msgpack's C unpacker; ``scan_bulk_runs`` would walk
    each of their items in Python first. The server's ``runs`` (frames it sent from one
    slab, of one layout) spare comparing each of their frames with the first."""
    unpacker = msgpack.Unpacker(_BodyReader(body), raw=False, strict_map_key=True,
                                use_list=True, read_size=2**18)
    fields: dict[str, Any] = {}
    try:
        n = unpacker.read_map_header()
        for i in range(n):
            key = unpacker.unpack()
            if not isinstance(key, str) or key in fields:
                return None
            if key == "frames":
                if i != n - 1:
                    return None
                count = unpacker.read_array_header()
                pos = unpacker.tell()
                runs = _scan_runs(body, memoryview(body), pos, count,
                                  _said_runs(fields.get("runs"), count))
                end = runs[-1].end if runs else pos
                return (fields, pos, runs) if end == len(body) else None
            fields[key] = unpacker.unpack()
    except Exception:  # malformed or unusual: the general path says what is wrong
        return None
    return None


def _said_runs(value: object, count: int) -> list[tuple[int, int, int]]:
    """An answer's ``runs`` as ``(first, count, stride)`` each, when it is a sorted list
    of runs apart within ``count`` frames; else none (each frame is then compared)."""
    if not isinstance(value, list):
        return []
    out: list[tuple[int, int, int]] = []
    end = 0
    for run in value:
        if not (isinstance(run, list) and len(run) == 3
                and all(type(x) is int for x in run)):
            return []
        first, n, stride = run
        if first < end or n < 2 or stride < 1 or first + n > count:
            return []
        out.append((first, n, stride))
        end = first + n
    return out


def _decode_by_runs(body: bytes | bytearray) -> dict[str, Any] | None:
    """``decode_frames_body`` for small frames in long runs of one layout (None when
    the frames are not like that, or anything is unusual: the general path decides)."""
    try:
        fields, runs = scan_bulk_runs(body)
    except IrregularEncoding:
        return None
    frames = _decode_runs(body, runs)
    if frames is None:
        return None
    fields["frames"] = WritableFrames(frames)
    return fields


def _decode_runs(body: bytes | bytearray, runs: list[FrameRun]) -> list[Frame] | None:
    count = sum(run.count for run in runs)
    if not runs or count < MIN_RUN_FRAMES * len(runs):
        return None
    frames: list[Frame] = []
    for run in runs:
        decoded = _decode_run(body, run)
        if decoded is None:
            return None
        frames += decoded
    return frames


def _decode_run(body: bytes | bytearray, run: FrameRun) -> list[Frame] | None:
    """The frames of ``run`` as writable arrays; None for a dtype or a size that
    decode_array would have to judge. Of a bytearray ``body`` (which only the caller
    holds) they are views, as large frames are: copying 56 MB of small frames column
    by column cost the client ~3x the decoding, most of it faulting in the copies'
    fresh memory. Of bytes, each key's data of all its frames is copied out at once
    and the arrays are views of those copies."""
    if isinstance(body, bytearray):
        return decode_run(run)
    block = np.frombuffer(body, np.uint8, count=run.count * run.stride,
                          offset=run.first.start).reshape(run.count, run.stride)
    keys: list[str] = []
    columns: list[np.ndarray] = []
    for (key, value), (offset, size) in zip(run.first.obj.items(), run.data, strict=True):
        plain = plain_layout(value, size)
        if plain is None:
            return None
        dtype, shape, _ = plain
        data = np.empty((run.count, size), np.uint8)
        data[...] = block[:, offset:offset + size]
        keys.append(key)
        columns.append(data.view(dtype).reshape((run.count, *shape)))
    return frames_of_columns(keys, columns, run.count)
