"""Consumer-group plumbing shared by the workers that follow room event streams.

A :class:`RoomConsumer` finds rooms with work from two sources: the ``trajhub:notify``
stream (a non-atomic hint written after each commit) and a periodic reconciliation
that compares each room's ``{r}:meta`` seq with the consumer's own progress key, so
a missed hint never strands a room. For each room it reads the room's stream through
its consumer group (own pending entries, entries claimed from dead consumers with
XAUTOCLAIM, new entries), restores seq order (filling gaps with XRANGE), and hands
contiguous batches starting at ``progress + 1`` to :meth:`RoomConsumer.handle_batch`.
Entries at or below the progress seq are acknowledged without being handled again.

Optionally a per-room lease (``lease_key``) makes one replica at a time the room's
only worker. With a replica registry (``registry_key``) as well, replicas share the
rooms: each heartbeats into the registry, prefers the rooms that rendezvous hashing over
the live replicas gives it, and between batches gives up (releases the lease of) a room
that now belongs to another replica, so adding a replica rebalances. The lease stays the
safety mechanism; the assignment is only a preference (a room whose progress stalls is
taken by anyone, see ``orphan_after_s``). Subclasses implement ``handle_batch``,
``progress_seq`` and ``progress_key``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import hashlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from trajhub.shared import keys
from trajhub.shared.events import Event, EventHead
from trajhub.shared.memory import freeze_startup_heap, tune_malloc
from trajhub.shared.names import InvalidName, check_room_name
from trajhub.shared.redis_util import async_client

RETRYABLE: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError,
                                              ConnectionError, TimeoutError)
"""Errors that mean "Redis is unreachable right now": back off and try again."""

NOTIFY_BLOCK_MS = 1000
BATCH_FRAMES = 1024
"""A batch takes no more events once they hold this many frames: what a consumer keeps
while handling a batch (parsed events, slot writes) stays bounded when a long backlog
of bulk commits waits, as it does after an upload the all-in-one storage yielded to."""
COALESCE_FRAMES = 64
"""A round that handled fewer frames than this is "small" (see ``coalesce_s``)."""

# Returns 2 when newly acquired, 1 when renewed (already ours), 0 when held by another.
_ACQUIRE_LUA = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if v then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 2
"""
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# Registry heartbeat (one key only, so it is cluster-safe): drop expired replicas, renew
# this one (ARGV[2] ms from the Redis clock), return the live ones.
_HEARTBEAT_LUA = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


def preferred_owner(room: str, replicas: Iterable[str]) -> str | None:
    """The replica that should own ``room`` (rendezvous hashing: highest hash of
    replica + room wins), or None when there is none. Adding or removing a replica moves
    only the rooms it wins or held."""
    def weight(replica: str) -> bytes:
        return hashlib.blake2b(f"{replica}\0{room}".encode(), digest_size=8).digest()
    return max(replicas, key=weight, default=None)


class IntegrityError(RuntimeError):
    """The room's events or data contradict each other: a bug. The room is halted."""


class LeaseLost(RuntimeError):
    """Another replica owns the room now; the current batch must not be committed."""


class Backoff:
    """Exponential back-off delays: 100 ms doubling up to 2 s."""

    def __init__(self, first: float = 0.1, cap: float = 2.0) -> None:
        self.first, self.cap = first, cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first


@dataclass
class _Entry:
    id: bytes
    fields: dict[bytes, bytes]  # empty for an entry deleted from the stream


