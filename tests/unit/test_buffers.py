"""BlockPool and RecentBuffers: memory reused only once nothing refers to it any more."""

from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np

from trajhub.shared.buffers import (
    BlockPool,
    RecentBuffers,
    populate,
    populated_bytearray,
    unexported,
    unzeroed_bytearray,
)

MB = 2**20


def buffer_of(block: np.ndarray) -> object:
    """The object whose memory ``block`` is (numpy holds a memoryview of a bytearray)."""
    base: object = block
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def test_a_block_nothing_refers_to_is_handed_out_again() -> None:
    pool = BlockPool(max_bytes=64 * MB, min_bytes=MB)
    first = pool.empty((2 * MB,), np.uint8)
    first[:] = 7
    assert isinstance(buffer_of(first), bytearray) and len(pool._kept) == 1
    kept = id(buffer_of(first))  # (a reference of ours would keep it from reuse)
    row = first[10:20]
    view = memoryview(first)
    del first
    assert id(buffer_of(pool.empty((MB,), np.uint8))) != kept, "a view is alive"
    del row
    assert id(buffer_of(pool.empty((MB,), np.uint8))) != kept, "a memoryview is alive"
    view.release()
    # (the two blocks just taken are free again, and as small: the first kept is taken)
    again = pool.empty((MB // 16, 3), np.float64)  # smaller, another dtype and shape
    assert id(buffer_of(again)) == kept and again.shape == (MB // 16, 3)
    assert again.flags.c_contiguous and again.flags.writeable


def test_the_smallest_free_buffer_that_holds_the_block_is_taken() -> None:
    pool = BlockPool(max_bytes=64 * MB, min_bytes=MB)
    blocks = [pool.empty((n * MB,), np.uint8) for n in (8, 2, 4)]
    ids = [id(buffer_of(b)) for b in blocks]
    del blocks
    taken = [pool.empty((n * MB,), np.uint8) for n in (3, 1, 9)]
    assert [id(buffer_of(b)) for b in taken[:2]] == [ids[2], ids[1]]
    assert id(buffer_of(taken[2])) not in ids


def test_small_blocks_are_not_pooled_and_the_pool_is_bounded() -> None:
    pool = BlockPool(max_bytes=10 * MB, min_bytes=MB)
    small = pool.empty((100,), np.float64)
    assert small.shape == (100,) and pool._kept == []
    busy = [pool.empty((4 * MB,), np.uint8) for _ in range(3)]  # all in use: all kept
    assert pool.kept_bytes == 12 * MB
    too_big = pool.empty((11 * MB,), np.uint8)
    assert id(buffer_of(too_big)) not in [id(buffer_of(b)) for b in busy]
    assert len(pool._kept) == 3
    del busy[0]
    pool.empty((2 * MB,), np.uint8)  # reuses the freed one: still three
    assert pool.kept_bytes == 12 * MB
    del busy
    fresh = pool.empty((5 * MB,), np.uint8)  # none free holds it: new, older free ones go
    assert pool.kept_bytes <= 10 * MB and id(buffer_of(fresh)) == id(pool._kept[-1])


def test_recent_buffers_hand_a_buffer_out_again_once_it_is_let_go() -> None:
    pool = RecentBuffers(max_bytes=64 * MB, min_bytes=MB)
    first = pool.take(4 * MB)
    first[:3] = b"abc"
    kept = id(first)
    frame = np.frombuffer(first, np.uint8)[10:20]  # an answer's frame: a view of it
    del first
    others = [pool.take(4 * MB)]
    assert id(others[0]) != kept, "a view is alive"
    del frame
    again = pool.take(4 * MB - 5)  # an answer of about the same size
    assert id(again) == kept and len(again) == 4 * MB - 5 and again[:3] == b"abc"
    others.append(pool.take(4 * MB - 5))
    assert id(others[1]) != kept, "still held"
    del again
    grown = pool.take(4 * MB - 1)  # grown back in place
    assert id(grown) == kept and len(grown) == 4 * MB - 1
    del grown
    assert id(pool.take(4 * MB + 5)) != kept, "would not grow in place"
    assert len(pool.take(100)) == 100 and len(pool.take(2 * MB, bytearray)) == 2 * MB


def test_recent_buffers_hold_at_most_max_bytes_used_or_not() -> None:
    pool = RecentBuffers(max_bytes=10 * MB, min_bytes=MB)
    busy = [pool.take(4 * MB) for _ in range(4)]  # all in use: only the last two held
    assert [id(b) for b in pool._kept] == [id(b) for b in busy[2:]]
    assert id(pool.take(11 * MB)) not in map(id, pool._kept)
    del busy
    assert sum(map(len, pool._kept)) <= 10 * MB


def test_unzeroed_bytearrays_are_ordinary_bytearrays_of_that_size() -> None:
    assert unzeroed_bytearray(0) == bytearray()
    for size in (1, 4096, 3 * 2**20 + 7):
        buf = unzeroed_bytearray(size)
        assert type(buf) is bytearray and len(buf) == size and unexported(buf)
        buf[:] = b"\x07" * size  # written whole, as its users do
        assert buf.count(7) == size
        buf += b"x"  # and resizable like any other
        assert len(buf) == size + 1


def resident_pages(buf: mmap.mmap) -> tuple[int, int]:
    """(resident, all) of the pages of ``buf``, by mincore(2)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    pages = len(buf) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert libc.mincore(address, len(buf), vec) == 0, ctypes.get_errno()
    return sum(v & 1 for v in vec), pages


def test_populate_maps_a_buffers_pages_in_before_they_are_written() -> None:
    fresh = mmap.mmap(-1, 16 * MB)  # anonymous: no page mapped in until touched
    assert resident_pages(fresh)[0] == 0
    populate(fresh)
    if sys.platform.startswith("linux"):  # (MADV_POPULATE_WRITE; elsewhere a no-op)
        resident, pages = resident_pages(fresh)
        assert resident == pages
    assert fresh[:4] == b"\0" * 4  # contents as they were
    fresh.close()
    for size in (0, 1, 4096, 3 * 2**20 + 7):
        buf = populated_bytearray(size)
        assert type(buf) is bytearray and len(buf) == size and unexported(buf)
        buf[:] = b"\x05" * size
        assert buf.count(5) == size


def test_unexported_tells_an_exported_buffer_of_any_size() -> None:
    for buf in (bytearray(), bytearray(b"ab")):
        assert unexported(buf)
        view = memoryview(buf)
        assert not unexported(buf)
        view.release()
        assert unexported(buf) and len(buf) in (0, 2)
    assert bytes(buf) == b"ab"
