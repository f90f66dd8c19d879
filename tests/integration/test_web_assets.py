"""The gateway serves the built viewer, and says how to build it when it is missing."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from gateway_server import GatewayServer, gateway, start_gateway  # noqa: F401  (fixtures)

from trajhub.gateway import web


def test_pages_and_assets_are_served(gateway: GatewayServer) -> None:  # noqa: F811
    if not (web.STATIC_DIR / "index.html").is_file():
        pytest.fail("the viewer is not built: uv sync --reinstall-package trajhub-gateway")
    client = httpx.Client(base_url=gateway.url)
    for path in ("/", "/rooms/demo"):
        page = client.get(path)
        assert page.status_code == 200 and '<div id="app">' in page.text
    asset = next(web.ASSETS_DIR.glob("*.js")).name
    served = client.get(f"/assets/{asset}")
    assert served.status_code == 200
    assert "javascript" in served.headers["content-type"]
    assert "immutable" in served.headers["cache-control"]
    assert client.get("/assets/..%2Findex.html").status_code == 404
    assert client.get("/assets/nothing.js").status_code == 404


def test_missing_build_explains_how_to_build(gateway: GatewayServer,  # noqa: F811
                                             monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setattr(web, "STATIC_DIR", tmp_path / "static")
    client = httpx.Client(base_url=gateway.url)
    for path in ("/", "/rooms/demo"):
        page = client.get(path)
        assert page.status_code == 503
        assert "npm ci &amp;&amp; npm run build" in page.text
    assert client.get("/api/v1/rooms").status_code == 200
