"""``trajhub-snapshotter``: run the snapshotter until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio

from trajhub.shared.consumer import configure_logging, run_until_signalled
from trajhub.shared.settings import Settings
from trajhub.snapshotter.worker import SnapshotterWorker


def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    worker = SnapshotterWorker.from_settings(settings)
    asyncio.run(run_until_signalled(worker))


if __name__ == "__main__":
    main()
