"""A first-time user's whole flow in a real browser (Debian's chromium via Playwright), on the tiny model.

Uploads by the file chooser, walks every tab, is refused Train on a set that is not ready, trains anyway, reloads
mid-training and finds the run again, sees the loss plot and the run reach its last step, generates in the
playground, and checks that settings survive a reload, errors leave the page intact, and the page fits a phone.
Screenshots of each tab go to a temp dir, or to ``LIKENESS_SCREENSHOTS`` (the README's come from this run).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import browser
import photo_factory
import pytest
from app_runner import RunningApp
from playwright.sync_api import Page, expect, sync_playwright

pytestmark = pytest.mark.slow
WAIT = 120_000  # ms: the machine may be busy


def _shoot(page: Page, folder: Path, name: str) -> None:
    """A full-page screenshot, reduced to 128 colours (a third of the bytes; the README shows these)."""
    from PIL import Image

    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    with Image.open(path) as image:
        image.convert("RGB").quantize(colors=128, dither=Image.Dither.NONE).save(path, optimize=True)


def _error_badges(page: Page) -> int:
    """Gradio's red "Error" badges over components (not the toast that carries the message)."""
    return page.locator("[data-testid=status-tracker]:not(.hide) span.error").count()


# What Gradio's client logs when a page is left while its events stream (a reload during a training): the browser
# aborts the streams ("BodyStreamBuffer was aborted", or on a busy machine "signal is aborted without reason") and
# the client reports each open event as "Connection errored out". On a busy machine these reach the console after
# the reload has returned, so they are told apart by their text, not by when they come: none is an error of the
# app's (what the page shows is checked step by step).
LEAVING = ("AbortError: BodyStreamBuffer was aborted", "AbortError: signal is aborted without reason",
           "Connection errored out")


def _app_errors(js_errors: list[str]) -> list[str]:
    """The page's JavaScript errors less those its reloads caused."""
    return [error for error in js_errors if not any(text in error for text in LEAVING)]


