"""Redis connections with timeouts and retries that suit each use.

Every Redis client trajhub makes comes from here, so that one URL picks a single
server or a Redis Cluster:

- ``redis://``, ``rediss://``, ``unix://``: one server (redis-py's own URL format);
- ``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster://``
  for TLS): a Redis Cluster, given by one or more of its nodes (the client discovers
  the rest).

A cluster client is a :class:`redis.asyncio.cluster.RedisCluster`; it is typed as
``redis.asyncio.Redis`` because trajhub uses only the command API both share (every
script and MULTI touches one room's hash tag, so one slot).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote

import hiredis
import redis
import redis.asyncio as aioredis
import redis.cluster
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry as SyncRetry

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
"""Cluster URL scheme -> TLS."""


@dataclass(frozen=True)
class ClusterURL:
    """A parsed ``redis+cluster://`` URL."""

    nodes: list[tuple[str, int]]
    username: str | None = None
    password: str | None = None
    ssl: bool = False

    def node_url(self, host: str, port: int) -> str:
        """A plain ``redis://`` URL of one node (same credentials and TLS)."""
        auth = ""
        if self.password is not None:
            auth = f"{self.username or ''}:{self.password}@"
        elif self.username:
            auth = f"{self.username}@"
        return f"{'rediss' if self.ssl else 'redis'}://{auth}{host}:{port}/0"


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterURL:
    """``redis+cluster://[user:password@]host:port[,host:port...][/0]`` (a query string
    is ignored)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL: {url!r}")
    rest = rest.partition("?")[0]
    rest = rest.rstrip("/")
    if "/" in rest and rest.rsplit("/", 1)[1] not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0")
    rest = rest.split("/", 1)[0]
    username = password = None
    if "@" in rest:
        auth, rest = rest.rsplit("@", 1)
        user, has_password, secret = auth.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    nodes: list[tuple[str, int]] = []
    for part in rest.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"Redis Cluster node must be host:port, got {part!r} in {url!r}")
        nodes.append((host.strip("[]"), int(port)))
    return ClusterURL(nodes, username, password, CLUSTER_SCHEMES[scheme.lower()])


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=0.5, base=0.01), 3)


FAST_PACK_MIN_ARGS = 16
_PLAIN_ARGS = frozenset({str, bytes, int})


class _HiredisPacking:
    """``pack_command`` by hiredis (C) for a command of many plain arguments. redis-py's
    asyncio connection packs in Python and joins its buffer again for every argument:
    ~1.1 ms for a script call with 2,000 keys and arguments (a staging or commit of
    1,000 frames), against ~0.15 ms. The bytes are the same; anything else (a
    memoryview sent without a copy, a float, which redis-py spells with ``repr``, a
    command name with a space, which it splits) stays with redis-py."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if (len(args) >= FAST_PACK_MIN_ARGS and set(map(type, args)) <= _PLAIN_ARGS
                and not isinstance(args[0], int) and " " not in str(args[0])):
            try:
                return [hiredis.pack_command(args)]
            except (TypeError, ValueError, OverflowError):
                pass  # (an int beyond 64 bits, say): redis-py says what is wrong
        packed: list[bytes] = super().pack_command(*args)  # type: ignore[misc]
        return packed


class _FastConnection(_HiredisPacking, aioredis.Connection):
    pass


class _FastUnixConnection(_HiredisPacking, aioredis.UnixDomainSocketConnection):
    pass


class _FastSSLConnection(_HiredisPacking, aioredis.SSLConnection):
    pass


_FAST_CLASS: dict[type[Any], type[Any]] = {
    aioredis.Connection: _FastConnection,
    aioredis.UnixDomainSocketConnection: _FastUnixConnection,
    aioredis.SSLConnection: _FastSSLConnection,
}


def async_client(url: str, *, blocking: bool = False) -> aioredis.Redis:
    """An asyncio client that reconnects and resends a command after a dropped
    connection (3 tries, 10 ms .. 0.5 s apart). That is safe because every command
    trajhub sends is idempotent: commit scripts carry an idempotency key (control adds
    one when a caller did not), staging is SET NX, storage and consumer writes are
    absolute (HSET, XACK, UNLINK).

    ``blocking=True`` gives one without a socket timeout, for consumers that sit in
    XREAD/XREADGROUP BLOCK (whose BLOCK must stay the only timeout in play).

    A ``redis+cluster://`` URL gives a cluster client (see the module docstring)."""
    common: dict[str, Any] = {
        "socket_timeout": None if blocking else 10.0,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 30,
        "decode_responses": False,
        "retry": _retry(),
        "retry_on_error": [ConnectionError, TimeoutError],
    }
    if is_cluster_url(url):
        parsed = parse_cluster_url(url)
        cluster = AsyncRedisCluster(
            startup_nodes=[AsyncClusterNode(host, port) for host, port in parsed.nodes],
            username=parsed.username, password=parsed.password, ssl=parsed.ssl,
            **common)
        # Same command API; see the module docstring.
        return cast(aioredis.Redis, cluster)
    client = aioredis.Redis.from_url(url, **common)
    pool = client.connection_pool
    pool.connection_class = _FAST_CLASS.get(pool.connection_class, pool.connection_class)
    return client


def pubsub_client(url: str) -> aioredis.Redis:
    """A blocking (no socket timeout) client for SUBSCRIBE. On a cluster, a plain
    client to one node picked at random: a PUBLISH on any node reaches the
    subscribers of every node, and a resubscription after an error may pick another
    node."""
    if not is_cluster_url(url):
        return async_client(url, blocking=True)
    parsed = parse_cluster_url(url)
    host, port = random.choice(parsed.nodes)
    return async_client(parsed.node_url(host, port), blocking=True)


def sync_client(url: str) -> redis.Redis:
    """A synchronous client (CLI, scripts, tests) for a server or cluster URL; typed
    as ``redis.Redis`` like :func:`async_client`."""
    if is_cluster_url(url):
        parsed = parse_cluster_url(url)
        cluster = redis.cluster.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
                           for host, port in parsed.nodes],
            username=parsed.username, password=parsed.password, ssl=parsed.ssl,
            socket_timeout=10.0, socket_connect_timeout=5.0,
            retry=SyncRetry(ExponentialBackoff(cap=0.5, base=0.01), 3))
        return cast(redis.Redis, cluster)
    return redis.Redis.from_url(url, socket_timeout=10.0, socket_connect_timeout=5.0)


def node_urls(url: str) -> list[str]:
    """Plain URLs of the startup nodes of a cluster URL (or ``[url]`` for a server)."""
    if not is_cluster_url(url):
        return [url]
    parsed = parse_cluster_url(url)
    return [parsed.node_url(host, port) for host, port in parsed.nodes]


def is_cluster(client: object) -> bool:
    """Whether ``client`` (from :func:`async_client` or :func:`sync_client`) talks to a
    Redis Cluster."""
    return isinstance(client, AsyncRedisCluster | redis.cluster.RedisCluster)


async def used_memory(client: aioredis.Redis) -> int:
    """``used_memory`` of the server, or of the fullest primary of a cluster."""
    if is_cluster(client):
        cluster = cast(AsyncRedisCluster, client)
        per_node: Any = await cluster.info("memory", target_nodes=AsyncRedisCluster.PRIMARIES)
        return max(int(info["used_memory"]) for info in per_node.values())
    info: Any = await client.info("memory")
    return int(info["used_memory"])
