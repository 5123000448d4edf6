"""The README model card that goes into a model's download: what it is, its trigger word, how to use it."""

from __future__ import annotations

import json
from typing import Any

from pipeline.library import ModelRecord
from pipeline.settings import FLUX_DEV, MICRO_MODEL, TINY_MODEL
from pipeline.trigger import insert_trigger

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
    for template in (*record.settings.get("sample_prompts", ()), *DEFAULT_EXAMPLE_PROMPTS):
        prompt = insert_trigger(str(template), record.trigger_word)
        if prompt not in prompts:
            prompts.append(prompt)
    return prompts[:limit]


def _front_matter(record: ModelRecord) -> str:
    lines = ["---"]
    if record.base_model not in (TINY_MODEL, MICRO_MODEL):
        lines.append(f"base_model: {record.base_model}")
    lines += [
        "library_name: diffusers",
        "tags: [text-to-image, flux, lora, diffusers, likeness]",
        f"instance_prompt: {record.trigger_word}",
    ]
    if record.base_model == FLUX_DEV:
        lines += ["license: other", "license_name: flux-1-dev-non-commercial-license",
                  f"license_link: {_FLUX_DEV_LICENSE}"]
    lines.append("---")
    return "\n".join(lines)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str)
    return str(value)


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


def model_card(record: ModelRecord) -> str:
    """README.md markdown for ``record``: trigger word, base model, example prompts, diffusers and ComfyUI usage."""
    trigger = record.trigger_word
    scale = record.best_lora_scale if record.best_lora_scale is not None else 1.0
    base = FLUX_DEV if record.base_model in (TINY_MODEL, MICRO_MODEL) else record.base_model
    lines = [_front_matter(record), "", f"# {record.name}", ""]
    lines.append(f"A personal LoRA made with Likeness from photos of one person. Trigger word: **`{trigger}`**.")
    lines.append("")
    if record.base_model == TINY_MODEL:
        lines += ["> Trained on Likeness's embedded **tiny test model**. It proves the pipeline works end to end;",
                  "> its images are noise. Retrain on FLUX.1-dev for real pictures.", ""]
    elif record.base_model == MICRO_MODEL:
        lines += ["> Trained on Likeness's embedded **micro model** (96 px, pretrained on a dozen faces, trains on a",
                  "> CPU). It shows that the likeness is learnt; retrain on FLUX.1-dev for real pictures.", ""]
    lines += [
        "| | |", "|---|---|",
        f"| trigger word | `{trigger}` |",
        f"| base model | `{record.base_model}` |",
        f"| status | {record.status} |",
        f"| created | {record.created_at} |",
        f"| finished | {record.finished_at or '-'} |",
    ]
    for key in ("steps", "learning_rate", "rank", "alpha", "resolution"):
        if key in record.settings:
            lines.append(f"| {key.replace('_', ' ')} | {_format_value(record.settings[key])} |")
    if record.settings.get("finish_resolution", 0) > record.settings.get("resolution", 0):
        lines.append(f"| last quarter of the steps at | {record.settings['finish_resolution']} px |")
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
        "- `diffusers/pytorch_lora_weights.safetensors`: the LoRA in diffusers format.",
        "- `comfyui/*.safetensors`: the same LoRA in kohya format, for ComfyUI, Forge and A1111.",
        "- `samples/`: test images generated after training; `likeness.json`: settings and scores.",
        "",
        "## Use with diffusers",
        "",
        "```python",
        "import torch",
        "from diffusers import FluxPipeline",
        "",
        f'pipe = FluxPipeline.from_pretrained("{base}", torch_dtype=torch.bfloat16).to("cuda")',
        'pipe.load_lora_weights("diffusers", weight_name="pytorch_lora_weights.safetensors", adapter_name="me")',
        f'pipe.set_adapters(["me"], adapter_weights=[{scale:g}])',
        f'image = pipe("{example_prompts(record, 1)[0]}", num_inference_steps=28, guidance_scale=3.5).images[0]',
        'image.save("me.png")',
        "```",
        "",
        "## Use with ComfyUI",
        "",
        "1. Copy the file from `comfyui/` into `ComfyUI/models/loras/`.",
        f"2. Add a **LoraLoaderModelOnly** node after the FLUX model loader, pick the file, strength {scale:g}.",
        f"3. Write `{trigger}` in the prompt where the person should appear.",
        "",
        "## Consent",
        "",
        "This model reproduces a real person's face. Share it and its images only with that person's consent.",
        "",
    ]
    return "\n".join(lines)
