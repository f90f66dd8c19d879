"""The server under test, as ``trajhub serve`` (all-in-one) or as the four services.

Both run on an embedded redis-server this bench starts (AOF everysec, unix socket), so
the bench can reach the same Redis (EVALSHA baseline, apply progress) and count its RSS
with the server's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from _serve import free_port, wait_ready

from trajhub.shared.embedded_redis import EmbeddedRedis

BIN = Path(sys.executable).parent
SERVICES = ("control", "storage", "snapshotter", "gateway")


class Deployment:
    """Redis plus the server processes; ``restart()`` keeps Redis and the data."""

    def __init__(self, root: Path, services: bool = False,
                 env: dict[str, str] | None = None) -> None:
        self.root = root
        self.services = services
        self.extra_env = env or {}
        self.redis = EmbeddedRedis(root / "redis")
        self.port = free_port()
        self.control_port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def mode(self) -> str:
        return "services" if self.services else "all-in-one"

    def start(self) -> Deployment:
        self.redis.start()
        self._start_server()
        return self

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "TRAJHUB_LOG_LEVEL": "WARNING", **self.extra_env}
        env.pop("TRAJHUB_CONTROL_URL", None)
        return env

    def _start_server(self) -> None:
        if not self.services:
            cmd = [sys.executable, "-m", "trajhub.cli", "serve", "--host", "127.0.0.1",
                   "--port", str(self.port), "--data-dir", str(self.root / "serve"),
                   "--redis-url", self.redis_url]
            proc = subprocess.Popen(cmd, env=self._env(), stdout=subprocess.DEVNULL)
            self.procs = [wait_ready(proc, self.port)]
            return
        for name in SERVICES:
            env = {**self._env(), "TRAJHUB_REDIS_URL": self.redis_url,
                   "TRAJHUB_STORAGE_URL": str(self.root / "zarr"),
                   "TRAJHUB_CONSUMER_NAME": f"bench-{name}", "TRAJHUB_HOST": "127.0.0.1"}
            if name == "gateway":
                env |= {"TRAJHUB_PORT": str(self.port),
                        "TRAJHUB_CONTROL_URL": f"http://127.0.0.1:{self.control_port}"}
            if name == "control":
                env["TRAJHUB_PORT"] = str(self.control_port)
            proc = subprocess.Popen([str(BIN / f"trajhub-{name}")], env=env,
                                    stdout=subprocess.DEVNULL)
            self.procs.append(proc)
            if name in ("control", "gateway"):
                wait_ready(proc, self.control_port if name == "control" else self.port)

    def _stop_server(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs = []

    def restart(self) -> None:
        """Restart the server processes (cold caches); Redis and the store stay."""
        self._stop_server()
        self._start_server()

    def stop(self) -> None:
        self._stop_server()
        self.redis.stop()

    def pids(self) -> list[int]:
        """The server processes and Redis (their children are added by the sampler)."""
        pids = [p.pid for p in self.procs]
        if self.redis.proc is not None:
            pids.append(self.redis.proc.pid)
        return pids

    def __enter__(self) -> Deployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _memory(proc: psutil.Process) -> int:
    # PSS, not RSS: Redis forks to rewrite its AOF, and the child's RSS repeats every
    # page it still shares with its parent; PSS splits shared pages between them.
    try:
        return int(proc.memory_full_info().pss)
    except (psutil.AccessDenied, AttributeError):
        return int(proc.memory_info().rss)


def tree_rss(pids: list[int]) -> int:
    """Memory (summed PSS) of the processes and all their descendants, each once."""
    seen: dict[int, int] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                if proc.pid not in seen:
                    seen[proc.pid] = _memory(proc)
        except psutil.Error:
            continue
    return sum(seen.values())


def rss_by_process(pids: list[int]) -> dict[str, float]:
    """MB (PSS) per process of the trees (``name:pid``), for telling who grows."""
    out: dict[str, float] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                name = proc.name()
                if name.startswith("python"):  # name it by its module or console script
                    name = next((Path(c).name for c in proc.cmdline() if "trajhub" in c), name)
                out[f"{name}:{proc.pid}"] = round(_memory(proc) / 2**20, 1)
        except psutil.Error:
            continue
    return out


class RssSampler:
    """Peak summed RSS of process trees, sampled every ``every`` seconds until stop()."""

    def __init__(self, pids: list[int], every: float = 0.02) -> None:
        self.pids = pids
        self.every = every
        self.peak = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.perf_counter()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = tree_rss(self.pids)
            self.peak = max(self.peak, rss)
            self.samples.append((time.perf_counter() - self._t0, rss))
            time.sleep(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak
