"""Content hashes of frames.

sha256 over a canonical encoding that does not depend on msgpack, dict order,
byte order or memory layout, so that any client (Python, the browser) can compute
the same hash:  for each key in sorted (UTF-8 byte) order,
``key \\0 dtype \\0 shape-as-"3,4" \\0 len(data) as 8-byte LE`` then the raw
little-endian C-order bytes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

import numpy as np

from trajhub.shared.frames import Array, canonical_array


def frame_hash(frame: Mapping[str, Array]) -> str:
    h = hashlib.sha256()
    for key in sorted(frame, key=lambda k: k.encode()):
        arr = canonical_array(frame[key], key)
        shape = ",".join(str(n) for n in arr.shape)
        h.update(f"{key}\0{arr.dtype.str}\0{shape}\0".encode())
        h.update(arr.nbytes.to_bytes(8, "little"))
        h.update(arr.data.cast("B") if arr.size else b"")
    return h.hexdigest()


_HEX64 = re.compile("[0-9a-f]{64}")


def is_hash(value: object) -> bool:
    """True for a sha256 hex digest as ``hexdigest`` spells it (64 lowercase hex digits)."""
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


_HEADERS: dict[tuple[str, str, tuple[int, ...]], bytes] = {}
_HEADERS_MAX = 1024


def _header(key: str, dtype: str, shape: tuple[int, ...], nbytes: int) -> bytes:
    """The bytes hashed before an array's data; cached (frames of an upload share them)."""
    cache_key = (key, dtype, shape)
    header = _HEADERS.get(cache_key)
    if header is None:
        header = (f"{key}\0{dtype}\0{','.join(str(n) for n in shape)}\0".encode()
                  + nbytes.to_bytes(8, "little"))
        if len(_HEADERS) >= _HEADERS_MAX:
            _HEADERS.clear()
        _HEADERS[cache_key] = header
    return header


def array_header(key: str, dtype: str, shape: tuple[int, ...], nbytes: int) -> bytes:
    """The bytes hashed before the data of array ``key`` (dtype as numpy spells it, e.g.
    ``"<f8"``); a caller hashing many frames of one layout feeds these and the data."""
    return _header(key, dtype, shape, nbytes)


def validated_frame_hash(frame: Mapping[str, Array]) -> str:
    """``frame_hash(frame)``, cheaper for a frame whose arrays are already canonical
    (``validate_frame``'s output): an array that is not C-contiguous little-endian goes
    through ``canonical_array`` as in frame_hash, so the digest is always the same."""
    h = hashlib.sha256()
    for key in sorted(frame, key=lambda k: k.encode()):
        arr = frame[key]
        if not (isinstance(arr, np.ndarray) and arr.flags.c_contiguous
                and arr.dtype.byteorder != ">"):
            arr = canonical_array(arr, key)
        h.update(_header(key, arr.dtype.str, arr.shape, arr.nbytes))
        h.update(arr.data.cast("B") if arr.size else b"")
    return h.hexdigest()
