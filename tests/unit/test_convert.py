"""Round trips ase.Atoms -> frame -> wire bytes -> frame -> ase.Atoms (no server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ase
import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.verlet import VelocityVerlet
from ase.units import fs

from trajhub.client.convert import atoms_to_frame, frame_to_atoms
from trajhub.shared.codec import frame_from_bytes, frame_to_bytes
from trajhub.shared.frames import frames_equal


def wire(atoms: ase.Atoms) -> ase.Atoms:
    """Through the frame model and the msgpack wire format and back."""
    return frame_to_atoms(frame_from_bytes(frame_to_bytes(atoms_to_frame(atoms))))


def assert_same_array(a: Any, b: Any) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def assert_same_atoms(a: ase.Atoms, b: ase.Atoms) -> None:
    assert a.arrays.keys() == b.arrays.keys()
    for name in a.arrays:
        assert_same_array(a.arrays[name], b.arrays[name])
    assert_same_array(a.cell.array, b.cell.array)
    assert_same_array(a.pbc, b.pbc)
    assert a.info.keys() == b.info.keys()
    for name, value in a.info.items():
        # Python scalars come back as numpy scalars of the same value and dtype.
        assert_same_array(value, b.info[name])
    if a.calc is None:
        assert b.calc is None
        return
    assert isinstance(b.calc, SinglePointCalculator)
    assert a.calc.results.keys() == b.calc.results.keys()
    for name, value in a.calc.results.items():
        if isinstance(value, float):
            assert type(b.calc.results[name]) is float and b.calc.results[name] == value
        else:
            assert_same_array(value, b.calc.results[name])


def emt_md(steps: int = 20) -> list[ase.Atoms]:
    atoms = bulk("Cu", cubic=True) * (2, 2, 2)  # 32 atoms
    atoms.rattle(0.05, seed=1)
    atoms.calc = EMT()
    rng = np.random.default_rng(1)
    atoms.set_momenta(rng.normal(0.0, 0.3, (len(atoms), 3)))
    dyn = VelocityVerlet(atoms, 2 * fs)
    frames = []
    for step in range(steps):
        dyn.run(1)
        snap = atoms.copy()
        snap.set_tags(np.arange(len(snap)) % 3)
        snap.set_initial_charges(np.linspace(-1, 1, len(snap)))
        snap.calc = SinglePointCalculator(
            snap, energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
            stress=atoms.get_stress(), free_energy=atoms.get_potential_energy())
        snap.arrays["label_id"] = np.arange(len(snap), dtype=np.int16)
        snap.arrays["weights32"] = np.linspace(0, 1, len(snap), dtype=np.float32)
        snap.arrays["dipoles"] = np.ones((len(snap), 3, 3), dtype=np.float64) * step
        snap.info.update({
            "step": step, "time_fs": step * 2.0, "converged": step % 2 == 0,
            "label": f"step {step}", "kind": np.int32(7), "temperature": np.float32(300.5),
            "vector": np.array([1.0, 2.0, 3.0]), "names": ["a", "bb"],
            "complex": 1 + 2j,
        })
        frames.append(snap)
    return frames


def test_s22_round_trip(s22_path: Path) -> None:
    images = ase.io.read(s22_path, ":")
    assert len(images) == 22
    for atoms in images:
        back = wire(atoms)
        assert_same_atoms(atoms, back)
        assert back.info["name"] == atoms.info["name"]
        assert back == atoms  # ASE's own comparison


def test_emt_md_round_trip() -> None:
    frames = emt_md()
    for atoms in frames:
        frame = atoms_to_frame(atoms)
        assert frame["calc.forces"].shape == (32, 3)
        assert frame["calc.stress"].shape == (6,)
        assert frame["arrays.momenta"].shape == (32, 3)
        assert frame["arrays.tags"].dtype == np.int64
        assert frame["info.label"].dtype.kind == "U"
        back = wire(atoms)
        assert_same_atoms(atoms, back)
        assert back.get_potential_energy() == atoms.get_potential_energy()
        assert_same_array(back.get_forces(), atoms.get_forces())
        assert_same_array(back.get_momenta(), atoms.get_momenta())
        assert_same_array(back.get_tags(), atoms.get_tags())


def test_info_types_come_back() -> None:
    back = wire(emt_md(1)[0])
    info = back.info
    assert type(info["step"]) is np.int64 and info["step"] == 0
    assert type(info["time_fs"]) is np.float64 and isinstance(info["time_fs"], float)
    assert info["converged"] is True
    assert info["label"] == "step 0" and type(info["label"]) is str
    assert type(info["kind"]) is np.int32
    assert type(info["temperature"]) is np.float32 and info["temperature"] == np.float32(300.5)
    assert_same_array(info["vector"], np.array([1.0, 2.0, 3.0]))
    assert list(info["names"]) == ["a", "bb"]
    assert info["complex"] == 1 + 2j
    assert type(back.calc.results["energy"]) is float


def test_float32_arrays_keep_their_dtype() -> None:
    atoms = ase.Atoms("H2O", positions=np.zeros((3, 3)))
    atoms.arrays["f32"] = np.arange(9, dtype=np.float32).reshape(3, 3)
    atoms.calc = SinglePointCalculator(atoms)
    atoms.calc.results = {"forces": np.ones((3, 3), dtype=np.float32), "energy": 1.5}
    frame = atoms_to_frame(atoms)
    assert frame["arrays.f32"].dtype == np.float32
    assert frame["calc.forces"].dtype == np.float32
    back = wire(atoms)
    assert back.arrays["f32"].dtype == np.float32
    assert back.calc.results["forces"].dtype == np.float32
    assert_same_atoms(atoms, back)


def test_float32_positions_become_float64_atoms() -> None:
    positions = np.array([[0.1, 0.2, 0.3], [1.0, 1.0, 1.0]], dtype=np.float32)
    frame = {"numbers": np.array([1, 1], dtype=np.int32), "positions": positions}
    atoms = frame_to_atoms(frame)
    assert atoms.positions.dtype == np.float64
    assert np.array_equal(atoms.positions, positions.astype(np.float64))
    again = atoms_to_frame(atoms)
    assert again["positions"].dtype == np.float64
    assert np.array_equal(again["positions"].astype(np.float32), positions)


def test_atoms_arrays_are_writable_after_decoding() -> None:
    atoms = ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    atoms.arrays["extra"] = np.ones(2)
    back = wire(atoms)
    back.positions += 1.0
    back.arrays["extra"][0] = 5.0


def test_frame_is_canonical_and_stable() -> None:
    atoms = emt_md(1)[0]
    frame = atoms_to_frame(atoms)
    assert frames_equal(frame, atoms_to_frame(wire(atoms)))
    assert {"numbers", "positions", "cell", "pbc"} <= frame.keys()


@pytest.mark.parametrize("value", [{"a": 1}, None, object(), [1, [2, 3]], b"bytes", 2**70])
def test_bad_info_values_raise_type_error_naming_the_key(value: Any) -> None:
    atoms = ase.Atoms("H")
    atoms.info["bad_thing"] = value
    with pytest.raises(TypeError, match="bad_thing"):
        atoms_to_frame(atoms)


@pytest.mark.parametrize("name", ["has space", "dots.in.name", "", "x" * 65, "ä"])
def test_bad_key_names_raise_value_error(name: str) -> None:
    atoms = ase.Atoms("H")
    atoms.info[name] = 1
    with pytest.raises(ValueError, match=r"atoms\.info"):
        atoms_to_frame(atoms)
    atoms = ase.Atoms("H")
    atoms.arrays[name] = np.zeros(1)
    with pytest.raises(ValueError, match=r"atoms\.arrays"):
        atoms_to_frame(atoms)


def test_frame_without_positions_is_refused() -> None:
    with pytest.raises(ValueError, match="positions"):
        frame_to_atoms({"numbers": np.array([1])})
