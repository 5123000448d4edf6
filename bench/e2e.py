"""End-to-end timing on this machine: prints JSON with the seconds of each stage.

16 photos (derived from skimage's astronaut), the embedded tiny FLUX, 50 steps at 64 px; then the time from
`python app.py` to its first page being served. Target (issue 3): the whole flow under 60 s, first page within 10 s.

    make bench        (or, from the repository root: PYTHONPATH=tests .venv/bin/python -m bench.e2e)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_first_page(data_dir: Path) -> float:
    port = free_port()
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--data-dir", str(data_dir),
                             "--base-model", "tiny"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < 120:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.2)
        return float("nan")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    import photo_factory

    from pipeline.models.base_model import ensure_tiny_model
    from pipeline.settings import AppSettings, GenerateSettings, TrainSettings
    from pipeline.workflow import Workflow

    figures: dict[str, float | int | str] = {"photos": 16, "steps": 50, "resolution": 64, "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        photos = photo_factory.portrait_set(Path(tmp) / "photos", 16)

        t = time.perf_counter()
        ensure_tiny_model(data_dir)
        figures["setup_tiny_model_s"] = time.perf_counter() - t

        workflow = Workflow(AppSettings(data_dir=data_dir, base_model="tiny"))
        t = time.perf_counter()
        workflow.add_photos(photos)
        classification = workflow.classify()
        figures["classify_s"] = time.perf_counter() - t
        figures["selected"] = len(classification.selected)

        t = time.perf_counter()
        record = workflow.start_training(TrainSettings.quick(name="bench"), classification=classification)
        while workflow.library.get(record.id).status in ("queued", "training"):
            time.sleep(0.05)
        figures["train_s"] = time.perf_counter() - t
        record = workflow.wait_for(record.id, timeout=600)
        figures["assess_s"] = time.perf_counter() - t - figures["train_s"]
        figures["status"] = record.status

        t = time.perf_counter()
        workflow.generate(record.id, GenerateSettings(prompt="a portrait of {trigger}", steps=4, width=64, height=64))
        figures["generate_s"] = time.perf_counter() - t
        workflow.close()
        figures["whole_flow_s"] = sum(figures[k] for k in ("setup_tiny_model_s", "classify_s", "train_s", "assess_s",
                                                           "generate_s"))
        figures["first_page_s"] = time_first_page(data_dir)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}, indent=2))


if __name__ == "__main__":
    main()