def seq_of(entry_id: bytes | str) -> int:
    """The seq of a room stream entry (its id is ``<seq>-0``)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


def stream_pairs(entries: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """``(id, fields)`` of stream entries as redis-py returns them; fields are ``{}``
    for an entry deleted from the stream, and nil entries (Redis 6.2 XAUTOCLAIM of a
    trimmed id: it stays pending and shows up again in the pending read) are dropped."""
    return [(bytes(i), dict(f or {})) for i, f in entries or () if i is not None]


def _stream_entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of a one-stream XREAD/XREADGROUP reply: RESP2's
    ``[[stream, entries]]`` or RESP3's ``{stream: [entries]}``."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [e for wrapped in reply.values() for entries in wrapped
                for e in stream_pairs(entries)]
    return [e for _stream, entries in reply for e in stream_pairs(entries)]


def _claimed_entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Entries of an XAUTOCLAIM reply: ``[cursor, entries]`` (6.2) or
    ``[cursor, entries, deleted_ids]`` (7+)."""
    if not isinstance(reply, list | tuple) or len(reply) < 2:
        return []
    return stream_pairs(reply[1])


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


E = TypeVar("E", Event, EventHead)
"""How a consumer reads its events: whole, or only their heads."""


class RoomConsumer(abc.ABC, Generic[E]):
    """Follows every room's event stream as consumer ``consumer`` of group ``group``,
    handing its subclass each event parsed as ``event_type``."""

    event_type: type[E]

    def __init__(self, redis_url: str, group: str, consumer: str, *,
                 claim_idle_ms: int = 5_000, reconcile_s: float = 2.0,
                 lease_ms: int = 10_000, batch_events: int = 256,
                 batch_frames: int = BATCH_FRAMES, max_rooms: int = 4,
                 logger: logging.Logger | None = None,
                 yield_to: Callable[[], bool] | None = None,
                 max_yield_s: float = 2.0, registry_ttl_ms: int | None = None,
                 orphan_after_s: float | None = None, coalesce_s: float = 0.0) -> None:
        self.redis_url = redis_url
        self.coalesce_s = coalesce_s
        """While small edits stream in, wait this long between rounds, so that the next
        takes what came meanwhile at once: storage's cost is per write, not per frame."""
        self.yield_to = yield_to
        """All-in-one wiring: True while the co-located gateway is taking writes."""
        self.max_yield_s = max_yield_s
        self.group = group
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms
        self.reconcile_s = reconcile_s
        self.lease_ms = lease_ms
        self.batch_events = batch_events
        self.batch_frames = batch_frames
        self.max_rooms = max_rooms
        self.registry_ttl_ms = registry_ttl_ms or lease_ms
        """A replica that has not heartbeated for this long is presumed dead."""
        self.orphan_after_s = (orphan_after_s if orphan_after_s is not None
                               else 3 * max(lease_ms, self.registry_ttl_ms) / 1000)
        """A room behind whose progress has not moved for this long is taken by any
        replica, whatever the assignment says (views of the registry that disagree)."""
        self.replicas: tuple[str, ...] = ()
        """Live replicas as of the last heartbeat (empty: no preference, take any room)."""
        self._stalled: dict[str, tuple[int, float]] = {}
        self._reconcile_now = False
        self.log = logger or logging.getLogger("trajhub.consumer")
        self.redis: aioredis.Redis = async_client(redis_url)
        self._blocking: aioredis.Redis = async_client(redis_url, blocking=True)
        self._acquire = self.redis.register_script(_ACQUIRE_LUA)
        self._renew = self.redis.register_script(_RENEW_LUA)
        self._release = self.redis.register_script(_RELEASE_LUA)
        self._heartbeat = self.redis.register_script(_HEARTBEAT_LUA)
        self.halted: set[str] = set()
        self._held: set[str] = set()
        self._room_locks: dict[str, asyncio.Lock] = {}
        self._dirty: set[str] = set()
        self._active: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    # -- what a subclass provides ----------------------------------------------------

    @abc.abstractmethod
    async def handle_batch(self, room: str, events: Sequence[E]) -> int:
        """Handle ``events`` (contiguous seqs from ``progress_seq + 1``) and advance the
        progress to the last one handled. Return how many, a prefix, were handled;
        fewer than given means "blocked, retry later". Raise IntegrityError on a bug."""

    @abc.abstractmethod
    async def progress_seq(self, room: str) -> int:
        """The last seq this consumer has fully handled for ``room`` (0 if none)."""

    @abc.abstractmethod
    def progress_key(self, room: str) -> str:
        """A Redis hash whose ``seq`` field mirrors ``progress_seq`` (for reconciliation)."""

    def lease_key(self, room: str) -> str | None:
        """The room's lease key when only one replica may work on a room at a time."""
        return None

    def registry_key(self) -> str | None:
        """A ZSET of live replicas to share rooms with (needs ``lease_key``)."""
        return None

    async def on_room_acquired(self, room: str) -> None:
        """Called when this replica (re)takes a room's lease: cached state may be stale."""
        return None

    async def on_room_dropped(self, room: str) -> None:
        """Called when the room's lease was lost or its batch failed: drop cached state."""
        return None

    async def before_ack(self, room: str, events: Sequence[E]) -> None:
        """Called with ``events`` (handled now or earlier) right before they are
        acknowledged: cleanup that must not be lost to a crash (until the ack, a restart
        finds them again, already handled, and calls this again)."""
        return None

    async def after_ack(self, room: str, events: Sequence[E]) -> None:
        """Called after ``events`` (handled now or earlier) have been acknowledged."""
        return None

    # -- assignment ----------------------------------------------------------------------

    def wants(self, room: str) -> bool:
        """Whether the assignment gives ``room`` to this replica."""
        owner = preferred_owner(room, self.replicas)
        return owner is None or owner == self.consumer

    def _may_work(self, room: str) -> bool:
        if self.wants(room):
            return True
        stalled = self._stalled.get(room)
        return stalled is not None and (
            asyncio.get_running_loop().time() - stalled[1] >= self.orphan_after_s)

    async def heartbeat(self) -> tuple[str, ...]:
        """Renew this replica in the registry and refresh the view of live replicas.
        When the view changes, rooms held but no longer ours are released (between
        batches) and a reconciliation picks up the rooms newly ours."""
        key = self.registry_key()
        if key is None:
            return self.replicas
        raw = await self._heartbeat(keys=[key], args=[self.consumer, self.registry_ttl_ms])
        live = tuple(sorted({_decode(r) for r in raw} | {self.consumer}))
        if live != self.replicas:
            self.log.info("replicas consumer=%s live=%s", self.consumer, ",".join(live),
                          extra={"event": "replicas", "replicas": list(live)})
            self.replicas = live
            self._reconcile_now = True
            self._mark_dirty(r for r in self._held if not self.wants(r))
        return live

    async def leave(self) -> None:
        """Remove this replica from the registry (its rooms go to the others at once)."""
        key = self.registry_key()
        if key is not None:
            await self.redis.zrem(key, self.consumer)
        self.replicas = ()

    async def _heartbeat_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.registry_ttl_ms / 4000)
            if stop.is_set():
                return
            try:
                await self.heartbeat()
            except RETRYABLE as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc  # redis-py converted it
                self.log.warning("heartbeat failed (%s)", exc, extra={"event": "backoff"})

    # -- leases ------------------------------------------------------------------------

    async def _take_lease(self, room: str) -> bool:
        key = self.lease_key(room)
        if key is None:
            return True
        got = int(await self._acquire(keys=[key], args=[self.consumer, self.lease_ms]))
        if got == 0:
            self._held.discard(room)
            return False
        self._held.add(room)
        if got == 2:
            await self.on_room_acquired(room)
        return True

    async def renew_lease(self, room: str) -> bool:
        """Extend the room's lease if this replica still owns it."""
        key = self.lease_key(room)
        if key is None:
            return True
        ok = bool(int(await self._renew(keys=[key], args=[self.consumer, self.lease_ms])))
        if not ok:
            self._held.discard(room)
        return ok

    async def ensure_lease(self, room: str) -> None:
        """Renew the lease or raise LeaseLost; call right before a commit point."""
        if not await self.renew_lease(room):
            raise LeaseLost(f"room {room}: lease lost to another replica")

    async def release_lease(self, room: str) -> None:
        """Give the room up (compare-and-delete: only if this replica still owns it)."""
        key = self.lease_key(room)
        self._held.discard(room)
        if key is not None:
            await self._release(keys=[key], args=[self.consumer])

    @contextlib.asynccontextmanager
    async def _keep_lease(self, room: str) -> AsyncIterator[None]:
        """Renew the lease in the background while the room is being worked on, so a
        long store call (in a thread) does not let it lapse."""
        if self.lease_key(room) is None:
            yield
            return

        # Stopped by an Event, not by cancelling: redis-py may turn a cancellation that
        # lands mid-call into a connection error, which the retry would swallow.
        done = asyncio.Event()

        async def renew() -> None:
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), self.lease_ms / 3000)
                if done.is_set():
                    return
                try:
                    if not await self.renew_lease(room):
                        return
                except RETRYABLE:
                    continue

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            done.set()
            await task

    # -- one room ----------------------------------------------------------------------

    async def process_room(self, room: str) -> int:
        """Handle everything pending for ``room`` now; return how many events were handled.

        Returns 0 without doing anything when another replica holds the room's lease,
        the room is assigned to another replica (its lease is released here if held),
        or the room is halted.
        """
        if room in self.halted:
            return 0
        lock = self._room_locks.setdefault(room, asyncio.Lock())
        async with lock:
            if not self._may_work(room):
                await self._give_up(room)
                return 0
            if not await self._take_lease(room):
                return 0
            async with self._keep_lease(room):
                handled = await self._drain(room)
            if not self.wants(room):
                await self._give_up(room)
            return handled

    async def _give_up(self, room: str) -> None:
        """Release a room held but assigned to another replica: called between batches
        (everything applied is acknowledged), so the new owner just continues."""
        if room not in self._held:
            return
        await self.release_lease(room)
        await self.on_room_dropped(room)
        self.log.info("released room=%s to %s", room, preferred_owner(room, self.replicas),
                      extra={"room": room, "event": "released"})

    async def _drain(self, room: str) -> int:
        handled = 0
        try:
            while not self._stopping:
                n, progressed, streaming = await self._round(room)
                handled += n
                if not progressed or not self._may_work(room):
                    break
                if streaming:
                    await asyncio.sleep(self.coalesce_s)
        except IntegrityError as exc:
            self.halted.add(room)
            self.log.critical("room halted room=%s: %s", room, exc,
                              extra={"room": room, "event": "halted"})
            await self.on_room_dropped(room)
        except LeaseLost as exc:
            self.log.warning("%s", exc, extra={"room": room, "event": "lease_lost"})
            await self.on_room_dropped(room)
        except BaseException:
            await self.on_room_dropped(room)
            raise
        return handled

    async def yield_to_foreground(self) -> None:
        """Wait while ``yield_to()`` says the process is busy, at most ``max_yield_s``.

        In ``trajhub serve`` every service shares one interpreter (one GIL): applying
        events while an upload streams in slows the upload's acknowledgement. Deferring
        keeps the upload fast; the bound keeps this consumer from starving.
        """
        if self.yield_to is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_yield_s
        # A poll, not an Event: "busy" includes a grace period after the last write.
        while self.yield_to() and loop.time() < deadline and not self._stopping:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async def _streaming(self, room: str, handled: Sequence[E]) -> bool:
        """Whether ``handled`` was a small batch and the room committed more meanwhile:
        notified while the batch was handled, and its last seq beyond the batch's (the
        notification may be that of an event the batch itself took)."""
        if self.coalesce_s <= 0 or not handled or room not in self._dirty \
                or sum(e.frame_count for e in handled) >= COALESCE_FRAMES:
            return False
        head = await self.redis.hget(keys.meta(room), "seq")
        return int(head or 0) > handled[-1].seq

    async def _round(self, room: str) -> tuple[int, bool, bool]:
        """Read, order, handle and acknowledge one batch. Returns (handled, go on,
        streaming): see ``_streaming`` (then the next round waits ``coalesce_s``). A
        commit made after the batch was handled (a reaction to it) does not count, so a
        lone edit is never delayed."""
        await self.yield_to_foreground()
        self._dirty.discard(room)  # this round takes what was announced so far
        progress = await self.progress_seq(room)
        entries = await self._collect(room)
        if not entries:
            return 0, False, False
        batch: list[E] = await self._ordered_batch(room, progress, entries)
        handled: int = await self.handle_batch(room, batch) if batch else 0
        streaming = await self._streaming(room, batch[:handled])
        if handled < 0 or handled > len(batch):
            raise IntegrityError(f"handle_batch returned {handled} for {len(batch)} events")
        done_seq = batch[handled - 1].seq if handled else progress
        done = [entries[s] for s in sorted(entries) if s <= done_seq]
        if done:
            handled_seqs = {e.seq for e in batch[:handled]}
            earlier: list[E] = [self._parse(room, e) for e in done
                                if e.fields and seq_of(e.id) not in handled_seqs]
            await self.before_ack(room, earlier + batch[:handled])
            await self.redis.xack(keys.events(room), self.group, *[e.id for e in done])
            await self.after_ack(room, earlier + batch[:handled])
        if handled:
            self.log.debug("handled room=%s seq=%d events=%d", room, done_seq, handled,
                           extra={"room": room, "seq": done_seq, "events": handled})
        blocked = handled < len(batch)
        return handled, bool(done) and not blocked, streaming

    async def _collect(self, room: str) -> dict[int, _Entry]:
        """Claimed, own pending and new entries of the room's stream, by seq."""
        stream = keys.events(room)
        for attempt in (0, 1):
            pipe = self.redis.pipeline(transaction=False)
            pipe.xautoclaim(stream, self.group, self.consumer, self.claim_idle_ms, "0-0",
                            count=self.batch_events)
            pipe.xreadgroup(self.group, self.consumer, {stream: "0"}, count=self.batch_events)
            pipe.xreadgroup(self.group, self.consumer, {stream: ">"}, count=self.batch_events)
            replies = await pipe.execute(raise_on_error=False)
            errors = [r for r in replies if isinstance(r, Exception)]
            if not errors:
                break
            if attempt == 0 and any("NOGROUP" in str(e) for e in errors):
                if not await self._create_group(stream):
                    return {}
                continue
            raise errors[0]
        claimed: Any
        pending: Any
        new: Any
        claimed, pending, new = replies
        out: dict[int, _Entry] = {}
        for entry_id, fields in (*_claimed_entries(claimed), *_stream_entries(pending),
                                 *_stream_entries(new)):
            self._merge(out, entry_id, fields)
        return out

    @staticmethod
    def _merge(out: dict[int, _Entry], entry_id: bytes, fields: dict[bytes, bytes] | None
               ) -> None:
        seq = seq_of(entry_id)
        known = out.get(seq)
        if known is None or (fields and not known.fields):
            out[seq] = _Entry(entry_id, dict(fields or {}))

    async def _create_group(self, stream: str) -> bool:
        """Create the consumer group (normally done by control at the room's first
        commit). Returns False when the room's stream does not exist."""
        try:
            # From 0: progress by seq makes re-reading already handled entries harmless.
            await self.redis.xgroup_create(stream, self.group, id="0")
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return True
            if "requires the key to exist" in str(exc) or "no such key" in str(exc).lower():
                return False
            raise
        return True

    async def _ordered_batch(self, room: str, progress: int,
                             entries: dict[int, _Entry]) -> list[E]:
        """Events progress+1, progress+2, ... as far as known, gaps filled by XRANGE; at
        most ``batch_events`` events, and no more once they hold ``batch_frames``
        frames (at least one event)."""
        batch: list[E] = []
        nxt = progress + 1
        highest = max(entries)
        frames = 0
        while len(batch) < self.batch_events and frames < self.batch_frames \
                and nxt <= highest:
            entry = entries.get(nxt)
            if entry is None or not entry.fields:
                highest = max(highest, await self._fill(room, nxt, entries))
                entry = entries.get(nxt)
                if entry is None or not entry.fields:
                    raise IntegrityError(f"event seq {nxt} is missing from {keys.events(room)}"
                                         f" (have up to {highest})")
            event = self._parse(room, entry)
            batch.append(event)
            frames += event.frame_count
            nxt += 1
        return batch

    async def _fill(self, room: str, seq: int, entries: dict[int, _Entry]) -> int:
        """Read the stream by seq from ``seq`` (a gap in what the group delivered)."""
        count = self.batch_events
        got = stream_pairs(await self.redis.xrange(keys.events(room), f"{seq}-0", "+",
                                                   count=count))
        self.log.info("gap filled room=%s from=%d entries=%d", room, seq, len(got),
                      extra={"room": room, "seq": seq, "event": "gap_fill"})
        highest = 0
        for entry_id, fields in got:
            self._merge(entries, entry_id, fields)
            highest = max(highest, seq_of(entry_id))
        return highest

    def _parse(self, room: str, entry: _Entry) -> E:
        try:
            event = self.event_type.from_stream(entry.fields)
        except ValueError as exc:
            raise IntegrityError(f"entry {entry.id!r} is not a valid event: {exc}") from exc
        if event.seq != seq_of(entry.id) or event.room != room:
            raise IntegrityError(f"entry {entry.id!r} holds seq {event.seq} of room "
                                 f"{event.room!r}")
        return event

    # -- discovery -----------------------------------------------------------------------

    async def rooms_behind(self) -> set[str]:
        """Rooms whose ``{r}:meta`` seq is ahead of this consumer's progress key."""
        rooms: list[str] = []
        async for raw in self.redis.sscan_iter(keys.ROOMS, count=1000):
            room = self._room_name(raw)
            if room is not None and room not in self.halted:
                rooms.append(room)
        behind: set[str] = set()
        now = asyncio.get_running_loop().time()
        stalled: dict[str, tuple[int, float]] = {}
        for i in range(0, len(rooms), 500):
            chunk = rooms[i:i + 500]
            pipe = self.redis.pipeline(transaction=False)
            for room in chunk:
                pipe.hget(keys.meta(room), "seq")
                pipe.hget(self.progress_key(room), "seq")
            values = await pipe.execute()
            for j, room in enumerate(chunk):
                seq, seen = values[2 * j], values[2 * j + 1]
                if int(seq or 0) > int(seen or 0):
                    behind.add(room)
                    since = self._stalled.get(room)
                    same = since is not None and since[0] == int(seen or 0)
                    stalled[room] = since if same and since else (int(seen or 0), now)
        self._stalled = stalled
        return behind

    def _room_name(self, raw: bytes | str) -> str | None:
        try:
            return check_room_name(_decode(raw))
        except (InvalidName, UnicodeDecodeError):
            self.log.warning("ignoring invalid room name %r", raw)
            return None

    async def _notify_tail(self) -> bytes:
        """The id of the newest notification (read from there on), or 0-0."""
        last = await self.redis.xrevrange(keys.NOTIFY, "+", "-", count=1)
        pairs = stream_pairs(last)
        return pairs[0][0] if pairs else b"0-0"

    async def _read_notify(self, last_id: bytes, block_ms: int, stop: asyncio.Event
                           ) -> tuple[bytes, set[str]]:
        read = asyncio.ensure_future(self._blocking.xread(
            {keys.NOTIFY: last_id}, count=1000, block=block_ms))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not read.done():
                read.cancel()
                with contextlib.suppress(asyncio.CancelledError, *RETRYABLE):
                    await read
        if read.cancelled():
            return last_id, set()
        rooms: set[str] = set()
        for entry_id, fields in _stream_entries(read.result()):
            last_id = entry_id
            room = self._room_name(fields.get(b"room", b""))
            if room is not None:
                rooms.add(room)
        return last_id, rooms

    # -- the run loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set; survives Redis restarts and per-room failures."""
        loop = asyncio.get_running_loop()
        self._stopping = False
        backoff = Backoff()
        last_id: bytes | None = None
        next_reconcile = 0.0  # a full reconciliation at start-up
        self.log.info("started consumer=%s group=%s", self.consumer, self.group)
        heartbeats: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                try:
                    if last_id is None:
                        last_id = await self._notify_tail()
                    if heartbeats is None and self.registry_key() is not None:
                        await self.heartbeat()  # know the others before taking rooms
                        heartbeats = asyncio.create_task(self._heartbeat_loop(stop))
                    if self._reconcile_now or loop.time() >= next_reconcile:
                        self._reconcile_now = False
                        self._mark_dirty(await self.rooms_behind())
                        next_reconcile = loop.time() + self.reconcile_s
                    wait_ms = (next_reconcile - loop.time()) * 1000
                    block_ms = int(min(NOTIFY_BLOCK_MS, max(10, wait_ms)))
                    last_id, rooms = await self._read_notify(last_id, block_ms, stop)
                    self._mark_dirty(rooms)
                    backoff.reset()
                except RETRYABLE as exc:
                    delay = backoff.next()
                    self.log.warning("redis unavailable (%s); retrying in %.1f s", exc, delay,
                                     extra={"event": "backoff"})
                    next_reconcile = 0.0  # notifications may have been missed meanwhile
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
        finally:
            if heartbeats is not None:
                heartbeats.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeats
            await self._shutdown()

    def _mark_dirty(self, rooms: Iterable[str]) -> None:
        self._dirty.update(rooms)
        self._schedule()

    def _schedule(self) -> None:
        for room in sorted(self._dirty):
            if self._stopping or len(self._active) >= self.max_rooms:
                return
            if room in self._active:
                continue  # re-run once the current pass ends
            self._dirty.discard(room)
            if room in self.halted:
                continue
            task = asyncio.create_task(self._room_task(room), name=f"room:{room}")
            self._active[room] = task
            task.add_done_callback(functools.partial(self._room_done, room))

    def _room_done(self, room: str, _task: asyncio.Task[None]) -> None:
        self._active.pop(room, None)
        self._schedule()

    async def _room_task(self, room: str) -> None:
        try:
            await self.process_room(room)
        except RETRYABLE as exc:
            self.log.warning("room=%s: redis unavailable (%s); reconciliation will retry",
                             room, exc, extra={"room": room})
        except Exception:
            self.log.exception("room=%s: failed; reconciliation will retry", room,
                               extra={"room": room})

    async def _shutdown(self) -> None:
        self._stopping = True
        active = list(self._active.values())
        if active:
            _, pending = await asyncio.wait(active, timeout=30)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        try:
            await self.leave()
        except RETRYABLE as exc:
            self.log.warning("could not leave the registry (%s)", exc)
        await self.aclose()
        self.log.info("stopped consumer=%s group=%s", self.consumer, self.group)

    async def aclose(self) -> None:
        """Release held leases (only where still the owner) and close connections."""
        for room in list(self._held):
            try:
                await self.release_lease(room)
            except RETRYABLE as exc:
                self.log.warning("room=%s: could not release lease (%s)", room, exc)
        await self.redis.aclose()
        await self._blocking.aclose()


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


async def run_until_signalled(consumer: RoomConsumer[Any]) -> None:
    """Run ``consumer`` until SIGTERM or SIGINT."""
    tune_malloc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    freeze_startup_heap()  # (its collection takes a while: a SIGTERM meanwhile is handled)
    await consumer.run(stop)
