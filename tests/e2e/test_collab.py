"""Presenter, upload, undo and editing in headless chromium against a real gateway."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, Route, expect

from tests.e2e.test_viewer import TIMEOUT_MS, load_s22, open_room
from tests.integration.gateway_server import GatewayServer
from trajhub import Room


@pytest.fixture
def other_page(browser: Browser) -> Iterator[Page]:
    """A second user: its own context, so its own author in localStorage."""
    context = browser.new_context(viewport={"width": 900, "height": 650})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"uncaught errors in the second page: {errors}"


RECORD_PRESENTER = """() => {
    const label = document.querySelector('#presenter');
    window.presenterSeen = [label.textContent];
    new MutationObserver(() => window.presenterSeen.push(label.textContent))
        .observe(label, {childList: true, characterData: true, subtree: true});
}"""


def saw_presenter(page: Page, text: str) -> None:
    """`text` was shown as the presenter at some point since `RECORD_PRESENTER` ran.

    The token is released a second after the last scrub; under load the label may already
    be back to "no presenter" by the time a plain `expect` looks.
    """
    page.wait_for_function("(text) => window.presenterSeen.includes(text)", arg=text,
                           timeout=TIMEOUT_MS)


def test_presenter_scrub_is_followed_and_the_token_passes(
        page: Page, other_page: Page, gateway: GatewayServer, s22_path: Path) -> None:
    count = load_s22(gateway.url, "present", s22_path)
    open_room(page, gateway.url, "present", count)
    open_room(other_page, gateway.url, "present", count)
    page.evaluate(RECORD_PRESENTER)
    other_page.evaluate(RECORD_PRESENTER)

    page.locator("#slider").fill("15")
    expect(other_page.locator("#frame-label")).to_have_text(f"15 / {count}", timeout=TIMEOUT_MS)
    a_name = page.evaluate("window.trajhub.page.author")
    saw_presenter(other_page, f"{a_name} is presenting")
    saw_presenter(page, "you are presenting")
    # A stops scrubbing: the token is released about a second later
    expect(other_page.locator("#presenter")).to_have_text("no presenter", timeout=TIMEOUT_MS)

    other_page.locator("#slider").fill("4")
    expect(page.locator("#frame-label")).to_have_text(f"4 / {count}", timeout=TIMEOUT_MS)
    b_name = other_page.evaluate("window.trajhub.page.author")
    saw_presenter(page, f"{b_name} is presenting")

    # with follow off, A stays where it is
    page.locator("#follow").uncheck()
    other_page.locator("#slider").fill("9")
    expect(other_page.locator("#frame-label")).to_have_text(f"9 / {count}")
    page.wait_for_timeout(300)
    expect(page.locator("#frame-label")).to_have_text(f"4 / {count}")


DROP = """([name, bytes]) => {
    const data = new DataTransfer();
    data.items.add(new File([new Uint8Array(bytes)], name));
    const stage = document.querySelector('#stage');
    stage.dispatchEvent(new DragEvent('dragover', {dataTransfer: data, bubbles: true,
                                                   cancelable: true}));
    stage.dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true,
                                               cancelable: true}));
}"""


def test_dropping_an_xyz_file_uploads_it_with_progress(page: Page, gateway: GatewayServer,
                                                       s22_path: Path) -> None:
    page.goto(f"{gateway.url}/rooms/dropped")
    expect(page.locator(".empty-note")).to_be_visible(timeout=TIMEOUT_MS)
    page.evaluate(DROP, ["s22.xyz", list(s22_path.read_bytes())])
    expect(page.locator("#timeline")).to_have_attribute("data-count", "22", timeout=TIMEOUT_MS)
    upload = page.locator("#upload")
    expect(upload).to_have_attribute("data-phase", "done", timeout=TIMEOUT_MS)
    expect(page.locator("#upload-bar")).to_have_attribute("value", "22")

    page.evaluate(DROP, ["broken.xyz", list(b"this is not a trajectory\n")])
    expect(page.get_by_role("alert")).to_contain_text("upload of broken.xyz failed: 422",
                                                      timeout=TIMEOUT_MS)
    expect(upload).to_have_attribute("data-phase", "error")


FRONT_ATOM = """() => {
    const page = window.trajhub.page;
    const shown = page.currentFrame();
    for (let i = 0; i < shown.frame.numbers.length; i++) {
        const s = page.editor.screenPosition(i);
        if (page.editor.pick(s.x, s.y, shown.frame) === i) return [i, s.x, s.y];
    }
    return null;
}"""


def positions(url: str, room: str, index: int) -> np.ndarray:
    with Room(url, room) as vis:
        return np.asarray(vis[index].positions)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def grab(page: Page) -> tuple[int, float, float]:
    found = page.evaluate(FRONT_ATOM)
    assert found is not None, "no atom is visible"
    atom, x, y = found
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 40, y + 15, steps=5)
    return int(atom), x, y


def test_dragging_an_atom_saves_it_and_undo_redo_revert_it(
        page: Page, gateway: GatewayServer, s22_path: Path) -> None:
    count = load_s22(gateway.url, "drag", s22_path)
    open_room(page, gateway.url, "drag", count)
    before = positions(gateway.url, "drag", 0)

    atom, _, _ = grab(page)
    page.mouse.up()
    expect(page.locator("#selection")).to_have_attribute("data-atoms", str(atom))

    def moved() -> bool:
        return not np.allclose(positions(gateway.url, "drag", 0)[atom], before[atom])
    wait_for(moved, "the dragged atom to be saved")
    after = positions(gateway.url, "drag", 0)
    others = np.arange(len(before)) != atom
    np.testing.assert_allclose(after[others], before[others])

    page.keyboard.press("Control+z")
    wait_for(lambda: np.allclose(positions(gateway.url, "drag", 0), before), "undo")
    page.keyboard.press("Control+Shift+z")
    wait_for(lambda: np.allclose(positions(gateway.url, "drag", 0), after), "redo")
    page.locator("#undo").click()
    wait_for(lambda: np.allclose(positions(gateway.url, "drag", 0), before), "undo button")


def test_an_undo_right_after_a_drag_waits_for_the_drags_lock_to_go(
        page: Page, gateway: GatewayServer, s22_path: Path) -> None:
    """Ctrl+Z as soon as the dragged atom is saved, while the drag's lock is still being
    released (held back here): sent before the release, the undo would be refused by
    this browser's own lock; it waits for the release and then undoes the drag."""
    count = load_s22(gateway.url, "quick-undo", s22_path)
    open_room(page, gateway.url, "quick-undo", count)
    before = positions(gateway.url, "quick-undo", 0)
    held: list[Route] = []
    page.route("**/locks/*", lambda route: held.append(route)
               if route.request.method == "DELETE" else route.continue_())
    atom, _, _ = grab(page)
    page.mouse.up()
    wait_for(lambda: not np.allclose(positions(gateway.url, "quick-undo", 0)[atom],
                                     before[atom]), "the dragged atom to be saved")
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not held:  # (route handlers run while the page is waited on)
        assert time.monotonic() < deadline, "the lock was never released"
        page.wait_for_timeout(20)
    page.keyboard.press("Control+z")
    page.wait_for_timeout(300)
    assert not np.allclose(positions(gateway.url, "quick-undo", 0), before), \
        "undone before the lock's release went out"
    held[0].continue_()
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not np.allclose(positions(gateway.url, "quick-undo", 0), before):
        assert time.monotonic() < deadline, "timed out waiting for undo"
        page.wait_for_timeout(50)  # (lets the page's requests go on)


