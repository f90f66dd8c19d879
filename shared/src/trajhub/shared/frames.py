"""The frame model: a dict of named numpy arrays in ASE's vocabulary.

Keys: ``numbers`` (N,) integer, ``positions`` (N, 3) float, ``cell`` (3, 3),
``pbc`` (3,) bool, per-atom ``arrays.<name>`` (N, ...), per-frame ``info.<name>``
(any shape) and calculator results ``calc.<name>``; the calc results that ASE
defines per atom (forces, charges, ...) have N rows. Validation is pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from trajhub.shared.names import InvalidName, check_key_name

Array = npt.NDArray[Any]
Frame = dict[str, Array]


@dataclass(frozen=True, slots=True)
class SlotColumns:
    """The frames of slots ``start .. start + count - 1`` as columns: frame ``i`` is
    ``{key: column[i, ...] for key, column in arrays.items()}``. Every frame has the same
    keys, and each key the same dtype and shape in every frame."""

    start: int
    count: int
    arrays: dict[str, Array]  # each (count, *shape)

    @property
    def frame_nbytes(self) -> int:
        """The bytes of one frame's arrays."""
        return sum(column.nbytes for column in self.arrays.values()) // max(self.count, 1)

    def frames(self) -> list[Frame]:
        return [{key: column[i, ...] for key, column in self.arrays.items()}
                for i in range(self.count)]


class FrameRun(Sequence[Frame]):
    """Frames that hold the same keys, each key of one dtype and shape in all of them,
    as columns (each ``(len, *shape)``, possibly strided views): frame ``i`` is
    ``{key: column[i, ...] for key, column in columns.items()}``. A store can write the
    columns whole instead of taking the frames apart one by one."""

    __slots__ = ("columns", "n_frames")

    def __init__(self, columns: dict[str, Array], count: int) -> None:
        if any(column.shape[:1] != (count,) for column in columns.values()):
            raise ValueError(f"every column of a run of {count} frames has {count} rows")
        self.columns = columns
        self.n_frames = count

    def __len__(self) -> int:
        return self.n_frames

    @overload
    def __getitem__(self, index: int) -> Frame: ...

    @overload
    def __getitem__(self, index: slice) -> FrameRun: ...

    def __getitem__(self, index: int | slice) -> Frame | FrameRun:
        if isinstance(index, slice):
            return FrameRun({k: c[index] for k, c in self.columns.items()},
                            len(range(*index.indices(self.n_frames))))
        if not -self.n_frames <= index < self.n_frames:
            raise IndexError(f"frame {index} of a run of {self.n_frames}")
        return {k: c[index, ...] for k, c in self.columns.items()}


PER_ATOM_CALC = frozenset(
    {"forces", "stresses", "charges", "magmoms", "energies", "born_effective_charges"}
)

# Numeric and boolean dtypes are stored as padded arrays; unicode strings are allowed
# for per-frame metadata (e.g. info.name).
ALLOWED_KINDS = frozenset("biufcU")
ALLOWED_ITEMSIZES = {
    "b": {1},
    "i": {1, 2, 4, 8},
    "u": {1, 2, 4, 8},
    "f": {2, 4, 8},
    "c": {8, 16},
}
MAX_NDIM = 8


class FrameError(ValueError):
    """A frame that breaks the model; the message names the key and the reason."""


@lru_cache(maxsize=1024)  # (a trajectory repeats a handful of keys)
def is_per_atom(key: str) -> bool:
    """True for keys whose first axis runs over atoms (padded in storage)."""
    if key in ("numbers", "positions") or key.startswith("arrays."):
        return True
    return key.startswith("calc.") and key[5:] in PER_ATOM_CALC


def check_dtype(dtype: np.dtype[Any], key: str = "?") -> np.dtype[Any]:
    """Return the little-endian form of an allowed dtype, or raise FrameError."""
    kind = dtype.kind
    if kind not in ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise FrameError(f"{key}: dtype {dtype.str!r} is not supported")
    if kind == "U":
        if dtype.itemsize == 0:
            raise FrameError(f"{key}: zero-length string dtype")
    elif dtype.itemsize not in ALLOWED_ITEMSIZES[kind]:
        raise FrameError(f"{key}: dtype {dtype.str!r} is not supported")
    return dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype


_PLAIN: dict[np.dtype[Any], bool] = {}
_PLAIN_MAX = 1024


def _is_plain(dtype: np.dtype[Any]) -> bool:
    """True when ``dtype`` is allowed and not big-endian (``check_dtype`` keeps it);
    cached, as most frames repeat a handful of dtypes (bounded: they come from callers)."""
    plain = _PLAIN.get(dtype)
    if plain is None:
        try:
            plain = check_dtype(dtype) is dtype
        except FrameError:
            plain = False
        if len(_PLAIN) >= _PLAIN_MAX:
            _PLAIN.clear()
        _PLAIN[dtype] = plain
    return plain


