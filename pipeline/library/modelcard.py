"""The README model card that goes into a model's download: what it is, its trigger word, how to use it."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from pipeline.assessment.scores import headline
from pipeline.intake.trigger import insert_trigger
from pipeline.library.catalog import ModelRecord
from pipeline.models.base_info import BaseInfo, BaseKind, base_info
from pipeline.models.base_model import default_test_generate_settings
from pipeline.settings import FLUX_DEV, TrainSettings, declaration, from_dict

DEFAULT_EXAMPLE_PROMPTS = (
    "a portrait photo of {trigger}, soft window light, 85mm",
    "{trigger} smiling, outdoors, natural light",
    "a watercolor painting of {trigger}",
    "{trigger} as an astronaut, cinematic lighting",
)
_FLUX_DEV_LICENSE = "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md"


def example_prompts(record: ModelRecord, limit: int = 6) -> list[str]:
    """The model's own sample prompts, then the defaults, with the trigger word filled in."""
    prompts: list[str] = []
    for template in (*train_settings(record).sample_prompts, *DEFAULT_EXAMPLE_PROMPTS):
        prompt = insert_trigger(str(template), record.trigger_word)
        if prompt not in prompts:
            prompts.append(prompt)
    return prompts[:limit]


def _front_matter(record: ModelRecord) -> str:
    lines = ["---"]
    base = base_info(record.base_model)
    hub_id = base.hub_id
    if hub_id:  # the Hub links base_model to a repo: the embedded models and local folders have none
        lines.append(f"base_model: {hub_id}")
    lines += [
        "library_name: diffusers",
        "tags: [text-to-image, flux, lora, diffusers, likeness]",
        f"instance_prompt: {record.trigger_word}",
    ]
    if record.base_model == FLUX_DEV:
        lines += ["license: other", "license_name: flux-1-dev-non-commercial-license",
                  f"license_link: {_FLUX_DEV_LICENSE}"]
    elif base.variant is not None and base.variant.licence == "Apache-2.0":  # FLUX.1 [schnell], klein 4B
        lines.append("license: apache-2.0")
    lines.append("---")
    return "\n".join(lines)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str)
    return str(value)


def train_settings(record: ModelRecord) -> TrainSettings:
    """The settings the model was trained with (a field its record lacks: the default, as its training read it)."""
    return from_dict(TrainSettings, record.settings)


def _settings_rows(settings: TrainSettings) -> list[str]:
    """A table row for each setting declared for the card, in field order, with the card's name and unit."""
    rows = []
    for settings_field in dataclasses.fields(settings):
        setting = declaration(settings_field)
        if setting.card and (setting.card_if is None or setting.card_if(settings)):
            value = _format_value(getattr(settings, settings_field.name))
            rows.append(f"| {setting.card} | {value}{' ' + setting.unit if setting.unit else ''} |")
    return rows


def _scores_section(record: ModelRecord) -> list[str]:
    if not record.scores:
        return ["## Scores", "", "Not assessed yet.", ""]
    lines = ["## Scores", "", "| measure | value |", "|---|---|"]
    for key, value in record.scores.to_dict().items():
        if isinstance(value, dict | list | tuple):
            continue  # per-image details live in likeness.json; the card shows the headline numbers
        lines.append(f"| {key} | {_format_value(value)} |")
    if record.best_checkpoint_step is not None:
        lines.append(f"| best checkpoint (step) | {record.best_checkpoint_step} |")
    if record.best_lora_scale is not None:
        lines.append(f"| best LoRA scale | {record.best_lora_scale:g} |")
    lines.append("")
    return lines


def _base_cell(base: BaseInfo) -> str:
    if base.kind is BaseKind.HUB:
        return f"`{base.spec}`"
    return f"`{base.kohya_model_name}`: {base.name}"


def _diffusers_usage(record: ModelRecord, base: BaseInfo, scale: float) -> list[str]:
    """The snippet loads the base this LoRA was trained on: a LoRA on any other base does not fit its layers."""
    prompt = example_prompts(record, 1)[0]
    pipeline_class = base.family.pipeline_class_name  # FluxPipeline, Flux2KleinPipeline: the family's
    if base.kind is BaseKind.HUB:
        intro = [f"Load the LoRA onto **{base.spec}**, the base it was trained on:"]
        load = [f'pipe = {pipeline_class}.from_pretrained("{base.load_path}", torch_dtype=torch.bfloat16).to("cuda")']
        steps, guidance = (base.variant.steps, base.variant.guidance) if base.variant else (28, 3.5)
        call = f'image = pipe(prompt="{prompt}", num_inference_steps={steps}, guidance_scale={guidance:g}).images[0]'
        imports = ["import torch", f"from diffusers import {pipeline_class}"]
    else:
        size = default_test_generate_settings(record.base_model)
        call = (f'image = pipe(prompt="{prompt}", num_inference_steps={size.steps}, guidance_scale={size.guidance:g}, '
                f"height={size.height}, width={size.width}).images[0]")
        if base.kind is BaseKind.TINY:
            intro = ["This LoRA fits only the **tiny test model**, which Likeness builds in code (seeded, the same "
                     "every time; its images are noise). Run this inside the Likeness project:"]
            builder = ("pipeline.models.families.tiny_klein", "ensure_tiny_klein", "tiny-klein") if base.tiny_klein \
                else ("pipeline.models.base_model", "ensure_tiny_model", "tiny")
            imports = ["from pathlib import Path", "", "import torch", f"from diffusers import {pipeline_class}", "",
                       f"from {builder[0]} import {builder[1]}"]
            load = [f"# The tiny test model is built in code (once, under data/base_models/{builder[2]}), loaded like "
                    "its family's real models.",
                    f'tiny = {builder[1]}(Path("data"))  # the data folder of your Likeness (its --data-dir)',
                    f"pipe = {pipeline_class}.from_pretrained(str(tiny), torch_dtype=torch.float32)"]
        elif base.kind is BaseKind.MICRO:
            intro = ["This LoRA fits only the **Likeness micro model**, not FLUX.1-dev (its layers are far smaller). "
                     "The micro model ships with the Likeness project in `assets/micro`: point the path below at "
                     "your copy of the project. It runs on a CPU."]
            imports = ["import torch", f"from diffusers import {pipeline_class}"]
            # float32: the folder stores its text encoders in float16, which the CPU does not multiply with float32
            load = ["# The micro model ships with the Likeness project, in its assets/micro folder.",
                    f'pipe = {pipeline_class}.from_pretrained("{base.load_path}", torch_dtype=torch.float32)']
        else:
            intro = [f"This LoRA fits {base.name} it was trained on: point the path below at that folder."]
            imports = ["import torch", f"from diffusers import {pipeline_class}"]
            load = [f'pipe = {pipeline_class}.from_pretrained("{base.load_path}", '
                    'torch_dtype=torch.bfloat16).to("cuda")']
    return [
        "## Use with diffusers", "", *intro, "", "```python", *imports, "", *load,
        'pipe.load_lora_weights("diffusers", weight_name="pytorch_lora_weights.safetensors", adapter_name="me")',
        f'pipe.set_adapters(["me"], adapter_weights=[{scale:g}])',
        call,
        'image.save("me.png")',
        "```",
        "",
    ]


