"""Replacing a file whole: a reader sees the old bytes or the new ones, never a mix.

The usual way is a temporary file renamed over the old one. On ext4 (its default
``auto_da_alloc``) a rename that replaces a file first writes the new file's data out,
so that a crash cannot leave an empty one: ~1 ms for a small Zarr chunk here, most of
what an edit's write into the store cost (~20 files a commit). Swapping the two names
(Linux ``renameat2`` with ``RENAME_EXCHANGE``) and unlinking the old file is just as
atomic for readers and skips that write-out; trajhub does not rely on it for
durability (nothing in the store is fsynced: the staged bytes are, until storage has
applied them). Where the swap is not available (another OS or file system, no such
target) the rename is used.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _load_renameat2() -> Callable[..., int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                   ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Swap the files at ``a`` and ``b`` atomically; False (nothing changed) where that
    cannot be done: no file at ``b``, or no support for it here."""
    if _renameat2 is None:
        return False
    return _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b),
                      _RENAME_EXCHANGE) == 0


def atomic_put(path: Path, data: Any) -> None:
    """Write ``path`` whole or not at all (a temporary file that then takes its place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with tmp.open("wb") as f:
            f.write(data)
        swapped = exchange(tmp, path)
        if not swapped:
            tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if swapped:
        with contextlib.suppress(OSError):  # (a stray old file costs only its space)
            tmp.unlink()


def pread_into(fd: int, target: memoryview, offset: int) -> int:
    """Fill byte view ``target`` from ``fd`` at ``offset``, as much of it as the file
    holds (a read may come back short); returns how many bytes were read."""
    got = 0
    while got < len(target):
        n = os.preadv(fd, [target[got:]], offset + got)
        if n <= 0:
            break
        got += n
    return got
