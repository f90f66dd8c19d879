"""``python -m trajhub.shared.healthcheck [--http]``: the containers' health check.

Without arguments: exit 0 if Redis (``TRAJHUB_REDIS_URL``) answers PING, else 1; for the
services without HTTP (storage, snapshotter), which are no use without Redis and end
their process on every other failure. ``--http``: exit 0 if
``http://127.0.0.1:$TRAJHUB_PORT/healthz`` answers 200 (gateway, control).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

import redis

from trajhub.shared.settings import Settings

TIMEOUT_S = 3.0


def redis_ok(url: str, timeout_s: float = TIMEOUT_S) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                  socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def http_ok(url: str, timeout_s: float = TIMEOUT_S) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    settings = Settings.from_env()
    if args == ["--http"]:
        ok, what = http_ok(f"http://127.0.0.1:{settings.port}/healthz"), "/healthz"
    elif not args:
        ok, what = redis_ok(settings.redis_url), "Redis"
    else:
        print("usage: python -m trajhub.shared.healthcheck [--http]", file=sys.stderr)
        return 2
    if not ok:
        # not the URL: it may carry a password, and health check output lands in logs
        print(f"trajhub healthcheck: {what} does not answer", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
