"""``trajhub.Room`` collaboration against a real gateway: locks, base versions, patch,
undo/redo, history and the step (in-process control, real Redis and Zarr)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import ase
import httpx
import numpy as np
import pytest
from gateway_server import GatewayServer, gateway, start_gateway  # noqa: F401  (fixtures)

from tests.helpers import wait_until
from trajhub import Room
from trajhub.client import (
    ConflictError,
    LockedError,
    NothingToRedo,
    NothingToUndo,
    TrajhubError,
)
from trajhub.client.http import Transport


@pytest.fixture
def server_url(gateway: GatewayServer) -> str:  # noqa: F811
    return gateway.url


@pytest.fixture
def name() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def alice(server_url: str, name: str) -> Iterator[Room]:
    with Room(server_url, name, author="alice") as room:
        yield room


@pytest.fixture
def bob(server_url: str, name: str) -> Iterator[Room]:
    with Room(server_url, name, author="bob", lock_wait=0.3) as room:
        yield room


def tiny(ident: int) -> ase.Atoms:
    """A one-atom frame whose x coordinate is its identity."""
    return ase.Atoms("H", positions=[[float(ident), 0.0, 0.0]])


def ids(room: Room) -> list[int]:
    return [int(f["positions"][0, 0]) for f in room.get(keys=["positions"])]


def lock_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("trajhub-lock")]


# -- locks ------------------------------------------------------------------------------------

def test_room_lock_blocks_others_and_is_released_on_exception(alice: Room, bob: Room) -> None:
    alice.extend([tiny(0), tiny(1)])
    with pytest.raises(RuntimeError, match="boom"), alice.lock(message="relaxing") as lock:
        assert lock.held and lock.token and lock.fence and lock.expires_at
        assert lock.target == {"room": True}
        alice.append(tiny(2))  # the holder's own writes present the lock
        alice[0] = tiny(10)
        for write in (lambda: bob.append(tiny(9)), lambda: bob.__setitem__(1, tiny(9)),
                      lambda: bob.__delitem__(0)):
            with pytest.raises(LockedError) as info:
                write()
            assert isinstance(info.value, TrajhubError) and info.value.status == 423
            assert "alice" in str(info.value) and "relaxing" in str(info.value)
            assert info.value.holder is not None and info.value.holder["author"] == "alice"
        (holder,) = bob.locks()
        assert holder["author"] == "alice" and holder["message"] == "relaxing"
        assert "token" not in holder
        raise RuntimeError("boom")
    assert not lock.held and lock_threads() == []
    assert bob.locks() == []
    bob.append(tiny(3))
    assert ids(bob) == [10, 1, 2, 3]


def test_frame_lock_blocks_only_its_frames(alice: Room, bob: Room) -> None:
    alice.extend([tiny(i) for i in range(4)])
    with alice.lock(frames=[1, 2]) as lock:
        assert lock.target is not None and lock.target["indices"] == [1, 2]
        bob[0] = tiny(10)
        bob.append(tiny(4))  # inserts are blocked only by a room lock
        with pytest.raises(LockedError, match="alice"):
            bob[2] = tiny(12)
        with pytest.raises(LockedError, match="alice"):
            bob.lock(start=2, stop=4, wait=0.2).acquire()
        alice[2] = tiny(22)
    assert ids(alice) == [10, 1, 22, 3, 4]
    assert lock_threads() == []
    alice.get([1])  # seen frames are locked by id: the frame alice saw, wherever it is now
    bob.insert(0, tiny(99))
    lock = alice.lock(1, ttl=5).acquire()  # without `with`: writes present it until release
    try:
        assert lock.target is not None and lock.target["indices"] == [2]
        with pytest.raises(LockedError):
            bob[2] = tiny(9)
        alice[1] = tiny(11)  # alice's index 1, locked by alice
    finally:
        lock.release()
    assert not lock.held and lock_threads() == []
    bob[2] = tiny(21)
    assert ids(alice) == [99, 10, 21, 22, 3, 4]


def test_taking_a_held_lock_waits_then_names_the_holder(alice: Room, bob: Room) -> None:
    alice.append(tiny(0))
    with alice.lock(message="long job"):
        with pytest.raises(LockedError, match=r"alice.*long job|long job.*alice") as info, \
                bob.lock(wait=0.2):
            pytest.fail("took a lock someone else holds")
        assert "waiting" in str(info.value)
    with bob.lock(frames=[0]):  # free again
        bob[0] = tiny(1)
    assert ids(alice) == [1]


def test_renewal_keeps_a_short_lock_alive_past_its_ttl(alice: Room, bob: Room) -> None:
    alice.append(tiny(0))
    with alice.lock(ttl=1.0) as lock:
        assert lock.expires_at is not None
        first_expiry = lock.expires_at
        # a renewal made after the first expiry moment: the lock outlived its ttl
        wait_until(lambda: lock.expires_at is not None
                   and lock.expires_at - 1000 > first_expiry, timeout=20, what="a renewal")
        assert [h["author"] for h in bob.locks()] == ["alice"]
        with pytest.raises(LockedError):
            bob.append(tiny(9))
        alice.append(tiny(1))
    assert ids(bob) == [0, 1]


def test_a_lost_lock_makes_the_next_write_raise(alice: Room, bob: Room) -> None:
    alice.append(tiny(0))
    with alice.lock(ttl=0.3) as lock:
        assert lock.token is not None
        alice.transport.release_lock(alice.room, lock.token)  # as if it had expired
        wait_until(lambda: not lock.held, timeout=20, what="the renewal to fail")
        with pytest.raises(LockedError, match="lost"):
            alice.append(tiny(1))
        bob.append(tiny(2))  # nobody holds it any more
    assert lock_threads() == []
    assert ids(bob) == [0, 2]


class RefusalSignal(Transport):
    """A Transport that sets ``refused`` when an insert is refused by a lock."""

    def __init__(self, url: str) -> None:
        super().__init__(url, author="bob")
        self.refused = threading.Event()

    def post_frames(self, room: str, body: bytes, **kw: Any) -> dict[str, Any]:
        try:
            return super().post_frames(room, body, **kw)
        except LockedError:
            self.refused.set()
            raise


def test_extend_waits_for_a_lock_then_writes_every_frame_once(
        alice: Room, server_url: str, name: str) -> None:
    alice.append(tiny(-1))
    transport = RefusalSignal(server_url)
    errors: list[BaseException] = []
    with Room(server_url, name, transport=transport, chunk_frames=7,
              lock_wait=60) as writer:
        def upload() -> None:
            try:
                writer.extend([tiny(i) for i in range(40)], progress=False)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        with alice.lock():
            thread = threading.Thread(target=upload)
            thread.start()
            assert transport.refused.wait(20)
            assert ids(alice) == [-1]
        thread.join(60)
        assert not thread.is_alive() and errors == []
    assert ids(alice) == [-1, *range(40)]


# -- base versions and patch ------------------------------------------------------------------

def test_a_stale_edit_is_a_conflict_and_writes_nothing(alice: Room, bob: Room) -> None:
    alice.extend([tiny(i) for i in range(3)])
    assert int(alice[1].positions[0, 0]) == 1  # alice has seen frame 1
    bob[1] = tiny(11)  # bob has not: his edit goes by index
    with pytest.raises(ConflictError) as info:
        alice[1] = tiny(21)
    (conflict,) = info.value.conflicts
    assert conflict["index"] == 1 and conflict["actual"] > conflict["expected"]
    with pytest.raises(ConflictError):
        del alice[1]
    with pytest.raises(ConflictError):
        alice.patch(1, positions=np.zeros((1, 3)))
    assert ids(bob) == [0, 11, 2]
    alice.get([1])  # seen again: now the edit is against bob's version
    alice[1] = tiny(21)
    assert ids(bob) == [0, 21, 2]


def test_an_edit_after_someone_inserts_lands_on_the_frame_seen(alice: Room, bob: Room) -> None:
    alice.extend([tiny(i) for i in range(4)])
    alice.get()  # alice sees 0 1 2 3
    bob.insert(0, tiny(100))
    bob.insert(0, tiny(101))
    alice[1] = tiny(10)  # the frame alice saw at 1, now at 3
    assert ids(bob) == [101, 100, 0, 10, 2, 3]
    alice.patch(3, {"info.note": "seen"})  # the frame alice saw at 3, now at 5
    assert bob.get([5], keys=["info.note"])[0]["info.note"][()] == "seen"
    del alice[2]  # the frame alice saw at 2
    assert ids(bob) == [101, 100, 0, 10, 3]
    alice.append(tiny(5))  # alice's own inserts and deletes shift her indices, as in a list
    alice.insert(0, tiny(7))
    alice[0] = tiny(8)
    assert ids(bob) == [8, 101, 100, 0, 10, 3, 5]


def test_patch_changes_only_the_given_keys(alice: Room, server_url: str, name: str) -> None:
    atoms = ase.Atoms("H2O", positions=np.arange(9.0).reshape(3, 3))
    atoms.info["step"] = 4
    alice.extend([tiny(0), atoms])
    before = alice.get([1])[0]
    forces = np.ones((3, 3))
    with Room(server_url, name, author="carol") as carol:  # has not seen the frame
        version = carol.patch(-1, {"arrays.forces": forces, "calc.energy": -1.5},
                              positions=np.zeros((3, 3)))
        assert isinstance(version, int)
        again = carol.patch(1, {"info.step": 5})
        assert again > version
    after = alice.get([1])[0]
    np.testing.assert_array_equal(after["positions"], np.zeros((3, 3)))
    np.testing.assert_array_equal(after["arrays.forces"], forces)
    assert float(after["calc.energy"]) == -1.5 and int(after["info.step"]) == 5
    np.testing.assert_array_equal(after["numbers"], before["numbers"])
    np.testing.assert_array_equal(after["cell"], before["cell"])
    assert ids(alice)[0] == 0
    with pytest.raises(ValueError, match="needs at least one key"):
        alice.patch(0)
    with pytest.raises(ValueError, match="bad key"):
        alice.patch(0, {"bad key": 1})


# -- undo, redo, history ------------------------------------------------------------------------

def test_undo_redo_and_history(alice: Room, bob: Room) -> None:
    with pytest.raises(NothingToUndo):
        alice.undo()
    alice.extend([tiny(0), tiny(1)])
    alice[1] = tiny(11)
    answer = alice.undo()
    assert answer["kind"] == "undo" and ids(alice) == [0, 1]
    answer = alice.redo()
    assert answer["kind"] == "redo" and ids(alice) == [0, 11]
    with pytest.raises(NothingToRedo):
        alice.redo()
    bob[1] = tiny(21)  # a later edit of the same frame by someone else
    with pytest.raises(ConflictError, match="bob") as info:
        alice.undo()
    assert info.value.later is not None and info.value.later["author"] == "bob"
    assert ids(alice) == [0, 21]

    events = alice.history()
    assert [e["kind"] for e in events] == ["frames_inserted", "frames_replaced", "undo",
                                           "redo", "frames_replaced"]
    assert [e["author"] for e in events] == ["alice"] * 4 + ["bob"]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    assert alice.history(since=seqs[1]) == events[2:]
    assert alice.history(limit=2) == events[:2]
    assert alice.history(since=seqs[-1]) == []


def test_history_pages(alice: Room, monkeypatch: pytest.MonkeyPatch) -> None:
    from trajhub.client import room as room_module

    for i in range(7):
        alice.append(tiny(i))
    monkeypatch.setattr(room_module, "HISTORY_PAGE", 3)
    events = alice.history()
    assert [e["indices"] for e in events] == [[i] for i in range(7)]
    assert alice.history(since=events[0]["seq"], limit=4) == events[1:5]


# -- the step -------------------------------------------------------------------------------------

def test_step_get_and_set(alice: Room, bob: Room, server_url: str) -> None:
    alice.extend([tiny(i) for i in range(3)])
    assert alice.step is None
    alice.step = 2
    assert bob.step == 2
    bob.step = -3
    assert alice.step == 0
    with httpx.Client(base_url=server_url) as client:
        taken = client.post(f"/api/v1/rooms/{alice.room}/presenter", json={},
                            headers={"X-Trajhub-Author": "dave"})
        assert taken.status_code == 200, taken.text
        with pytest.raises(LockedError, match="dave"):
            alice.step = 1
        assert bob.step == 0
        released = client.delete(f"/api/v1/rooms/{alice.room}/presenter/"
                                 f"{taken.json()['token']}")
        assert released.status_code == 200, released.text
    alice.step = 1
    assert bob.step == 1
