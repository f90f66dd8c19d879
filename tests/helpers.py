"""Test helpers shared by the integration and system tests (no fixtures here)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

import httpx
import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.verlet import VelocityVerlet
from ase.units import fs, kB


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.05)


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def emt_md(n_frames: int, repeat: int = 2, seed: int = 0) -> list[Atoms]:
    """A real EMT molecular-dynamics trajectory of a copper cell (32 atoms by default)."""
    atoms = bulk("Cu", cubic=True) * (repeat, repeat, repeat)
    atoms.rattle(0.05, seed=seed)
    atoms.calc = EMT()
    rng = np.random.default_rng(seed)
    masses = atoms.get_masses()[:, None]
    atoms.set_momenta(rng.normal(size=(len(atoms), 3)) * np.sqrt(masses * kB * 300))
    dyn = VelocityVerlet(atoms, 2 * fs)
    frames: list[Atoms] = []
    for _ in range(n_frames):
        dyn.run(1)
        snap = atoms.copy()
        snap.calc = SinglePointCalculator(
            snap, energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
            stress=atoms.get_stress())
        frames.append(snap)
    return frames


async def eventually(check: Callable[[], Awaitable[bool]], limit_s: float = 20.0) -> None:
    """Poll the async ``check`` until it holds (fails the test after ``limit_s``)."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)
