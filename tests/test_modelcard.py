"""The README model card: front matter the Hub can read, trigger word, prompts, usage code that parses."""

import ast
import re

from huggingface_hub import ModelCard

from pipeline.library.catalog import Library
from pipeline.library.modelcard import example_prompts, model_card
from pipeline.settings import FLUX_DEV, TINY_MODEL


def _record(tmp_path, base_model=FLUX_DEV, **fields):
    library = Library(tmp_path)
    record = library.create("Anna Smith", base_model,
                            {"steps": 1000, "rank": 16, "learning_rate": 1e-4, "resolution": 512,
                             "finish_resolution": 1024,
                             "sample_prompts": ["a portrait photo of {trigger}", "a charcoal sketch, dramatic"]})
    return library.update(record.id, **fields) if fields else record


def test_card_for_a_flux_dev_model(tmp_path):
    record = _record(tmp_path, status="ready", best_checkpoint_step=750, best_lora_scale=0.8,
                     dataset={"photos_used": 17, "captioner": "template"},
                     scores={"overall": 82.5, "likeness": 0.74, "verdict": "ready", "parts": {"likeness": 0.74}})
    card = model_card(record)

    data = ModelCard(card).data  # the Hub's own parser of the YAML front matter
    assert data.base_model == FLUX_DEV and data.instance_prompt == record.trigger_word
    assert data.license == "other" and "lora" in data.tags

    trigger = record.trigger_word
    assert f"Trigger word: **`{trigger}`**" in card
    assert f"| base model | `{FLUX_DEV}` |" in card and "| dataset: photos used | 17 |" in card
    assert "| overall | 82.5 |" in card and "| best checkpoint (step) | 750 |" in card
    assert "| best LoRA scale | 0.8 |" in card
    assert "| resolution | 512 |" in card and "| last quarter of the steps at | 1024 px |" in card
    assert "parts" not in card  # nested details stay in likeness.json
    assert f"- `a portrait photo of {trigger}`" in card
    assert f"- `{trigger}, a charcoal sketch, dramatic`" in card  # no {trigger}: the word goes first
    assert "tiny test model" not in card

    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    tree = ast.parse(code)  # the usage example is valid Python
    calls = {node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute)}
    assert {"from_pretrained", "load_lora_weights", "set_adapters"} <= calls
    assert "adapter_weights=[0.8]" in code and FLUX_DEV in code and trigger in code
    assert "LoraLoaderModelOnly" in card and "strength 0.8" in card


def test_card_for_the_tiny_model_says_its_images_are_noise(tmp_path):
    record = _record(tmp_path, base_model=TINY_MODEL)
    card = model_card(record)
    data = ModelCard(card).data
    assert data.base_model is None  # "tiny" is no hub id
    assert "tiny test model" in card and "noise" in card
    assert "Not assessed yet." in card and "adapter_weights=[1]" in card


def test_a_finish_resolution_that_is_not_above_the_resolution_is_not_shown(tmp_path):
    library = Library(tmp_path)
    record = library.create("Bo", TINY_MODEL, {"steps": 50, "resolution": 64, "finish_resolution": 0})
    assert "| resolution | 64 |" in model_card(record) and "last quarter" not in model_card(record)


def test_example_prompts_always_contain_the_trigger_word_once_each(tmp_path):
    record = _record(tmp_path)
    prompts = example_prompts(record, limit=10)
    assert len(prompts) == len(set(prompts)) >= 4
    assert all(record.trigger_word in prompt and "{trigger}" not in prompt for prompt in prompts)
