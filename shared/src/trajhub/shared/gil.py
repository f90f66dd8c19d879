"""Letting other threads of the process have the GIL during long pure-Python loops."""

from __future__ import annotations

import time

BREATHE_EVERY_S = 0.001
"""Work between two breaths: ``time.sleep(0)`` costs ~80 us on this project's VMs, so a
breath per few frames cost a long loop a fifth of its time; once a millisecond, under a
tenth."""


class Breather:
    """Called in a long loop, lets another thread take the GIL (``time.sleep(0)``) once
    per ``every_s`` of work: an event loop sharing the process (the gateway's, in the
    all-in-one server) then waits about that long, not the 5 ms switch interval."""

    def __init__(self, every_s: float = BREATHE_EVERY_S) -> None:
        self.every_s = every_s
        self._next = time.perf_counter() + every_s

    def __call__(self) -> None:
        if time.perf_counter() >= self._next:
            time.sleep(0)
            self._next = time.perf_counter() + self.every_s
