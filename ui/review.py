"""Review tab: the classifier's verdict per photo with its reasons, the dataset report, the user's overrides."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from pipeline.intake.classify import REASONS, ClassificationResult, Readiness
from pipeline.intake.crops import face_preview
from pipeline.workflow import Workflow
from ui.files import served
from ui.handlers import for_person, refused
from ui.people import People
from ui.progress import progress_events
from ui.text import escaped

COLUMNS = ["file", "verdict", "selected", "photo quality /100", "why (and the fix)", "duplicate_of", "your choice",
           "caption"]
SCORE_NOTE = ("**Photo quality /100** rates this photo alone — sharpness, light and how large and frontal the face is. "
              "Whether it shows the *same person* as the rest is checked separately, so a sharp photo of someone "
              "else can score high and still be left out. Click a photo or a row to change its verdict or caption.")
VERDICT_MARKS = {"keep": "✅", "reject": "❌", "duplicate": "↺"}


def _table(workflow: Workflow, result: ClassificationResult) -> pd.DataFrame:
    choices = workflow.user_choices()
    selected = set(result.selected)
    rows = [
        [r.file, r.verdict, "✔" if r.file in selected else "", None if r.score is None else round(r.score),
         " ".join(r.messages) or ", ".join(REASONS.get(c, (c,))[0] for c in r.reasons), r.duplicate_of or "",
         choices["overrides"].get(r.file, "auto"), choices["captions"].get(r.file, "")]
        for r in result.records
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def _report(result: ClassificationResult) -> str:
    report = result.report
    icon = {Readiness.READY: "✅", Readiness.USABLE: "⚠️", Readiness.NOT_READY: "❌"}.get(report.readiness, "")
    lines = [f"### {icon} {report.summary}", f"**{len(result.selected)} photo(s) selected for training.**"]
    lines += [f"- {tip}" for tip in report.advice]
    return "\n".join(lines)


def _gallery(result: ClassificationResult) -> list[tuple]:
    """Each photo as training will see it: the square face crop with the detected face boxed (the whole photo
    when no face was found), its verdict and the reason in words."""
    cards = []
    for r in result.records:
        if r.path is None:
            continue
        words = ", ".join(REASONS[c][0] for c in r.reasons if c in REASONS)
        caption = f"{VERDICT_MARKS.get(r.verdict, '')} {r.file}" + (f": {words}" if words else "")
        cards.append((face_preview(r) or served(r.path), caption))
    return cards



def _for_api(result: ClassificationResult) -> dict:
    """The classification JSON without server-side paths: gradio_client would take {"path": …} for a file."""
    data = result.to_dict()
    data["records"] = [{k: v for k, v in r.items() if k != "path"} for r in data["records"]]
    return data

@dataclass
class ReviewTab:
    tab: gr.Tab
    run: gr.Button
    report: gr.Markdown
    gallery: gr.Gallery
    file: gr.Textbox
    choice: gr.Radio
    caption: gr.Textbox
    apply: gr.Button
    reason: gr.Dropdown
    include_all: gr.Button
    exclude_all: gr.Button
    reset_all: gr.Button
    table: gr.Dataframe
    as_json: gr.JSON

    def outputs(self) -> list[gr.components.Component]:
        """What every check fills."""
        return [self.report, self.table, self.gallery, self.as_json]

    def override(self) -> list[gr.components.Component]:
        """The one photo's override form."""
        return [self.file, self.choice, self.caption]


def layout() -> ReviewTab:
    with gr.Tab("3 · Review", id="review") as tab:
        gr.Markdown("Each photo is checked for a single clear face, sharpness, exposure, duplicates and "
                    "whether it shows the same person. Override any verdict below; your choice wins.")
        run = gr.Button("Classify photos", variant="primary")
        report = gr.Markdown("Press **Classify photos** to check the uploaded photos.")
        gallery = gr.Gallery(label="What training will use: each photo's face crop (face boxed) and its verdict",
                             columns=6, height="auto", interactive=False, object_fit="contain",
                             elem_id="review-cards")
        gr.Markdown(SCORE_NOTE)
        with gr.Row(equal_height=True):
            file = gr.Textbox(label="Photo file name", scale=2)
            choice = gr.Radio(["auto", "include", "exclude"], value="auto", label="Your choice", scale=3)
            caption = gr.Textbox(label="Caption (empty: automatic; the trigger word is added)", scale=4)
            apply = gr.Button("Apply", scale=1)
        with gr.Row(equal_height=True):
            # Custom values: the choices follow each check, and API callers name a reason code directly.
            reason = gr.Dropdown(label="All photos flagged for…", choices=[], scale=3, allow_custom_value=True)
            include_all = gr.Button("Include them all", scale=1)
            exclude_all = gr.Button("Exclude them all", scale=1)
            reset_all = gr.Button("Every photo back to automatic", scale=1)
        table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, label="Verdicts in detail",
                             column_widths=["14%", "8%", "8%", "8%", "24%", "11%", "9%", "18%"])
        as_json = gr.JSON(label="Classification (the same JSON as the CLI and API)", visible=False)
    return ReviewTab(tab, run, report, gallery, file, choice, caption, apply, reason, include_all, exclude_all,
                     reset_all, table, as_json)


