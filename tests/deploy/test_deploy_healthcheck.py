"""``python -m trajhub.shared.healthcheck`` (the containers' health check) against a real
Redis and a real HTTP server: exit 0 when they answer, 1 when they do not."""

from __future__ import annotations

import http.server
import runpy
import socket
import sys
import threading
from collections.abc import Iterator

import pytest

from trajhub.shared import healthcheck


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[http.server.HTTPServer, type[Handler]]]:
    handler = type("H", (Handler,), {})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def test_redis_answers(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAJHUB_REDIS_URL", redis_url)
    assert healthcheck.main([]) == 0


def test_redis_does_not_answer(monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("TRAJHUB_REDIS_URL", url)
    assert healthcheck.main([]) == 1
    err = capsys.readouterr().err
    assert "Redis" in err and "hunter2" not in err


def test_http(http_server: tuple[http.server.HTTPServer, type[Handler]],
              monkeypatch: pytest.MonkeyPatch) -> None:
    server, handler = http_server
    monkeypatch.setenv("TRAJHUB_PORT", str(server.server_address[1]))
    assert healthcheck.main(["--http"]) == 0
    handler.status = 503
    assert healthcheck.main(["--http"]) == 1
    monkeypatch.setenv("TRAJHUB_PORT", str(free_port()))
    assert healthcheck.main(["--http"]) == 1


def test_bad_usage() -> None:
    assert healthcheck.main(["--nope"]) == 2


def test_runs_as_a_module(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """As the Dockerfiles and the k8s probes call it (``python -m``), in-process."""
    monkeypatch.setenv("TRAJHUB_REDIS_URL", redis_url)
    monkeypatch.setattr(sys, "argv", ["healthcheck"])
    # run it fresh as __main__, as `python -m` does (the test imported it already)
    monkeypatch.delitem(sys.modules, "trajhub.shared.healthcheck")
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("trajhub.shared.healthcheck", run_name="__main__")
    assert exit_.value.code == 0
    monkeypatch.setattr(sys, "argv", ["healthcheck", "--http"])
    monkeypatch.setenv("TRAJHUB_PORT", str(free_port()))
    sys.modules.pop("trajhub.shared.healthcheck", None)
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("trajhub.shared.healthcheck", run_name="__main__")
    assert exit_.value.code == 1
