"""Canonical frame bytes of one ``ase.Atoms`` after another, without a frame per Atoms.

``AtomsEncoder()(atoms)`` is ``frame_to_bytes(atoms_to_frame(atoms))``. A trajectory's
Atoms share their keys, dtypes and shapes, so once one has been converted and checked
the next ones only need their values taken and compared with its layout (~5 us a small
frame rather than ~20): no frame dict, no full check. Any Atoms that differs goes the
general way, which also raises the error for one that cannot be stored.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import numpy as np

from trajhub.shared.atoms import BASIC_ARRAYS, atoms_to_frame, info_array
from trajhub.shared.frame_encoder import FrameEncoder, Layout
from trajhub.shared.frames import FrameError, atomic_numbers, canonical_array

if TYPE_CHECKING:
    import ase

_ARRAYS, _CELL, _PBC, _INFO, _CALC = range(5)
_PREFIXES = {"arrays.": _ARRAYS, "info.": _INFO, "calc.": _CALC}
_F8 = np.dtype("<f8")
_pack_f8 = struct.Struct("<d").pack


class AtomsEncoder:
    """``frame_to_bytes(atoms_to_frame(atoms))`` of one Atoms after another."""

    def __init__(self) -> None:
        self._frames = FrameEncoder()
        self._fast: _AtomsLayout | None = None
        self._source: Layout | None = None  # the frame layout ``_fast`` was made from

    def __call__(self, atoms: ase.Atoms) -> bytes:
        fast = self._fast
        packed = fast.encode(atoms) if fast is not None else None
        if packed is not None:
            return packed
        packed = self._frames(atoms_to_frame(atoms))
        layout = self._frames.layout
        if layout is not self._source:
            self._source, self._fast = layout, _AtomsLayout.of(layout)
        return packed


class _AtomsLayout:
    """Where each key of a frame layout comes from in an Atoms, and the bytes around."""

    def __init__(self, layout: Layout, slots: list[tuple[int, str, int | None, Any, Any]],
                 names: tuple[frozenset[str], frozenset[str], frozenset[str]]) -> None:
        self.parts = layout.parts
        self.slots = slots
        self.arrays, self.info, self.calc = names

    @classmethod
    def of(cls, layout: Layout | None) -> _AtomsLayout | None:
        if layout is None or "numbers" not in layout.keys:
            return None
        slots = []
        names: dict[int, set[str]] = {_ARRAYS: set(BASIC_ARRAYS), _INFO: set(), _CALC: set()}
        for key, dtype, shape, at in zip(layout.keys, layout.dtypes, layout.shapes,
                                         layout.data_at, strict=True):
            kind, name = _source(key)
            if kind in names:
                names[kind].add(name)
            slots.append((kind, name, at, dtype, shape))
        return cls(layout, slots, (frozenset(names[_ARRAYS]), frozenset(names[_INFO]),
                                   frozenset(names[_CALC])))

    def encode(self, atoms: ase.Atoms) -> bytes | None:
        """The canonical bytes of ``atoms``' frame, or None when it is not of this
        layout or would not pass ``validate_frame`` (the general way tells why)."""
        arrays = atoms.arrays
        info = atoms.info
        calc = atoms.calc
        results = getattr(calc, "results", None) if calc is not None else {}
        if (type(arrays) is not dict or type(info) is not dict or type(results) is not dict
                or arrays.keys() != self.arrays or info.keys() != self.info
                or results.keys() != self.calc):
            return None  # (anything odd is the general way's to take or refuse)
        parts = self.parts.copy()
        value: Any
        for kind, name, at, dtype, shape in self.slots:
            if kind == _ARRAYS:
                value = arrays[name]
            elif kind == _CALC:
                value = results[name]
                if type(value) is float and dtype == _F8 and at is not None:
                    parts[at] = _pack_f8(value)  # what np.asarray(value) holds
                    continue
            elif kind == _CELL:
                value = atoms.cell.array
            elif kind == _PBC:
                value = atoms.pbc
            else:
                value = info[name]
            if type(value) is not np.ndarray:
                value = _converted(kind, name, value)
                if value is None:
                    return None
            if value.dtype != dtype or value.shape != shape or not value.flags.c_contiguous:
                return None
            if at is not None:
                parts[at] = value
                if name == "numbers" and kind == _ARRAYS and not atomic_numbers(value):
                    return None
        return b"".join(parts)


def _source(key: str) -> tuple[int, str]:
    if key == "cell":
        return _CELL, key
    if key == "pbc":
        return _PBC, key
    for prefix, kind in _PREFIXES.items():
        if key.startswith(prefix):
            return kind, key[len(prefix):]
    return _ARRAYS, key  # numbers, positions


def _converted(kind: int, name: str, value: Any) -> np.ndarray[Any, Any] | None:
    """What ``atoms_to_frame`` makes of a value that is not an ndarray; None if it
    refuses it."""
    try:
        if kind == _INFO:
            return info_array(f"info.{name}", value)
        if kind == _CALC:
            value = np.asarray(value)
        return canonical_array(value, name)
    except (FrameError, TypeError, ValueError):
        return None
