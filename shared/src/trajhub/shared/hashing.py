"""Content hashes of frames.

sha256 over a canonical encoding that does not depend on msgpack, dict order,
byte order or memory layout, so that any client (Python, the browser) can compute
the same hash:  for each key in sorted (UTF-8 byte) order,
``key \\0 dtype \\0 shape-as-"3,4" \\0 len(data) as 8-byte LE`` then the raw
little-endian C-order bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

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


def is_hash(value: object) -> bool:
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))
