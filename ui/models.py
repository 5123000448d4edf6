"""Models tab: the library — scores, sample grid, trigger word; rename, delete, download."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from pipeline.assessment.likeness import LIKENESS_MEANING
from pipeline.assessment.scores import ModelScores, headline
from pipeline.workflow import Workflow
from ui.charts import series_frame
from ui.files import served
from ui.handlers import for_person
from ui.people import People
from ui.text import escaped, plain, text_field, without_paths

PLACEHOLDER = Path(__file__).resolve().parent.parent / "assets" / "model-placeholder.png"
CANCELLED = "(not deleted)"  # what the browser sends when the user answers No to "Delete this model?"
COLUMNS = ["name", "trigger word", "status and likeness", "overall /100", "likeness", "base model", "created", "id"]


def _table(workflow: Workflow) -> pd.DataFrame:
    rows = []
    for r in workflow.models():
        scores = r.scores or ModelScores()
        rows.append([r.name, r.trigger_word, headline(r.status, r.scores), _score(scores.overall),
                     _share(scores.likeness),
                     r.base_model, r.created_at[:19].replace("T", " "), r.id])
    return pd.DataFrame(rows, columns=COLUMNS)


def _cards(workflow: Workflow) -> tuple[list[tuple[str, str]], list[str]]:
    """One card per model, newest first: its test sheet (or first training crop while it trains) and a caption with
    what matters; and the ids in the same order (a click gives an index)."""
    cards, ids = [], []
    for r in sorted(workflow.models(), key=lambda r: r.created_at, reverse=True):
        crops = sorted((Path(r.folder) / "dataset").glob("*.png")) if not r.sample_grid else []
        image = r.sample_grid if r.sample_grid and Path(r.sample_grid).is_file() else crops[0] if crops else \
            PLACEHOLDER
        scores = r.scores or ModelScores()
        # The one sentence of status and verdict ("Not recognisable (...)" first), then the numbers.
        numbers = [f"{_score(scores.overall)}/100", f"likeness {_share(scores.likeness)}"]
        facts = [headline(r.status, r.scores)] + (numbers if scores.overall is not None else [])
        cards.append((served(image), f"{r.name} · {' · '.join(facts)}"))
        ids.append(r.id)
    return cards, ids


def _downloads(workflow: Workflow, model_id: str) -> tuple:
    """The two LoRA files as one-click downloads, named after the model; hidden until they can be handed out."""
    if not model_id:
        return gr.update(visible=False, value=None), gr.update(visible=False, value=None)
    stem = _stem(workflow.model(model_id).name)
    loras = workflow.downloadable_loras(model_id)
    return tuple(gr.update(visible=kind in loras,
                           value=served(loras[kind], f"{stem}{suffix}.safetensors") if kind in loras else None)
                 for kind, suffix in (("diffusers", ""), ("kohya", "-comfyui")))


CLIP_COLUMNS = ["made", "kind", "recognised", "verdict", "prompt", "files"]


def _clips(workflow: Workflow, model_id: str | None) -> tuple:
    """The selected model's clips as rows (kind, recognised share, the files' names) and their MP4s and likeness
    JSONs as downloads named after the model; hidden while it has none."""
    try:
        clips = workflow.clips(model_id) if model_id else []
    except ValueError:  # a deleted model or a mistyped id: ``_select`` says so
        clips = []
    stem = _stem(workflow.model(model_id).name) if clips else ""
    rows, files = [], []
    for clip in clips:  # named after the model and the clip's own time-stamped name: stable as clips are added
        names = (f"{stem}-{clip.video.stem}.mp4", f"{stem}-{clip.video.stem}.likeness.json")
        files += [served(clip.video, names[0]), served(clip.likeness_json, names[1])]
        verdict = (clip.verdict or "not measured").replace("_", " ")
        rows.append([clip.made, clip.kind, _share(clip.recognised_share), verdict, clip.prompt, " · ".join(names)])
    table = pd.DataFrame(rows, columns=CLIP_COLUMNS)
    return gr.update(value=table, visible=bool(clips)), gr.update(value=files or None, visible=bool(clips))


def _stem(name: str) -> str:
    """A model's name as the start of a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "likeness"


def _score(value: float | None) -> str:
    """A 0–100 score as a whole number."""
    return "" if value is None else f"{value:.0f}"


def _share(value: float | None) -> str:
    """A 0–1 fraction as a percentage."""
    return "" if value is None else f"{value:.0%}"


