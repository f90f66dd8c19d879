"""Conversion between ``ase.Atoms`` and trajhub frames (``dict[str, np.ndarray]``).

What round-trips exactly (values, dtypes, shapes):

- ``numbers``, ``positions``, ``cell`` (3, 3) and ``pbc`` (3,); these four are always
  written, so a molecule without a cell comes back with a zero cell, as ASE has it.
- every other entry of ``atoms.arrays`` as ``arrays.<name>`` (momenta, masses, tags,
  initial_charges, initial_magmoms, custom arrays), dtype kept;
- ``atoms.info`` entries as ``info.<name>``: scalars, strings and arrays of an allowed
  dtype. Coming back, a 0-d string becomes ``str``, a 0-d bool ``bool``, a 0-d number a
  numpy scalar of the same dtype (so a Python ``int`` comes back as ``np.int64`` and a
  ``float`` as ``np.float64``, which is a ``float``), arrays stay arrays. Values numpy
  cannot turn into a plain array (dicts, ``None``, objects, ragged lists, bytes) are
  refused with a ``TypeError`` naming the key;
- calculator results (``atoms.calc.results``) as ``calc.<name>``; they come back on a
  ``SinglePointCalculator`` with the same values and dtypes, except that 0-d float64
  results (energy, free_energy, ...) become Python floats, as ASE stores them.

ASE's own dtypes win where ASE insists on them: ``Atoms`` always holds ``positions`` as
float64 and ``numbers`` as int64 (and the cell as float64), so a frame with float32
positions becomes atoms with the same values in float64, and ``atoms_to_frame`` of any
Atoms writes float64 positions. A float32 frame written through the frame API
(``Room.get`` / dict frames) stays float32 on the server. Custom ``arrays.*``,
``info.*`` and ``calc.*`` entries keep float32 (or any allowed dtype) both ways.

``atoms_to_frame`` lives in ``trajhub.shared.atoms`` (the gateway's file upload uses
it too) and is re-exported here.

Not carried: constraints, ``celldisp``, the calculator object itself (only its
results), and anything in ``info`` that is not array-like.
"""

from __future__ import annotations

from typing import Any

import ase
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from trajhub.shared.atoms import atoms_to_frame
from trajhub.shared.frames import Array, Frame

__all__ = ["atoms_to_frame", "frame_to_atoms"]


def _info_value(arr: Array) -> Any:
    if arr.ndim:
        return np.array(arr)
    if arr.dtype.kind == "U":
        return str(arr[()])
    if arr.dtype.kind == "b":
        return bool(arr[()])
    return arr[()]  # a numpy scalar of the same dtype


def _calc_value(arr: Array) -> Any:
    if arr.ndim == 0 and arr.dtype == np.float64:
        return float(arr[()])
    return np.array(arr) if arr.ndim else arr[()]


def frame_to_atoms(frame: Frame) -> ase.Atoms:
    """The ``ase.Atoms`` of a frame (arrays are copied, so the atoms own writable data).

    A frame without ``cell``/``pbc`` (e.g. read with ``keys=``) gets ASE's defaults.
    """
    if "numbers" not in frame or "positions" not in frame:
        raise ValueError("a frame needs 'numbers' and 'positions' to become ase.Atoms; "
                         f"this one has {sorted(frame)}")
    atoms = ase.Atoms(numbers=frame["numbers"], positions=frame["positions"],
                      cell=frame.get("cell"), pbc=frame.get("pbc"))
    results: dict[str, Any] = {}
    for key, arr in frame.items():
        prefix, _, name = key.partition(".")
        if prefix == "arrays":
            atoms.arrays[name] = np.array(arr)
        elif prefix == "info":
            atoms.info[name] = _info_value(arr)
        elif prefix == "calc":
            results[name] = _calc_value(arr)
    if results:
        # SinglePointCalculator(**results) would cast arrays to float64; set them as is.
        calc = SinglePointCalculator(atoms)  # type: ignore[no-untyped-call]
        calc.results = results
        atoms.calc = calc
    return atoms
