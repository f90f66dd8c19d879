"""Frames answers of many small frames of one layout are decoded a run at a time."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from trajhub.client import http
from trajhub.client.http import decode_frames_body
from trajhub.shared import codec
from trajhub.shared.codec import CodecError, encode_frame, packb
from trajhub.shared.frames import Frame, frames_equal


def small_frames(n: int, atoms: int = 40) -> list[Frame]:
    rng = np.random.default_rng(3)
    return [{"numbers": rng.integers(1, 90, atoms, dtype=np.int32),
             "positions": rng.normal(size=(atoms, 3)),
             "cell": np.eye(3) * (i + 1), "pbc": np.array([True, False, True]),
             "arrays.f16": rng.normal(size=(atoms, 2)).astype(np.float16),
             "arrays.empty": np.zeros((atoms, 0)),
             "info.label": np.array(f"frame {i:04d} \u00e9"), "info.step": np.array(i),
             "calc.energy": np.array(float(i)), "calc.ok": np.array(i % 2 == 0)}
            for i in range(n)]


def body_of(frames: list[Frame]) -> bytes:
    return packb({"room": "r", "seq": 1, "frames": [encode_frame(f) for f in frames]})


def by_msgpack(body: bytes, monkeypatch: pytest.MonkeyPatch) -> list[Frame]:
    with monkeypatch.context() as m:
        m.setattr(http, "MIN_RUN_BODY_BYTES", 2**62)
        frames: list[Frame] = decode_frames_body(body)["frames"]
    return frames


@pytest.mark.parametrize("mixed", [False, True])
def test_runs_decode_like_msgpack(monkeypatch: pytest.MonkeyPatch, mixed: bool) -> None:
    frames = small_frames(300)
    if mixed:  # two layouts: runs of each
        frames[100:200] = small_frames(100, atoms=7)
    body = body_of(frames)
    assert len(body) >= http.MIN_RUN_BODY_BYTES
    answer = decode_frames_body(body)
    assert answer["room"] == "r" and answer["seq"] == 1
    expected = by_msgpack(body, monkeypatch)
    assert len(answer["frames"]) == len(frames)
    for got, want, sent in zip(answer["frames"], expected, frames, strict=True):
        assert frames_equal(got, sent) and list(got) == list(want)
        for key, arr in got.items():
            assert arr.dtype == want[key].dtype and arr.shape == want[key].shape
            assert isinstance(arr, np.ndarray)
            assert arr.flags.writeable  # copies of the answer, not views of it
            assert not np.shares_memory(arr, np.frombuffer(body, np.uint8))


def test_a_writable_body_gives_its_runs_as_views_of_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bytearray answer (as large answers are read) is the caller's alone: its
    frames are writable views of it, not copies, and decode as msgpack would."""
    frames = small_frames(300)
    frames[100:200] = small_frames(100, atoms=7)
    body = bytearray(body_of(frames))
    answer = decode_frames_body(body)
    assert isinstance(answer["frames"], http.WritableFrames)
    expected = by_msgpack(bytes(body), monkeypatch)
    whole = np.frombuffer(body, np.uint8)
    for got, want, sent in zip(answer["frames"], expected, frames, strict=True):
        assert frames_equal(got, sent) and list(got) == list(want)
        for key, arr in got.items():
            assert (arr.dtype, arr.shape) == (want[key].dtype, want[key].shape)
            assert arr.flags.writeable
            assert arr.size == 0 or np.shares_memory(arr, whole), key


@pytest.mark.parametrize("writable", [False, True])
def test_frames_of_a_run_are_independent(writable: bool) -> None:
    body = body_of(small_frames(100))
    frames = decode_frames_body(bytearray(body) if writable else body)["frames"]
    frames[0]["positions"][:] = 0.0
    frames[0]["info.step"][...] = 99
    assert frames[1]["positions"].any() and int(frames[1]["info.step"]) == 1


def test_big_endian_and_irregular_answers_take_the_general_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    frames = small_frames(300)
    message = {"frames": [encode_frame(f) for f in frames]}
    for f in message["frames"]:
        f["positions"]["dtype"] = ">f8"  # valid, but not viewable as is
    body = packb(message)
    got = decode_frames_body(body)["frames"]
    want = by_msgpack(body, monkeypatch)
    assert all(g["positions"].tobytes() == w["positions"].tobytes()
               and g["positions"].dtype == w["positions"].dtype
               for g, w in zip(got, want, strict=True))
    bad = packb({"frames": [{**encode_frame(f), "x": {"dtype": "<q9", "shape": [1],
                                                       "data": b"1" * 8}} for f in frames]})
    with pytest.raises(CodecError):
        decode_frames_body(bad)


def test_a_writable_body_gives_writable_in_place_arrays() -> None:
    big = [{"positions": np.arange(30_000, dtype=np.float64).reshape(10_000, 3)}] * 3
    body = bytearray(body_of(big))
    got = decode_frames_body(body)["frames"]
    assert all(f["positions"].flags.writeable for f in got)
    assert np.shares_memory(got[0]["positions"], np.frombuffer(body, np.uint8))
    got[0]["positions"][0, 0] = -1.0
    assert got[1]["positions"][0, 0] == 0.0


def large_frames(n: int, atoms: int, *, label: str = "a") -> list[Frame]:
    rng = np.random.default_rng(5)
    return [{"numbers": rng.integers(1, 90, atoms, dtype=np.int32),
             "positions": rng.normal(size=(atoms, 3)),
             "arrays.f16": rng.normal(size=(atoms, 3)).astype(np.float16),
             "arrays.empty": np.zeros((atoms, 0)), "pbc": np.array([True, False, True]),
             "info.label": np.array(f"{label} {i:03d}"), "calc.energy": np.array(float(i))}
            for i in range(n)]


