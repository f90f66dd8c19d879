"""Timing helpers shared by the benchmarks (percentiles, no GC in timed calls)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


def percentile(ms: list[float], q: float) -> float:
    ordered = sorted(ms)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def stats(ms: list[float], digits: int = 4) -> dict[str, float]:
    return {"p50_ms": round(percentile(ms, 0.50), digits),
            "p99_ms": round(percentile(ms, 0.99), digits), "n": len(ms)}


@contextmanager
def no_gc() -> Iterator[None]:
    """Keep the bench's own garbage collector out of the timed calls."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
