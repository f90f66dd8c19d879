"""Content hashes: stable, canonical (key order, byte order, memory layout) and specific."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from trajhub.shared.frames import Frame
from trajhub.shared.hashing import frame_hash, is_hash

# Computed once from FIXED_FRAME; if this changes, every stored hash and every client
# (the browser computes it too) is invalidated: change it only with a format migration.
FIXED_DIGEST = "b5c4c9f5a36b4d6a5c6caef4042a5f7be14512bbb0f8df63dc0764563ba07437"

FIXED_FRAME_SOURCE = """
import numpy as np
FIXED_FRAME = {
    "numbers": np.array([8, 1, 1]),
    "positions": np.array([[0.0, 0.0, 0.1], [0.0, 0.76, -0.47], [0.0, -0.76, -0.47]]),
    "cell": np.eye(3) * 10.0,
    "pbc": np.array([True, True, False]),
    "calc.energy": np.float64(-14.25),
    "info.name": np.asarray("water"),
    "info.f32": np.arange(4, dtype=np.float32).reshape(2, 2),
}
"""
namespace: dict[str, Any] = {}
exec(FIXED_FRAME_SOURCE, namespace)
FIXED_FRAME: Frame = namespace["FIXED_FRAME"]


def spec_hash(frame: Frame) -> str:
    """The documented encoding, written out independently of trajhub.shared.hashing."""
    h = hashlib.sha256()
    for key in sorted(frame, key=str.encode):
        arr = np.asarray(frame[key])
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        raw = np.ascontiguousarray(arr, dtype=dtype).tobytes()
        shape = ",".join(map(str, arr.shape))
        h.update(key.encode() + b"\0" + dtype.str.encode() + b"\0" + shape.encode() + b"\0")
        h.update(len(raw).to_bytes(8, "little") + raw)
    return h.hexdigest()


def test_hash_is_stable() -> None:
    assert frame_hash(FIXED_FRAME) == FIXED_DIGEST
    assert spec_hash(FIXED_FRAME) == FIXED_DIGEST
    assert is_hash(FIXED_DIGEST)


def test_hash_is_the_same_in_another_process() -> None:
    code = FIXED_FRAME_SOURCE + (
        "from trajhub.shared.hashing import frame_hash\nprint(frame_hash(FIXED_FRAME))\n")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True, timeout=120)
    assert out.stdout.strip() == FIXED_DIGEST


def test_independent_of_key_order() -> None:
    reordered = dict(sorted(FIXED_FRAME.items(), reverse=True))
    assert list(reordered) != list(FIXED_FRAME)
    assert frame_hash(reordered) == FIXED_DIGEST


def test_independent_of_byte_order() -> None:
    swapped = {k: v.astype(v.dtype.newbyteorder(">")) if v.dtype.itemsize > 1
               and v.dtype.kind != "b" else v for k, v in FIXED_FRAME.items()}
    assert swapped["positions"].dtype.str == ">f8" and swapped["info.name"].dtype.str == ">U5"
    assert frame_hash(swapped) == FIXED_DIGEST


def test_independent_of_memory_layout() -> None:
    # (np.asfortranarray would turn 0-d values into 1-d ones)
    fortran = {k: np.asfortranarray(v) if v.ndim > 1 else v for k, v in FIXED_FRAME.items()}
    assert not fortran["positions"].flags.c_contiguous
    assert frame_hash(fortran) == FIXED_DIGEST
    wide = np.zeros((3, 6))
    wide[:, ::2] = FIXED_FRAME["positions"]
    strided = {**FIXED_FRAME, "positions": wide[:, ::2]}
    assert not strided["positions"].flags.c_contiguous
    assert frame_hash(strided) == FIXED_DIGEST


def test_lists_and_python_scalars_hash_as_their_arrays() -> None:
    listed = {k: v.tolist() for k, v in FIXED_FRAME.items() if k != "info.name"}
    arrays = {k: v for k, v in FIXED_FRAME.items() if k != "info.name"}
    listed["info.f32"] = FIXED_FRAME["info.f32"]  # a list would become float64
    assert frame_hash(listed) == frame_hash(arrays)


@pytest.mark.parametrize("change", [
    {"positions": FIXED_FRAME["positions"].astype(np.float32)},  # dtype
    {"numbers": FIXED_FRAME["numbers"].astype(np.int32)},
    {"info.f32": FIXED_FRAME["info.f32"].reshape(4)},  # shape, same bytes
    {"info.f32": FIXED_FRAME["info.f32"].reshape(1, 4)},
    {"calc.energy": np.array([-14.25])},  # 0-d vs 1-d
    {"calc.energy": np.float64(-14.250000000000002)},  # value
    {"pbc": np.array([True, True, True])},
    {"info.name": np.asarray("Water")},
    {"info.name": np.asarray("water", dtype="<U6")},  # string width
    {"info.extra": np.zeros(0)},  # an extra (empty) key
])
def test_different_content_hashes_differently(change: Frame) -> None:
    assert frame_hash({**FIXED_FRAME, **change}) != FIXED_DIGEST


def test_key_names_matter() -> None:
    renamed = {("calc.e" if k == "calc.energy" else k): v for k, v in FIXED_FRAME.items()}
    assert frame_hash(renamed) != FIXED_DIGEST
    smaller = {k: v for k, v in FIXED_FRAME.items() if k != "cell"}
    assert frame_hash(smaller) != FIXED_DIGEST


def test_nan_payload_and_signed_zero_are_content() -> None:
    a = {"x": np.array([0.0, np.nan])}
    b = {"x": np.array([-0.0, np.nan])}
    assert frame_hash(a) != frame_hash(b)
    assert frame_hash(a) == frame_hash({"x": np.array([0.0, np.nan])})


@pytest.mark.parametrize("value,ok", [
    (FIXED_DIGEST, True),
    (FIXED_DIGEST.upper(), False),
    (FIXED_DIGEST[:-1], False),
    (FIXED_DIGEST + "0", False),
    ("g" * 64, False),
    (b"a" * 64, False),
    (None, False),
])
def test_is_hash(value: object, ok: bool) -> None:
    assert is_hash(value) is ok