@pytest.mark.parametrize("big_endian", [False, True])
def test_large_frames_decode_in_place_a_run_at_a_time(monkeypatch: pytest.MonkeyPatch,
                                                      big_endian: bool) -> None:
    atoms = http.IN_PLACE_MIN_FRAME_BYTES // 24 + 1
    frames = large_frames(6, atoms) + large_frames(5, atoms // 2, label="bb")
    message = {"room": "r", "frames": [encode_frame(f) for f in frames]}
    if big_endian:  # valid, but not viewable as is: decoded span by span
        for f in message["frames"]:
            f["positions"]["dtype"] = ">f8"
    body = bytearray(packb(message))
    got = decode_frames_body(body)["frames"]
    want = by_msgpack(bytes(body), monkeypatch)
    assert len(got) == len(frames)
    for g, w in zip(got, want, strict=True):
        assert list(g) == list(w)
        for key, arr in g.items():
            assert (arr.dtype, arr.shape) == (w[key].dtype, w[key].shape), key
            assert arr.tobytes() == w[key].tobytes(), key
    if not big_endian:
        assert all(frames_equal(g, f) for g, f in zip(got, frames, strict=True))
        assert all(np.shares_memory(g["positions"], np.frombuffer(body, np.uint8))
                   for g in got)
        got[0]["positions"][0, 0] = 1e9
        assert got[1]["positions"][0, 0] != 1e9


def test_the_mean_frame_size_is_sampled_over_the_whole_answer() -> None:
    from trajhub.client.room import _mean_frame_nbytes

    def frame(atoms: int) -> Frame:
        return {"positions": np.zeros((atoms, 3)), "numbers": np.zeros(atoms, np.int32)}

    assert _mean_frame_nbytes([]) == 0.0
    few = [frame(10), frame(30)]
    assert _mean_frame_nbytes(few) == (10 + 30) * 28 / 2
    growing = [frame(10 + i // 100) for i in range(10_000)]  # 10 atoms at first, 109 last
    exact = sum(sum(a.nbytes for a in f.values()) for f in growing) / len(growing)
    assert abs(_mean_frame_nbytes(growing) - exact) / exact < 0.02


def said_body(frames: list[Frame], runs: object) -> bytes:
    """An answer as the server writes one of frames read from a slab: ``runs`` first."""
    return packb({"room": "r", "seq": 1, "runs": runs,
                  "frames": [encode_frame(f) for f in frames]})


def scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ``most`` of each comparison of frames with a first one from now on."""
    seen: list[int] = []
    compare = codec._repeats

    def counted(buf: bytes | bytearray, pos: int, stride: int, most: int,
                layout: Any) -> int:
        seen.append(most)
        return compare(buf, pos, stride, most, layout)

    monkeypatch.setattr(codec, "_repeats", counted)
    return seen


def stride_of(frames: list[Frame]) -> int:
    return len(packb(encode_frame(frames[0])))


def test_runs_the_server_states_are_checked_at_their_ends_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    frames = small_frames(300)
    stride = stride_of(frames)
    body = bytearray(said_body(frames, [[0, 120, stride], [120, 180, stride]]))
    seen = scans(monkeypatch)
    answer = decode_frames_body(body)
    assert seen == [1, 1]  # the last frame of each run, against its first
    assert len(answer["frames"]) == 300
    assert all(frames_equal(g, f) for g, f in zip(answer["frames"], frames, strict=True))


def test_frames_between_stated_runs_are_compared_up_to_the_next_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    frames = small_frames(300)
    stride = stride_of(frames)
    seen = scans(monkeypatch)
    got = decode_frames_body(said_body(frames, [[100, 50, stride]]))["frames"]
    assert seen == [99, 1, 149]  # 1..99, the run's last frame, 151..299
    assert all(frames_equal(g, f) for g, f in zip(got, frames, strict=True))


@pytest.mark.parametrize("runs", [
    "no", [[0, 300]], [[0, 301, "s"]], [[0, 301, 10]], [[5, 1, 10]], [[0, 10, 0]],
    [[10, 20, 5], [15, 20, 5]], [[0, 2, True]]])
def test_runs_that_are_not_runs_are_ignored(monkeypatch: pytest.MonkeyPatch,
                                            runs: object) -> None:
    frames = small_frames(300)
    seen = scans(monkeypatch)
    got = decode_frames_body(said_body(frames, runs))["frames"]
    assert seen == [299]  # every frame compared with the first, as without runs
    assert all(frames_equal(g, f) for g, f in zip(got, frames, strict=True))


@pytest.mark.parametrize("where", ["last", "stride"])
def test_a_stated_run_that_does_not_hold_is_scanned(monkeypatch: pytest.MonkeyPatch,
                                                    where: str) -> None:
    """A stated run whose last frame is laid out otherwise (here: int32 atomic numbers
    where the others' are float32, the same size), or whose stride is not its first
    frame's, is scanned frame by frame: the frames decode as sent."""
    frames = small_frames(300)
    stride = stride_of(frames)
    for f in frames:
        f["numbers"] = f["numbers"].astype(np.float32)
    frames[299]["numbers"] = frames[299]["numbers"].astype(np.int32)
    runs = [[0, 300, stride]] if where == "last" else [[0, 300, stride + 8]]
    got = decode_frames_body(said_body(frames, runs))["frames"]
    assert got[299]["numbers"].dtype == np.int32 and got[298]["numbers"].dtype == np.float32
    assert all(frames_equal(g, f) for g, f in zip(got, frames, strict=True))
