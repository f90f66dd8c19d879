"""The servers do not carry ASE (and SciPy through it, ~65 MB of the 300 MB budget)
until a file upload needs it; the client still offers ``trajhub.Room``."""

from __future__ import annotations

import subprocess
import sys

SERVER_MODULES = ("trajhub.cli", "trajhub.serve", "trajhub.gateway.app",
                  "trajhub.storage.worker", "trajhub.control.http",
                  "trajhub.snapshotter")


def _imported_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\n"
                          "print(','.join(sorted({m.split('.')[0] for m in sys.modules})))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.strip().split(","))


def test_server_modules_do_not_import_ase() -> None:
    loaded = _imported_after("\n".join(f"import {m}" for m in SERVER_MODULES))
    assert "trajhub" in loaded
    assert "ase" not in loaded
    assert "scipy" not in loaded


def test_room_is_still_importable_from_the_package() -> None:
    loaded = _imported_after("from trajhub import Room\nassert Room.__name__ == 'Room'")
    assert "ase" in loaded


def test_unknown_attribute_is_an_attribute_error() -> None:
    import trajhub

    try:
        trajhub.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("trajhub.NoSuchThing did not raise")
