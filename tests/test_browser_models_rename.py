"""The Models tab's rename field follows the selected model, in a real browser (issue 33, item 5: it kept the
previous model's name, so a rename meant for one model could give another's name)."""

from __future__ import annotations

from pathlib import Path

import browser
import pytest
from app_runner import RunningApp
from playwright.sync_api import expect, sync_playwright

from pipeline.settings import AppSettings
from pipeline.status import Status
from pipeline.workflow import Workflow

pytestmark = pytest.mark.slow
WAIT = 120_000  # ms: the machine may be busy


def _stopped_models(data_dir: Path, *names: str) -> None:
    """Library records of stopped trainings, as the app finds them on start (no training needed to list them)."""
    workflow = Workflow(AppSettings(data_dir=data_dir, base_model="tiny"), start_worker=False)
    try:
        for name in names:
            workflow.library.update(workflow.library.create(name, "tiny", {"steps": 30}).id, status=Status.CANCELLED)
    finally:
        workflow.close()


def test_the_rename_field_shows_the_selected_models_name(tmp_path: Path) -> None:
    _stopped_models(tmp_path / "data", "first-model", "second-model")
    app = RunningApp(tmp_path / "data")
    try:
        with sync_playwright() as playwright:
            context = browser.launch(playwright, tmp_path / "profile")
            page = context.new_page()
            page.goto(app.url)
            page.get_by_text("0 photo(s) uploaded").wait_for(timeout=WAIT)
            page.get_by_role("tab", name="6 · Models").click()
            new_name = page.get_by_label("New name")
            # The newest model is shown at once, its name ready to edit.
            expect(page.locator("#model-cards")).to_contain_text("second-model · ", timeout=WAIT)
            expect(new_name).to_have_value("second-model", timeout=30_000)
            new_name.fill("half-typed")
            # Another card: the field shows that model's name, not the previous one's (nor the half-typed text).
            page.locator("#model-cards").get_by_text("first-model · ").click()
            expect(page.locator("h3", has_text="first-model")).to_be_visible(timeout=30_000)
            expect(new_name).to_have_value("first-model", timeout=30_000)
            context.close()
    finally:
        app.stop()
