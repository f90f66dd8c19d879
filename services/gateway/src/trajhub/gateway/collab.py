"""Locks, the presenter token and the room's step, as the gateway serves them.

Control decides (atomically, per room); this layer announces each change on the bus
so that sockets on every gateway learn of it, and watches the locks and presenter
tokens it granted so that an expiry without renewal is announced too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from redis.exceptions import RedisError

from trajhub.control import ControlUnavailable
from trajhub.gateway.bus import Bus
from trajhub.gateway.writes import describe
from trajhub.shared.collab import (
    LockAcquire,
    LockList,
    LockRelease,
    LockRenew,
    LockResult,
    LockTarget,
    PresenterRelease,
    PresenterRequest,
    PresenterResult,
    SetStep,
    StepState,
)
from trajhub.shared.events import Holder
from trajhub.shared.ports import ControlPort

log = logging.getLogger(__name__)

EXPIRY_MARGIN_S = 0.05
"""Look a little after a TTL ends (control's clock is Redis's, ours may lag slightly)."""
MIN_WAIT_S = 0.05
RETRY_S = 1.0
UNAVAILABLE = (RedisError, OSError, ControlUnavailable)


def holder_json(holder: Holder | None) -> dict[str, Any] | None:
    return None if holder is None else holder.model_dump()


def step_json(state: StepState) -> dict[str, Any]:
    """``GET .../step``'s answer (also in ``join_room``'s ack)."""
    return {"room": state.room, "frame": state.frame, "by": state.by,
            "step_seq": state.step_seq, "presenter": holder_json(state.presenter)}


def lock_target(value: Any) -> LockTarget:
    """A lock target, parsed strictly (``True`` is not a frame index, nor ``"3"``);
    raises ValueError with a reason that starts with ``target:``."""
    try:
        if isinstance(value, dict):
            return LockTarget.model_validate(value, strict=True)
        return LockTarget.parse(value)
    except ValidationError as exc:
        raise ValueError(f"target: {describe(exc)}") from None
    except ValueError as exc:
        raise ValueError(f"target: {exc}") from None


def _delay_until(expires_at_ms: int) -> float:
    return max(MIN_WAIT_S, expires_at_ms / 1000 - time.time() + EXPIRY_MARGIN_S)


class Collab:
    def __init__(self, control: Callable[[], ControlPort], bus: Bus) -> None:
        self._control = control
        self._bus = bus
        self._lock_watch: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._presenter_watch: dict[str, asyncio.Task[None]] = {}
        self._announcing: dict[str, asyncio.Task[None]] = {}

    async def stop(self) -> None:
        tasks = [*self._lock_watch.values(), *self._presenter_watch.values(),
                 *self._announcing.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._lock_watch.clear()
        self._presenter_watch.clear()
        self._announcing.clear()

    # -- locks ----------------------------------------------------------------------------
    async def acquire_lock(self, request: LockAcquire) -> LockResult:
        result = await self._control().acquire_lock(request)
        if result.ok and result.fence is not None and result.expires_at is not None:
            self._watch_lock(request.room, result.fence, result.expires_at)
            self._announce_soon(request.room, "acquired")
        return result

    async def renew_lock(self, request: LockRenew) -> LockResult:
        result = await self._control().renew_lock(request)
        if result.ok and result.fence is not None and result.expires_at is not None:
            self._watch_lock(request.room, result.fence, result.expires_at)
            self._announce_soon(request.room, "renewed")
        return result

    async def release_lock(self, request: LockRelease) -> LockResult:
        result = await self._control().release_lock(request)
        if result.ok:
            if result.fence is not None:
                self._unwatch_lock(request.room, result.fence)
            self._announce_soon(request.room, "released")
        return result

    async def list_locks(self, room: str) -> LockList:
        return await self._control().list_locks(room)

    def _announce_soon(self, room: str, action: str) -> None:
        """Announce the room's locks after the answer has gone out (listing and
        publishing cost two round trips the lock's owner need not wait for). One room's
        announcements run in order, so the last message carries the last state."""
        before = self._announcing.get(room)

        async def announce() -> None:
            if before is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await before
            await self.announce_locks(room, action)

        task = asyncio.create_task(announce(), name=f"announce-locks-{room}")
        self._announcing[room] = task
        task.add_done_callback(
            lambda t: self._announcing.pop(room) if self._announcing.get(room) is t else None)

    async def announce_locks(self, room: str, action: str,
                             listing: LockList | None = None) -> None:
        try:
            if listing is None:
                listing = await self.list_locks(room)
        except UNAVAILABLE as exc:
            log.warning("collab: cannot list the locks of %s to announce %s: %s",
                        room, action, exc)
            return
        await self._bus.publish(room, "lock_changed", {
            "room": room, "locks": [h.model_dump() for h in listing.locks],
            "action": action})

    def _watch_lock(self, room: str, fence: int, expires_at: int) -> None:
        task = self._lock_watch.get((room, fence))
        if task is None or task.done():
            self._lock_watch[(room, fence)] = asyncio.create_task(
                self._lock_watcher(room, fence, expires_at), name=f"lock-{room}-{fence}")

    def _unwatch_lock(self, room: str, fence: int) -> None:
        task = self._lock_watch.pop((room, fence), None)
        if task is not None:
            task.cancel()

    async def _lock_watcher(self, room: str, fence: int, expires_at: int) -> None:
        """Sleep until the lock's TTL ends; if it was not renewed (here or on another
        gateway: the fence names the lock), announce that it expired."""
        delay = _delay_until(expires_at)
        try:
            while True:
                await asyncio.sleep(delay)
                try:
                    listing = await self.list_locks(room)
                except UNAVAILABLE as exc:
                    log.warning("collab: cannot check the lock %s/%s: %s", room, fence, exc)
                    delay = RETRY_S
                    continue
                mine = next((h for h in listing.locks if h.fence == fence), None)
                if mine is None:
                    await self.announce_locks(room, "expired", listing)
                    return
                delay = _delay_until(mine.expires_at)
        finally:
            if self._lock_watch.get((room, fence)) is asyncio.current_task():
                del self._lock_watch[(room, fence)]

    # -- presenter and step ---------------------------------------------------------------
    async def request_presenter(self, request: PresenterRequest) -> PresenterResult:
        result = await self._control().request_presenter(request)
        if result.ok and result.expires_at is not None:
            self._watch_presenter(request.room, result.expires_at)
            if result.token != request.token:  # newly granted, not renewed
                await self.announce_presenter(request.room, Holder(
                    author=request.author, expires_at=result.expires_at))
        return result

    async def renew_presenter(self, request: PresenterRequest) -> PresenterResult:
        result = await self._control().renew_presenter(request)
        if result.ok and result.expires_at is not None:
            self._watch_presenter(request.room, result.expires_at)
        return result

    async def release_presenter(self, request: PresenterRelease) -> PresenterResult:
        result = await self._control().release_presenter(request)
        if result.ok:
            task = self._presenter_watch.pop(request.room, None)
            if task is not None:
                task.cancel()
            await self.announce_presenter(request.room, None)
        return result

    async def set_step(self, request: SetStep) -> PresenterResult:
        result = await self._control().set_step(request)
        if result.ok:
            if result.expires_at is not None:
                self._watch_presenter(request.room, result.expires_at)
            await self._bus.publish(request.room, "room_frame", {
                "room": request.room, "frame": result.frame, "by": request.author,
                "step_seq": result.step_seq})
        return result

    async def get_step(self, room: str) -> StepState:
        return await self._control().get_step(room)

    async def announce_presenter(self, room: str, holder: Holder | None) -> None:
        await self._bus.publish(room, "presenter_changed",
                                {"room": room, "presenter": holder_json(holder)})

    def _watch_presenter(self, room: str, expires_at: int) -> None:
        task = self._presenter_watch.get(room)
        if task is None or task.done():
            self._presenter_watch[room] = asyncio.create_task(
                self._presenter_watcher(room, expires_at), name=f"presenter-{room}")

    async def _presenter_watcher(self, room: str, expires_at: int) -> None:
        """While someone presents, sleep until the token's TTL ends; when nobody
        presents any more (it expired), announce it."""
        delay = _delay_until(expires_at)
        try:
            while True:
                await asyncio.sleep(delay)
                try:
                    state = await self.get_step(room)
                except UNAVAILABLE as exc:
                    log.warning("collab: cannot check the presenter of %s: %s", room, exc)
                    delay = RETRY_S
                    continue
                if state.presenter is None:
                    await self.announce_presenter(room, None)
                    return
                delay = _delay_until(state.presenter.expires_at)
        finally:
            if self._presenter_watch.get(room) is asyncio.current_task():
                del self._presenter_watch[room]
