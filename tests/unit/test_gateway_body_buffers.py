"""The gateway's reusable request-body buffers: reused only when nothing refers to them."""

from __future__ import annotations

import numpy as np

from trajhub.gateway.body import BodyBuffers

MB = 2**20


def test_a_returned_buffer_is_reused_in_place_for_a_size_that_fits() -> None:
    pool = BodyBuffers(keep=2, min_bytes=MB, max_bytes=64 * MB)
    first = pool.take(16 * MB)
    first[-1] = 7
    alloc, ident = first.__alloc__(), id(first)
    pool.give(first)
    del first
    for size in (16 * MB - 12345, 9 * MB, 16 * MB):  # smaller, then back up
        buf = pool.take(size)
        assert id(buf) == ident and len(buf) == size
        assert buf.__alloc__() == alloc, "resized within its allocation, never moved"
        buf[:] = b"\x01" * size
        pool.give(buf)
        del buf
    # Half the allocation or less would make bytearray reallocate: a new buffer then.
    small = pool.take(7 * MB)
    assert id(small) != ident and len(small) == 7 * MB


def test_a_buffer_still_viewed_or_held_is_not_handed_out() -> None:
    pool = BodyBuffers(keep=2, min_bytes=MB, max_bytes=64 * MB)
    body = pool.take(4 * MB)
    view = memoryview(body)[10:20]
    pool.give(body)
    held = body
    del body
    assert pool.take(4 * MB) is not held, "a view into it is alive"
    view.release()
    array = np.frombuffer(held, np.uint8)
    assert pool.take(4 * MB) is not held, "an array into it is alive"
    del array
    assert pool.take(4 * MB) is not held, "someone still holds it"
    ident = id(held)
    del held
    assert id(pool.take(4 * MB)) == ident


def test_the_pool_keeps_few_buffers_and_none_too_small_or_large() -> None:
    pool = BodyBuffers(keep=2, min_bytes=MB, max_bytes=8 * MB)
    for size in (MB // 2, 16 * MB):
        pool.give(bytearray(size))
    assert pool._free == []
    bufs = [bytearray(2 * MB) for _ in range(3)]
    for b in bufs:
        pool.give(b)
        pool.give(b)  # twice is once
    assert [id(b) for b in pool._free] == [id(b) for b in bufs[1:]]
    assert len(pool.take(MB // 4)) == MB // 4, "small bodies are never pooled"
