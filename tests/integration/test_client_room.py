"""``trajhub.Room`` against a real gateway (in-process control, real Redis and Zarr).

Each test gets a fresh gateway (``gateway_server.gateway``: a flushed Redis DB, Zarr
in tmp_path) through the ``server_url`` fixture, and uses its own room(s).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ase
import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from gateway_server import GatewayServer, gateway, start_gateway  # noqa: F401  (fixtures)
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.helpers import free_port
from trajhub import Room
from trajhub.client import (
    BadRequest,
    FrameIndexError,
    RoomNotFound,
    TrajhubConnectionError,
    atoms_to_frame,
)
from trajhub.client import room as room_module
from trajhub.client.http import Transport, new_idempotency_key
from trajhub.shared.codec import frames_to_bytes
from trajhub.shared.frames import Frame, frames_equal


@pytest.fixture
def server_url(gateway: GatewayServer) -> str:  # noqa: F811
    return gateway.url


def new_room_name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def vis(server_url: str) -> Iterator[Room]:
    with Room(server_url, new_room_name(), author="pytest") as room:
        yield room


def tiny(ident: int) -> ase.Atoms:
    """A one-atom frame whose x coordinate is its identity."""
    return ase.Atoms("H", positions=[[float(ident), 0.0, 0.0]])


def ids(room: Room) -> list[int]:
    return [int(f["positions"][0, 0]) for f in room.get(keys=["positions"])]


def md_frames(n: int) -> list[ase.Atoms]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        atoms = ase.Atoms("CuCu", positions=rng.normal(size=(2, 3)), cell=np.eye(3) * 4,
                          pbc=True)
        atoms.set_momenta(rng.normal(size=(2, 3)))
        atoms.arrays["f32"] = rng.normal(size=2).astype(np.float32)
        atoms.info.update({"step": i, "label": f"frame {i}", "ok": bool(i % 2)})
        atoms.calc = SinglePointCalculator(atoms, energy=float(i), forces=rng.normal(size=(2, 3)),
                                           stress=rng.normal(size=6))
        out.append(atoms)
    return out


def assert_same(a: list[ase.Atoms], b: list[ase.Atoms]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert frames_equal(atoms_to_frame(x), atoms_to_frame(y))


# -- list semantics -------------------------------------------------------------------------

class ListSemantics(RuleBasedStateMachine):
    """The same operations on a Python list of ids and on a Room; they must agree."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.room = Room(url, new_room_name())
        self.model: list[int] = []
        self.next_id = 0

    def fresh(self, n: int) -> list[int]:
        out = list(range(self.next_id, self.next_id + n))
        self.next_id += n
        return out

    def both(self, on_model: Any, on_room: Any) -> tuple[Any, Any]:
        """Run both; they must raise the same kind of error or both succeed."""
        results = []
        for fn in (on_model, on_room):
            try:
                results.append(("ok", fn()))
            except IndexError:
                results.append(("IndexError", None))
            except ValueError:
                results.append(("ValueError", None))
        (kind_m, value_m), (kind_r, value_r) = results
        assert (kind_m, kind_r) in {("ok", "ok"), ("IndexError", "IndexError"),
                                    ("ValueError", "ValueError")}, results
        return value_m, value_r

    @rule(n=st.integers(0, 3))
    def extend(self, n: int) -> None:
        new = self.fresh(n)
        self.model.extend(new)
        self.room.extend([tiny(i) for i in new])

    @rule()
    def append(self) -> None:
        (new,) = self.fresh(1)
        self.model.append(new)
        self.room.append(tiny(new))

    @rule(i=st.integers(-8, 8))
    def insert(self, i: int) -> None:
        (new,) = self.fresh(1)
        self.model.insert(i, new)
        self.room.insert(i, tiny(new))

    @rule(i=st.integers(-8, 8))
    def setitem(self, i: int) -> None:
        (new,) = self.fresh(1)

        def on_model() -> None:
            self.model[i] = new

        def on_room() -> None:
            self.room[i] = tiny(new)

        self.both(on_model, on_room)

    @rule(start=st.none() | st.integers(-8, 8), stop=st.none() | st.integers(-8, 8),
          step=st.sampled_from([None, 1, 2, -1, -2, 3]), n=st.integers(0, 4))
    def setslice(self, start: int | None, stop: int | None, step: int | None, n: int) -> None:
        new = self.fresh(n)
        index = slice(start, stop, step)

        def on_model() -> None:
            self.model[index] = new

        def on_room() -> None:
            self.room[index] = [tiny(i) for i in new]

        self.both(on_model, on_room)

    @rule(i=st.integers(-8, 8))
    def delitem(self, i: int) -> None:
        def on_model() -> None:
            del self.model[i]

        def on_room() -> None:
            del self.room[i]

        self.both(on_model, on_room)

    @rule(start=st.none() | st.integers(-8, 8), stop=st.none() | st.integers(-8, 8),
          step=st.sampled_from([None, 1, 2, -1, -3]))
    def delslice(self, start: int | None, stop: int | None, step: int | None) -> None:
        index = slice(start, stop, step)
        del self.model[index]
        del self.room[index]

    @rule(start=st.none() | st.integers(-8, 8), stop=st.none() | st.integers(-8, 8),
          step=st.sampled_from([None, 1, 2, -1, -2, 3]))
    def getslice(self, start: int | None, stop: int | None, step: int | None) -> None:
        index = slice(start, stop, step)
        got = [int(a.positions[0, 0]) for a in self.room[index]]
        assert got == self.model[index]

    @rule(i=st.integers(-8, 8))
    def getitem(self, i: int) -> None:
        model, room = self.both(lambda: self.model[i], lambda: self.room[i])
        if model is not None:
            assert int(room.positions[0, 0]) == model

    @invariant()
    def same_contents(self) -> None:
        assert len(self.room) == len(self.model)
        assert ids(self.room) == self.model

    def teardown(self) -> None:
        self.room.close()