def test_an_edit_against_a_stale_version_shows_the_conflict(
        page: Page, gateway: GatewayServer, s22_path: Path) -> None:
    count = load_s22(gateway.url, "stale", s22_path)
    open_room(page, gateway.url, "stale", count)
    grab(page)
    with Room(gateway.url, "stale", author="someone-else") as vis:
        theirs = np.asarray(vis[0].positions) + 1.0
        vis.patch(0, positions=theirs)
    page.mouse.up()
    expect(page.get_by_role("alert")).to_contain_text(
        "Conflict: frame 0 was changed by someone else", timeout=TIMEOUT_MS)
    np.testing.assert_allclose(positions(gateway.url, "stale", 0), theirs)


def test_a_locked_frame_names_its_holder(page: Page, gateway: GatewayServer,
                                         s22_path: Path) -> None:
    count = load_s22(gateway.url, "locked", s22_path)
    open_room(page, gateway.url, "locked", count)
    note = page.locator("#lock-note")
    with Room(gateway.url, "locked", author="holder-1") as vis, vis.lock(0):
        expect(note).to_have_text("🔒 frame 0 locked by holder-1", timeout=TIMEOUT_MS)
        page.keyboard.press("ArrowRight")
        expect(note).to_have_text("")
        page.keyboard.press("ArrowLeft")
        expect(note).to_contain_text("holder-1")
    expect(note).to_have_text("", timeout=TIMEOUT_MS)