def canonical_array(value: Any, key: str = "?") -> Array:
    """A C-contiguous, little-endian array with an allowed dtype."""
    if (type(value) is np.ndarray and value.ndim <= MAX_NDIM and value.flags.c_contiguous
            and _is_plain(value.dtype)):
        return value  # what the general path below gives for it: the array itself
    arr = np.asarray(value)
    dtype = check_dtype(arr.dtype, key)
    if arr.ndim > MAX_NDIM:
        raise FrameError(f"{key}: {arr.ndim} dimensions; at most {MAX_NDIM}")
    # np.ascontiguousarray would turn 0-d arrays into 1-d ones.
    return np.asarray(arr, dtype=dtype, order="C")


def n_atoms(frame: Mapping[str, Array]) -> int:
    for key in ("numbers", "positions"):
        if key in frame:
            return int(frame[key].shape[0]) if frame[key].ndim else 0
    return 0


def validate_frame(frame: Mapping[str, Any]) -> Frame:
    """Check a whole frame for writing and return its canonical form.

    A written frame needs ``numbers`` (N,) integers and ``positions`` (N, 3) floats;
    every per-atom key must have N rows; ``cell`` is (3, 3) and ``pbc`` (3,) bool.
    """
    if not isinstance(frame, Mapping):
        raise FrameError("a frame must be a mapping of key -> array")
    out: Frame = {}
    for key, value in frame.items():
        if key not in _CHECKED_KEYS:
            _check_key(key)
        out[key] = canonical_array(value, key)
    for required in ("numbers", "positions"):
        if required not in out:
            raise FrameError(f"frame has no {required!r}")
    numbers, positions = out["numbers"], out["positions"]
    if numbers.ndim != 1 or numbers.dtype.kind not in "iu":
        raise FrameError(f"numbers must be a 1-d integer array, got {numbers.dtype.str} "
                         f"of shape {numbers.shape}")
    natoms = numbers.shape[0]
    if positions.ndim != 2 or positions.shape[1] != 3 or positions.dtype.kind != "f":
        raise FrameError(f"positions must be a float array of shape (N, 3), got "
                         f"{positions.dtype.str} of shape {positions.shape}")
    if not atomic_numbers(numbers):
        raise FrameError("numbers must be atomic numbers between 0 and 200")
    for key, arr in out.items():
        if is_per_atom(key):
            if arr.dtype.kind == "U":
                raise FrameError(f"{key}: per-atom arrays must be numeric or boolean")
            if arr.ndim == 0 or arr.shape[0] != natoms:
                raise FrameError(f"{key} has shape {arr.shape}, but the frame has "
                                 f"{natoms} atoms (numbers has {natoms})")
    if "cell" in out and (out["cell"].shape != (3, 3) or out["cell"].dtype.kind not in "iuf"):
        raise FrameError(f"cell must be a (3, 3) number array, got shape {out['cell'].shape}")
    if "pbc" in out and (out["pbc"].shape != (3,) or out["pbc"].dtype.kind != "b"):
        raise FrameError(f"pbc must be a (3,) bool array, got {out['pbc'].dtype.str} "
                         f"of shape {out['pbc'].shape}")
    return out


def atomic_numbers(numbers: Array) -> bool:
    """Whether every one of ``numbers`` (canonical integers) is within 0..200, with one
    reduction where that will do (a negative number read as unsigned is larger).

    A trajectory repeats its numbers frame after frame: the last small array found
    valid is remembered by its bytes, whose comparison costs a fifteenth of the
    reduction's ~2.7 us. No numbers (a frame without atoms) are all valid."""
    global _LAST_ATOMIC
    if not numbers.size:
        return True
    key = (numbers.dtype.str, numbers.tobytes()) if numbers.nbytes <= ATOMIC_MEMO_BYTES \
        else None
    if key is not None and key == _LAST_ATOMIC:
        return True
    size = numbers.dtype.itemsize
    if numbers.dtype.kind == "u":
        ok = int(numbers.max()) <= 200
    elif size > 1:
        ok = int(numbers.view(f"<u{size}").max()) <= 200
    else:
        ok = int(numbers.min()) >= 0 and int(numbers.max()) <= 200
    if ok and key is not None:
        _LAST_ATOMIC = key
    return ok


ATOMIC_MEMO_BYTES = 2**15
_LAST_ATOMIC: tuple[str, bytes] | None = None


_CHECKED_KEYS: set[str] = set()
"""Key names ``validate_frame`` found valid (a trajectory repeats a handful of them)."""
_KEYS_MAX = 1024


def _check_key(key: object) -> None:
    if not isinstance(key, str):
        raise FrameError(f"frame key {key!r} is not a string")
    try:
        check_key_name(key)
    except InvalidName as exc:
        raise FrameError(str(exc)) from None
    if len(_CHECKED_KEYS) >= _KEYS_MAX:  # bounded: the names come from callers
        _CHECKED_KEYS.clear()
    _CHECKED_KEYS.add(key)


def frames_equal(a: Mapping[str, Array], b: Mapping[str, Array]) -> bool:
    """Exact equality: same keys, dtypes, shapes and values (NaN equals NaN)."""
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if x.tobytes() != y.tobytes():
            return False
    return True
