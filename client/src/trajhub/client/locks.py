"""``Lock``: a lock on a room, or on some of its frames, held by a ``Room``.

Taken with ``with vis.lock():`` (the room) or ``with vis.lock(frames=[3, 4]):`` /
``vis.lock(start=0, stop=10)`` (frames), or ``lock.acquire()`` ... ``lock.release()``.
While held:

- every write of that ``Room`` presents it (``X-Trajhub-Lock``/``X-Trajhub-Fence``):
  the Room's own writes pass, others' writes to the locked frames are refused with 423
  (a room lock also refuses their inserts);
- a daemon thread renews it every ``ttl / 3`` seconds, so it lives as long as the
  ``with`` block however long that takes, and expires ``ttl`` seconds after a crash.

Leaving the block (normally or by an exception) stops the renewing thread and releases
the lock. If renewing fails (the lock expired, e.g. the process was suspended longer than
``ttl``), the next write of the Room raises ``LockedError`` instead of writing unlocked.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from trajhub.client.errors import LockedError, TrajhubError
from trajhub.client.http import Transport
from trajhub.shared.events import MAX_LOCK_TTL_MS, MIN_LOCK_TTL_MS

if TYPE_CHECKING:
    from trajhub.client.room import Room

T = TypeVar("T")
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 1.0


def wait_while_locked(call: Callable[[], T], wait: float, what: str) -> T:
    """``call()``, retried with backoff while someone else's lock refuses it (423 naming
    a holder), for at most ``wait`` seconds; then the LockedError, saying how long it
    waited. Other LockedErrors (a lock of ours lost or stale) are raised at once."""
    deadline = time.monotonic() + wait
    delay = RETRY_FIRST_S
    while True:
        try:
            return call()
        except LockedError as exc:
            remaining = deadline - time.monotonic()
            if exc.status != 423 or exc.holder is None or remaining <= 0:
                if wait > 0 and exc.status == 423 and exc.holder is not None:
                    raise LockedError(f"{what}: {exc.message}; gave up after waiting "
                                      f"{wait:g} s", status=exc.status, url=exc.url,
                                      detail=exc.detail, body=exc.body) from None
                raise
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, RETRY_MAX_S)


class Lock:
    """A lock of ``room`` on ``target`` (``"room"`` or ``{"frames"|"frame_ids": [...]}``
    or ``{"start", "stop"}``); made by ``Room.lock()``, taken on ``with`` (or
    ``acquire()``), released on leaving it (or ``release()``).

    While held: ``token`` (secret; presented by the Room's writes), ``fence`` (the lock's
    number from the room's counter), ``expires_at`` (ms since the epoch, server clock;
    moved on by every renewal) and ``target`` (the server's resolution: ``{"room":
    True}`` or ``{"frame_ids": [...], "indices": [...]}``).
    """

    def __init__(self, room: Room, target: object, *, ttl: float = 30.0,
                 wait: float = 30.0, message: str | None = None) -> None:
        ttl_ms = round(ttl * 1000)
        if not MIN_LOCK_TTL_MS <= ttl_ms <= MAX_LOCK_TTL_MS:
            raise ValueError(f"ttl must be {MIN_LOCK_TTL_MS / 1000:g}.."
                             f"{MAX_LOCK_TTL_MS / 1000:g} s, got {ttl!r}")
        if wait < 0:
            raise ValueError(f"wait must be >= 0 s, got {wait!r}")
        self.room = room
        self.requested = target
        self.ttl = ttl
        self.wait = wait
        self.message = message
        self.token: str | None = None
        self.fence: int | None = None
        self.expires_at: int | None = None
        self.target: dict[str, Any] | None = None
        self._lost: LockedError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._transport: Transport | None = None

    @property
    def held(self) -> bool:
        """Taken and not released, and no renewal has found it gone."""
        return self.token is not None and self._lost is None

    def __repr__(self) -> str:  # never the token
        state = "held" if self.held else "lost" if self._lost else "not held"
        return (f"Lock(room={self.room.room!r}, target={self.target or self.requested!r}, "
                f"fence={self.fence}, {state})")

    # -- taking and releasing ----------------------------------------------------------

    def acquire(self) -> Lock:
        """Take the lock, retrying for ``wait`` seconds while someone else holds it;
        LockedError naming the holder if it stays taken. Starts the renewing thread;
        until ``release()`` the Room's writes present the lock."""
        if self.token is not None:
            raise RuntimeError("this lock is already held; a Lock is taken once")
        transport = self._private_transport()
        ttl_ms = round(self.ttl * 1000)
        started = time.monotonic()
        try:
            answer = wait_while_locked(
                lambda: transport.acquire_lock(self.room.room, self.requested, ttl_ms,
                                               self.message),
                self.wait, f"could not lock {self._what()} of room {self.room.room!r}")
        except BaseException:
            self.release()  # closes the private transport
            raise
        self.token, self.fence = str(answer["token"]), int(answer["fence"])
        self.expires_at, self.target = int(answer["expires_at"]), answer.get("target")
        self._lost = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, args=(started,),
                                        name=f"trajhub-lock-{self.room.room}", daemon=True)
        self._thread.start()
        self.room._push_lock(self)
        return self

    def release(self) -> None:
        """Stop renewing and release the lock (already gone is fine); the Room's writes
        no longer present it."""
        self.room._pop_lock(self)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        token, self.token = self.token, None
        try:
            if token is not None and self._transport is not None:
                # LockedError: expired or released already, nothing left to release
                with contextlib.suppress(LockedError):
                    self._transport.release_lock(self.room.room, token)
        finally:
            if self._transport is not None:
                self._transport.close()
                self._transport = None

    def headers(self) -> dict[str, str]:
        """The headers a write presents this lock with; LockedError if it was lost."""
        if self._lost is not None:
            raise LockedError(self._lost.message, status=self._lost.status,
                              url=self._lost.url, detail=self._lost.detail,
                              body=self._lost.body)
        if self.token is None or self.fence is None:
            raise LockedError(f"the lock on {self._what()} of room {self.room.room!r} is "
                              "not held")
        return {"X-Trajhub-Lock": self.token, "X-Trajhub-Fence": str(self.fence)}

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.release()
        except TrajhubError as error:
            if exc_type is None:
                raise
            # Do not hide the block's own exception; the lock expires after its ttl.
            warnings.warn(f"could not release the lock: {error}", RuntimeWarning,
                          stacklevel=2)

    # -- renewing ----------------------------------------------------------------------

    def _private_transport(self) -> Transport:
        """Lock requests go on their own short-timeout connection pool, so that a renewal
        is never stuck behind a long upload or a 60 s timeout."""
        if self._transport is None:
            base = self.room.transport
            self._transport = Transport(base.base_url, timeout=max(self.ttl / 2, 2.0),
                                        author=base.author, connect_retries=2,
                                        backoff_s=min(0.1, self.ttl / 10))
        return self._transport

    def _renew_loop(self, valid_from: float) -> None:
        """Renew every ttl/3 until stopped. A refusal (404: expired or released) loses
        the lock at once; other failures are retried until the lock's ttl has passed
        since the last successful renewal (measured on this machine's clock)."""
        transport = self._private_transport()
        token, ttl_ms = self.token, round(self.ttl * 1000)
        assert token is not None
        while not self._stop.wait(self.ttl / 3):
            sent = time.monotonic()
            try:
                answer = transport.renew_lock(self.room.room, token, ttl_ms)
            except LockedError as exc:
                self._lose(f"lost: {exc.message}", exc)
                return
            except TrajhubError as exc:
                if time.monotonic() - valid_from >= self.ttl:
                    self._lose(f"lost: could not renew it within its ttl of {self.ttl:g} s "
                               f"({exc.message})", exc)
                    return
                continue
            valid_from = sent
            self.fence, self.expires_at = int(answer["fence"]), int(answer["expires_at"])

    def _lose(self, why: str, exc: TrajhubError) -> None:
        self._lost = LockedError(f"the lock on {self._what()} of room {self.room.room!r} "
                                 f"was {why}", status=exc.status, url=exc.url,
                                 detail=exc.detail, body=exc.body)

    def _what(self) -> str:
        target = self.target or self.requested
        if target == "room" or (isinstance(target, dict) and target.get("room")):
            return "the whole room"
        if isinstance(target, dict):
            indices = target.get("indices") or target.get("frames")
            if indices is not None:
                return f"frames {list(indices)[:10]}" + ("..." if len(indices) > 10 else "")
            if "start" in target:
                return f"frames {target['start']}..{target['stop'] - 1}"
            if "frame_ids" in target:
                return f"frame ids {list(target['frame_ids'])[:10]}"
        return "frames"
