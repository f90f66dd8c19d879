"""Socket.IO collaboration events: locks, the presenter token and the room's step.

Every ack is a JSON object; a refusal is ``{"error": reason, "status": <HTTP-like
code>, "holder"?}`` and changes nothing. Each socket's locks and presenter tokens are
tracked in ``Sessions`` and released when it disconnects.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from pydantic import ValidationError

from trajhub.gateway.collab import UNAVAILABLE, Collab, holder_json, lock_target, step_json
from trajhub.gateway.errors import NotStarted
from trajhub.gateway.sessions import Session, Sessions, author_from_auth
from trajhub.gateway.writes import describe
from trajhub.shared.collab import (
    LockAcquire,
    LockRelease,
    LockRenew,
    LockResult,
    PresenterRelease,
    PresenterRequest,
    PresenterResult,
    SetStep,
)
from trajhub.shared.names import InvalidName, check_room_name

log = logging.getLogger(__name__)

Ack = dict[str, Any]
Handler = Callable[[str, Any], Awaitable[Ack]]


class Refused(Exception):
    """Answer the event with an error ack."""

    def __init__(self, status: int, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.ack: Ack = {"error": reason, "status": status, **extra}


def refusal(result: LockResult | PresenterResult) -> Refused:
    extra = {"holder": holder_json(result.holder)} if result.holder is not None else {}
    return Refused(result.http_status, result.reason or f"refused ({result.status})", **extra)


def fields(data: Any, event: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The event's payload: an object with a valid set of fields (else 422)."""
    if not isinstance(data, dict):
        raise Refused(422, f"{event} takes an object with {', '.join(allowed)}")
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise Refused(422, f"{event}: unknown field(s) {', '.join(unknown)}; "
                           f"it takes {', '.join(allowed)}")
    room = data.get("room")
    if not isinstance(room, str):
        raise Refused(422, f"{event}: 'room' must be a room name")
    try:
        check_room_name(room)
    except InvalidName as exc:
        raise Refused(422, f"{event}: {exc}") from None
    return dict(data)


def acking(handler: Handler) -> Callable[..., Awaitable[Ack]]:
    @functools.wraps(handler)
    async def wrapped(sid: str, data: Any = None, *_: Any) -> Ack:
        try:
            return await handler(sid, data)
        except Refused as exc:
            return exc.ack
        except ValidationError as exc:
            return {"error": describe(exc), "status": 422}
        except ValueError as exc:  # LockTarget.parse
            return {"error": str(exc), "status": 422}
        except (*UNAVAILABLE, NotStarted) as exc:
            log.warning("socket %s: backend unavailable: %r", handler.__name__, exc)
            return {"error": f"server unavailable ({exc}); retry later", "status": 503}
    return wrapped


