"""The system tests of ``tests/system`` on a 3-primary Redis Cluster.

``redis_url`` (which ``tests/system/conftest.py``'s ``services`` fixture hands to every
service as TRAJHUB_REDIS_URL) is overridden with a ``redis+cluster://`` URL. The test
functions open their own plain ``redis.Redis.from_url`` clients to look at room keys;
those go through ``trajhub.shared.redis_util.sync_client`` here, which understands
the cluster URL, so the functions themselves run unchanged.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import tests.system.test_system as system_tests
from tests.cluster_fixture import cluster_url, redis_cluster
from trajhub.shared.redis_util import sync_client

__all__ = ["cluster_url", "redis_cluster"]


@pytest.fixture
def redis_url(cluster_url: str) -> str:
    return cluster_url


@pytest.fixture(autouse=True)
def _cluster_aware_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(system_tests, "redis",
                        SimpleNamespace(Redis=SimpleNamespace(from_url=sync_client)))
