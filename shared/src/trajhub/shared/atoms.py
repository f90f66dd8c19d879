"""``ase.Atoms`` -> trajhub frame: the one conversion the client and the gateway share.

Pure: it only reads ``atoms.arrays``, ``atoms.cell``, ``atoms.pbc``, ``atoms.info`` and
``atoms.calc.results``, so this module does not import ASE (shared does not depend on
it). The reverse direction and the round-trip rules live in ``trajhub.client.convert``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from trajhub.shared.frames import Array, Frame, FrameError, canonical_array, validate_frame
from trajhub.shared.names import InvalidName, check_key_name

if TYPE_CHECKING:
    import ase

BASIC_ARRAYS = frozenset({"numbers", "positions"})


def _key(prefix: str, name: object, where: str) -> str:
    if not isinstance(name, str):
        raise ValueError(f"{where} key {name!r} is not a string; trajhub keys are strings")
    key = f"{prefix}.{name}"
    try:
        return check_key_name(key)
    except InvalidName as exc:
        raise ValueError(f"{where}[{name!r}] cannot be stored: {exc}") from None


def info_array(key: str, value: Any) -> Array:
    try:
        arr = np.asarray(value)
        return canonical_array(arr, key)
    except (FrameError, ValueError, TypeError) as exc:
        raise TypeError(
            f"atoms.info[{key[5:]!r}] = {type(value).__name__} cannot be stored: trajhub "
            f"keeps numbers, bools, strings and arrays of them ({exc})") from None


def atoms_to_frame(atoms: ase.Atoms) -> Frame:
    """The frame of ``atoms``: arrays, info and calculator results, dtypes kept.

    Raises ``ValueError`` for a key name trajhub refuses or an inconsistent frame, and
    ``TypeError`` for an ``info`` value that is not a number/bool/string/array.
    """
    frame: dict[str, Any] = {
        "numbers": atoms.arrays["numbers"],
        "positions": atoms.arrays["positions"],
        "cell": atoms.cell.array,
        "pbc": atoms.pbc,
    }
    for name, value in atoms.arrays.items():
        if name not in BASIC_ARRAYS:
            frame[_key("arrays", name, "atoms.arrays")] = value
    for name, value in atoms.info.items():
        key = _key("info", name, "atoms.info")
        frame[key] = info_array(key, value)
    if atoms.calc is not None:
        for name, value in getattr(atoms.calc, "results", {}).items():
            if value is not None:
                frame[_key("calc", name, "atoms.calc.results")] = np.asarray(value)
    return validate_frame(frame)


def unstorable_info(atoms: ase.Atoms) -> dict[str, str]:
    """The ``atoms.info`` entries ``atoms_to_frame`` would refuse (name -> reason), e.g.
    the ``Spacegroup`` object ASE's CIF reader puts there."""
    out: dict[str, str] = {}
    for name, value in atoms.info.items():
        try:
            info_array(_key("info", name, "atoms.info"), value)
        except (TypeError, ValueError) as exc:
            out[str(name)] = str(exc)
    return out
