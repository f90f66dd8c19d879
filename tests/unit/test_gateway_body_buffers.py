"""The gateway's reusable body and answer buffers: reused only when nothing refers to them."""

from __future__ import annotations

import numpy as np
import pytest

from trajhub.gateway.body import BodyBuffers
from trajhub.gateway.reader import coalesce_into

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


def test_a_short_last_body_does_not_push_out_a_full_sized_buffer() -> None:
    """An upload's bodies are full-sized but for its last: the pool keeps the full-sized
    buffers, which the next upload's bodies all fit in."""
    pool = BodyBuffers(keep=2, min_bytes=MB, max_bytes=64 * MB)
    full = [bytearray(16 * MB) for _ in range(2)]
    for buf in (*full, bytearray(4 * MB)):
        pool.give(buf)
    assert [id(b) for b in pool._free] == [id(b) for b in full]
    del full
    assert len(pool.take(12 * MB)) == 12 * MB and len(pool._free) == 1, "one reused"
    pool.give(bytearray(3 * MB))
    assert [len(b) for b in pool._free] == [3 * MB, 16 * MB], "room for a smaller one"


def test_take_at_least_hands_out_the_smallest_free_buffer_that_holds_the_size() -> None:
    pool = BodyBuffers(keep=3, min_bytes=MB, max_bytes=64 * MB)
    for size in (16 * MB, 6 * MB, 10 * MB):
        pool.give(bytearray(size))
    sizes = {id(b): len(b) for b in pool._free}
    small = pool.take_at_least(2 * MB)  # far below half of any: still reused, as it is
    assert sizes.get(id(small)) == 6 * MB and len(small) == 6 * MB
    middle = pool.take_at_least(8 * MB)
    assert sizes.get(id(middle)) == 10 * MB and len(middle) == 10 * MB
    viewed = memoryview(pool._free[0])
    fresh = pool.take_at_least(12 * MB)  # the one that holds it is still viewed
    assert id(fresh) not in sizes and len(fresh) == 12 * MB
    viewed.release()
    assert len(pool.take_at_least(12 * MB)) == 16 * MB
    assert len(pool.take_at_least(17 * MB)) == 17 * MB, "none holds it: a new one"


def test_coalesce_into_a_larger_buffer_uses_its_start_and_refuses_a_smaller_one() -> None:
    large = bytes(range(256)) * 8
    parts: list[bytes | memoryview] = [b"head", b"a" * 10, large, b"b" * 5, b"c" * 7]
    buf = bytearray(b"\xff" * 100)
    out = coalesce_into(parts, 1024, buf)
    assert b"".join(out) == b"".join(parts)
    assert out[1] is large, "a large part is sent as it is"
    assert buf[:14] == b"head" + b"a" * 10 and buf[14:26] == b"b" * 5 + b"c" * 7
    with pytest.raises(ValueError, match="25-byte buffer for 26 bytes"):
        coalesce_into(parts, 1024, bytearray(25))
