"""The browser viewer in headless chromium against a real gateway (Redis, Zarr)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import ase.io
import httpx
import numpy as np
from PIL import Image
from playwright.sync_api import Page, expect

from tests.integration.gateway_server import GatewayServer, post_frames
from trajhub import Room

BACKGROUND = (0x1D, 0x20, 0x26)
TIMEOUT_MS = 15_000


def load_s22(url: str, room: str, s22_path: Path) -> int:
    images = ase.io.read(s22_path, ":")
    with Room(url, room) as vis:
        vis.extend(images)
    return len(images)


def open_room(page: Page, url: str, room: str, count: int) -> None:
    page.goto(f"{url}/rooms/{room}")
    timeline = page.locator("#timeline")
    expect(timeline).to_have_attribute("data-count", str(count), timeout=TIMEOUT_MS)
    expect(timeline).to_have_attribute("data-shown", "0", timeout=TIMEOUT_MS)


def drawn_fraction(page: Page, shot: Path | None = None) -> float:
    """The fraction of canvas pixels that are not the background colour."""
    png = page.locator("#stage canvas").screenshot()
    if shot is not None:
        shot.write_bytes(png)
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    differs = np.abs(pixels - np.array(BACKGROUND)).sum(axis=2) > 30
    return float(differs.mean())


def shown(page: Page) -> int:
    return int(page.locator("#timeline").get_attribute("data-shown") or -1)


def test_s22_renders_and_is_listed(page: Page, gateway: GatewayServer, s22_path: Path,
                                   artifacts: Path) -> None:
    count = load_s22(gateway.url, "s22", s22_path)
    open_room(page, gateway.url, "s22", count)
    expect(page.locator("#frame-label")).to_have_text(f"0 / {count}")
    assert drawn_fraction(page, artifacts / "s22.png") > 0.01

    page.goto(gateway.url)
    link = page.get_by_role("link", name="s22", exact=True)
    expect(link).to_have_attribute("href", "/rooms/s22", timeout=TIMEOUT_MS)
    expect(page.locator("#rooms tr", has=link)).to_contain_text(str(count))


def test_keyboard_plays_pauses_and_steps(page: Page, gateway: GatewayServer,
                                         s22_path: Path) -> None:
    count = load_s22(gateway.url, "keys", s22_path)
    open_room(page, gateway.url, "keys", count)
    timeline = page.locator("#timeline")

    page.keyboard.press("ArrowRight")
    expect(timeline).to_have_attribute("data-shown", "1")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowLeft")
    expect(timeline).to_have_attribute("data-shown", "1")
    expect(page.locator("#frame-label")).to_have_text(f"1 / {count}")

    page.keyboard.press("Space")
    expect(timeline).to_have_attribute("data-playing", "true")
    page.wait_for_function(
        "document.querySelector('#timeline').dataset.shown >= 4", timeout=TIMEOUT_MS)
    page.keyboard.press("Space")
    expect(timeline).to_have_attribute("data-playing", "false")
    paused_at = shown(page)
    page.wait_for_timeout(500)  # five playback periods at the default 10 fps
    assert shown(page) == paused_at


def test_frames_appended_by_python_show_up_live(page: Page, gateway: GatewayServer,
                                                s22_path: Path) -> None:
    count = load_s22(gateway.url, "live", s22_path)
    open_room(page, gateway.url, "live", count)
    with Room(gateway.url, "live") as vis:
        vis.append(vis[0])
    expect(page.locator("#frame-label")).to_have_text(f"0 / {count + 1}", timeout=TIMEOUT_MS)
    page.locator("#slider").fill(str(count))
    expect(page.locator("#timeline")).to_have_attribute("data-shown", str(count))


def test_frames_per_second_with_100k_atoms(page: Page, gateway: GatewayServer,
                                           artifacts: Path) -> None:
    n = 100_000
    rng = np.random.default_rng(0)
    frame = {"numbers": rng.choice([1, 6, 8], n).astype(np.int32),
             "positions": rng.uniform(0, 120, (n, 3)).astype(np.float32)}
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        assert post_frames(client, "big", [frame]).status_code == 201
    open_room(page, gateway.url, "big", 1)
    assert drawn_fraction(page, artifacts / "100k.png") > 0.01
    fps = page.evaluate("""() => new Promise((done) => {
        window.trajhub.page.viewer.spin(true);
        let frames = 0;
        const start = performance.now();
        const count = (now) => {
          frames++;
          if (now - start < 2000) requestAnimationFrame(count);
          else done(frames * 1000 / (now - start));
        };
        requestAnimationFrame(count);
    })""")
    print(f"\n100,000 atoms: {fps:.1f} frames per second (headless chromium, SwiftShader)")


def test_scrubbing_ends_on_the_last_requested_frame(page: Page, gateway: GatewayServer,
                                                   s22_path: Path) -> None:
    count = load_s22(gateway.url, "scrub", s22_path)
    open_room(page, gateway.url, "scrub", count)
    slider = page.locator("#slider")
    for frame in (5, 12, 3, 17):
        slider.fill(str(frame))
    timeline = page.locator("#timeline")
    expect(timeline).to_have_attribute("data-shown", "17", timeout=TIMEOUT_MS)
    expect(page.locator("#frame-label")).to_have_text(f"17 / {count}")


def test_server_errors_and_lost_connections_are_shown(page: Page,
                                                      gateway: GatewayServer) -> None:
    page.goto(f"{gateway.url}/rooms/-not-a-room-name")
    expect(page.get_by_role("alert")).to_contain_text("could not join room", timeout=TIMEOUT_MS)
    page.goto(f"{gateway.url}/rooms/quiet")
    expect(page.locator(".empty-note")).to_be_visible(timeout=TIMEOUT_MS)
    gateway.stop()
    expect(page.locator("#banner")).to_have_text("Connection lost; reconnecting…",
                                                 timeout=TIMEOUT_MS)


DROP_NEXT_FRAMES_CHANGED = """() => {
    // at-most-once delivery, made visible: lose the next frames_changed broadcast
    const socket = window.trajhub.page.socket.socket;
    const deliver = socket.onevent.bind(socket);
    window.dropped = [];
    socket.onevent = (packet) => {
        if (packet.data[0] === 'frames_changed' && window.dropped.length === 0) {
            window.dropped.push(packet.data[1].seq);
            return;
        }
        deliver(packet);
    };
}"""


def test_a_lost_broadcast_is_noticed_by_seq_and_resynced(page: Page, gateway: GatewayServer,
                                                         s22_path: Path) -> None:
    count = load_s22(gateway.url, "gap", s22_path)
    open_room(page, gateway.url, "gap", count)
    index_reads: list[str] = []
    page.on("request", lambda r: index_reads.append(r.url) if "/index" in r.url else None)
    page.evaluate(DROP_NEXT_FRAMES_CHANGED)
    with Room(gateway.url, "gap") as vis:
        vis.append(vis[1])
        page.wait_for_function("window.dropped.length === 1", timeout=TIMEOUT_MS)
        expect(page.locator("#frame-label")).to_have_text(f"0 / {count}")
        vis.append(vis[2])  # its seq is two past the page's: a gap, so a resync
    expect(page.locator("#frame-label")).to_have_text(f"0 / {count + 2}", timeout=TIMEOUT_MS)
    assert index_reads, "the page never re-read the index"
    page.locator("#slider").fill(str(count + 1))
    expect(page.locator("#timeline")).to_have_attribute("data-shown", str(count + 1))


def test_a_restarted_gateway_restores_the_connection_and_catches_up(
        page: Page, start_gateway: Callable[..., GatewayServer], s22_path: Path) -> None:
    gateway = start_gateway()
    count = load_s22(gateway.url, "restart", s22_path)
    open_room(page, gateway.url, "restart", count)
    gateway.stop()
    banner = page.locator("#banner")
    expect(banner).to_have_text("Connection lost; reconnecting…", timeout=TIMEOUT_MS)

    # edits made while the page was away arrive through the next gateway
    again = start_gateway(bind_port=gateway.port)
    with Room(again.url, "restart") as vis:
        vis.extend([vis[0], vis[1], vis[2]])
    expect(banner).to_have_text("Connection restored", timeout=TIMEOUT_MS)
    expect(page.locator("#frame-label")).to_contain_text(f" / {count + 3}", timeout=TIMEOUT_MS)
    expect(banner).to_be_hidden(timeout=TIMEOUT_MS)


def test_a_room_created_from_the_list_exists_and_is_listed(page: Page,
                                                           gateway: GatewayServer) -> None:
    page.goto(gateway.url)
    page.locator("#new-room").fill("made-here")
    page.get_by_role("button", name="Create room").click()
    page.wait_for_url(f"{gateway.url}/rooms/made-here", timeout=TIMEOUT_MS)
    expect(page.locator(".empty-note")).to_be_visible(timeout=TIMEOUT_MS)
    rooms = httpx.get(f"{gateway.url}/api/v1/rooms").json()["rooms"]
    assert {"room": "made-here", "n_frames": 0, "seq": 1} in rooms

    page.goto(gateway.url)
    link = page.get_by_role("link", name="made-here", exact=True)
    expect(page.locator("#rooms tr", has=link)).to_contain_text("0", timeout=TIMEOUT_MS)
    # an existing name just opens that room
    page.locator("#new-room").fill("made-here")
    page.get_by_role("button", name="Create room").click()
    page.wait_for_url(f"{gateway.url}/rooms/made-here", timeout=TIMEOUT_MS)