class CollabSockets:
    """The collaboration handlers of one gateway's Socket.IO server, plus the hooks
    that the connection handlers call (connect, disconnect, join_room)."""

    def __init__(self, sio: socketio.AsyncServer, sessions: Sessions, collab: Collab) -> None:
        self._sio = sio
        self._sessions = sessions
        self._collab = collab

    def register(self) -> None:
        handlers: dict[str, Handler] = {
            "lock_acquire": self.lock_acquire, "lock_renew": self.lock_renew,
            "lock_release": self.lock_release, "presenter_request": self.presenter_request,
            "presenter_renew": self.presenter_renew,
            "presenter_release": self.presenter_release,
            "set_room_frame": self.set_room_frame,
        }
        for event, handler in handlers.items():
            self._sio.on(event, acking(handler))

    # -- hooks ----------------------------------------------------------------------------
    def connected(self, sid: str, auth: Any) -> None:
        """Raises socketio's ConnectionRefusedError for a bad ``auth``."""
        try:
            author = author_from_auth(auth)
        except ValueError as exc:
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        self._sessions.open(sid, author)

    async def disconnected(self, sid: str) -> None:
        session = self._sessions.close(sid)
        if session is not None:
            await self._release_all(session)

    async def join_state(self, room: str) -> dict[str, Any]:
        """What ``join_room``'s ack adds: the step and the live locks."""
        step = await self._collab.get_step(room)
        locks = await self._collab.list_locks(room)
        return {"step": step_json(step), "locks": [h.model_dump() for h in locks.locks]}

    async def _release_all(self, session: Session) -> None:
        for token, room in session.locks.items():
            try:
                await self._collab.release_lock(LockRelease(room=room, token=token))
            except UNAVAILABLE as exc:  # the TTL will end it
                log.warning("disconnect: cannot release a lock in %s: %s", room, exc)
        for room, token in session.presenting.items():
            try:
                await self._collab.release_presenter(PresenterRelease(room=room, token=token))
            except UNAVAILABLE as exc:
                log.warning("disconnect: cannot release the presenter of %s: %s", room, exc)

    def _session(self, sid: str) -> Session:
        session = self._sessions.get(sid)
        if session is None:
            raise Refused(401, "this connection is closing")
        return session

    # -- locks ----------------------------------------------------------------------------
    async def lock_acquire(self, sid: str, data: Any) -> Ack:
        session = self._session(sid)
        given = fields(data, "lock_acquire", ("room", "target", "ttl_ms", "message"))
        if "target" in given:
            given["target"] = lock_target(given["target"])
        request = LockAcquire.model_validate({**given, "author": session.author,
                                              "session": sid}, strict=True)
        result = await self._collab.acquire_lock(request)
        if not result.ok or result.token is None:
            raise refusal(result)
        if self._sessions.get(sid) is not session:  # disconnected meanwhile
            await self._collab.release_lock(LockRelease(room=request.room, token=result.token))
            raise Refused(401, "this connection closed; the lock was released")
        session.locks[result.token] = request.room
        return {"token": result.token, "fence": result.fence, "expires_at": result.expires_at,
                "target": result.target}

    def _held_lock(self, sid: str, data: Any, event: str,
                   allowed: tuple[str, ...]) -> tuple[Session, dict[str, Any]]:
        session = self._session(sid)
        given = fields(data, event, allowed)
        token = given.get("token")
        if not isinstance(token, str):
            raise Refused(422, f"{event}: 'token' must be the lock's token (a string)")
        if not session.holds_lock(given["room"], token):
            raise Refused(404, "no live lock with this token is held by this connection "
                               "(it expired, was released, or is not yours)")
        return session, given

    async def lock_renew(self, sid: str, data: Any) -> Ack:
        session, given = self._held_lock(sid, data, "lock_renew", ("room", "token", "ttl_ms"))
        request = LockRenew.model_validate(given, strict=True)
        result = await self._collab.renew_lock(request)
        if not result.ok:
            if result.status == "not_found":
                session.locks.pop(request.token, None)
            raise refusal(result)
        return {"token": result.token, "fence": result.fence, "expires_at": result.expires_at}

    async def lock_release(self, sid: str, data: Any) -> Ack:
        session, given = self._held_lock(sid, data, "lock_release", ("room", "token"))
        request = LockRelease.model_validate(given, strict=True)
        result = await self._collab.release_lock(request)
        if result.ok or result.status == "not_found":
            session.locks.pop(request.token, None)
        if not result.ok:
            raise refusal(result)
        return {"ok": True, "fence": result.fence}

    # -- presenter ------------------------------------------------------------------------
    async def presenter_request(self, sid: str, data: Any) -> Ack:
        session = self._session(sid)
        given = fields(data, "presenter_request", ("room", "ttl_ms"))
        request = PresenterRequest.model_validate(
            {**given, "author": session.author, "session": sid,
             "token": session.presenting.get(given["room"])}, strict=True)
        result = await self._collab.request_presenter(request)
        if not result.ok or result.token is None:
            raise refusal(result)
        if self._sessions.get(sid) is not session:
            await self._collab.release_presenter(PresenterRelease(room=request.room,
                                                                  token=result.token))
            raise Refused(401, "this connection closed; the presenter token was released")
        session.presenting[request.room] = result.token
        return {"token": result.token, "expires_at": result.expires_at}

    def _presenting(self, sid: str, data: Any, event: str,
                    allowed: tuple[str, ...]) -> tuple[Session, dict[str, Any], str]:
        session = self._session(sid)
        given = fields(data, event, allowed)
        token = session.presenting.get(given["room"])
        if token is None:
            raise Refused(404, "this connection does not hold the presenter token of "
                               f"{given['room']!r}")
        return session, given, token

    async def presenter_renew(self, sid: str, data: Any) -> Ack:
        session, given, token = self._presenting(sid, data, "presenter_renew",
                                                 ("room", "ttl_ms"))
        request = PresenterRequest.model_validate(
            {**given, "author": session.author, "session": sid, "token": token}, strict=True)
        result = await self._collab.renew_presenter(request)
        if not result.ok:
            session.presenting.pop(request.room, None)
            raise refusal(result)
        return {"expires_at": result.expires_at}

    async def presenter_release(self, sid: str, data: Any) -> Ack:
        session, given, token = self._presenting(sid, data, "presenter_release", ("room",))
        request = PresenterRelease.model_validate({**given, "token": token}, strict=True)
        result = await self._collab.release_presenter(request)
        session.presenting.pop(request.room, None)
        if not result.ok:
            raise refusal(result)
        return {"ok": True}

    async def set_room_frame(self, sid: str, data: Any) -> Ack:
        session = self._session(sid)
        given = fields(data, "set_room_frame", ("room", "frame"))
        token = session.presenting.get(given["room"])
        request = SetStep.model_validate({**given, "author": session.author, "session": sid,
                                          "token": token}, strict=True)
        result = await self._collab.set_step(request)
        if not result.ok:
            if token is not None and result.status == "locked":  # someone else presents
                session.presenting.pop(request.room, None)
            raise refusal(result)
        return {"ok": True, "frame": result.frame, "step_seq": result.step_seq}
