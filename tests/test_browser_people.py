"""Two people in two real browsers (chromium): each logs in and sees only their own photos and models."""

from __future__ import annotations

from pathlib import Path

import browser
import photo_factory
import pytest
from app_runner import RunningApp
from playwright.sync_api import sync_playwright

from pipeline.people.accounts import UsersFile

pytestmark = pytest.mark.slow


def test_two_people_log_in_and_see_two_separate_libraries(tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "users.json")
    users.add("alice", "alice-Secret-1", admin=True)
    users.add("bob", "bob-Secret-22")
    photos = photo_factory.portrait_set(tmp_path / "upload", 3)
    app = RunningApp(tmp_path / "data", "--users", str(users.path))
    try:
        with sync_playwright() as playwright:
            alice_browser = browser.launch(playwright, tmp_path / "alice-profile")
            bob_browser = browser.launch(playwright, tmp_path / "bob-profile")
            alice, bob = alice_browser.new_page(), bob_browser.new_page()
            browser.log_in(alice, app.url, "alice", "alice-Secret-1")
            alice.locator("input[type=file]").first.set_input_files([str(p) for p in photos])
            alice.get_by_text("3 photo(s) uploaded").wait_for(timeout=60_000)

            browser.log_in(bob, app.url, "bob", "bob-Secret-22")
            bob.get_by_text("0 photo(s) uploaded").wait_for(timeout=60_000)
            assert bob.get_by_text("Signed in as bob").is_visible()
            assert not bob.get_by_text("portrait_00.jpg").count()
            assert not bob.get_by_role("tab", name="Admin").count()  # bob is not the operator

            # After a reload each still sees their own: alice her three photos, and the operator's tab.
            alice.reload()
            alice.get_by_text("3 photo(s) uploaded").wait_for(timeout=60_000)
            alice.get_by_role("tab", name="Admin").click()
            alice.get_by_text("Every person's workspace").wait_for(timeout=30_000)
            alice.get_by_role("tab", name="1 · Upload").click()
            alice_browser.close()
            bob_browser.close()
    finally:
        app.stop()
