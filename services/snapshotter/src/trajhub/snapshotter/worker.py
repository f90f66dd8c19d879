"""Snapshotter: follows every room's events (group ``snapshotter``).

For now it only records the seq it has seen per room (``{r}:snapshotter``) and
acknowledges. Snapshots of the index, archived event segments and stream trimming
come later; they plug in at :meth:`SnapshotterWorker.handle_events`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from trajhub.shared import keys
from trajhub.shared.consumer import RoomConsumer
from trajhub.shared.events import Event

log = logging.getLogger("trajhub.snapshotter")

# The seen seq only moves forward, even if two replicas race on one room.
_ADVANCE_LUA = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if tonumber(ARGV[1]) > cur then
  redis.call('HSET', KEYS[1], 'seq', ARGV[1])
  return 1
end
return 0
"""


class SnapshotterWorker(RoomConsumer):
    def __init__(self, redis_url: str, consumer: str, *, claim_idle_ms: int = 5_000,
                 reconcile_s: float = 2.0, batch_events: int = 256) -> None:
        super().__init__(redis_url, keys.SNAPSHOTTER_GROUP, consumer,
                         claim_idle_ms=claim_idle_ms, reconcile_s=reconcile_s,
                         batch_events=batch_events, logger=log)
        self._advance = self.redis.register_script(_ADVANCE_LUA)

    async def handle_events(self, room: str, events: Sequence[Event]) -> None:
        """The extension point: ``events`` are contiguous, in seq order, each seen once
        per successful pass (at least once overall). Raise to retry them later."""

    def progress_key(self, room: str) -> str:
        return keys.snapshotter_state(room)

    async def progress_seq(self, room: str) -> int:
        seq = await self.redis.hget(keys.snapshotter_state(room), "seq")
        return int(seq or 0)

    async def handle_batch(self, room: str, events: Sequence[Event]) -> int:
        await self.handle_events(room, events)
        await self._advance(keys=[keys.snapshotter_state(room)], args=[events[-1].seq])
        log.debug("seen room=%s seq=%d events=%d", room, events[-1].seq, len(events),
                  extra={"room": room, "seq": events[-1].seq, "events": len(events)})
        return len(events)
