"""``trajhub-storage``: apply room events to the store until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio

from trajhub.shared.consumer import configure_logging, run_until_signalled
from trajhub.shared.settings import Settings
from trajhub.shared.zarr_store import open_store
from trajhub.storage.blob_archive import BlobArchive
from trajhub.storage.worker import StorageWorker


def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    store = open_store(settings.storage_url)
    archive = BlobArchive(store.store) if settings.archive_blobs else None
    worker = StorageWorker(settings.redis_url, store, settings.consumer_name,
                           archive=archive,
                           coalesce_s=settings.apply_coalesce_ms / 1000)
    asyncio.run(run_until_signalled(worker))


if __name__ == "__main__":
    main()
