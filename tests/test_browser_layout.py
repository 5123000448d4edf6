"""What a first look at the page shows, in a real browser (issue 33, items 3 and 5): the step guide with the tabs'
numbers, a stopped run's message, upload captions in full with a visible remove control beside them, model names in
full, and on a phone the tabs within the first screen.
On the micro model, the default without a GPU, whose banner is the longest."""

from __future__ import annotations

from pathlib import Path

import browser
import photo_factory
import pytest
from app_runner import RunningApp
from playwright.sync_api import Locator, Page, expect, sync_playwright

from pipeline.settings import AppSettings
from pipeline.status import Status
from pipeline.workflow import Workflow

pytestmark = pytest.mark.slow
WAIT = 120_000  # ms: the machine may be busy
MODEL = "eileen-portrait-december-session"  # was cut to "eilee…" on its card
BLURRED = "blurred_photo_from_the_phone_camera.jpg"


def _stopped_model(data_dir: Path) -> None:
    workflow = Workflow(AppSettings(data_dir=data_dir, base_model="micro"), start_worker=False)
    try:
        workflow.library.update(workflow.library.create(MODEL, "micro", {"steps": 30}).id, status=Status.CANCELLED)
    finally:
        workflow.close()


def _box(locator: Locator) -> dict[str, float]:
    box = locator.bounding_box()
    assert box is not None, locator
    return box


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"] and \
        a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"]


def _shown_in_full(caption: Locator) -> bool:
    """Nothing of the text cut off: the element is as wide and as tall as what it holds."""
    return caption.evaluate("e => e.scrollWidth <= e.clientWidth + 1 && e.scrollHeight <= e.clientHeight + 1")


def _check_thumbnails(page: Page) -> None:
    page.mouse.move(0, 0)  # nothing hovered: the × must show all the same
    items = page.locator("#photo-gallery .gallery-item")
    expect(items).to_have_count(6, timeout=WAIT)
    for i in range(6):
        item = items.nth(i)
        caption, remove = item.locator(".caption-label"), item.get_by_role("button", name="Delete image")
        assert _shown_in_full(caption), caption.inner_text()
        assert remove.evaluate("e => getComputedStyle(e).opacity") == "1"
        box = _box(remove)
        assert box["width"] >= 24 and box["height"] >= 24, box  # big enough to tap
        assert not _overlap(box, _box(caption))
    assert BLURRED in page.locator("#photo-gallery").inner_text()  # the longest caption, whole


def test_a_first_look_at_the_page(tmp_path: Path) -> None:
    _stopped_model(tmp_path / "data")
    photos = photo_factory.portrait_set(tmp_path / "upload", 5)
    blurred = tmp_path / BLURRED
    blurred.write_bytes(photo_factory.jpeg_bytes(photo_factory.blurred(
        photo_factory.portrait_variants(photo_factory.astronaut(), photo_factory.ASTRONAUT_FACE, 1, seed=9)[0])))
    app = RunningApp(tmp_path / "data", base_model="micro")
    try:
        with sync_playwright() as playwright:
            context = browser.launch(playwright, tmp_path / "profile")
            page = context.new_page()
            page.goto(app.url)
            page.get_by_text("0 photo(s) uploaded").wait_for(timeout=WAIT)
            page.locator("#photo-files input[type=file]").set_input_files([str(p) for p in [*photos, blurred]])
            page.get_by_text("6 photo(s) uploaded").wait_for(timeout=WAIT)

            # The guide: the tabs' numbers, the usable photos the summary counts, nothing "to decide".
            guide = page.locator("#steps .guide-wide")
            expect(guide).to_contain_text("1 · Upload — 6 photos, 5 usable: add at least 10 more", timeout=30_000)
            expect(guide).to_contain_text("3 · Review — not ready: 5 selected, 1 left out")
            expect(guide).to_contain_text("4 · Training — stopped: Resume continues it")
            expect(guide).to_contain_text("6 · Models — none yet")
            expect(page.get_by_text("Add at least 10 more").first).to_be_visible()  # the Upload tab's own summary
            _check_thumbnails(page)

            # The stopped run on the Training tab points to Resume, the button that applies (it said "Press Train").
            page.get_by_role("tab", name="4 · Training").click()
            expect(page.locator("body")).to_contain_text(
                "Stopped. Press Resume to go on from the start (no checkpoint was saved yet).", timeout=WAIT)
            expect(page.get_by_role("button", name="Resume")).to_be_enabled()

            # The model card: the whole name (here, and on the phone below).
            page.get_by_role("tab", name="6 · Models").click()
            caption = page.locator("#model-cards .caption-label").first
            expect(caption).to_contain_text(MODEL, timeout=WAIT)
            assert _shown_in_full(caption), caption.inner_text()

            # A phone: the guide folds to the current step and the tabs start on the first screen.
            page.set_viewport_size({"width": 390, "height": 844})
            page.goto(app.url)
            page.get_by_text("6 photo(s) uploaded").wait_for(timeout=WAIT)
            folded = page.locator("#steps .guide-narrow summary")
            expect(folded).to_contain_text("1 · Upload — 6 photos, 5 usable: add at least 10 more", timeout=30_000)
            expect(page.locator("#steps .guide-wide")).to_be_hidden()
            top = _box(page.get_by_role("tablist").first)["y"]
            assert top < 400, f"the tab bar starts {top:.0f} px down"
            _check_thumbnails(page)
            page.get_by_role("tab", name="6 · Models").click()  # four cards a row: ~70 px wide each here
            caption = page.locator("#model-cards .caption-label").first
            expect(caption).to_contain_text(MODEL, timeout=WAIT)
            assert _shown_in_full(caption), caption.inner_text()
            context.close()
    finally:
        app.stop()
