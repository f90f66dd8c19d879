"""Large buffers reused once nothing refers to them any more.

A server process returns every large block to the OS as soon as it is freed (the fixed
mmap threshold of ``memory.tune_malloc``), so each new one is fresh memory, which the
kernel maps in page by page on first touch: ~0.5-1 ms per MB on this project's VMs,
several times the copy that fills it. Reusing a block that is done with skips that.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt


def unzeroed_bytearray(size: int) -> bytearray:
    """A bytearray of ``size`` bytes that are not zeroed first, for a buffer that is
    written whole before it is read: ``bytearray(size)`` writes every byte once more
    (a fifth of a 56 MB read into fresh memory here). CPython's C constructor given no
    source leaves them as they are; elsewhere a plain bytearray."""
    if _NEW_BYTEARRAY is None:
        return bytearray(size)
    buf: bytearray = _NEW_BYTEARRAY(None, size)
    return buf


def populated_bytearray(size: int) -> bytearray:
    """``unzeroed_bytearray(size)``, its memory mapped in at once (``populate``)."""
    buf = unzeroed_bytearray(size)
    if size >= POPULATE_MIN_BYTES:
        populate(buf)
    return buf


def populate(buf: bytearray | mmap.mmap) -> None:
    """Map in the whole pages of ``buf`` with one ``madvise(MADV_POPULATE_WRITE)``
    (Linux 5.14+) rather than a page fault each as they are first written: ~0.4 ms per
    MB instead of ~0.6 on this project's VMs. Elsewhere (or on error) nothing happens:
    the pages fault in as they are written, as they would have."""
    if _MADVISE is None or not len(buf):
        return
    start = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    first = -(-start // PAGE) * PAGE
    last = (start + len(buf)) // PAGE * PAGE
    if last > first:
        _MADVISE(first, last - first, MADV_POPULATE_WRITE)


PAGE = mmap.PAGESIZE
MADV_POPULATE_WRITE = 23  # <linux/mman.h>; Python's mmap module lacks it before 3.13
POPULATE_MIN_BYTES = 2**20


def _madvise() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (AttributeError, OSError):
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _madvise()


def _bytearray_constructor() -> Any:
    try:
        new = ctypes.pythonapi.PyByteArray_FromStringAndSize
    except (AttributeError, OSError):  # not CPython
        return None
    new.restype = ctypes.py_object
    new.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)
    return new


_NEW_BYTEARRAY = _bytearray_constructor()


def unexported(buf: bytearray) -> bool:
    """True when no memoryview or array exports ``buf`` (a resize fails while one does)."""
    try:
        if buf:
            buf.append(buf.pop())  # shrink first: growing past the allocation reallocs
        else:
            buf.append(0)
            buf.pop()
    except BufferError:
        return False
    return True


def take_free(buffers: list[bytearray], size: int) -> bytearray | None:
    """Remove from ``buffers`` and return the smallest that holds ``size`` bytes and that
    nothing else refers to (no other reference, no memoryview or array of it); None if
    there is none."""
    best = None
    for i in range(len(buffers)):  # (enumerate's tuple would hold a reference)
        buf = buffers[i]
        # Referred to by the list, `buf` and getrefcount's argument only?
        if len(buf) >= size and (best is None or len(buf) < len(buffers[best])) \
                and sys.getrefcount(buf) == 3 and unexported(buf):
            best = i
    return None if best is None else buffers.pop(best)


def take_resized(buffers: list[bytearray], size: int,
                 zeros: memoryview | None = None) -> bytearray | None:
    """Remove from ``buffers`` and return the first that nothing else refers to and that
    holds ``size`` bytes without a new allocation (within [alloc/2, alloc) a bytearray
    resizes in place), resized to ``size``; None if there is none. Bytes it grows by
    are copied from ``zeros`` when that is long enough."""
    for i in range(len(buffers)):  # (enumerate's tuple would hold a reference)
        buf = buffers[i]
        if not buf.__alloc__() // 2 <= size < buf.__alloc__():
            continue
        # Referred to by the list, `buf` and getrefcount's argument only?
        if sys.getrefcount(buf) == 3 and unexported(buf):
            del buffers[i]
            if len(buf) > size:
                del buf[size:]
            elif zeros is not None and len(zeros) >= size - len(buf):
                buf += zeros[:size - len(buf)]
            else:
                buf += bytes(size - len(buf))
            return buf
    return None


class RecentBuffers:
    """Buffers for data its taker keeps as long as it likes (a read's answers, whose
    frames are views of them): the most recent ones, up to ``max_bytes`` in all, are
    remembered, and one is handed out again once nothing refers to it any more, its
    memory already mapped in. At most ``max_bytes`` stay held once their takers let go.
    Thread-safe."""

    def __init__(self, max_bytes: int, min_bytes: int = 2**20) -> None:
        self.max_bytes = max_bytes
        self.min_bytes = min_bytes
        self._kept: list[bytearray] = []  # least recently handed out first
        self._lock = threading.Lock()

    def take(self, size: int, new: Callable[[int], bytearray] = bytearray) -> bytearray:
        """A buffer of ``size`` bytes: a remembered one nothing refers to any more (its
        contents undefined), else ``new(size)``."""
        if size < self.min_bytes:
            return new(size)
        with self._lock:
            buf = take_resized(self._kept, size)
            if buf is None:
                buf = new(size)
            if len(buf) <= self.max_bytes:
                self._kept.append(buf)
            total = sum(map(len, self._kept))
            while total > self.max_bytes:  # forget the oldest, used or not
                total -= len(self._kept.pop(0))
        return buf


class BlockPool:
    """Memory for numpy blocks that live briefly (a read's blocks, dropped once its
    answer is sent): ``empty`` hands out an array over a kept buffer that nothing refers
    to any more (no array, view or memoryview of it, no other reference), else over a
    new one, kept while the pool holds less than ``max_bytes``. Blocks under
    ``min_bytes`` are plain ``np.empty``. Thread-safe."""

    def __init__(self, max_bytes: int, min_bytes: int = 2**20) -> None:
        self.max_bytes = max_bytes
        self.min_bytes = min_bytes
        self._kept: list[bytearray] = []  # least recently handed out first
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> npt.NDArray[Any]:
        """An uninitialised C-contiguous array of ``shape`` and ``dtype``."""
        dt = np.dtype(dtype)
        nbytes = math.prod(shape) * dt.itemsize
        if nbytes < self.min_bytes:
            return np.empty(shape, dt)
        with self._lock:
            buf = take_free(self._kept, nbytes)
            if buf is None:
                buf = populated_bytearray(nbytes)
                if nbytes <= self.max_bytes:
                    self._keep(buf)
            else:
                self._kept.append(buf)  # most recently handed out last
        return np.frombuffer(buf, dt, count=math.prod(shape)).reshape(shape)

    @property
    def kept_bytes(self) -> int:
        return sum(map(len, self._kept))

    def _keep(self, buf: bytearray) -> None:
        """Keep ``buf``, dropping the least recently used free buffers beyond max_bytes."""
        self._kept.append(buf)
        total = self.kept_bytes
        i = 0
        while total > self.max_bytes and i < len(self._kept) - 1:
            old = self._kept[i]
            if sys.getrefcount(old) == 3 and unexported(old):
                total -= len(old)
                del self._kept[i]
            else:
                i += 1
