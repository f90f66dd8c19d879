"""Admin credentials (TRAJHUB_ADMIN_USER / TRAJHUB_ADMIN_PASSWORD) on a real gateway:
with both set, compaction answers 401 + WWW-Authenticate without the right HTTP Basic
credentials and compacts nothing; with them (HTTP or the CLI) it runs; without an admin
configured the endpoint stays open."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest
from gateway_server import (
    GatewayServer,
    apply_room,  # noqa: F401  (fixture)
    make_frame,
    post_frames,
    redis_snapshot,
    start_gateway,  # noqa: F401  (fixture)
)

from trajhub.cli import main as cli_main

ADMIN = ("admin", "s3cret:with-colon")


@pytest.fixture
def server(start_gateway: Callable[..., GatewayServer]) -> GatewayServer:  # noqa: F811
    return start_gateway(admin_user=ADMIN[0], admin_password=ADMIN[1])


@pytest.fixture
def http(server: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture
def room(http: httpx.Client, apply_room: Callable[[str], int]) -> str:  # noqa: F811
    for seed in range(3):
        response = post_frames(http, "r", [make_frame(10, seed)], at=0)
        assert response.status_code == 201, response.text
    apply_room("r")
    return "r"


@pytest.mark.parametrize("auth", [None, ("admin", "wrong"), ("root", ADMIN[1]),
                                  ("admin", ADMIN[1][:-1])])
def test_compact_refused_without_the_admin_credentials(
        http: httpx.Client, room: str, redis_url: str,
        auth: tuple[str, str] | None) -> None:
    before = redis_snapshot(redis_url)
    response = http.post(f"/api/v1/rooms/{room}/compact", params={"keep_events": 0},
                         auth=auth)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Basic ")
    assert "admin" in response.json()["detail"]
    assert redis_snapshot(redis_url) == before


@pytest.mark.parametrize("header", ["Bearer abc", "Basic !!!notbase64",
                                    "Basic YWRtaW4="])  # "admin", no colon
def test_malformed_authorization_is_refused(http: httpx.Client, room: str,
                                            header: str) -> None:
    response = http.post(f"/api/v1/rooms/{room}/compact",
                         headers={"Authorization": header})
    assert response.status_code == 401


def test_compact_with_the_admin_credentials(http: httpx.Client, room: str,
                                            redis_url: str) -> None:
    response = http.post(f"/api/v1/rooms/{room}/compact", params={"keep_events": 0},
                         auth=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json()["room"] == room
    # the refusal comes before the room lookup: no existence leak to strangers
    assert http.post("/api/v1/rooms/nope/compact").status_code == 401
    assert http.post("/api/v1/rooms/nope/compact", auth=ADMIN).status_code == 404


def test_other_endpoints_stay_open(http: httpx.Client, room: str) -> None:
    assert http.get(f"/api/v1/rooms/{room}").status_code == 200
    assert http.get("/api/v1/rooms").status_code == 200


def test_cli_sends_the_credentials(server: GatewayServer, room: str,
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("TRAJHUB_ADMIN_USER", raising=False)
    monkeypatch.delenv("TRAJHUB_ADMIN_PASSWORD", raising=False)
    assert cli_main(["compact", room, "--url", server.url]) == 1
    assert "401" in capsys.readouterr().err

    monkeypatch.setenv("TRAJHUB_ADMIN_PASSWORD", ADMIN[1])
    assert cli_main(["compact", room, "--url", server.url, "--user", ADMIN[0],
                     "--keep-events", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["room"] == room

    monkeypatch.setenv("TRAJHUB_ADMIN_USER", ADMIN[0])  # --user from the environment
    assert cli_main(["compact", room, "--url", server.url]) == 0


def test_no_admin_configured_leaves_compaction_open(
        start_gateway: Callable[..., GatewayServer],  # noqa: F811
        apply_room: Callable[[str], int]) -> None:  # noqa: F811
    # only one of the two set: not an admin configuration, nothing required
    open_server = start_gateway(admin_user="admin")
    with httpx.Client(base_url=open_server.url, timeout=60) as client:
        assert post_frames(client, "o", [make_frame(5, 1)]).status_code == 201
        apply_room("o")
        assert client.post("/api/v1/rooms/o/compact").status_code == 200
