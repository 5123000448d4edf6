"""The headless command line: classify, train, generate, assess and list, each with --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import photo_factory
from PIL import Image

from pipeline.intake.dataset import Dataset
from pipeline.models.lora_formats import read_metadata

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_classify_json_reports_every_file(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    photo_factory.portrait_set(folder, 4)
    (folder / "notes.jpg").write_bytes(photo_factory.text_named_jpg())
    out = run_cli("classify", str(folder), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    by_file = {r["file"]: r for r in data["records"]}
    assert set(by_file) == {p.name for p in folder.iterdir()}
    assert by_file["notes.jpg"]["verdict"] == "reject"
    assert "unreadable" in by_file["notes.jpg"]["reasons"]
    assert "notes.jpg" not in data["selected"]
    assert data["report"]["readiness"] in ("ready", "usable", "not_ready")


def test_train_generate_assess_models(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    photo_factory.portrait_set(folder, 8)
    data = ["--data-dir", str(tmp_path / "data"), "--base-model", "tiny"]

    # 8 photos are fewer than a likeness needs: refused with the reason, unless --anyway.
    refused = run_cli("train", str(folder), "--name", "cli-model", "--steps", "10", *data)
    assert refused.returncode == 2 and "Not ready: only 8 usable photo(s)" in refused.stderr
    out = run_cli("train", str(folder), "--name", "cli-model", "--steps", "10", "--finish-resolution", "96", "--json",
                  "--anyway", *data)
    assert out.returncode == 0, out.stdout + out.stderr
    record = json.loads(out.stdout)
    assert record["status"] == "ready"
    assert Path(record["lora_path"]).is_file()
    assert read_metadata(Path(record["lora_path"]))["likeness.resolutions"] == "64,96"
    # The crops are made for the larger size; the first stage scales them down.
    assert Dataset.load(Path(record["folder"]) / "dataset").resolution == 96

    image = tmp_path / "out.png"
    out = run_cli("generate", "cli-model", "--prompt", "{trigger} smiling", "--out", str(image), "--json", *data)
    assert out.returncode == 0, out.stderr
    with Image.open(image) as img:
        assert img.size == (64, 64)
        assert record["trigger_word"] in img.info.get("prompt", "") + json.dumps(img.info)

    # A clip with every frame's likeness, printed and saved beside it (a morph on this CPU, said so).
    clip = tmp_path / "clips" / "clip.mp4"
    out = run_cli("video", "cli-model", "--prompt", "{trigger} turns to the camera", "--out", str(clip), "--frames",
                  "4", "--fps", "4", "--seed", "3", "--json", *data)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert [f["index"] for f in printed["frames"]] == [0, 1, 2, 3] and printed["recognised_share"] == 0
    assert (printed["kind"], printed["seed"], printed["model"], printed["video"]) == ("morph", 3, "cli-model",
                                                                                      str(clip))
    assert json.loads(clip.with_suffix(".likeness.json").read_text()) == printed
    assert imageio_ffmpeg.count_frames_and_secs(str(clip)) == (4, 1.0)
    people = run_cli("video", "cli-model", "--prompt", "x", "--out", str(clip), "--frames", "3", *data)
    assert people.returncode == 0 and "Recognised in 0 of 3 frames" in people.stdout, people.stderr

    out = run_cli("assess", "cli-model", "--json", *data)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["scores"]["verdict"]

    out = run_cli("models", "--json", *data)
    listed = json.loads(out.stdout)
    assert [m["name"] for m in listed] == ["cli-model"]
    assert listed[0]["family"] == "flux1"  # the base's family: the pipeline the LoRA loads on
    # Status and likeness verdict in one sentence (the tiny model's noise is never recognised: it says so first).
    assert listed[0]["verdict"] == "not_recognisable" and listed[0]["summary"].startswith("Not recognisable")

    out = run_cli("generate", "no-such-model", "--prompt", "x", "--out", str(image), *data)
    assert out.returncode == 2
    assert "no-such-model" in out.stderr
