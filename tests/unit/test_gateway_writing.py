"""The all-in-one hint that a gateway is taking writes (storage yields to it)."""

import redis.asyncio as aioredis

from trajhub.gateway.runtime import BULK_WRITE_BYTES, YIELD_BACKLOG_BYTES, Gateway
from trajhub.gateway.staging import Stager
from trajhub.shared.settings import Settings


def test_busy_with_writes_covers_a_write_and_its_grace_period() -> None:
    gw = Gateway(Settings())
    assert not gw.busy_with_writes()
    with gw.writing():
        assert gw.busy_with_writes(grace_s=0)
        with gw.writing():
            pass
        assert gw.busy_with_writes(grace_s=0), "one of two writes still runs"
    assert gw.busy_with_writes(grace_s=60)
    assert not gw.busy_with_writes(grace_s=0)


def test_a_failed_write_does_not_leave_the_gateway_busy() -> None:
    gw = Gateway(Settings())
    try:
        with gw.writing():
            raise ValueError("bad upload")
    except ValueError:
        pass
    assert not gw.busy_with_writes(grace_s=0)


def test_small_writes_do_not_make_storage_wait() -> None:
    gw = Gateway(Settings())
    with gw.writing(nbytes=4096):
        assert not gw.busy_with_writes(grace_s=60), "an edit is not a bulk upload"
    assert not gw.busy_with_writes(grace_s=60)
    with gw.writing(nbytes=BULK_WRITE_BYTES):
        assert gw.busy_with_writes(grace_s=0)
    assert gw.busy_with_writes(grace_s=60)


async def test_storage_stops_deferring_once_the_staged_backlog_is_large() -> None:
    gw = Gateway(Settings())
    stager = Stager(aioredis.Redis(), ttl_s=60, budget_bytes=1 << 40)
    gw._stager = stager
    with gw.writing():
        assert gw.busy_with_writes(grace_s=0)
        await stager.staged("r", ["0" * 64], [b"x" * (YIELD_BACKLOG_BYTES + 1)])
        assert not gw.busy_with_writes(grace_s=0), "the backlog must drain during uploads"