def _comfyui_usage(base: BaseInfo, trigger: str, scale: float) -> list[str]:
    lines = ["## Use with ComfyUI", ""]
    if base.kind in (BaseKind.HUB, BaseKind.FOLDER):
        loader = "FLUX.1-dev" if base.spec == FLUX_DEV else base.name
        return lines + [
            "1. Copy the file from `comfyui/` into `ComfyUI/models/loras/`.",
            f"2. Add a **LoraLoaderModelOnly** node after the model loader of {loader}, pick the file, strength "
            f"{scale:g}.",
            f"3. Write `{trigger}` in the prompt where the person should appear.",
            "",
        ]
    return lines + [
        f"The file in `comfyui/` is for {base.name}, like the diffusers one: FLUX.1-dev and other FLUX models",
        "cannot take it (their layers are larger). Use it only where that model is the base, at strength "
        f"{scale:g}, with `{trigger}` in the prompt;",
        "in Python, `pipeline.models.lora_formats.load_kohya_as_diffusers` in the Likeness project reads it for "
        "diffusers.",
        "",
    ]


def model_card(record: ModelRecord) -> str:
    """README.md markdown for ``record``: trigger word, base model, example prompts, diffusers and ComfyUI usage."""
    trigger = record.trigger_word
    scale = record.best_lora_scale if record.best_lora_scale is not None else 1.0
    base = base_info(record.base_model)
    # Status and likeness verdict first, in the one sentence every page uses ("Not recognisable (...) — ...").
    lines = [_front_matter(record), "", f"# {record.name}", "", f"**{headline(record.status, record.scores)}**", ""]
    lines.append(f"A personal LoRA made with Likeness from photos of one person. Trigger word: **`{trigger}`**.")
    lines.append("")
    if base.kind is BaseKind.TINY:
        lines += ["> Trained on Likeness's embedded **tiny test model**. It proves the pipeline works end to end;",
                  "> its images are noise. Retrain on FLUX.1-dev for real pictures.", ""]
    elif base.kind is BaseKind.MICRO:
        lines += ["> Trained on Likeness's embedded **micro model** (96 px, pretrained on a dozen faces, trains on a",
                  "> CPU). It shows that the likeness is learnt; retrain on FLUX.1-dev for real pictures.", ""]
    lines += [
        "| | |", "|---|---|",
        f"| trigger word | `{trigger}` |",
        f"| base model | {_base_cell(base)} |",
        f"| status | {headline(record.status, record.scores)} |",
        f"| created | {record.created_at} |",
        f"| finished | {record.finished_at or '-'} |",
    ]
    lines += _settings_rows(train_settings(record))
    for key, value in record.dataset.items():
        if not isinstance(value, dict | list | tuple):
            lines.append(f"| dataset: {key.replace('_', ' ')} | {_format_value(value)} |")
    lines.append("")
    lines += _scores_section(record)
    lines += ["## Example prompts", "", "Put the trigger word where the person should appear:", ""]
    lines += [f"- `{prompt}`" for prompt in example_prompts(record)]
    lines += [
        "",
        "## Files",
        "",
        f"- `diffusers/pytorch_lora_weights.safetensors`: the LoRA in diffusers format, for {base.name}.",
        "- `comfyui/*.safetensors`: the same LoRA in kohya format, for ComfyUI, Forge and A1111; its header names",
        f"  the base too (`ss_base_model_version`: `{base.kohya_version}`).",
        "- `samples/`: test images generated after training; `likeness.json`: settings and scores.",
        "",
    ]
    lines += _diffusers_usage(record, base, scale)
    lines += _comfyui_usage(base, trigger, scale)
    lines += [
        "## Consent",
        "",
        "This model reproduces a real person's face. Share it and its images only with that person's consent.",
        "",
    ]
    return "\n".join(lines)
