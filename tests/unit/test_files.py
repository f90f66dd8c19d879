"""trajhub.shared.files: a file replaced whole, by swapping names where Linux can."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from trajhub.shared import files


def test_exchange_swaps_two_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"new")
    b.write_bytes(b"old")
    assert files.exchange(a, b)
    assert (a.read_bytes(), b.read_bytes()) == (b"old", b"new")


def test_exchange_refuses_a_missing_target(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_bytes(b"new")
    assert not files.exchange(a, tmp_path / "missing")
    assert a.read_bytes() == b"new"


@pytest.mark.parametrize("swap", [True, False], ids=["exchange", "rename"])
def test_atomic_put_replaces_creates_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: bool) -> None:
    if not swap:
        monkeypatch.setattr(files, "_renameat2", None)
    target = tmp_path / "deep" / "c" / "0"
    files.atomic_put(target, b"first")  # no file yet: made, with its directories
    files.atomic_put(target, memoryview(b"second, longer"))
    assert target.read_bytes() == b"second, longer"
    assert sorted(p.name for p in target.parent.iterdir()) == ["0"]


@pytest.mark.parametrize("swap", [True, False], ids=["exchange", "rename"])
def test_a_reader_never_sees_a_file_half_replaced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: bool) -> None:
    if not swap:
        monkeypatch.setattr(files, "_renameat2", None)
    target = tmp_path / "chunk"
    contents = [bytes([1]) * 3_000_000, bytes([2]) * 1_000]
    files.atomic_put(target, contents[0])
    done = threading.Event()

    def writer() -> None:
        for i in range(60):
            files.atomic_put(target, contents[i % 2])
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    reads = 0
    while not done.is_set():
        assert target.read_bytes() in contents
        reads += 1
    t.join()
    assert reads > 0
    assert [p.name for p in tmp_path.iterdir()] == ["chunk"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "chunk"
    files.atomic_put(target, b"kept")
    with pytest.raises(TypeError):
        files.atomic_put(target, None)  # (not bytes: the write fails)
    assert target.read_bytes() == b"kept"
    assert [p.name for p in tmp_path.iterdir()] == ["chunk"]


def test_pread_into_fills_as_much_as_the_file_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(20)))
    real = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, bufs, at: real(fd, [bufs[0][:3]], at))
    fd = os.open(path, os.O_RDONLY)
    try:
        out = bytearray(8)
        assert files.pread_into(fd, memoryview(out), 5) == 8  # in reads of 3 bytes
        assert out == bytes(range(5, 13))
        out = bytearray(8)
        assert files.pread_into(fd, memoryview(out), 16) == 4, "the file ends"
        assert out[:4] == bytes(range(16, 20))
    finally:
        os.close(fd)
