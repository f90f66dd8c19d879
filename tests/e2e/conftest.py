"""Browser fixtures: headless Debian chromium (never a downloaded browser) driven by
Playwright against a live gateway (``tests/integration/gateway_server.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.integration.gateway_server import GatewayServer, start_gateway  # noqa: F401
from trajhub.gateway.web import STATIC_DIR

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# WebGL without a GPU: SwiftShader through ANGLE (newer chromium wants it opted in)
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--ignore-gpu-blocklist"]


# Per module: sync Playwright runs its own event loop in this thread while it is up, and
# later tests that call asyncio.run() would find it running.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("no /usr/bin/chromium: apt-get install chromium (.ci/run does)")
    if not (STATIC_DIR / "index.html").is_file():
        pytest.fail("the viewer is not built: uv sync --reinstall-package trajhub-gateway")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 900, "height": 650})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def gateway(start_gateway: Callable[..., GatewayServer]) -> GatewayServer:  # noqa: F811
    return start_gateway()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
