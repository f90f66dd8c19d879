"""The classic fencing failure, with a real stalled OS process (SIGSTOP).

Process A takes the room lock over HTTP, then is stopped past the lock's TTL. B takes
the lock and commits. A is continued and commits with its (now stale) token and fence:
the gateway refuses it with 423 naming B, and B's edit stands.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import ase
import numpy as np
import pytest
from gateway_server import (  # noqa: F401  (fixtures)
    GatewayServer,
    frames_body,
    gateway,
    start_gateway,
)

from trajhub import Room
from trajhub.client.convert import atoms_to_frame

TTL_MS = 400

# Process A: stdlib only, so nothing in it renews the lock behind the test's back.
CHILD = r"""
import json, sys, urllib.request, urllib.error
url, room = sys.argv[1], sys.argv[2]

def call(method, path, body, headers):
    req = urllib.request.Request(url + path, data=body, method=method,
                                 headers={"X-Trajhub-Author": "A", **headers})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())

status, lock = call("POST", f"/api/v1/rooms/{room}/locks",
                    json.dumps({"target": "room", "ttl_ms": TTL_MS}).encode(),
                    {"content-type": "application/json"})
print(json.dumps({"status": status, "lock": lock}), flush=True)
sys.stdin.buffer.readline()  # the test stops us here, then continues us and says go
frame = sys.stdin.buffer.read(int(sys.stdin.buffer.readline()))
status, answer = call("PUT", f"/api/v1/rooms/{room}/frames", frame,
                      {"content-type": "application/msgpack",
                       "X-Trajhub-Lock": lock["token"], "X-Trajhub-Fence": str(lock["fence"])})
print(json.dumps({"status": status, "answer": answer}), flush=True)
""".replace("TTL_MS", str(TTL_MS))


def atoms(x: float) -> ase.Atoms:
    return ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, x]])


@pytest.fixture
def child(gateway: GatewayServer) -> Iterator[tuple[subprocess.Popen[bytes], str]]:  # noqa: F811
    room = f"fence-{uuid.uuid4().hex[:8]}"
    with Room(gateway.url, room, author="setup") as vis:
        vis.extend([atoms(0.7), atoms(0.8)])
    proc = subprocess.Popen([sys.executable, "-c", CHILD, gateway.url, room],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    yield proc, room
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
    proc.wait()


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX signals")
def test_a_stalled_lock_holder_is_refused_when_it_wakes(
        gateway: GatewayServer, child: tuple[subprocess.Popen[bytes], str]) -> None:  # noqa: F811
    proc, room = child
    assert proc.stdout is not None and proc.stdin is not None
    took = json.loads(proc.stdout.readline())
    assert took["status"] == 201, took
    a_fence = took["lock"]["fence"]

    os.kill(proc.pid, signal.SIGSTOP)
    time.sleep(TTL_MS / 1000 * 2.5)  # A's lock expires while A cannot run

    with Room(gateway.url, room, author="B") as b:
        with b.lock(ttl=5.0) as lock:
            assert lock.fence is not None and lock.fence > a_fence
            b[0] = atoms(1.5)

        stale = frames_body([atoms_to_frame(atoms(9.9))], indices=[0])
        os.kill(proc.pid, signal.SIGCONT)
        proc.stdin.write(b"go\n" + f"{len(stale)}\n".encode() + stale)
        proc.stdin.flush()
        refused = json.loads(proc.stdout.readline())

        assert refused["status"] == 423, refused
        assert "expired" in refused["answer"]["detail"]
        assert float(np.linalg.norm(b[0].positions[1])) == pytest.approx(1.5)
        history = b.history()
        assert [e["author"] for e in history][-1] == "B"
