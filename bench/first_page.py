"""Seconds from `python app.py` to the first page a user can use, on an idle and on a busy machine. Prints JSON.

"Usable" is measured in chromium: the Upload tab shows its photo count (the page's load events have run). The busy
case runs one CPU-bound process per core beside the app, as another training or a shared host would.

    python -m bench.first_page [--base-model micro] [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def _burn(stop_at: float) -> None:
    x = 0
    while time.monotonic() < stop_at:
        x = (x * 31 + 7) % 1_000_003


def first_page_seconds(base_model: str) -> dict[str, float]:
    import browser
    from app_runner import RunningApp
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        app = RunningApp(Path(tmp) / "data", base_model=base_model)
        served = time.monotonic() - started
        try:
            with sync_playwright() as playwright:
                context = browser.launch(playwright, Path(tmp) / "profile")
                page = context.new_page()
                page.goto(app.url)
                page.get_by_text("photo(s) uploaded").wait_for(timeout=120_000)
                usable = time.monotonic() - started
                context.close()
        finally:
            app.stop()
    return {"http_ready_s": round(served, 2), "page_usable_s": round(usable, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-model", default="micro")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    figures: dict = {"base_model": args.base_model, "cpu_count": os.cpu_count(), "target_s": 10.0}
    for load in ("idle", "busy"):
        runs = []
        for _ in range(args.runs):
            burners = []
            if load == "busy":
                stop_at = time.monotonic() + 180
                burners = [multiprocessing.Process(target=_burn, args=(stop_at,)) for _ in range(os.cpu_count() or 1)]
                for p in burners:
                    p.start()
            try:
                runs.append(first_page_seconds(args.base_model))
            finally:
                for p in burners:
                    p.terminate()
                    p.join()
        figures[load] = {"runs": runs, "worst_page_usable_s": max(r["page_usable_s"] for r in runs)}
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