def test_playing_presents_and_followers_play_along(
        page: Page, other_page: Page, gateway: GatewayServer, s22_path: Path) -> None:
    count = load_s22(gateway.url, "play-along", s22_path)
    open_room(page, gateway.url, "play-along", count)
    open_room(other_page, gateway.url, "play-along", count)
    a_name = page.evaluate("window.trajhub.page.author")

    page.keyboard.press("Space")
    expect(other_page.locator("#presenter")).to_have_text(f"{a_name} is presenting",
                                                          timeout=TIMEOUT_MS)
    other_page.wait_for_function(
        "document.querySelector('#timeline').dataset.shown >= 3", timeout=TIMEOUT_MS)
    page.keyboard.press("Space")
    expect(page.locator("#timeline")).to_have_attribute("data-playing", "false")
    stopped_at = page.locator("#timeline").get_attribute("data-shown")
    expect(other_page.locator("#timeline")).to_have_attribute("data-shown", str(stopped_at),
                                                              timeout=TIMEOUT_MS)
    # paused: the token is released, and the follower keeps its frame
    expect(other_page.locator("#presenter")).to_have_text("no presenter", timeout=TIMEOUT_MS)


def pixel_at(page: Page, x: float, y: float) -> np.ndarray:
    """The mean colour of the 5x5 canvas pixels around page point (x, y)."""
    box = page.locator("#stage canvas").bounding_box()
    assert box is not None
    png = page.locator("#stage canvas").screenshot()
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(float)
    col, row = round(x - box["x"]), round(y - box["y"])
    return pixels[row - 2:row + 3, col - 2:col + 3].reshape(-1, 3).mean(axis=0)


def test_selected_atoms_are_highlighted(page: Page, gateway: GatewayServer,
                                        s22_path: Path) -> None:
    count = load_s22(gateway.url, "highlight", s22_path)
    open_room(page, gateway.url, "highlight", count)
    found = page.evaluate(FRONT_ATOM)
    assert found is not None, "no atom is visible"
    atom, x, y = found
    plain = pixel_at(page, x, y)

    page.mouse.click(x, y)
    expect(page.locator("#selection")).to_have_attribute("data-atoms", str(atom))
    wait_for(lambda: np.abs(pixel_at(page, x, y) - plain).sum() > 40,
             "the selected atom to be drawn highlighted")

    box = page.locator("#stage canvas").bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + 5, box["y"] + 5)  # empty space: the selection is cleared
    expect(page.locator("#selection")).to_have_attribute("data-atoms", "")
    wait_for(lambda: np.abs(pixel_at(page, x, y) - plain).sum() < 10,
             "the atom to be drawn plain again")