def _tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def test_a_first_time_user_goes_from_photos_to_a_model(tmp_path: Path) -> None:
    shots = Path(os.environ.get("LIKENESS_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    photos = photo_factory.portrait_set(tmp_path / "upload", 5)
    app = RunningApp(tmp_path / "data")
    try:
        with sync_playwright() as playwright:
            context = browser.launch(playwright, tmp_path / "profile")
            page = context.new_page()
            # Every JavaScript error the page logs or throws (issue 33 saw one in the console): none is expected.
            js_errors: list[str] = []
            page.on("console", lambda message: js_errors.append(f"console: {message.text} {message.location}")
                    if message.type == "error" else None)
            page.on("pageerror", lambda error: js_errors.append(f"page: {error}"))
            page.goto(app.url)
            page.get_by_text("0 photo(s) uploaded").wait_for(timeout=WAIT)

            # 1 · Upload through the file chooser: each thumbnail shows its verdict at once.
            with page.expect_file_chooser() as chooser:
                page.locator("#photo-files").get_by_text("Click to Upload").click()
            chooser.value.set_files([str(p) for p in photos])
            page.get_by_text("5 photo(s) uploaded").wait_for(timeout=WAIT)
            # A thumbnail's × removes that photo (it used to take a click, a copied id and a button).
            last = page.locator("#photo-gallery .thumbnail-item, #photo-gallery button[aria-label^='Thumbnail']").last
            last.hover()
            page.locator("#photo-gallery button[aria-label='Delete image']").last.click()
            page.get_by_text("Removed portrait_04.jpg").wait_for(timeout=WAIT)
            page.get_by_text("4 photo(s) uploaded").wait_for(timeout=WAIT)
            assert not page.get_by_text(re.compile(r"portrait_04\.jpg · id")).count()
            assert not page.locator("#photo-gallery button[aria-label='Clear']").is_visible()  # no clear-all
            page.get_by_text("Not ready: only 4 usable photo(s)").wait_for(timeout=WAIT)
            assert page.get_by_text(re.compile(r"✅ good · portrait_00\.jpg")).count()
            # The step indicator says where the user is and what is missing.
            expect(page.locator("#steps")).to_contain_text("4 photos, 4 usable: add at least 11 more", timeout=30_000)
            _shoot(page, shots, "1-upload")

            # An error is a message, and the gallery stays (it used to be covered by red "Error" badges).
            page.get_by_role("button", name="Remove selected photo").click()
            page.get_by_test_id("toast-text").filter(has_text="Click a photo in the gallery").wait_for(timeout=WAIT)
            assert page.get_by_text(re.compile(r"portrait_03\.jpg")).count()
            assert not _error_badges(page)

            # 2 · Settings survive a reload (they used to go back to the defaults).
            _tab(page, "2 · Settings")
            page.get_by_label("Model name").fill("browser-model")
            page.get_by_label("Training steps").fill("150")
            page.get_by_label("Training steps").press("Tab")
            time.sleep(1)  # the form is saved as it changes
            page.reload()
            page.get_by_text("4 photo(s) uploaded").wait_for(timeout=WAIT)
            _tab(page, "2 · Settings")
            assert page.get_by_label("Model name").input_value() == "browser-model"
            assert page.get_by_label("Training steps").input_value() == "150"
            # Before training: how long and how much memory, on this hardware, and from what.
            expect(page.locator("#estimate")).to_contain_text("Estimate on ", timeout=30_000)
            expect(page.locator("#estimate")).to_contain_text("s per step")
            _shoot(page, shots, "2-settings")

            # 3 · Review.
            _tab(page, "3 · Review")
            page.get_by_role("button", name="Classify photos").click()
            page.get_by_text("photo(s) selected for training").wait_for(timeout=WAIT)
            # Clicking a photo card selects it for a decision (it used to need a click on its table row).
            page.locator("#review-cards img").first.click()
            expect(page.get_by_label("Photo file name")).to_have_value(re.compile(r"portrait_0\d\.jpg"),
                                                                       timeout=30_000)
            page.keyboard.press("Escape")  # leave the preview the click opened
            _shoot(page, shots, "3-review")

            # 4 · Training: refused on a set that is not ready, with the reason; then trained anyway.
            _tab(page, "4 · Training")
            page.get_by_role("button", name="Train", exact=True).click()
            page.get_by_test_id("toast-text").filter(has_text="Not ready: only 4 usable photo(s)").wait_for(
                timeout=WAIT)
            assert not _error_badges(page)
            page.get_by_label("Train even if the photos are not ready").check()
            page.get_by_role("button", name="Train", exact=True).click()
            page.get_by_text(re.compile(r"Step \d+/150")).wait_for(timeout=WAIT)

            # Reload mid-training: the Training tab finds the run again and follows it to its end.
            page.reload()
            page.get_by_text("4 photo(s) uploaded").wait_for(timeout=WAIT)
            _tab(page, "4 · Training")
            page.get_by_text("browser-model —").wait_for(timeout=WAIT)
            page.get_by_text("Step 150/150").wait_for(timeout=300_000)
            page.get_by_text("Training finished.").wait_for(timeout=300_000)
            assert page.locator("text=Training loss").count()
            expect(page.get_by_role("button", name="Stop")).to_be_disabled(timeout=30_000)  # nothing left to stop
            expect(page.get_by_role("button", name="Resume")).to_be_disabled(timeout=30_000)
            # The model picker no longer says "(training)" once the run is over.
            expect(page.get_by_label("Watch a model")).to_have_value(re.compile(r"\(ready\)"), timeout=30_000)
            expect(page.locator("#steps")).to_contain_text("1 model ready", timeout=30_000)
            _shoot(page, shots, "4-training")

            # 5 · Playground: the new model is offered; the image comes back with its seed.
            _tab(page, "5 · Playground")
            page.get_by_role("button", name="Generate").click()
            page.get_by_text("seed 0").wait_for(timeout=WAIT)
            _shoot(page, shots, "5-playground")

            # 6 · Models.
            _tab(page, "6 · Models")
            page.get_by_text("browser-model", exact=True).filter(visible=True).first.wait_for(timeout=WAIT)
            assert not page.get_by_text("hf download").count()  # no shell commands for a browser user
            # Models are cards; the newest is shown at once, and its LoRA downloads in one click, by its name.
            # The card's caption leads with status and verdict in one sentence (the tiny model is never recognised).
            expect(page.locator("#model-cards")).to_contain_text("browser-model · Not recognisable", timeout=30_000)
            with page.expect_download(timeout=WAIT) as download:
                page.get_by_role("button", name="⬇ LoRA (diffusers)").click()
            assert download.value.suggested_filename == "browser-model.safetensors"
            assert download.value.path().stat().st_size > 1000
            _shoot(page, shots, "6-models")

            # A phone: every tab reachable without a "more" menu; and dark mode stays readable.
            page.set_viewport_size({"width": 390, "height": 844})
            page.goto(app.url)
            page.get_by_text("4 photo(s) uploaded").wait_for(timeout=WAIT)
            for name in ("1 · Upload", "4 · Training", "6 · Models"):
                assert page.get_by_role("tab", name=name).is_visible(), name
            _shoot(page, shots, "phone")
            page.set_viewport_size({"width": 1400, "height": 1000})
            page.goto(app.url + "?__theme=dark")
            page.get_by_text("4 photo(s) uploaded").wait_for(timeout=WAIT)
            _shoot(page, shots, "dark")
            context.close()
            assert not _app_errors(js_errors), "\n".join(js_errors)
    finally:
        app.stop()
