"""Runs of frames that share a layout are prepared as a whole (``codec.scan_bulk_runs``,
``ingest.prepare_runs``): the same hashes, blobs and refusals as frame by frame."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from trajhub.gateway import ingest
from trajhub.gateway.errors import ApiError
from trajhub.gateway.ingest import (
    HASH_BLOCK_BYTES,
    PARALLEL_HASH_BYTES,
    parse_upload,
    parse_upload_generic,
)
from trajhub.shared.codec import frame_to_bytes, frames_to_bytes, scan_bulk, scan_bulk_runs
from trajhub.shared.frames import Frame
from trajhub.shared.hashing import frame_hash

LIMIT = 2**26


def frame(i: int, n_atoms: int = 4, extra: Frame | None = None) -> Frame:
    rng = np.random.default_rng(i)
    out: Frame = {"numbers": rng.integers(1, 80, n_atoms), "positions": rng.random((n_atoms, 3)),
                  "cell": np.eye(3) * i, "pbc": np.array([True, False, True]),
                  "calc.energy": np.asarray(float(i))}
    out.update(extra or {})
    return out


def outcome(parse: Any, body: bytes) -> tuple[Any, ...]:
    try:
        fields, prepared = parse(bytearray(body), LIMIT)
    except ApiError as exc:
        return ("refused", exc.status, exc.detail)
    return ("ok", fields, prepared.hashes, [bytes(b) for b in prepared.blobs])


def test_a_run_is_hashed_and_staged_frame_by_frame() -> None:
    frames = [frame(i) for i in range(7)]
    body = frames_to_bytes(frames, at=3)
    fields, runs = scan_bulk_runs(body)
    assert fields == {"at": 3} and [r.count for r in runs] == [7]
    got = outcome(parse_upload, body)
    assert got == outcome(parse_upload_generic, body)
    assert got[2] == [frame_hash(f) for f in frames]
    assert got[3] == [frame_to_bytes(f) for f in frames]


def count_pool_use(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    used: list[int] = []
    real = ingest._hash_pool

    def counted() -> Any:
        used.append(1)
        return real()

    monkeypatch.setattr(ingest, "_hash_pool", counted)
    return used


@pytest.mark.parametrize("count", [2, 3, 9])
def test_a_large_run_hashed_on_two_threads_gives_every_frame_its_hash(
        count: int, monkeypatch: pytest.MonkeyPatch) -> None:
    n_atoms = PARALLEL_HASH_BYTES // (count * 24) + 1  # the run just passes the threshold
    frames = [frame(i, n_atoms) for i in range(count)]
    body = frames_to_bytes(frames)
    assert len(body) > PARALLEL_HASH_BYTES
    used = count_pool_use(monkeypatch)
    got = outcome(parse_upload, body)
    assert used, "hashed on the second thread too"
    assert got[2] == [frame_hash(f) for f in frames]
    assert got == outcome(parse_upload_generic, body)


def test_small_frames_are_hashed_block_by_block_on_one_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Small frames are hashed as rows of a reused block: a run over several blocks
    (the last one part full), every frame its own hash; on the request's thread only,
    however large the run (two threads taking the GIL in turn per frame were slower)."""
    frames = [frame(i, 100) for i in range(3_001)]
    body = frames_to_bytes(frames)
    assert len(body) > PARALLEL_HASH_BYTES and len(body) > 2 * HASH_BLOCK_BYTES
    used = count_pool_use(monkeypatch)
    got = outcome(parse_upload, body)
    assert got[2] == [frame_hash(f) for f in frames]
    assert not used, "small frames went to the second thread"


def test_layout_changes_start_new_runs() -> None:
    frames = [frame(0), frame(1), frame(2, n_atoms=5), frame(3, n_atoms=5),
              frame(4, extra={"info.tag": np.asarray("x")}), frame(5), frame(6)]
    body = frames_to_bytes(frames)
    assert [r.count for r in scan_bulk_runs(body)[1]] == [2, 2, 1, 2]
    assert [s.obj for s in scan_bulk(body)[1]] == [s.obj for r in scan_bulk_runs(body)[1]
                                                   for s in r.spans()]
    got = outcome(parse_upload, body)
    assert got == outcome(parse_upload_generic, body)
    assert got[2] == [frame_hash(f) for f in frames]


@pytest.mark.parametrize("bad", [1, 4, 9])
@pytest.mark.parametrize("value", [-1, 201])
def test_numbers_are_checked_in_every_frame_of_a_run(bad: int, value: int) -> None:
    frames = [frame(i) for i in range(10)]
    frames[bad]["numbers"] = frames[bad]["numbers"].copy()
    frames[bad]["numbers"][2] = value
    body = frames_to_bytes(frames)
    assert len(scan_bulk_runs(body)[1]) == 1
    got = outcome(parse_upload, body)
    assert got == outcome(parse_upload_generic, body)
    assert got[:2] == ("refused", 422) and got[2].startswith(f"frame {bad}: numbers")


def test_non_canonical_runs_are_re_encoded() -> None:
    frames = [frame(i) for i in range(5)]
    for f in frames:
        f["positions"] = f["positions"].astype(">f8")
    body = frames_to_bytes(frames)
    got = outcome(parse_upload, body)
    assert got == outcome(parse_upload_generic, body)
    assert got[3] == [frame_to_bytes(f) for f in frames]