def _details(workflow: Workflow, model_id: str) -> tuple[str, str | None]:
    if not model_id:
        return "Select a model: click its card.", None
    r = workflow.model(model_id)
    lines = [f"### {plain(r.name)}",
             f"**{headline(r.status, r.scores)}**",
             f"Trigger word: **{plain(r.trigger_word)}** · base model {plain(r.base_model)}"]
    if r.scores:
        lines.append(r.scores.verdict_text)
        shown = [(r.scores.overall, "overall score", _score, "/100"), (r.scores.likeness, "likeness", _share, ""),
                 (r.scores.recognised_share, "recognised in", _share, " of test images"),
                 (r.scores.quality, "image quality", _score, "/100")]
        lines.append(" · ".join(f"{label} **{fmt(value)}{unit}**" for value, label, fmt, unit in shown
                                if value is not None))
        lines.append(f"*{LIKENESS_MEANING}*")
        if r.scores.prompt_fidelity is None and r.scores.fidelity_note:
            # The note names a shell command for the operator (it is in the model card); a visitor needs none.
            lines.append("Prompt fidelity not measured: no CLIP model is installed on this server.")
        if r.scores.by_checkpoint:
            lines.append("Overall score by checkpoint: " + ", ".join(
                f"step {s}: {_score(v)}" for s, v in r.scores.by_checkpoint.items()))
    if r.best_checkpoint_step is not None:
        lines.append(f"Best checkpoint: step {r.best_checkpoint_step} at LoRA scale {r.best_lora_scale}")
    if r.error:
        lines.append(f"❌ {without_paths(r.error)}")
    return "\n\n".join(lines), served(r.sample_grid) if r.sample_grid else None


def _curve(workflow: Workflow | None, model_id: str) -> pd.DataFrame:
    rows = []
    if model_id and workflow is not None:
        scores = workflow.model(model_id).scores or ModelScores()
        for curve, label, factor in ((scores.likeness_by_checkpoint, "likeness ×100", 100),
                                     (scores.recognised_by_checkpoint, "recognised %", 100),
                                     (scores.by_checkpoint, "overall", 1)):
            rows += [(step, (value or 0) * factor, label) for step, value in curve.items()]
    return series_frame(rows, ("step", "score", "measure"), ("likeness ×100", "recognised %", "overall"))


def _show(workflow: Workflow, model_id: str) -> tuple:
    return (*_details(workflow, model_id), _curve(workflow, model_id))


def model_choices(workflow: Workflow) -> list[tuple[str, str]]:
    """Every model of the person as a dropdown's (label, id) choices (this tab's and the Training tab's picker)."""
    return [(r.label, r.id) for r in workflow.models()]


@dataclass
class Library:
    """The models as cards and as a table, and the selected one's details."""

    cards: gr.Gallery
    card_ids: gr.State
    table: gr.Dataframe
    details: gr.Markdown
    curve: gr.LinePlot
    grid: gr.Image

    def shown(self) -> list[gr.components.Component]:
        """What ``_show`` fills for the selected model."""
        return [self.details, self.grid, self.curve]


@dataclass
class Actions:
    """What can be done with the selected model."""

    model_id: gr.Dropdown
    new_name: gr.Textbox
    rename: gr.Button
    new_trigger: gr.Textbox
    retrigger: gr.Button
    lora_file: gr.DownloadButton
    kohya_file: gr.DownloadButton
    download: gr.Button
    archive: gr.File
    repo_id: gr.Textbox
    token: gr.Textbox
    private: gr.Checkbox
    push: gr.Button
    pushed: gr.Markdown
    delete: gr.Button


@dataclass
class Clips:
    """The selected model's video clips (the Playground's Video): each with its kind and likeness, and its files."""

    table: gr.Dataframe
    files: gr.File


@dataclass
class ModelsTab:
    tab: gr.Tab
    library: Library
    actions: Actions
    clips: Clips


