"""ui.handlers: a handler written for one person's workflow is a Gradio handler with the same inputs (and API
parameter names), the request Gradio injects, and the pipeline's ValueErrors as messages."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import pytest
from gradio.helpers import special_args

from ui.handlers import for_person, refused


class FakePeople:
    """Which workflow each request reads or stores in, and how often it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, request: object) -> str:
        self.asked.append("read")
        return f"view of {request}"

    def storing(self, request: object) -> str:
        self.asked.append("store")
        return f"workspace of {request}"


def test_the_handler_runs_on_the_requests_workflow_with_its_inputs_by_name() -> None:
    people = FakePeople()

    @for_person(people)  # type: ignore[arg-type]
    def rename(workflow: str, mid: str, name: str, progress: gr.Progress = gr.Progress()) -> str:
        return f"{workflow}: {mid} → {name}"

    assert list(inspect.signature(rename).parameters) == ["mid", "name", "request", "progress"]
    assert rename.__name__ == "rename"  # Gradio names an endpoint without api_name after it
    # Gradio puts the request where the signature asks for it, the inputs around it.
    args, *_ = special_args(rename, inputs=["m1", "Zoë"], request="anna")  # type: ignore[arg-type]
    assert rename(*args) == "view of anna: m1 → Zoë" and people.asked == ["read"]
    with gr.Blocks() as demo:
        mid, name, out = gr.Textbox(), gr.Textbox(), gr.Textbox()
        gr.Button().click(rename, [mid, name], out, api_name="rename_model")
    parameters = demo.get_api_info()["named_endpoints"]["/rename_model"]["parameters"]
    assert [p["parameter_name"] for p in parameters] == ["mid", "name"]


def test_refusals_become_messages_and_an_empty_first_input_is_named_before_any_lookup() -> None:
    people = FakePeople()

    @for_person(people, storing=True, missing="Select a model first.")  # type: ignore[arg-type]
    def delete(workflow: str, mid: str) -> str:
        if mid == "gr":
            raise gr.Error("<b>as it is</b>")
        raise ValueError("model '/srv/data/people/anna/models/m1' not found <img src=x>")

    with pytest.raises(gr.Error, match="Select a model first."):
        delete("", "anna")
    assert people.asked == []
    with pytest.raises(gr.Error) as refusal:
        delete("m1", "anna")
    assert people.asked == ["store"]
    assert "/srv" not in refusal.value.message and "<img" not in refusal.value.message
    assert isinstance(refusal.value.__cause__, ValueError)
    with pytest.raises(gr.Error) as passed:
        delete("gr", "anna")
    assert passed.value.message == "<b>as it is</b>"


def test_a_generator_handler_stays_a_stream() -> None:
    @for_person(FakePeople())  # type: ignore[arg-type]
    def follow(workflow: str, mid: str) -> Iterator[str]:
        yield f"{workflow}: {mid}"
        raise ValueError("gone")

    assert inspect.isgeneratorfunction(follow)
    stream = follow("m1", "anna")
    assert next(stream) == "view of anna: m1"
    with pytest.raises(gr.Error, match="gone"):
        next(stream)


def test_refused_prefixes_the_message() -> None:
    with pytest.raises(gr.Error) as refusal, refused("Check the Settings tab: "):
        raise ValueError("steps must be positive")
    assert refusal.value.message == "Check the Settings tab: steps must be positive"


def test_the_apps_endpoints_name_their_parameters(tmp_path: Path) -> None:
    """What API callers see: /train's values named as the settings they are (it listed param_0 … param_16), the
    playground's form by name (it listed sd, st, gd, sc)."""
    import app
    from pipeline.people.workspaces import Workspaces
    from pipeline.settings import AppSettings, Group, TrainSettings, declared_fields
    from ui.people import People

    workspaces = Workspaces(AppSettings(data_dir=tmp_path / "data", base_model="tiny"), start_worker=False)
    try:
        endpoints = app.build_app(People(workspaces, per_person=False)).get_api_info()["named_endpoints"]
    finally:
        workspaces.close()

    def names(endpoint: str) -> list[str]:
        return [p["parameter_name"] for p in endpoints[endpoint]["parameters"]]

    on_form = [f.name for f in declared_fields(TrainSettings, Group.BASIC, Group.ADVANCED)]
    assert names("/train") == [*on_form, "train_anyway"]
    assert names("/generate")[:7] == ["model_id", "prompt", "negative_prompt", "seed", "steps", "guidance",
                                      "lora_scale"]