def test_list_semantics(server_url: str) -> None:
    run_state_machine_as_test(
        lambda: ListSemantics(server_url),
        settings=settings(max_examples=25, stateful_step_count=12, deadline=None,
                          suppress_health_check=list(HealthCheck)))


def test_fancy_indices_and_iteration(vis: Room) -> None:
    vis.extend([tiny(i) for i in range(6)])
    assert [int(a.positions[0, 0]) for a in vis[[0, 5, 3, -1, 0]]] == [0, 5, 3, 5, 0]
    assert [int(a.positions[0, 0]) for a in vis[np.array([4, 1])]] == [4, 1]
    assert [int(a.positions[0, 0]) for a in vis] == list(range(6))
    vis[[1, -1]] = [tiny(10), tiny(11)]
    del vis[[0, 2, -2]]
    assert ids(vis) == [10, 3, 11]
    vis.reverse()
    assert ids(vis) == [11, 3, 10]
    vis.clear()
    assert len(vis) == 0


def test_chunked_writes_and_reads(server_url: str) -> None:
    for overlap in (True, False):
        with Room(server_url, new_room_name(), chunk_frames=7, chunk_bytes=2000,
                  read_frames=7, overlap=overlap) as vis:
            vis.extend((tiny(i) for i in range(40)), progress=False)  # a generator
            assert ids(vis) == list(range(40))
            vis[5:9] = [tiny(100 + i) for i in range(20)]  # delete 4, insert 20 in chunks
            expected = list(range(5)) + list(range(100, 120)) + list(range(9, 40))
            assert ids(vis) == expected
            vis[::3] = [tiny(200 + i) for i in range(len(expected[::3]))]
            expected[::3] = list(range(200, 200 + len(expected[::3])))
            assert ids(vis) == expected
            del vis[2:50:2]
            del expected[2:50:2]
            assert ids(vis) == expected
            assert [int(a.positions[0, 0]) for a in vis[::-4]] == expected[::-4]