def _actions() -> Actions:
    # Custom values: the API names models by id, including ones made after this page was built.
    model_id = gr.Dropdown(label="Selected model", choices=[], value=None, allow_custom_value=True)
    with gr.Row(equal_height=True):
        new_name = gr.Textbox(label="New name", scale=3)
        rename = gr.Button("Rename", scale=1)
    with gr.Row(equal_height=True):
        new_trigger = gr.Textbox(label="New trigger word", scale=3)
        retrigger = gr.Button("Change trigger word", scale=1)
    with gr.Row():
        lora_file = gr.DownloadButton("⬇ LoRA (diffusers)", visible=False, variant="primary")
        kohya_file = gr.DownloadButton("⬇ LoRA (ComfyUI / kohya)", visible=False, variant="primary")
    download = gr.Button("Download zip (both LoRAs, model card, samples)")
    archive = gr.File(label="Download", height=80)
    with gr.Accordion("Push to the Hugging Face Hub", open=False):
        repo_id = gr.Textbox(label="Repository (your-user/model-name)")
        token = gr.Textbox(label="Write token (used once, never stored)", type="password")
        private = gr.Checkbox(label="Private repository", value=True)
        push = gr.Button("Push")
        pushed = gr.Markdown()
    delete = gr.Button("Delete model", variant="stop")
    return Actions(model_id, new_name, rename, new_trigger, retrigger, lora_file, kohya_file, download, archive,
                   repo_id, token, private, push, pushed, delete)


def layout() -> ModelsTab:
    with gr.Tab("6 · Models", id="models") as tab:
        cards = gr.Gallery(label="Your models — click one", columns=4, height="auto", allow_preview=False,
                           object_fit="contain", elem_id="model-cards", elem_classes=["results-gallery"])
        card_ids = gr.State([])
        with gr.Accordion("All models as a table", open=False):
            table = gr.Dataframe(headers=COLUMNS, interactive=False,
                                 label="Your models (click a row to select it)")
        with gr.Row():
            with gr.Column(scale=3):
                details = gr.Markdown("Select a model: click its card.")
                curve = gr.LinePlot(_curve(None, ""), x="step", y="score", color="measure",
                                    title="Likeness, recognised share and overall score by checkpoint", height=260,
                                    y_lim=[0, 100], x_axis_format=",d")  # steps as whole numbers, not 1,000.000000
                grid = gr.Image(label="Test generations beside the training photos", type="filepath", height=360)
                clips = Clips(gr.Dataframe(headers=CLIP_COLUMNS, interactive=False, visible=False,
                                           label="Clips of this model (Playground → Video), newest first"),
                              gr.File(label="Download the clips: MP4 and its likeness JSON", file_count="multiple",
                                      interactive=False, visible=False))
            with gr.Column(scale=2):
                actions = _actions()
    return ModelsTab(tab, Library(cards, card_ids, table, details, curve, grid), actions, clips)


# The handlers. Those named ``_…`` act for one person (``for_person`` finds their workflow): their parameters after
# the workflow are the API's (``/rename_model(mid, name)``).

SELECT_FIRST = "Select a model first: click its card."


def pick(evt: gr.SelectData, frame: pd.DataFrame) -> str:
    return frame.iloc[evt.index[0]]["id"]


def pick_card(evt: gr.SelectData, ids: list[str]) -> str:
    return ids[evt.index] if 0 <= evt.index < len(ids) else gr.skip()


def _show_cards(workflow: Workflow, mid: str | None) -> tuple:
    """The cards; with nothing chosen yet, the newest model is shown rather than an empty panel."""
    found, ids = _cards(workflow)
    return found, ids, mid if mid in ids else (ids[0] if ids else None)


def _select(workflow: Workflow, mid: str) -> tuple:
    """Show the chosen model (a deleted one or a mistyped id: its error); the zip of the previous one goes away."""
    if not mid:
        return "Select a model: click its card.", None, _curve(workflow, ""), None, *_downloads(workflow, "")
    return (*_show(workflow, mid), None, *_downloads(workflow, mid))


def _current_name(workflow: Workflow, mid: str | None) -> str:
    """The rename field starts from the selected model's name (it kept the previous model's)."""
    try:
        return workflow.model(mid).name if mid else ""
    except ValueError:  # a deleted model or a mistyped id: select() says so
        return ""


def _rename(workflow: Workflow, mid: str, name: str) -> tuple:
    name = text_field(name, "New name")  # an API caller's None: named, not "the upstream app has raised"
    if not name.strip():
        raise gr.Error("Type the new name first.")
    workflow.rename_model(mid, name.strip())
    return _table(workflow), *_show(workflow, mid)


def _set_trigger(workflow: Workflow, mid: str, word: str) -> tuple:
    workflow.set_trigger_word(mid, word)
    return _table(workflow), *_show(workflow, mid)


