"""The four services as separate OS processes (their console scripts) on one redis-server.

Several instances of a service run under their own keys (``start("storage", "storage-2")``);
each gateway or control instance gets its own port."""

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
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def storage_url(self) -> str:
        return str(self.data_dir / "zarr")

    def port(self, key: str) -> int:
        """The HTTP port of gateway or control instance ``key``."""
        if key == "gateway":
            return self.gateway_port
        if key == "control":
            return self.control_port
        return self.ports.setdefault(key, free_port())

    def url_of(self, key: str) -> str:
        return f"http://127.0.0.1:{self.port(key)}"

    def env(self, name: str, key: str | None = None, control: str = "control"
            ) -> dict[str, str]:
        key = key or name
        env = dict(os.environ)
        env.update({
            "TRAJHUB_REDIS_URL": self.redis_url,
            "TRAJHUB_STORAGE_URL": self.storage_url,
            "TRAJHUB_CONSUMER_NAME": f"{key}-{len(self.procs)}-{os.getpid()}",
            "TRAJHUB_LOG_LEVEL": "WARNING",
        })
        if name == "gateway":
            env.update({"TRAJHUB_PORT": str(self.port(key)),
                        "TRAJHUB_CONTROL_URL": self.url_of(control)})
        if name == "control":
            env["TRAJHUB_PORT"] = str(self.port(key))
        return env

    def start(self, name: str, key: str | None = None, *, control: str = "control",
              env: dict[str, str] | None = None, wait: bool = True
              ) -> subprocess.Popen[bytes]:
        """Start service ``name`` as instance ``key`` (default: ``name``); a gateway
        talks to control instance ``control``; ``env`` overrides settings; ``wait``:
        until a gateway or control answers ``/readyz``."""
        key = key or name
        log = open(self.data_dir / f"{key}.log", "ab")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen([str(BIN / f"trajhub-{name}")],
                                env={**self.env(name, key, control), **(env or {})},
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs[key] = proc
        if wait and name in ("gateway", "control"):
            self.wait_ready(key)
        return proc

    def wait_ready(self, key: str) -> None:
        wait_until(lambda: http_ok(f"{self.url_of(key)}/readyz"), 60, f"{key} ready")

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
