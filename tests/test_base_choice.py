"""``--base-model auto`` (pipeline/models/base_choice.py), the memory mode's ``auto`` per model, and the training
defaults per family: on numbers, without a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.models import memory
from pipeline.models.base_choice import AUTO_BASE_MODEL, BaseModelPick, choose_base_model, pick_base_model
from pipeline.models.base_model import default_base_model, default_train_settings
from pipeline.models.families import sized_variant
from pipeline.models.families.flux1 import FLUX1_DEV, FLUX1_SCHNELL
from pipeline.models.families.flux2 import KLEIN_BASE_4B, KLEIN_BASE_9B
from pipeline.settings import FLUX_DEV, MICRO_MODEL, AppSettings, TrainSettings

KLEIN_4B = KLEIN_BASE_4B.hub_id
# Free memory as torch reports it on common cards, GB: a 12, 16, 24 and 80 GB card with the CUDA context taken.
CARD_12, CARD_16, CARD_24, CARD_80 = 11.5, 15.5, 23.5, 79.0


def test_auto_on_a_cpu_is_micro_and_cpu_default_stays_micro(monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_base_model(None) == BaseModelPick(MICRO_MODEL, choose_base_model(None).why, "")
    monkeypatch.setattr("pipeline.models.hardware.gpu_may_be_present", lambda: False)
    assert default_base_model() == MICRO_MODEL


@pytest.mark.parametrize(("free_gb", "spec", "mode"), [
    (CARD_12, KLEIN_4B, "fp8"),  # klein base 4B's bf16 needs 14 GB with FLUX.1-dev's share of headroom
    (CARD_16, KLEIN_4B, "bf16"),  # where FLUX.1-dev would need nf4
    (19.9, KLEIN_4B, "bf16"),
    (20.0, FLUX_DEV, "fp8"),  # FLUX.1-dev's fp8 threshold: unchanged cards keep their base
    (CARD_24, FLUX_DEV, "fp8"),
    (CARD_80, FLUX_DEV, "bf16"),
    (6.0, KLEIN_4B, "nf4"),
    (3.0, KLEIN_4B, "offload"),
    (1.0, MICRO_MODEL, ""),  # below klein base 4B's offload estimate (2.5 GB)
])
def test_auto_picks_the_best_base_that_fits(free_gb: float, spec: str, mode: str) -> None:
    pick = choose_base_model(free_gb)
    assert (pick.spec, pick.mode) == (spec, mode)
    assert f"{free_gb:.1f} GB" in pick.why


def test_auto_says_why_and_what_did_not_fit() -> None:
    why = choose_base_model(CARD_16).why
    assert "FLUX.2 [klein] base 4B trains in bf16 from 14.0 GB" in why and "Apache-2.0" in why
    assert "FLUX.1 [dev] needs 20.0 GB (fp8)" in why
    assert "micro" in choose_base_model(1.0).why and "2.5 GB (offload)" in choose_base_model(1.0).why


def test_the_floor_is_klein_base_4b_offload_estimate() -> None:
    floor = memory.variant_memory(KLEIN_BASE_4B, "offload").total_gb
    assert 2.4 < floor < 2.5  # bench/results/family_memory_meta.json at 1024 px: 2.47 GB
    assert choose_base_model(floor).spec == KLEIN_4B
    assert choose_base_model(floor - 0.01).spec == MICRO_MODEL


def test_auto_measures_once_and_anything_else_overrides(tmp_path: Path) -> None:
    calls: list[int] = []

    def free() -> float:
        calls.append(1)
        return CARD_24

    assert pick_base_model(" auto ", free).spec == FLUX_DEV and calls == [1]

    def no_measuring() -> float:
        raise AssertionError("a base model that is given must not measure the GPU")

    folder = tmp_path / "my-klein"
    folder.mkdir()
    for given in (KLEIN_BASE_9B.hub_id, str(folder), MICRO_MODEL, "tiny-klein"):
        pick = pick_base_model(given, no_measuring)
        assert (pick.spec, pick.mode, pick.why) == (given, "", "set with --base-model")


def test_the_app_chooses_once_for_every_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.people.workspaces import Workspaces
    from ui.settings import base_model_line

    calls: list[int] = []
    monkeypatch.setattr("pipeline.people.workspaces.free_gpu_gb", lambda: calls.append(1) or CARD_16)
    monkeypatch.setattr("pipeline.workflow.free_gpu_gb", lambda: pytest.fail("a workspace measured again"))
    workspaces = Workspaces(AppSettings(data_dir=tmp_path / "data", base_model=AUTO_BASE_MODEL), start_worker=False)
    try:
        other = workspaces.get(workspaces.login("ana"))
        flows = (workspaces.local, other, workspaces.blank())
        assert [flow.base_model for flow in flows] == [KLEIN_4B] * 3 and calls == [1]
        assert workspaces.settings.base_model == KLEIN_4B  # jobs and the library name the model, not "auto"
        line = base_model_line(workspaces.local.base_model_pick)
        defaults = workspaces.local.default_train_settings()
    finally:
        workspaces.close()
    assert line.startswith(f"Base model: **{KLEIN_4B}** — chosen by `--base-model auto`, chosen for 15.5 GB")
    assert (defaults.rank, defaults.alpha) == (32, 32.0)  # the chosen family's defaults
    assert base_model_line(BaseModelPick(MICRO_MODEL, "set with --base-model")) == f"Base model: **{MICRO_MODEL}**."


def test_flux1_memory_modes_are_exactly_as_before() -> None:
    before = (("bf16", 40.0), ("fp8", 20.0), ("nf4", 14.0))
    for variant in (FLUX1_DEV, FLUX1_SCHNELL, None):  # None: a folder of unknown size
        thresholds = memory.auto_thresholds(variant)
        assert thresholds == before
        assert [memory.choose_mode("auto", gb, thresholds)[0] for gb in (79.0, 40.0, 39.9, 23.0, 20.0, 15.5, 14.0,
                                                                          13.9, 11.0)] == \
            ["bf16", "bf16", "fp8", "fp8", "fp8", "nf4", "nf4", "offload", "offload"]
    assert memory.choose_mode("auto", 15.5)[0] == "nf4"  # the default thresholds are FLUX.1-dev's


def test_klein_memory_modes_come_from_its_own_estimate() -> None:
    thresholds = memory.auto_thresholds(KLEIN_BASE_4B)
    assert thresholds == (("bf16", 14.0), ("fp8", 7.4), ("nf4", 5.5))
    assert [memory.choose_mode("auto", gb, thresholds)[0] for gb in (CARD_16, CARD_12, 6.0, 4.0)] == \
        ["bf16", "fp8", "nf4", "offload"]
    ratio = memory.variant_memory(KLEIN_BASE_4B, "bf16").total_gb / memory.variant_memory(FLUX1_DEV, "bf16").total_gb
    assert thresholds[0][1] == round(40.0 * ratio, 1)  # FLUX.1-dev's share of headroom, not a new constant
    assert memory.auto_thresholds(KLEIN_BASE_9B)[0] == ("bf16", 30.9)
    assert "needs ≥ 14 GB" in memory.choose_mode("auto", CARD_16, thresholds)[1]


def _transformer_config(folder: Path, layers: int, single: int, heads: int, head_dim: int) -> Path:
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "Flux2KleinPipeline"}))
    (folder / "transformer" / "config.json").write_text(json.dumps(
        {"num_layers": layers, "num_single_layers": single, "num_attention_heads": heads,
         "attention_head_dim": head_dim}))
    return folder


def test_a_folder_is_sized_by_its_transformer(tmp_path: Path) -> None:
    assert sized_variant(KLEIN_4B) is KLEIN_BASE_4B and sized_variant(FLUX_DEV) is FLUX1_DEV
    assert sized_variant(_transformer_config(tmp_path / "4b", 5, 20, 24, 128)) is KLEIN_BASE_4B
    assert sized_variant(_transformer_config(tmp_path / "9b", 8, 24, 32, 128)) is KLEIN_BASE_9B
    assert sized_variant(_transformer_config(tmp_path / "toy", 2, 2, 2, 16)) is None
    assert sized_variant(tmp_path / "missing") is None and sized_variant("tiny-klein") is None


def test_training_defaults_per_family() -> None:
    klein = default_train_settings(KLEIN_4B)
    assert klein == TrainSettings(rank=32, alpha=32.0)
    assert default_train_settings(KLEIN_BASE_9B.hub_id) == klein
    assert default_train_settings(KLEIN_4B, rank=8).rank == 8  # what is given wins
    assert default_train_settings(FLUX_DEV) == TrainSettings()
    assert default_train_settings(FLUX1_SCHNELL.hub_id) == TrainSettings()
    assert default_train_settings("tiny-klein") == TrainSettings.quick()
    assert default_train_settings(MICRO_MODEL) == TrainSettings.micro()
