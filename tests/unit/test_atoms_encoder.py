"""AtomsEncoder gives exactly frame_to_bytes(atoms_to_frame(atoms)) for one Atoms after
another, and refuses what atoms_to_frame refuses, with its error."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

import ase
import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from trajhub.shared import atoms_encoder
from trajhub.shared.atoms import atoms_to_frame
from trajhub.shared.atoms_encoder import AtomsEncoder
from trajhub.shared.codec import frame_to_bytes
from trajhub.shared.frame_encoder import LAYOUT_BACKOFF
from trajhub.shared.frames import FrameError


def _expected(images: list[ase.Atoms]) -> list[bytes]:
    return [frame_to_bytes(atoms_to_frame(a)) for a in images]


def _md(n: int, atoms: int = 5, seed: int = 0) -> list[ase.Atoms]:
    rng = np.random.default_rng(seed)
    out = []
    for step in range(n):
        a = ase.Atoms(numbers=np.arange(1, atoms + 1), positions=rng.random((atoms, 3)),
                      cell=np.eye(3) * 9, pbc=[True, False, True])
        a.set_momenta(rng.random((atoms, 3)))
        a.info.update({"step": step, "label": "md", "vector": np.arange(3.0),
                       "converged": True})
        a.calc = SinglePointCalculator(a, energy=float(rng.random()),
                                       forces=rng.random((atoms, 3)), stress=rng.random(6))
        out.append(a)
    return out


def _variants() -> list[ase.Atoms]:
    """Atoms that each differ from the trajectory before them in one way."""
    out = []
    a = _md(1)[0]
    a.info["label"] = "longer label"  # another string dtype
    out.append(a)
    a = _md(1)[0]
    a.calc.results["energy"] = np.float64(-1.5)  # a numpy scalar, not a float
    out.append(a)
    a = _md(1)[0]
    a.calc.results["energy"] = np.float32(-1.5)  # another dtype
    out.append(a)
    a = _md(1)[0]
    a.calc.results["energy"] = None  # skipped
    out.append(a)
    a = _md(1)[0]
    a.calc = None
    out.append(a)
    a = _md(1)[0]
    a.arrays["positions"] = np.asfortranarray(a.arrays["positions"])  # not C-contiguous
    out.append(a)
    a = _md(1)[0]
    a.arrays["positions"] = a.arrays["positions"].astype(">f8")  # big-endian
    out.append(a)
    a = _md(1)[0]
    a.calc.results["forces"] = a.calc.results["forces"].tolist()  # not an array
    out.append(a)
    a = _md(1)[0]
    a.info["vector"] = [1.0, 2.0, 3.0]  # a list where an array was
    out.append(a)
    a = _md(1)[0]
    a.info["extra"] = 1  # one more key
    out.append(a)
    a = _md(1)[0]
    a.set_tags(np.arange(5))  # one more array
    out.append(a)
    out.append(_md(1, atoms=6)[0])  # one more atom
    a = _md(1)[0]
    a.arrays["numbers"] = a.arrays["numbers"].astype(np.int32)
    out.append(a)
    return out


def test_a_trajectory_and_its_variants_encode_as_atoms_to_frame(s22_path: Path) -> None:
    images = _md(10)
    # Each variant right after frames of the trajectory's layout, and enough of them
    # after it for the encoder to take that layout up again (past its backoff).
    for variant in _variants():
        images += [variant, *_md(LAYOUT_BACKOFF + 4, seed=2)]
    images += ase.io.read(s22_path, ":")  # a layout per frame
    encode = AtomsEncoder()
    assert [encode(a) for a in images] == _expected(images)


def test_one_atoms_changed_in_place_is_encoded_as_it_is_each_time() -> None:
    atoms = _md(1)[0]
    encode = AtomsEncoder()
    got, expected = [], []
    for step in range(5):
        atoms.positions += 1.0
        atoms.calc.results["energy"] = float(step)
        atoms.info["step"] = step
        got.append(encode(atoms))
        expected.append(frame_to_bytes(atoms_to_frame(atoms)))
    assert got == expected
    assert len(set(got)) == 5


def test_alike_atoms_are_not_converted_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def counted(atoms: ase.Atoms) -> Any:
        calls.append(atoms)
        return atoms_to_frame(atoms)

    monkeypatch.setattr(atoms_encoder, "atoms_to_frame", counted)
    images = _md(50)
    encode = AtomsEncoder()
    assert [encode(a) for a in images] == _expected(images)
    assert len(calls) == 1


@pytest.mark.parametrize("numbers", [[1, 2, 3, 4, 201], [1, 2, 3, 4, -1]])
def test_a_bad_atomic_number_after_good_frames_is_refused_as_atoms_to_frame_does(
        numbers: list[int]) -> None:
    encode = AtomsEncoder()
    for a in _md(3):
        encode(a)
    bad = _md(1)[0]
    bad.arrays["numbers"] = np.array(numbers)
    with pytest.raises(FrameError, match="atomic numbers") as expected:
        atoms_to_frame(bad)
    with pytest.raises(FrameError) as got:
        encode(bad)
    assert str(got.value) == str(expected.value)


def test_an_info_value_that_cannot_be_stored_is_refused_after_good_frames() -> None:
    encode = AtomsEncoder()
    for a in _md(3):
        encode(a)
    bad = _md(1)[0]
    bad.info["vector"] = object()
    with pytest.raises(TypeError, match=r"atoms.info\['vector'\]"):
        encode(bad)
    bad = _md(1)[0]
    bad.arrays["numbers"] = np.arange(1, 6).reshape(5, 1)  # positions still (5, 3)
    with pytest.raises(FrameError, match="numbers must be a 1-d integer array"):
        encode(bad)


def test_atoms_without_atoms_encode_one_after_another() -> None:
    images = [ase.Atoms(), ase.Atoms(cell=np.eye(3)), ase.Atoms(), ase.Atoms(), *_md(2),
              ase.Atoms(), ase.Atoms()]
    encode = AtomsEncoder()
    assert [encode(a) for a in images] == _expected(images)


class _Results:
    """A calculator of someone else's, whose ``results`` may not be a dict."""

    def __init__(self, results: Any) -> None:
        self.results = results


def test_a_calculator_without_a_results_dict_is_taken_as_atoms_to_frame_takes_it() -> None:
    encode = AtomsEncoder()
    for a in _md(3):
        encode(a)
    odd = _md(1)[0]
    odd.calc = _Results(MappingProxyType(dict(odd.calc.results)))
    assert encode(odd) == frame_to_bytes(atoms_to_frame(odd))
    for a in _md(3):
        encode(a)
    odd.calc = _Results(None)
    with pytest.raises(AttributeError) as expected:
        atoms_to_frame(odd)
    with pytest.raises(AttributeError) as got:
        encode(odd)
    assert str(got.value) == str(expected.value)