class CountingTransport(Transport):
    """A Transport that records how many frames each GET of frames asked for."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.asked: list[int] = []

    def get_frames(self, room: str, **kw: Any) -> dict[str, Any]:
        answer = super().get_frames(room, **kw)
        self.asked.append(len(answer["frames"]))
        return answer


def request_sizes(total: int, first: int, each: int) -> list[int]:
    rest = total - first
    return [first] + [each] * (rest // each) + ([rest % each] if rest % each else [])


def test_reads_are_sized_by_bytes(server_url: str) -> None:
    transport = CountingTransport(server_url)
    first = room_module.READ_FIRST_FRAMES
    with Room(server_url, new_room_name(), transport=transport) as vis:
        vis.extend([tiny(i) for i in range(200)], progress=False)
        per_frame = sum(a.nbytes for a in vis.get([0])[0].values())
        vis.read_bytes = 10 * per_frame
        transport.asked.clear()
        everything = vis.get()  # a few frames first, then 10 frames' worth of bytes each
        assert [int(f["positions"][0, 0]) for f in everything] == list(range(200))
        # Requests after the first are read ahead, so they may be answered out of order.
        assert sorted(transport.asked) == sorted(request_sizes(200, first, 10))
        vis.read_bytes, vis.read_frames = 10**9, 50  # a cap on the frames per request
        transport.asked.clear()
        assert [int(a.positions[0, 0]) for a in vis] == list(range(200))
        assert sorted(transport.asked) == sorted(request_sizes(200, first, 50))


class PathsTransport(Transport):
    """A Transport that records the path of every request."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.paths: list[str] = []

    def request(self, method: str, path: str, **kw: Any) -> Any:
        self.paths.append(path)
        return super().request(method, path, **kw)


def test_reads_of_every_frame_learn_the_count_from_their_first_answer(
        server_url: str) -> None:
    transport = PathsTransport(server_url)
    first = room_module.READ_FIRST_FRAMES
    with Room(server_url, new_room_name(), transport=transport) as vis:
        assert vis.get() == [] and vis[:] == [] and list(vis) == []  # no such room
        vis.extend([tiny(i) for i in range(40)], progress=False)
        vis.read_frames = 7
        frames_path = f"/api/v1/rooms/{vis.room}/frames"
        reads = {"get": lambda: [f["positions"] for f in vis.get()],
                 "get keys": lambda: [f["positions"] for f in vis.get(keys=["positions"])],
                 "[:]": lambda: [a.positions for a in vis[:]],
                 "[0::1]": lambda: [a.positions for a in vis[0::1]],
                 "iter": lambda: [a.positions for a in vis]}
        for name, read in reads.items():
            transport.paths.clear()
            assert [int(p[0, 0]) for p in read()] == list(range(40)), name
            assert transport.paths == [frames_path] * len(request_sizes(40, first, 7)), name
        vis.append(tiny(40))  # the count is the room's, as of the first answer
        assert [int(a.positions[0, 0]) for a in vis[:]] == list(range(41))
        assert [int(a.positions[0, 0]) for a in vis[1:]] == list(range(1, 41))


class ReadAheadTransport(Transport):
    """A Transport that counts GETs of frames and says when the second one starts."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.calls = 0
        self.second = threading.Event()

    def get_frames(self, room: str, **kw: Any) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 2:
            self.second.set()
        return super().get_frames(room, **kw)


def test_reads_ahead_while_the_caller_works_on_an_answer(server_url: str) -> None:
    transport = ReadAheadTransport(server_url)
    with Room(server_url, new_room_name(), transport=transport) as vis:
        vis.extend([tiny(i) for i in range(100)], progress=False)
        vis.read_frames = 10
        seen = []
        for atoms in vis:
            if not seen:  # the next request goes out while the caller holds the first
                assert transport.second.wait(10)
            seen.append(int(atoms.positions[0, 0]))
        assert seen == list(range(100)) and transport.calls == 1 + 10
        transport.calls = 0
        for atoms in vis:  # stopping early leaves nothing behind
            assert int(atoms.positions[0, 0]) == 0
            break
        assert transport.calls <= 1 + room_module.READ_AHEAD
        vis.append(tiny(100))
        assert len(vis) == 101 and vis.get([-1])[0]["positions"][0, 0] == 100


class InFlightTransport(Transport):
    """A Transport whose frame GETs take a while, counting the most in flight at once."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.now = self.most = 0
        self._lock = threading.Lock()

    def get_frames(self, room: str, **kw: Any) -> dict[str, Any]:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.05)  # requests sent together overlap
            return super().get_frames(room, **kw)
        finally:
            with self._lock:
                self.now -= 1


