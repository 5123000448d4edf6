"""Review tab: the classifier's verdict per photo with its reasons, the dataset report, the user's overrides."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from pipeline.classify import ClassificationResult
from pipeline.workflow import Workflow
from ui.people import People
from ui.progress import progress_events
from ui.text import escaped

COLUMNS = ["file", "verdict", "selected", "score", "reasons", "duplicate_of", "your choice", "caption"]


def _table(workflow: Workflow, result: ClassificationResult) -> pd.DataFrame:
    choices = workflow.user_choices()
    selected = set(result.selected)
    rows = [
        [r.file, r.verdict, "✔" if r.file in selected else "", None if r.score is None else round(r.score),
         ", ".join(r.reasons), r.duplicate_of or "", choices["overrides"].get(r.file, "auto"),
         choices["captions"].get(r.file, "")]
        for r in result.records
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def _report(result: ClassificationResult) -> str:
    report = result.report
    icon = {"ready": "✅", "usable": "⚠️", "not_ready": "❌"}.get(report.readiness, "")
    lines = [f"### {icon} {report.summary}", f"**{len(result.selected)} photo(s) selected for training.**"]
    lines += [f"- {tip}" for tip in report.advice]
    return "\n".join(lines)


def _gallery(result: ClassificationResult) -> list[tuple[str, str]]:
    return [(str(r.path), f"{r.file}: {r.verdict}" + (f" ({', '.join(r.reasons)})" if r.reasons else ""))
            for r in result.records if r.path is not None]


def _for_api(result: ClassificationResult) -> dict:
    """The classification JSON without server-side paths: gradio_client would take {"path": …} for a file."""
    data = result.to_dict()
    data["records"] = [{k: v for k, v in r.items() if k != "path"} for r in data["records"]]
    return data


def build(people: People) -> gr.Tab:
    with gr.Tab("3 · Review", id="review") as tab:
        gr.Markdown("Each photo is checked for a single clear face, sharpness, exposure, duplicates and "
                    "whether it shows the same person. Override any verdict below; your choice wins.")
        run = gr.Button("Classify photos", variant="primary")
        report = gr.Markdown("Press **Classify photos** to check the uploaded photos.")
        table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, label="Verdicts",
                             column_widths=["15%", "9%", "8%", "7%", "20%", "13%", "9%", "19%"])
        gr.Markdown("**Change a verdict or a caption:** click a row in the table (or type the file name), choose, "
                    "then Apply.")
        with gr.Row(equal_height=True):
            file = gr.Textbox(label="Photo file name", scale=2)
            choice = gr.Radio(["auto", "include", "exclude"], value="auto", label="Your choice", scale=3)
            caption = gr.Textbox(label="Caption (empty: automatic; the trigger word is added)", scale=4)
            apply = gr.Button("Apply", scale=1)
        gallery = gr.Gallery(label="Photos with their verdicts", columns=6, height="auto", interactive=False)
        as_json = gr.JSON(label="Classification (the same JSON as the CLI and API)", visible=False)

        def classify(request: gr.Request, progress: gr.Progress = gr.Progress()) -> tuple:
            workflow = people(request)
            return _classify(workflow, progress)

        def _classify(workflow: Workflow, progress: gr.Progress) -> tuple:
            try:
                result = workflow.classify(on_event=progress_events(progress, "classifying", use_messages=True))
            except ValueError as exc:
                raise gr.Error(escaped(exc)) from exc
            workflow.last_classification = result  # the latest check, shown again when the tab is reopened
            return _report(result), _table(workflow, result), _gallery(result), _for_api(result)

        def show_last(request: gr.Request) -> tuple:
            """On opening the tab: the last check (without running it again), or what to do first."""
            workflow = people(request)
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

        def set_choice(name: str, how: str, text: str, request: gr.Request,
                       progress: gr.Progress = gr.Progress()) -> tuple:
            if not name:
                raise gr.Error("Click a row in the table (or type the photo's file name) first.")
            workflow = people(request)
            if name not in {p.name for p in workflow.list_photos()}:
                raise gr.Error(f"No uploaded photo is named {escaped(repr(name))}: click its row in the table.")
            try:
                workflow.set_override(name, how)
                workflow.set_caption(name, text)
            except ValueError as exc:
                raise gr.Error(escaped(exc)) from exc
            return _classify(workflow, progress)

        outputs = [report, table, gallery, as_json]
        run.click(classify, None, outputs, api_name="classify", concurrency_id="gpu", concurrency_limit=1)
        table.select(pick, table, [file, choice, caption])
        apply.click(set_choice, [file, choice, caption], outputs, api_name="override", concurrency_id="gpu",
                    show_progress="hidden")
        tab.select(show_last, None, outputs, api_name=False)
    return tab
