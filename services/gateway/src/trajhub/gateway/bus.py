"""The bus between gateways: small room messages over Redis pub/sub (``keys.BUS``).

A gateway publishes ``{"room", "event", "data"}`` after each lock, presenter or step
change and every gateway (itself included) relays what it hears to its own sockets in
the Socket.IO room ``room:<name>``. Delivery is at most once, like every broadcast;
``lock_changed`` carries the full lock list, so a missed message heals at the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from trajhub.gateway.tasks import cancel
from trajhub.shared import keys
from trajhub.shared.names import InvalidName, check_room_name
from trajhub.shared.redis_util import pubsub_client

log = logging.getLogger(__name__)

BUS_EVENTS = frozenset({"lock_changed", "room_frame", "presenter_changed", "upload_progress"})
Deliver = Callable[[str, str, dict[str, Any]], Awaitable[None]]
"""``deliver(room, event, data)``: emit to the room's local sockets."""
POLL_S = 1.0
SUBSCRIBE_TIMEOUT_S = 5.0
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 5.0
STEP_MEMORY = 10_000
"""Rooms whose last relayed step_seq is remembered (to drop late, out-of-order steps)."""


class Subscription:
    """One pub/sub connection subscribed to the bus (its own client, no socket timeout;
    on a Redis Cluster a plain client to one node, which hears every node's PUBLISH)."""

    def __init__(self, url: str) -> None:
        self.client = pubsub_client(url)
        self.pubsub: PubSub = self.client.pubsub()

    async def open(self) -> Subscription:
        """Subscribe and wait for Redis to confirm, so nothing published after this
        returns is missed."""
        try:
            await self.pubsub.subscribe(keys.BUS)
            while True:
                message = await self.pubsub.get_message(timeout=POLL_S)
                if message is not None and message.get("type") == "subscribe":
                    return self
        except BaseException:
            await self.close()
            raise

    async def next(self) -> dict[str, Any] | None:
        message: dict[str, Any] | None = await self.pubsub.get_message(
            ignore_subscribe_messages=True, timeout=POLL_S)
        return message

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()


def parse_message(raw: Any) -> tuple[str, str, dict[str, Any]] | None:
    """``(room, event, data)`` of a bus message, or None for anything malformed."""
    try:
        message = json.loads(raw)
        room, event, data = message["room"], message["event"], message["data"]
        check_room_name(room)
    except (ValueError, TypeError, KeyError, InvalidName):
        return None
    if event not in BUS_EVENTS or not isinstance(data, dict):
        return None
    return room, event, data


class Bus:
    """One per gateway: ``publish`` to every gateway, relay what arrives to ``deliver``."""

    def __init__(self, redis_url: str, deliver: Deliver,
                 redis: Callable[[], aioredis.Redis]) -> None:
        self._url = redis_url
        self._deliver = deliver
        self._redis = redis
        self._task: asyncio.Task[None] | None = None
        self._last_step: OrderedDict[str, int] = OrderedDict()

    async def start(self) -> None:
        """Subscribe (waiting up to SUBSCRIBE_TIMEOUT_S), then relay in the background;
        a gateway whose Redis is down starts anyway and keeps trying."""
        first: Subscription | None = None
        try:
            first = await asyncio.wait_for(Subscription(self._url).open(), SUBSCRIBE_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("bus: cannot subscribe yet (%s); retrying in the background", exc)
        self._task = asyncio.create_task(self._run(first), name="trajhub-bus")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def publish(self, room: str, event: str, data: dict[str, Any]) -> None:
        """Best effort: a lost message only delays what clients learn (the state itself
        is in Redis), so a Redis error is logged, not raised.

        A step reaches this gateway's own sockets at once, without the round trip
        through Redis; its echo from the bus is then dropped as not newer (step_seq)."""
        payload = json.dumps({"room": room, "event": event, "data": data})
        if event == "room_frame":
            await self._deliver_step(room, data)
        try:
            await self._redis().publish(keys.BUS, payload)
        except (RedisError, OSError) as exc:
            log.warning("bus: could not publish %s for %s: %s", event, room, exc)

    async def _run(self, subscription: Subscription | None) -> None:
        backoff = BACKOFF_MIN_S
        try:
            while True:
                try:
                    if subscription is None:
                        subscription = await Subscription(self._url).open()
                    while True:
                        message = await subscription.next()
                        backoff = BACKOFF_MIN_S
                        if message is not None and message.get("type") == "message":
                            await self._relay(message.get("data"))
                except (RedisError, OSError) as exc:
                    log.warning("bus: Redis error (%s); resubscribing in %.1f s", exc, backoff)
                except Exception:
                    log.exception("bus: unexpected error; resubscribing in %.1f s", backoff)
                if subscription is not None:
                    await subscription.close()
                    subscription = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            if subscription is not None:
                await subscription.close()

    async def _relay(self, raw: Any) -> None:
        parsed = parse_message(raw)
        if parsed is None:
            log.warning("bus: ignoring a malformed message: %.200r", raw)
            return
        room, event, data = parsed
        if event == "room_frame":
            await self._deliver_step(room, data)
            return
        await self._deliver_safely(room, event, data)

    async def _deliver_step(self, room: str, data: dict[str, Any]) -> None:
        if self._step_is_new(room, data.get("step_seq")):
            await self._deliver_safely(room, "room_frame", data)

    async def _deliver_safely(self, room: str, event: str, data: dict[str, Any]) -> None:
        try:
            await self._deliver(room, event, data)
        except Exception:
            log.exception("bus: could not deliver %s for %s", event, room)

    def _step_is_new(self, room: str, step_seq: Any) -> bool:
        """Steps are relayed in step_seq order: one that arrives after a later one
        (two presenter steps published concurrently) is stale and dropped."""
        if not isinstance(step_seq, int):
            return False
        last = self._last_step.pop(room, 0)
        self._last_step[room] = max(last, step_seq)
        while len(self._last_step) > STEP_MEMORY:
            self._last_step.popitem(last=False)
        return step_seq > last
