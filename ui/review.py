"""Review tab: the classifier's verdict per photo with its reasons, the dataset report, the user's overrides."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from pipeline.classify import REASONS, ClassificationResult, Readiness
from pipeline.crops import face_preview
from pipeline.workflow import Workflow
from ui.files import served
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


def build(people: People) -> gr.Tab:
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

        def pick_card(evt: gr.SelectData, frame: pd.DataFrame, request: gr.Request) -> tuple[str, str, str]:
            result = people(request).last_classification
            shown = [r.file for r in result.records if r.path is not None] if result else []
            if not 0 <= evt.index < len(shown):
                return gr.skip(), gr.skip(), gr.skip()
            row = frame[frame["file"] == shown[evt.index]]
            if row.empty:
                return shown[evt.index], "auto", ""
            return shown[evt.index], row.iloc[0]["your choice"] or "auto", row.iloc[0]["caption"] or ""

        def bulk(how: str):
            def run(code: str | None, request: gr.Request, progress: gr.Progress = gr.Progress()) -> tuple:
                workflow = people(request)
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

        outputs = [report, table, gallery, as_json]
        gallery.select(pick_card, table, [file, choice, caption])
        as_json.change(reasons_of, as_json, reason, api_name=False, show_progress="hidden")
        include_all.click(bulk("include"), reason, outputs, api_name="include_all", concurrency_id="gpu",
                          show_progress="hidden")
        exclude_all.click(bulk("exclude"), reason, outputs, api_name="exclude_all", concurrency_id="gpu",
                          show_progress="hidden")
        reset_all.click(bulk("auto"), reason, outputs, api_name="reset_choices", concurrency_id="gpu",
                        show_progress="hidden")
        run.click(classify, None, outputs, api_name="classify", concurrency_id="gpu", concurrency_limit=1)
        table.select(pick, table, [file, choice, caption])
        apply.click(set_choice, [file, choice, caption], outputs, api_name="override", concurrency_id="gpu",
                    show_progress="hidden")
        tab.select(show_last, None, outputs, api_name=False)
    return tab