# The handlers. Those with a workflow first act for one person (``for_person`` finds their workflow): their
# parameters after it are the API's (``/override(name, how, text)``).

def _classify(workflow: Workflow, progress: gr.Progress = gr.Progress()) -> tuple:
    with refused():
        result = workflow.classify(on_event=progress_events(progress, "classifying", use_messages=True))
    workflow.last_classification = result  # the latest check, shown again when the tab is reopened
    return _report(result), _table(workflow, result), _gallery(result), _for_api(result)


def _show_last(workflow: Workflow) -> tuple:
    """On opening the tab: the last check (without running it again), or what to do first."""
    result = workflow.last_classification
    count = len(workflow.list_photos())
    if result is None:
        hint = ("No photos yet: add them on the Upload tab." if not count else
                f"Press **Classify photos** to check your {count} photo(s).")
        return hint, gr.skip(), gr.skip(), gr.skip()
    text = _report(result)
    if {r.file for r in result.records} != {p.name for p in workflow.list_photos()}:
        text = "⚠️ **Photos were added or removed since this check: press Classify photos again.**\n\n" + text
    return text, _table(workflow, result), _gallery(result), _for_api(result)


def pick(evt: gr.SelectData, frame: pd.DataFrame) -> tuple[str, str, str]:
    row = frame.iloc[evt.index[0]]
    return row["file"], row["your choice"] or "auto", row["caption"] or ""


def _set_choice(workflow: Workflow, name: str, how: str, text: str, progress: gr.Progress = gr.Progress()) -> tuple:
    if name not in {p.name for p in workflow.list_photos()}:
        raise gr.Error(f"No uploaded photo is named {escaped(repr(name))}: click its row in the table.")
    workflow.set_override(name, how)
    workflow.set_caption(name, text)
    return _classify(workflow, progress)


def pick_card(workflow: Workflow, evt: gr.SelectData, frame: pd.DataFrame) -> tuple[str, str, str]:
    result = workflow.last_classification
    shown = [r.file for r in result.records if r.path is not None] if result else []
    if not 0 <= evt.index < len(shown):
        return gr.skip(), gr.skip(), gr.skip()
    row = frame[frame["file"] == shown[evt.index]]
    if row.empty:
        return shown[evt.index], "auto", ""
    return shown[evt.index], row.iloc[0]["your choice"] or "auto", row.iloc[0]["caption"] or ""


def _bulk(how: str):
    """Every photo flagged for a reason (or, for "auto", every photo) set to ``how``."""
    def run(workflow: Workflow, code: str | None, progress: gr.Progress = gr.Progress()) -> tuple:
        result = workflow.last_classification
        if result is None:
            raise gr.Error("Press Classify photos first.")
        if how == "auto":
            files = [r.file for r in result.records]
        else:
            if code not in REASONS:
                raise gr.Error("Choose which flagged photos first (a reason from the list).")
            files = result.files_flagged(code)
        count = workflow.set_overrides(files, how)
        gr.Info(f"{count} photo(s) set to {how}.")
        return _classify(workflow, progress)
    return run


def reasons_of(data: dict | None) -> dict:
    codes = sorted({c for r in (data or {}).get("records", []) for c in r.get("reasons", [])})
    counts = {c: sum(c in r.get("reasons", []) for r in data["records"]) for c in codes} if data else {}
    return gr.update(choices=[(f"{REASONS[c][0]} ({counts[c]})", c) for c in codes if c in REASONS],
                     value=None)


def wire(view: ReviewTab, people: People) -> None:
    outputs, gpu = view.outputs(), {"concurrency_id": "gpu"}
    view.gallery.select(for_person(people)(pick_card), view.table, view.override())
    view.as_json.change(reasons_of, view.as_json, view.reason, api_name=False, show_progress="hidden")
    for button, how, api_name in ((view.include_all, "include", "include_all"),
                                  (view.exclude_all, "exclude", "exclude_all"),
                                  (view.reset_all, "auto", "reset_choices")):
        button.click(for_person(people)(_bulk(how)), view.reason, outputs, api_name=api_name, **gpu,
                     show_progress="hidden")
    view.run.click(for_person(people)(_classify), None, outputs, api_name="classify", **gpu, concurrency_limit=1)
    view.table.select(pick, view.table, view.override())
    choose = for_person(people, missing="Click a row in the table (or type the photo's file name) first.")
    view.apply.click(choose(_set_choice), view.override(), outputs, api_name="override", **gpu,
                     show_progress="hidden")
    view.tab.select(for_person(people)(_show_last), None, outputs, api_name=False)


def build(people: People) -> gr.Tab:
    view = layout()
    wire(view, people)
    return view.tab
