"""Pushing to the Hub: checked arguments, and a clear error without the token when the Hub cannot be reached."""

import logging
import socket

import pytest
import torch
from safetensors.torch import save_file

from pipeline.library.catalog import Library
from pipeline.library.hub import HubError, push_to_hub
from pipeline.settings import TINY_MODEL

TOKEN = "hf_testTOKENthatMustNotLeak123"


@pytest.fixture
def ready(tmp_path):
    library = Library(tmp_path)
    record = library.create("anna", TINY_MODEL, {})
    lora = record.folder / "lora.safetensors"
    save_file({"x.lora_A.weight": torch.zeros(2, 2)}, str(lora))
    return library, library.update(record.id, status="ready", lora_path=lora)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the with-block ends: connections are refused


def test_unreachable_hub_gives_a_clear_error_without_the_token(ready, caplog):
    caplog.set_level(logging.DEBUG)
    library, record = ready
    with pytest.raises(HubError, match="could not push to 'me/anna'") as info:
        push_to_hub(library, record.id, "me/anna", TOKEN, endpoint=f"http://127.0.0.1:{_closed_port()}")
    assert TOKEN not in str(info.value) and TOKEN not in caplog.text
    assert info.value.__cause__ is None


@pytest.mark.parametrize(("repo_id", "token", "problem"), [
    ("me/anna", "", "token"),
    ("anna", TOKEN, "needs the owner"),
    ("me/an na", TOKEN, "not a valid repo name"),
])
def test_arguments_are_checked_before_any_upload(ready, repo_id, token, problem):
    library, record = ready
    with pytest.raises(HubError, match=problem):
        push_to_hub(library, record.id, repo_id, token, endpoint="http://127.0.0.1:9")


def test_a_model_without_a_lora_cannot_be_pushed(tmp_path):
    library = Library(tmp_path)
    record = library.create("anna", TINY_MODEL, {})
    with pytest.raises(ValueError, match="no trained LoRA yet"):
        push_to_hub(library, record.id, "me/anna", TOKEN, endpoint="http://127.0.0.1:9")
