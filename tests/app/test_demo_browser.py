"""The demo page in a real browser: headless Chromium (Debian's package, driven by Playwright) loads the page from a
real ``hiertree-demo``, uploads a photo, waits for the overlays, changes the back-off promise, is given a file that is
no image, and saves a screenshot (``$HIERTREE_DEMO_SCREENSHOT`` names where, else the test's temp folder).

Skipped, with the reason, where no Chromium is installed (``.ci/run`` installs Debian's ``chromium`` where apt works)
or Playwright is missing (the test extra has it; it drives the system's Chromium and downloads no browser)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WAIT_MS = 60_000
POLL_MS = 50  # poll on a timer, not on animation frames (the default), which a background page may not get


def _wait(page, condition: str) -> None:
    page.wait_for_function(condition, polling=POLL_MS)


def _chromium() -> str:
    """The Chromium binary to drive: ``$HIERTREE_CHROMIUM``, else the first of :data:`BROWSERS` on the PATH."""
    found = os.environ.get("HIERTREE_CHROMIUM") or next((p for p in map(shutil.which, BROWSERS) if p), None)
    if not found:
        pytest.skip("no Chromium on this machine (looked for $HIERTREE_CHROMIUM and " + ", ".join(BROWSERS) + " on the "
                    "PATH): apt-get install chromium (Debian), as .ci/run does where apt works")
    return found


@pytest.fixture(scope="module")
def page(request):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra: pip install -e '.[test]'")
    executable = _chromium()
    demo_server = request.getfixturevalue("demo_server")  # started only where a browser can look at it
    args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []  # Chromium's sandbox refuses root
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=args)
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        page.set_default_timeout(WAIT_MS)
        page.goto(demo_server.url)
        _wait(page, "document.body.dataset.state === 'ready'")
        yield page
        browser.close()


def _wait_done(page, threshold: float) -> None:
    _wait(page, f"document.body.dataset.state === 'done' && Number(document.body.dataset.threshold) === {threshold}")


def test_upload_a_photo_see_every_level_and_back_off(page, astronaut, shipped_model, thresholds, tmp_path):
    tax = shipped_model.taxonomy
    page.set_input_files("#file", str(astronaut))
    calibrated, stricter = thresholds
    _wait_done(page, calibrated)  # the calibrated promise, the default
    figures = page.locator("#panels figure")
    assert figures.count() == 1 + tax.num_levels + 2  # the photo, each level, the node map, the pixels said as a parent
    sizes = page.eval_on_selector_all("#panels img", "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes == [[512, 512]] * len(sizes)  # every overlay decoded at the photo's size
    captions = page.locator("#panels figcaption").all_inner_texts()
    assert captions[1:1 + tax.num_levels] == [f"L{l}: {tax.num_classes(l)} classes" for l in range(tax.num_levels)]
    finest = page.locator("figure.level").nth(tax.num_levels - 1).locator("li")
    legend = finest.evaluate_all("items => items.map(i => i.dataset.name)")
    assert legend == tax.classes(tax.num_levels - 1)  # the taxonomy's names, in its order
    assert "predict" in page.inner_text("#status") and " ms" in page.inner_text("#status")
    page.check(f"input[name=rung][data-theta='{stricter}']")  # the stricter promise P 0.8
    _wait_done(page, stricter)
    assert f"θ {stricter}" in page.locator("figure.nodes figcaption").inner_text()
    assert page.inner_text("#theta-what") == "(the promise P 0.80)"
    shot = Path(os.environ.get("HIERTREE_DEMO_SCREENSHOT") or tmp_path / "demo.png")
    page.check(f"input[name=rung][data-theta='{calibrated}']")
    _wait_done(page, calibrated)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_a_dropped_file_that_is_no_image_is_said_on_the_page(page, astronaut, thresholds):
    """Dropped as a user drops a file (a drop event carrying it), then a photo again: the page and server go on."""
    drop = """([name, text]) => {
        const data = new DataTransfer();
        data.items.add(new File([text], name, {type: "text/plain"}));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
    }"""
    page.evaluate(drop, ["notes.txt", "not a photo"])
    _wait(page, "document.body.dataset.state === 'error'")
    message = page.inner_text("#message.error")
    assert message.startswith("notes.txt: not an image") and "upload a JPEG" in message
    assert page.locator("#panels figure").count() == 0
    page.set_input_files("#file", str(astronaut))
    _wait_done(page, thresholds[0])
    assert page.locator("#message.error").count() == 0
