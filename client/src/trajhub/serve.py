"""All-in-one: the four services as asyncio tasks in one process, same code paths as the
distributed deployment; only the wiring differs (control in-process, one shared store)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from trajhub.shared.memory import tune_malloc
from trajhub.shared.settings import Settings

log = logging.getLogger("trajhub.serve")


def _require_server_extra() -> None:
    try:
        import trajhub.gateway
        import trajhub.storage  # noqa: F401
    except ImportError as exc:
        raise SystemExit(
            f"trajhub serve needs the server parts: pip install 'trajhub[server]' ({exc})"
        ) from None


async def run_all_in_one(settings: Settings, *, data_dir: Path, embedded: bool) -> None:
    """Run gateway, control, storage and snapshotter until SIGINT/SIGTERM."""
    import uvicorn

    from trajhub.gateway.app import create_app
    from trajhub.shared.embedded_redis import EmbeddedRedis
    from trajhub.shared.history_store import ZarrHistoryStore
    from trajhub.shared.zarr_store import open_store
    from trajhub.snapshotter.worker import SnapshotterWorker
    from trajhub.storage.blob_archive import BlobArchive
    from trajhub.storage.worker import StorageWorker

    redis_proc: EmbeddedRedis | None = None
    if embedded:
        redis_proc = EmbeddedRedis(data_dir / "redis").start()
        settings = settings.model_copy(update={"redis_url": redis_proc.url})
        log.info("embedded redis-server on %s (AOF in %s)", redis_proc.url, data_dir / "redis")
    try:
        store = open_store(settings.storage_url)
        app = create_app(settings, store=store)
        app.gateway.freeze_heap = True  # once started: storage's and the rest's too
        stop = asyncio.Event()
        consumer = settings.consumer_name
        # One process, one GIL: storage lets in-flight uploads finish first (bounded).
        storage = StorageWorker(settings.redis_url, store, f"{consumer}-storage",
                                yield_to=app.gateway.busy_with_writes,
                                coalesce_s=settings.apply_coalesce_ms / 1000,
                                archive=BlobArchive(store.store)
                                if settings.archive_blobs else None)
        # The history store shares the frame store's zarr store (and its snapshots).
        snapshotter = SnapshotterWorker.from_settings(
            settings, ZarrHistoryStore(store.store), f"{consumer}-snapshotter",
            yield_to=app.gateway.busy_with_writes)
        workers = [asyncio.create_task(storage.run(stop), name="storage"),
                   asyncio.create_task(snapshotter.run(stop), name="snapshotter")]
        config = uvicorn.Config(app, host=settings.host, port=settings.port,
                                log_level=settings.log_level.lower(), lifespan="on",
                                access_log=settings.access_log,
                                loop="none", http="auto", ws="auto")
        server = uvicorn.Server(config)
        # uvicorn restores the previous handlers after its graceful shutdown and then
        # re-raises the signal; with these in place that re-raise only lands here, so the
        # workers and the embedded redis get stopped below and the process exits 0.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        print(f"trajhub serving http://{settings.host}:{settings.port}  "
              f"(data: {data_dir}, redis: {settings.redis_url})", flush=True)
        try:
            await server.serve()  # returns after SIGINT/SIGTERM (uvicorn handles them)
        finally:
            stop.set()
            await asyncio.gather(*workers, return_exceptions=True)
    finally:
        if redis_proc is not None:
            redis_proc.stop()


def serve(host: str, port: int, data_dir: str, redis_url: str | None) -> None:
    _require_server_extra()
    tune_malloc()
    root = Path(data_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    settings = Settings.from_env(
        host=host, port=port, redis_url=redis_url,
        storage_url=os.environ.get("TRAJHUB_STORAGE_URL") or str(root / "zarr"),
    )
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main = run_all_in_one(settings, data_dir=root, embedded=redis_url is None)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
