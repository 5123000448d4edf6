"""``--video-model auto`` (the default) chooses the video model by the GPU's free memory, from the meta-device counts
of bench/video_memory.py; any other setting overrides it; the Playground says which model and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.settings import AppSettings
from pipeline.video.choice import AUTO_CANDIDATES, DECODE_MARGIN_GB, choose_video_model, free_gpu_gb, video_model_choice
from pipeline.video.i2v import VideoModels
from ui.playground import video_model_line

COUNTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "video_memory_meta.json"
WAN, LTX = "Wan-AI/Wan2.2-TI2V-5B-Diffusers", "Lightricks/LTX-Video-0.9.1"


def test_the_needs_are_the_bench_counts() -> None:
    models = json.loads(COUNTS.read_text())["models"]
    for need in AUTO_CANDIDATES:
        counted = models[need.key]
        assert (need.hub_id, need.offload_gb) == (counted["hub_id"], counted["memory"]["model_cpu_offload_GB"])
        assert need.needs_gb == need.offload_gb + DECODE_MARGIN_GB
    # The bench's own verdict per card agrees: LTX-Video with offload from a 12 GB card, Wan 2.2 5B from 16 GB.
    assert models["ltx-2b"]["memory"]["fits"]["12 GB"] == "offload" and models["wan22-5b"]["memory"]["fits"][
        "12 GB"] == "no"
    assert [need.needs_gb for need in AUTO_CANDIDATES] == sorted((n.needs_gb for n in AUTO_CANDIDATES), reverse=True)


@pytest.mark.parametrize(("free_gb", "spec"), [
    (None, ""), (0.5, ""), (8.0, ""), (11.4, ""),  # a CPU, or too little for the smallest: a morph
    (11.5, LTX), (12.0, LTX), (13.3, LTX),  # a 12 GB card
    (13.4, WAN), (15.6, WAN), (23.5, WAN), (79.0, WAN),  # 16 GB and up; Wan 2.1 14B only when asked for
])
def test_auto_chooses_by_free_gpu_memory(free_gb: float | None, spec: str) -> None:
    choice = choose_video_model(free_gb)
    assert choice.spec == spec and choice.is_morph == (spec == "")
    if free_gb is None:
        assert choice.why.startswith("no GPU here") and "morphs" in choice.why
    elif not spec:
        assert f"only {free_gb:.1f} GB of GPU memory free" in choice.why and "11.5 GB" in choice.why
    else:
        assert f"chosen for {free_gb:.1f} GB of free GPU memory" in choice.why


def test_a_setting_overrides_auto_and_auto_measures_once() -> None:
    asked: list[int] = []

    def free() -> float:
        asked.append(1)
        return 14.0

    assert video_model_choice("auto", free).spec == WAN and asked == [1]
    for setting in ("tiny", "some/folder", " org/model "):
        assert video_model_choice(setting, free).spec == setting.strip()
    for setting in ("", "morph", None):
        assert video_model_choice(setting, free).is_morph
    assert asked == [1]  # only auto asks the GPU


def test_the_page_names_the_model_and_why(tmp_path: Path) -> None:
    models = VideoModels(tmp_path)
    here = models.chosen(AppSettings().video_model)  # the default is auto
    assert AppSettings().video_model == "auto" and models.chosen("auto") is here  # measured once
    if free_gpu_gb() is None:  # this machine: a CPU
        line = video_model_line(here)
        assert line.startswith("**Video model:** none (no GPU here") and "**morph**" in line
    wan = video_model_line(choose_video_model(20.0))
    assert f"`{WAN}` (chosen for 20.0 GB of free GPU memory: Wan 2.2 TI2V-5B needs 13.4 GB" in wan
    assert "image-to-video" in video_model_line(models.chosen("tiny"))
