"""Every download names the base model its LoRA was trained on (issue 33 item 4): both LoRA files' headers, the
model card and its usage snippet, likeness.json, in the zip and in the one-click downloads; for the tiny and micro
models, FLUX.1-dev and a local folder."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline
from huggingface_hub import ModelCard
from lora_factory import make_lora
from PIL import Image
from safetensors.torch import load_file

from pipeline.library.catalog import Library, ModelRecord
from pipeline.library.export import complete_loras, export_zip
from pipeline.models.base_info import KOHYA_FLUX1, KOHYA_MICRO, KOHYA_TINY, MICRO_LOAD_PATH, header_names_base
from pipeline.models.base_model import MICRO_FOLDER
from pipeline.models.lora_formats import (
    LoraFactors,
    from_diffusers,
    load_kohya_as_diffusers,
    read_metadata,
    save_lora_file,
    to_diffusers,
    to_kohya,
    update_metadata,
)
from pipeline.settings import FLUX_DEV, MICRO_MODEL, TINY_MODEL, TrainSettings, to_json
from pipeline.training.trainer import lora_header


def _local_flux(tmp_path: Path) -> str:
    folder = tmp_path / "bases" / "my-flux"
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    return str(folder)


def _trained(library: Library, base_model: str, header: dict[str, str] | None = None) -> ModelRecord:
    """A ready model whose two LoRA files carry the header training writes (or ``header``, as older versions did)."""
    settings = TrainSettings.quick(name="anna")
    record = library.create("Anna", base_model, json.loads(to_json(settings)))
    factors = {"transformer_blocks.0.attn.to_out.0": LoraFactors(a=torch.randn(2, 8), b=torch.randn(8, 2)),
               "proj_out": LoraFactors(a=torch.randn(2, 8), b=torch.randn(4, 2))}
    header = header or lora_header(settings, trigger_word=record.trigger_word, photos=16, base_model=base_model,
                                   step=50)
    lora = save_lora_file(record.folder / "lora" / "lora.safetensors", to_diffusers(factors), header)
    kohya = save_lora_file(record.folder / "lora" / "lora_kohya.safetensors", to_kohya(factors), header)
    return library.update(record.id, status="ready", lora_path=lora, kohya_path=kohya, best_lora_scale=0.9)


def _snippet_base(card: str) -> ast.expr:
    """The first argument of the usage snippet's ``from_pretrained``: the base it loads."""
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    calls = [node for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained"]
    assert len(calls) == 1, code
    return calls[0].args[0]


@pytest.mark.parametrize("kind", ["tiny", "micro", "flux-dev", "local folder"])
def test_every_export_names_the_base_it_was_trained_on(tmp_path, kind):
    base = {"tiny": TINY_MODEL, "micro": MICRO_MODEL, "flux-dev": FLUX_DEV}.get(kind) or _local_flux(tmp_path)
    library = Library(tmp_path / "data")
    record = _trained(library, base)

    with zipfile.ZipFile(export_zip(library, record.id)) as archive:
        archive.extractall(tmp_path / "zip")
        card = archive.read("README.md").decode()
        meta = json.loads(archive.read("likeness.json"))
    files = [tmp_path / "zip" / "diffusers" / "pytorch_lora_weights.safetensors",
             tmp_path / "zip" / "comfyui" / "anna.safetensors", *complete_loras(library, record.id).values()]
    kohya_version = {"tiny": KOHYA_TINY, "micro": KOHYA_MICRO}.get(kind, KOHYA_FLUX1)
    for path in files:  # the zip's two files and the one-click downloads
        header = read_metadata(path)
        assert header_names_base(header, base), (path, header)
        assert header["likeness.base_model"] == base and header["ss_base_model_version"] == kohya_version
    assert meta["base_model"] == base

    loads = _snippet_base(card)
    comfyui = card.split("## Use with ComfyUI")[1]
    if kind == "flux-dev":
        assert ModelCard(card).data.base_model == FLUX_DEV
        assert ast.literal_eval(loads) == FLUX_DEV and "LoraLoaderModelOnly" in comfyui
        return
    assert ModelCard(card).data.base_model is None  # no hub repo to link: the Hub would refuse a made-up one
    assert FLUX_DEV not in card.split("## Use with diffusers")[1]  # neither snippet nor ComfyUI steps load it
    if kind == "micro":
        assert ast.literal_eval(loads) == MICRO_LOAD_PATH == "<path to likeness>/assets/micro"
        assert "micro model" in card and "ships with the Likeness project" in card
        assert "height=96, width=96" in card
        assert "micro model" in comfyui and "LoraLoaderModelOnly" not in comfyui
    elif kind == "tiny":
        assert "ensure_tiny_model(" in card and "builds in code" in card and ast.unparse(loads) == "str(tiny)"
        assert "tiny test model" in comfyui
    else:
        assert ast.literal_eval(loads) == "<path to my-flux>" and "'my-flux'" in card
        assert str(tmp_path) not in card  # the server's folders stay out of the download


def test_a_lora_from_before_the_fix_is_renamed_on_download_with_its_weights_unchanged(tmp_path):
    library = Library(tmp_path)
    old_header = {"likeness.base_model": MICRO_MODEL, "ss_base_model_version": "flux1", "likeness.steps": "50"}
    record = _trained(library, MICRO_MODEL, header=old_header)
    weights = load_file(record.kohya_path)
    assert not header_names_base(read_metadata(record.kohya_path), MICRO_MODEL)

    offered = complete_loras(library, record.id)  # what the Models tab offers as one-click downloads
    for path in offered.values():
        header = read_metadata(path)
        assert header["ss_base_model_version"] == KOHYA_MICRO and header["likeness.steps"] == "50"
    assert all(torch.equal(weights[k], v) for k, v in load_file(record.kohya_path).items())
    assert not update_metadata(record.kohya_path, {"ss_base_model_version": KOHYA_MICRO})  # already right: no write
    assert not list(record.kohya_path.parent.glob(".*.tmp"))


def test_the_micro_cards_snippet_runs_and_both_files_fit_the_micro_model(tmp_path, monkeypatch):
    """The card's code, with the project's path filled in, loads the micro model and this LoRA and draws (1 step)."""
    pipe = FluxPipeline.from_pretrained(str(MICRO_FOLDER), torch_dtype=torch.float32)
    factors = from_diffusers(load_file(make_lora(pipe, tmp_path / "made")))
    library = Library(tmp_path / "data")
    record = library.create("Anna", MICRO_MODEL, {})
    header = lora_header(TrainSettings.micro(name="anna"), trigger_word=record.trigger_word, photos=16,
                         base_model=MICRO_MODEL, step=50)
    lora = save_lora_file(record.folder / "lora" / "lora.safetensors", to_diffusers(factors), header)
    kohya = save_lora_file(record.folder / "lora" / "lora_kohya.safetensors", to_kohya(factors), header)
    record = library.update(record.id, status="ready", lora_path=lora, kohya_path=kohya)
    with zipfile.ZipFile(export_zip(library, record.id)) as archive:
        archive.extractall(tmp_path / "zip")
        card = archive.read("README.md").decode()

    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    code = code.replace(MICRO_LOAD_PATH, str(MICRO_FOLDER)).replace("num_inference_steps=28", "num_inference_steps=1")
    monkeypatch.chdir(tmp_path / "zip")  # the snippet loads the LoRA from the download's diffusers/ folder
    exec(compile(code, "README.md", "exec"), {})  # the card's own example, run as a user would
    assert Image.open(tmp_path / "zip" / "me.png").size == (96, 96)

    pipe.load_lora_weights(load_kohya_as_diffusers(tmp_path / "zip" / "comfyui" / "anna.safetensors"),
                           adapter_name="kohya")  # the ComfyUI file fits the micro model too, as the card says


def test_a_file_that_cannot_be_relabelled_is_still_offered(tmp_path, monkeypatch):
    library = Library(tmp_path)
    record = _trained(library, MICRO_MODEL, header={"likeness.base_model": MICRO_MODEL})

    def full_disk(path: Path, updates: dict[str, str]) -> bool:
        raise OSError(28, "No space left on device")

    # imported when a file is re-labelled
    monkeypatch.setattr("pipeline.models.lora_formats.update_metadata", full_disk)
    assert set(complete_loras(library, record.id).values()) == {record.lora_path, record.kohya_path}
    assert export_zip(library, record.id).is_file()


def test_a_file_a_real_file_size_limit_keeps_from_relabelling_is_still_offered(tmp_path):
    """The same through the real writer: under RLIMIT_FSIZE safetensors raises its own SafetensorError, a plain
    Exception that says "(os error 27)" only in its text (not an OSError); the download is still offered."""
    library = Library(tmp_path)
    record = _trained(library, MICRO_MODEL, header={"likeness.base_model": MICRO_MODEL})
    before = {path: path.read_bytes() for path in (record.lora_path, record.kohya_path)}
    script = textwrap.dedent(
        f"""
        import json, resource
        from pathlib import Path
        from pipeline.library.export import complete_loras, export_files
        from pipeline.library.catalog import Library
        from pipeline.models.lora_formats import update_metadata

        library = Library(Path({str(tmp_path)!r}))
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.RLIM_INFINITY))
        try:
            update_metadata(Path({str(record.kohya_path)!r}), {{"ss_base_model_version": "flux1"}})
            raised = None
        except Exception as exc:
            raised = [type(exc).__name__, str(exc)]
        offered = sorted(str(p) for p in complete_loras(library, {record.id!r}).values())
        files = sorted(export_files(library, {record.id!r}))
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        print(json.dumps({{"raised": raised, "offered": offered, "files": files}}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    assert facts["raised"][0] == "SafetensorError" and "(os error 27)" in facts["raised"][1], facts
    assert facts["offered"] == sorted([str(record.lora_path), str(record.kohya_path)])
    assert "diffusers/pytorch_lora_weights.safetensors" in facts["files"]
    assert "could not write the base model's name" in run.stderr
    assert {path: path.read_bytes() for path in before} == before  # whole and unchanged
    assert not list(record.kohya_path.parent.glob(".*.tmp"))
