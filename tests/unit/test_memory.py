import subprocess
import sys
from pathlib import Path

import psutil
import redis

from trajhub.shared.embedded_redis import EmbeddedRedis
from trajhub.shared.memory import tune_malloc


def test_tune_malloc_applies_on_linux_glibc() -> None:
    assert tune_malloc() is sys.platform.startswith("linux")


def test_freeze_startup_heap_takes_what_is_alive_out_of_collections() -> None:
    """In a process of its own (freezing the test process would keep its garbage)."""
    script = """
import gc
from trajhub.shared.memory import freeze_startup_heap
kept = [[i] for i in range(50_000)]  # alive at the freeze: never walked again
frozen = freeze_startup_heap()
assert frozen == gc.get_freeze_count() > 50_000, frozen
assert not any(kept[0] is o for o in gc.get_objects())  # out of every generation
later = [[i] for i in range(10)]
assert any(later[0] is o for o in gc.get_objects())  # what comes after is not
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_embedded_redis_gives_freed_blob_memory_back(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path).start()
    try:
        assert server.proc is not None
        proc = psutil.Process(server.proc.pid)
        client = redis.Redis.from_url(server.url)
        before = proc.memory_info().rss
        blob = b"x" * (1 << 20)
        for i in range(64):  # 64 MiB of staged frames ...
            client.set(f"blob:{i}", blob)
        assert proc.memory_info().rss - before > 48 << 20
        client.delete(*(f"blob:{i}" for i in range(64)))  # ... applied and deleted
        assert proc.memory_info().rss - before < 16 << 20
        client.close()
    finally:
        server.stop()
