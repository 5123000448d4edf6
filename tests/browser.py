"""Debian's chromium driven by Playwright for Python (no `playwright install`: its download is not reachable)."""

from __future__ import annotations

import shutil
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "assets" / "screenshots"


def launch(playwright, user_data_dir: Path):
    """A fresh headless chromium with its own user-data dir; returns a persistent context (one "browser")."""
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir), executable_path=CHROMIUM, args=ARGS, headless=True,
        viewport={"width": 1400, "height": 1000})


def log_in(page, url: str, name: str, password: str) -> None:
    page.goto(url)
    page.get_by_label("username").fill(name)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    page.get_by_text("Signed in as").wait_for(timeout=60_000)
