"""The four services as separate OS processes (their console scripts) on one redis-server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import free_port, http_ok, wait_until

BIN = Path(sys.executable).parent


@dataclass
class Services:
    redis_url: str
    data_dir: Path
    gateway_port: int = field(default_factory=free_port)
    control_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def storage_url(self) -> str:
        return str(self.data_dir / "zarr")

    def env(self, name: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "TRAJHUB_REDIS_URL": self.redis_url,
            "TRAJHUB_STORAGE_URL": self.storage_url,
            "TRAJHUB_CONSUMER_NAME": f"{name}-{len(self.procs)}-{os.getpid()}",
            "TRAJHUB_LOG_LEVEL": "WARNING",
        })
        if name == "gateway":
            env.update({"TRAJHUB_PORT": str(self.gateway_port),
                        "TRAJHUB_CONTROL_URL": f"http://127.0.0.1:{self.control_port}"})
        if name == "control":
            env["TRAJHUB_PORT"] = str(self.control_port)
        return env

    def start(self, name: str) -> subprocess.Popen[bytes]:
        log = open(self.data_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen([str(BIN / f"trajhub-{name}")], env=self.env(name),
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        if name == "gateway":
            wait_until(lambda: http_ok(f"{self.url}/readyz"), 60, "gateway ready")
        if name == "control":
            wait_until(lambda: http_ok(f"http://127.0.0.1:{self.control_port}/readyz"), 60,
                       "control ready")
        return proc

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise AssertionError(f"{name} did not stop on SIGTERM") from None
        self.procs.clear()
        unclean = {name: code for name, code in codes.items() if code != 0}
        assert not unclean, f"services did not exit cleanly on SIGTERM: {unclean}"

    def log(self, name: str) -> str:
        path = self.data_dir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


@pytest.fixture
def services(redis_url: str, tmp_path: Path) -> Iterator[Services]:
    svc = Services(redis_url=redis_url, data_dir=tmp_path)
    for name in ("control", "storage", "snapshotter", "gateway"):
        svc.start(name)
    try:
        yield svc
    finally:
        svc.stop_all()