def _push(workflow: Workflow, mid: str, repo: str, secret: str, is_private: bool) -> str:
    repo, secret = text_field(repo, "Repository"), text_field(secret, "Write token")
    if not isinstance(is_private, bool):  # None would let the Hub pick, and its default is a public repo
        raise gr.Error(f"Private repository: expected true or false, got {escaped(repr(is_private))}")
    url = workflow.push_to_hub(mid, repo.strip(), secret, private=is_private)
    return f"Pushed to [{url}]({url})."


def _delete(workflow: Workflow, mid: str) -> tuple:
    if mid == CANCELLED:  # the person answered No
        return (gr.skip(),) * 5
    name = workflow.model(mid).name  # another person's model: "not found", as if it did not exist
    workflow.delete_model(mid)
    gr.Info(f"Deleted {escaped(name)}.")
    return _table(workflow), f"Deleted {name}.", None, _curve(workflow, ""), \
        gr.update(choices=model_choices(workflow), value=None)


def _download(workflow: Workflow, mid: str) -> str:
    return served(workflow.export_zip(mid))


def _listing(workflow: Workflow) -> pd.DataFrame:
    return _table(workflow)


def _refresh(workflow: Workflow, mid: str) -> tuple:
    ids = [i for _, i in model_choices(workflow)]
    keep = mid if mid in ids else None
    return _table(workflow), gr.update(choices=model_choices(workflow), value=keep)


def _after_delete(mid: str | None) -> tuple:
    """A deleted model's zip and edits go with it."""
    return (None, "", "") if not mid else (gr.skip(),) * 3


def _wire_selection(view: ModelsTab, people: People) -> None:
    library, model_id = view.library, view.actions.model_id
    library.table.select(pick, library.table, model_id)
    library.cards.select(pick_card, library.card_ids, model_id)
    model_id.change(for_person(people)(_select), model_id,
                    [*library.shown(), view.actions.archive, view.actions.lora_file, view.actions.kohya_file],
                    api_name=False)
    model_id.change(for_person(people)(_current_name), model_id, view.actions.new_name, api_name=False,
                    show_progress="hidden")
    # On selection, and on coming back to the tab (a clip made in the Playground since).
    clips = (for_person(people)(_clips), model_id, [view.clips.table, view.clips.files])
    model_id.change(*clips, api_name=False, show_progress="hidden")
    view.tab.select(*clips, api_name=False, show_progress="hidden")


def _wire_actions(view: ModelsTab, people: People) -> None:
    a, library, quiet = view.actions, view.library, {"show_progress": "hidden"}
    selected = for_person(people, missing=SELECT_FIRST)
    show_cards = (for_person(people)(_show_cards), a.model_id, [library.cards, library.card_ids, a.model_id])
    refresh = for_person(people)(_refresh)
    # Then: the selector's label shows the new name; the API's outputs stay as they were.
    a.rename.click(selected(_rename), [a.model_id, a.new_name], [library.table, *library.shown()],
                   api_name="rename_model", **quiet).success(
        refresh, a.model_id, [library.table, a.model_id], api_name=False).then(*show_cards, api_name=False, **quiet)
    a.retrigger.click(selected(_set_trigger), [a.model_id, a.new_trigger], [library.table, *library.shown()],
                      api_name="set_trigger_word", **quiet)
    a.download.click(selected(_download), a.model_id, a.archive, api_name="download_model", **quiet)
    a.push.click(selected(_push), [a.model_id, a.repo_id, a.token, a.private], a.pushed, api_name="push_to_hub",
                 **quiet)
    # Deleting cannot be undone: the browser asks first (API callers are not asked).
    a.delete.click(selected(_delete), a.model_id, [library.table, *library.shown(), a.model_id],
                   api_name="delete_model", **quiet,
                   js=f"(mid) => (mid && !confirm('Delete this model and all its files? This cannot be undone.'))"
                      f" ? '{CANCELLED}' : mid").success(
        _after_delete, a.model_id, [a.archive, a.new_name, a.new_trigger], api_name=False).then(
        *show_cards, api_name=False, **quiet)  # its card goes too
    view.tab.select(for_person(people)(_listing), None, library.table, api_name="list_models")
    view.tab.select(refresh, a.model_id, [library.table, a.model_id], api_name=False).then(
        *show_cards, api_name=False, **quiet)


def build(people: People) -> gr.Tab:
    view = layout()
    _wire_selection(view, people)
    _wire_actions(view, people)
    return view.tab