@pytest.mark.parametrize("n_atoms", [10, room_module.READ_LARGE_FRAME_BYTES // 24 + 1])
def test_reads_keep_requests_in_flight_for_small_and_large_frames(
        server_url: str, n_atoms: int) -> None:
    assert room_module.READ_AHEAD > 1
    transport = InFlightTransport(server_url)
    rng = np.random.default_rng(n_atoms)
    frames = [ase.Atoms(numbers=np.ones(n_atoms, int), positions=rng.random((n_atoms, 3)))
              for _ in range(9)]
    with Room(server_url, new_room_name(), transport=transport) as vis:
        vis.extend(frames, progress=False)
        vis.read_frames = 2
        got = vis.get(None)
    assert transport.most == room_module.READ_AHEAD
    assert all(np.array_equal(f["positions"], a.positions) for f, a in zip(got, frames,
                                                                            strict=True))


def test_large_frames_are_asked_for_in_larger_requests(server_url: str) -> None:
    """Frames of READ_LARGE_FRAME_BYTES or more: LARGE_READ_FACTOR x read_bytes each."""
    n_atoms = room_module.READ_LARGE_FRAME_BYTES // 24 + 1
    rng = np.random.default_rng(1)
    large = [{"numbers": np.ones(n, np.int8), "positions": rng.random((n, 3))}
             for n in [n_atoms] * 14]
    small = [{"numbers": np.ones(n, np.int8), "positions": rng.random((n, 3))}
             for n in [n_atoms // 2] * 14]
    for frames, factor in ((large, room_module.LARGE_READ_FACTOR), (small, 1)):
        transport = CountingTransport(server_url)
        with Room(server_url, new_room_name(), transport=transport) as vis:
            vis.extend(frames, progress=False)
            vis.read_bytes = 3 * sum(a.nbytes for a in frames[0].values())
            transport.asked.clear()
            got = vis.get(None)
        first = room_module.READ_FIRST_FRAMES
        assert sorted(transport.asked) == sorted(request_sizes(14, first, 3 * factor))
        assert all(np.array_equal(g["positions"], f["positions"])
                   for g, f in zip(got, frames, strict=True))


@pytest.mark.parametrize(("n", "atoms"), [(1, 2), (60, 100), (3, 12_000)])
def test_get_gives_writable_arrays_of_the_callers_own(vis: Room, n: int, atoms: int) -> None:
    """However an answer was decoded (msgpack, runs copied out, in place), every array
    ``get`` returns is writable, and writing it changes nothing else."""
    rng = np.random.default_rng(atoms)
    frames = [{"numbers": np.full(atoms, 6, dtype=np.int32),
               "positions": rng.normal(size=(atoms, 3))} for _ in range(n)]
    vis.extend(frames, progress=False)
    back = vis.get()
    assert all(a.flags.writeable for f in back for a in f.values())
    for f in back:
        f["positions"] += 1.0
        f["numbers"][:] = 1
    assert all(frames_equal(a, b) for a, b in zip(vis.get(), frames, strict=True))


def test_large_frames_round_trip_writable(vis: Room) -> None:
    """Frames above IN_PLACE_MIN_FRAME_BYTES are decoded in place from the answer."""
    rng = np.random.default_rng(5)
    frames = [{"numbers": np.full(12_000, 6, dtype=np.int32),
               "positions": rng.normal(size=(12_000, 3)),
               "calc.forces": rng.normal(size=(12_000, 3)).astype(np.float32)}
              for _ in range(3)]
    vis.extend(frames, progress=False)
    back = vis.get()
    assert all(frames_equal(a, b) for a, b in zip(back, frames, strict=True))
    back[0]["positions"][0] = 1.0  # writable, and a copy of its own
    back[0]["calc.forces"] *= 2
    assert frames_equal(vis.get([0])[0], frames[0])
    np.testing.assert_array_equal(vis[2].positions, frames[2]["positions"])


def test_a_later_read_reuses_an_answer_buffer_only_once_its_frames_are_gone(
        vis: Room) -> None:
    """Answers of 1 MiB or more are received into RECEIVE_BUFFERS: the frames of a read
    kept by the caller are never written by a later read; dropped, their buffer serves it."""
    rng = np.random.default_rng(7)
    frames = [{"numbers": np.full(300, 6, dtype=np.int32),
               "positions": rng.normal(size=(300, 3))} for _ in range(400)]  # ~1.6 MB
    vis.extend(frames, progress=False)
    vis.read_frames = 400

    def buffers(got: list[Frame]) -> set[int]:
        """The ids of the objects whose memory the frames' positions are."""
        out = set()
        for frame in got:
            base: object = frame["positions"]
            while isinstance(base, np.ndarray) and base.base is not None:
                base = base.base
            out.add(id(base.obj if isinstance(base, memoryview) else base))
        return out

    # (a read's first request asks for READ_FIRST_FRAMES: a small answer, not pooled)
    big = slice(room_module.READ_FIRST_FRAMES, None)
    kept = vis.get()
    first = buffers(kept[big])
    assert len(first) == 1
    kept[-1]["positions"][:] = 0.0  # the caller's own
    again = vis.get()
    assert buffers(again[big]) != first
    assert all(frames_equal(a, b) for a, b in zip(again, frames, strict=True))
    assert not kept[-1]["positions"].any() and frames_equal(kept[-2], frames[-2])
    del kept
    third = vis.get()
    assert buffers(third[big]) == first
    assert all(frames_equal(a, b) for a, b in zip(third, frames, strict=True))


def test_long_index_lists_are_split_to_fit_the_url(
        server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(room_module, "MAX_INDICES_CHARS", 20)  # 4 indices a request here
    transport = CountingTransport(server_url)
    with Room(server_url, new_room_name(), transport=transport) as vis:
        vis.extend([tiny(i) for i in range(30)], progress=False)
        wanted = [29, 3, 3, 17, 0, 11, 28, 5, 1, 12, 12, 2, 7]
        got = vis.get(wanted, keys=["positions"])
        assert [int(f["positions"][0, 0]) for f in got] == wanted
        assert sorted(transport.asked) == [1, 4, 4, 4]  # read ahead: in any order


def test_extend_snapshots_an_atoms_mutated_in_place(server_url: str) -> None:
    """An MD-style generator yields the same Atoms each step; every state is kept."""
    def steps(atoms: ase.Atoms, n: int) -> Iterator[ase.Atoms]:
        for i in range(n):
            atoms.positions[:, 0] = i  # in place, like ASE dynamics
            yield atoms

    for overlap in (True, False):
        with Room(server_url, new_room_name(), chunk_frames=4, overlap=overlap) as vis:
            vis.extend(steps(ase.Atoms("H2", positions=np.zeros((2, 3))), 10))
            assert ids(vis) == list(range(10))


# -- content ---------------------------------------------------------------------------------

def test_s22_exact_round_trip(vis: Room, s22_path: Path) -> None:
    images = ase.io.read(s22_path, ":")
    vis.extend(images)
    assert len(vis) == 22
    assert_same(vis[:], images)
    assert vis[-1].info["name"] == images[-1].info["name"]
    assert vis[3] == images[3]


def test_md_frames_round_trip_with_calc(vis: Room) -> None:
    frames = md_frames(12)
    vis.extend(frames)
    back = vis[:]
    assert_same(back, frames)
    assert back[4].get_potential_energy() == 4.0
    assert back[4].arrays["f32"].dtype == np.float32
    assert back[5].info["label"] == "frame 5" and back[5].info["ok"] is True


def test_get_with_keys(vis: Room) -> None:
    frames = md_frames(5)
    vis.extend(frames)
    got = vis.get([0, 1], keys=["positions", "numbers"])
    assert [sorted(f) for f in got] == [["numbers", "positions"]] * 2
    np.testing.assert_array_equal(got[1]["positions"], frames[1].positions)
    got[0]["positions"] += 1.0  # writable
    assert len(vis.get(slice(None, None, 2), keys=["calc.energy"])) == 3
    assert [float(f["calc.energy"]) for f in vis.get(slice(1, None, 2),
                                                     keys=["calc.energy"])] == [1.0, 3.0]
    everything = vis.get()
    assert len(everything) == 5
    assert frames_equal(everything[-1], atoms_to_frame(frames[-1]))
    assert vis.get([-1], keys=["info.label"])[0]["info.label"][()] == "frame 4"


def test_dict_frames_keep_float32_positions(vis: Room) -> None:
    frame = {"numbers": np.array([1, 8], dtype=np.int32),
             "positions": np.ones((2, 3), dtype=np.float32)}
    vis.append(frame)
    (back,) = vis.get()
    assert back["positions"].dtype == np.float32
    assert back["numbers"].dtype == np.int32
    assert vis[0].positions.dtype == np.float64


# -- errors and the transport ----------------------------------------------------------------

def test_index_error_carries_the_server_reason(vis: Room) -> None:
    vis.extend([tiny(0), tiny(1)])
    with pytest.raises(IndexError) as info:
        vis[7]
    assert isinstance(info.value, FrameIndexError)
    assert info.value.status == 404
    assert isinstance(info.value.detail, str) and info.value.detail
    assert info.value.detail in str(info.value)
    with pytest.raises(IndexError):
        vis[7] = tiny(9)
    with pytest.raises(IndexError):
        del vis[7]
    with pytest.raises(IndexError, match="out of range"):
        vis[-3]
    assert ids(vis) == [0, 1]


def test_empty_and_missing_room(vis: Room) -> None:
    assert len(vis) == 0
    assert vis[:] == []
    assert "n_frames=0" in repr(vis)
    with pytest.raises(IndexError):
        vis[0]
    with pytest.raises(RoomNotFound, match=vis.room):
        vis.transport.request("GET", f"/api/v1/rooms/{vis.room}", not_found=RoomNotFound)


def test_bad_requests_are_value_errors(vis: Room) -> None:
    vis.append(tiny(0))
    with pytest.raises(BadRequest) as info:
        vis.transport.get_frames(vis.room, indices=[0], keys=["bogus key"])
    assert isinstance(info.value, ValueError) and info.value.status == 422
    with pytest.raises(ValueError, match="extended slice"):
        vis[::2] = [tiny(1), tiny(2)]
    with pytest.raises(TypeError):
        vis[0:1] = tiny(1)  # a single Atoms is not a list of frames
    with pytest.raises(TypeError):
        vis.append("not a frame")  # type: ignore[arg-type]


def test_post_with_the_same_idempotency_key_is_one_event(vis: Room) -> None:
    transport = vis.transport
    body = frames_to_bytes([atoms_to_frame(tiny(i)) for i in range(3)])
    key = new_idempotency_key()
    first = transport.post_frames(vis.room, body, idempotency_key=key)
    again = transport.post_frames(vis.room, body, idempotency_key=key)
    assert again == first
    info = transport.room_info(vis.room)
    assert info is not None and info["n_frames"] == 3 and info["seq"] == first["seq"]
    third = transport.post_frames(vis.room, body)  # a new key: a new event
    assert third["seq"] == first["seq"] + 1 and third["n_frames"] == 6


def test_unreachable_server_raises_connection_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    transport = Transport(url, connect_retries=1, backoff_s=0.01)
    with Room(url, "nobody-home", transport=transport) as vis, \
            pytest.raises(TrajhubConnectionError, match=r"127\.0\.0\.1") as info:
        len(vis)
    assert isinstance(info.value, ConnectionError)
    assert "?" in repr(Room(url, "x", transport=transport))
