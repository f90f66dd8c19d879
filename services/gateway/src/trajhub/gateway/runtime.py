"""The per-app runtime: settings, Redis clients, control, store, sockets, broadcaster.

Everything lives on this object (kept on the app), never in module globals, so several
gateways can run in one process.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import redis.asyncio as aioredis
import socketio
from zarr.abc.store import Store

from trajhub.control import Control, ControlUnavailable, HttpControl, IndexReader
from trajhub.gateway.body import BodyBuffers
from trajhub.gateway.broadcaster import Broadcaster
from trajhub.gateway.bus import Bus
from trajhub.gateway.cache import FrameCache
from trajhub.gateway.collab import Collab
from trajhub.gateway.collab_sockets import CollabSockets
from trajhub.gateway.errors import ApiError, NotStarted
from trajhub.gateway.forking import start_from
from trajhub.gateway.index_watch import IndexWatch
from trajhub.gateway.pipelined import PipelinedRedis
from trajhub.gateway.reader import FrameLoader
from trajhub.gateway.sessions import Sessions
from trajhub.gateway.sockets import (
    Membership,
    make_bus_emitter,
    make_emitter,
    register_socket_handlers,
)
from trajhub.gateway.staging import Stager
from trajhub.gateway.tasks import cancel
from trajhub.shared.memory import freeze_startup_heap
from trajhub.shared.ports import ControlPort, FrameStore
from trajhub.shared.redis_util import async_client, is_cluster_url
from trajhub.shared.settings import Settings
from trajhub.shared.staging import StagingPacks, sweep
from trajhub.shared.zarr_store import open_store

log = logging.getLogger(__name__)
BULK_WRITE_BYTES = 1 << 20
"""Write requests from this size on make all-in-one storage defer (see ``writing``)."""
SWEEP_EVERY_S = 600.0
"""How often a gateway looks for expired staging packs (at most; a quarter of the TTL)."""
YIELD_BACKLOG_BYTES = 32 << 20
"""... unless Redis holds this much already (staged frames waiting for storage). At
128 MiB, the 300 MB memory budget (#6) was missed by the backlog alone; 32 MiB costs a
1 GB upload ~15% of its speed (storage applies sooner, on the same cores)."""


async def _close(resource: Any) -> None:
    for name in ("aclose", "close"):
        method = getattr(resource, name, None)
        if callable(method):
            result = method()
            if inspect.isawaitable(result):
                await result
            return


class Gateway:
    def __init__(self, settings: Settings, *, control: ControlPort | None = None,
                 store: FrameStore | None = None) -> None:
        self.settings = settings
        self._given_control = control
        self._store: FrameStore | None = store
        self._store_lock = asyncio.Lock()
        self._redis: aioredis.Redis | None = None
        self._control: ControlPort | None = None
        self._index: IndexReader | None = None
        self._stager: Stager | None = None
        self._loader: FrameLoader | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.watch: IndexWatch | None = None
        self.cache = FrameCache(int(settings.cache_mb * 2**20))
        self.freeze_heap = False
        """Freeze the heap once started (``freeze_startup_heap``): set by the entry points."""
        self.bodies = BodyBuffers()
        self.answers = BodyBuffers()
        """Buffers of large read answers (their small frames, copied together)."""
        self._owned: list[Any] = []
        self.sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*")
        self.broadcaster = Broadcaster(settings.redis_url, make_emitter(self.sio))
        self.membership = Membership(self.broadcaster)
        self.bus = Bus(settings.redis_url, make_bus_emitter(self.sio), lambda: self.redis)
        self.collab = Collab(lambda: self.control, self.bus)
        self.sessions = Sessions()
        self.collab_sockets = CollabSockets(self.sio, self.sessions, self.collab)
        register_socket_handlers(self.sio, self.membership, lambda: self.redis,
                                 hooks=self.collab_sockets,
                                 unavailable=(ControlUnavailable, NotStarted, ApiError),
                                 start_room=self._start_from_default)
        self.collab_sockets.register()
        self._writes_in_flight = 0
        self._last_write_end = 0.0

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self._redis = async_client(self.settings.redis_url)
        self._owned.append(self._redis)
        self._control = self._given_control or self._make_control(self._redis)
        self._index = IndexReader(self._redis)
        self._stager = Stager(self._redis, ttl_s=self.settings.staging_ttl_s,
                              budget_bytes=int(self.settings.staging_budget_mb * 2**20),
                              cache=self.cache,
                              pack_min_bytes=int(self.settings.staging_pack_mb * 2**20))
        fast = PipelinedRedis.for_client(self._redis)
        if fast is not None:
            self._owned.append(fast)
        self._loader = FrameLoader(self._redis, self.cache, self._index, fast)
        if self.settings.index_watch and not is_cluster_url(self.settings.redis_url):
            self._start_watch(self._loader, self._control)
        try:
            self._attach_packs(await self.store())
        except ApiError as exc:  # serve anyway; /readyz reports it and reads retry
            log.error("gateway: %s", exc.detail)
        self.broadcaster.start()
        await self.bus.start()
        self._sweeper = asyncio.create_task(self._sweep_packs(), name="staging-sweep")

    def _start_watch(self, loader: FrameLoader, control: ControlPort) -> None:
        """Keep index reads while Redis has not said their room moved; a commit through
        this gateway's control tells the watch itself, before its writer is answered."""
        self.watch = IndexWatch(self.settings.redis_url)
        self.watch.start()
        loader.index.use_watch(self.watch)
        if isinstance(control, Control | HttpControl):
            control.moved = self.watch.moved

    async def _sweep_packs(self) -> None:
        """Now and then, delete staging packs whose uploads were never committed."""
        every = max(1.0, min(self.settings.staging_ttl_s / 4, SWEEP_EVERY_S))
        while True:
            await asyncio.sleep(every)
            packs = self.stager.packs if self._stager is not None else None
            if packs is None:
                continue
            try:
                gone = await sweep(self.redis, packs, self.settings.staging_ttl_s)
            except Exception:
                log.exception("gateway: sweeping staging packs failed; will retry")
                continue
            if gone:
                log.info("gateway: deleted %d expired staging packs", len(gone))

    async def stop(self) -> None:
        await cancel(self._sweeper)
        self._sweeper = None
        if self.watch is not None:
            await self.watch.stop()
            self.watch = None
        await self.collab.stop()
        await self.bus.stop()
        await self.broadcaster.stop()
        for resource in reversed(self._owned):
            try:
                await _close(resource)
            except Exception:
                log.exception("gateway: error while closing %r", resource)
        self._owned.clear()
        self._redis = None

    @contextmanager
    def writing(self, nbytes: int | None = None) -> Iterator[None]:
        """Mark a write request of ``nbytes`` (None: unknown, counted as bulk) in
        progress (see ``busy_with_writes``). Small writes (edits) are not counted:
        yielding to them would only delay their own apply."""
        if nbytes is not None and nbytes < BULK_WRITE_BYTES:
            yield
            return
        self._writes_in_flight += 1
        try:
            yield
        finally:
            self._writes_in_flight -= 1
            self._last_write_end = time.monotonic()

    def busy_with_writes(self, grace_s: float = 0.05) -> bool:
        """True while a bulk write is in progress or ended less than ``grace_s`` ago (the
        gap between one upload chunk and the next). All-in-one storage yields to it, but
        not once the staged backlog passes ``YIELD_BACKLOG_BYTES``: memory stays bounded
        however long the upload, at the cost of a slower acknowledgement."""
        if self._stager is not None and self._stager.used_estimate > YIELD_BACKLOG_BYTES:
            return False
        return (self._writes_in_flight > 0
                or time.monotonic() - self._last_write_end < grace_s)

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        await self.start()
        if self.freeze_heap:
            log.info("gateway: %d objects of the start frozen out of GC", freeze_startup_heap())
        try:
            yield
        finally:
            await self.stop()

    def _make_control(self, redis: aioredis.Redis) -> ControlPort:
        control: ControlPort
        if self.settings.control_url:
            control = HttpControl(self.settings)
            self._owned.append(control)
        else:
            control = Control(redis, undo_retention=self.settings.undo_retention)
        return control

    async def _start_from_default(self, room: str) -> bool:
        """A new room starts from the default room's data (``TRAJHUB_DEFAULT_ROOM``), as a
        fork: nothing is copied."""
        if not self.settings.default_room:
            return False
        return await start_from(self.redis, self.index, self.control, room,
                                self.settings.default_room)

    # -- parts ----------------------------------------------------------------------------
    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise NotStarted("the gateway is not running")
        return self._redis

    @property
    def control(self) -> ControlPort:
        if self._control is None:
            raise NotStarted("the gateway is not running")
        return self._control

    @property
    def index(self) -> IndexReader:
        if self._index is None:
            raise NotStarted("the gateway is not running")
        return self._index

    @property
    def stager(self) -> Stager:
        if self._stager is None:
            raise NotStarted("the gateway is not running")
        return self._stager

    @property
    def loader(self) -> FrameLoader:
        if self._loader is None:
            raise NotStarted("the gateway is not running")
        return self._loader

    async def store(self) -> FrameStore:
        """The frame store, opened on first use (503 while it cannot be opened)."""
        if self._store is not None:
            return self._store
        async with self._store_lock:
            if self._store is None:
                try:
                    self._store = await asyncio.to_thread(open_store,
                                                          self.settings.storage_url)
                except Exception as exc:
                    raise ApiError(503, f"frame store {self.settings.storage_url!r} cannot "
                                        f"be opened: {exc}") from exc
                self._owned.append(self._store)
                self._attach_packs(self._store)
            return self._store

    def _attach_packs(self, store: FrameStore) -> None:
        """Stage bulk uploads beside the store's rooms (a store that is not Zarr: never)."""
        root = getattr(store, "store", None)
        if self._stager is not None and isinstance(root, Store):
            self._stager.packs = StagingPacks(root, fsync=self.settings.staging_fsync)
